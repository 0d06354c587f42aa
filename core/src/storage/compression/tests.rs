use proptest::prelude::*;

use super::fixtures;
use super::*;

const ALL: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn unhex(parts: &[&str]) -> Vec<u8> {
    let s: String = parts.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("fixture is hex"))
        .collect()
}

/// Bytes that compress poorly, from a fixed LCG so the test is repeatable.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect()
}

fn samples() -> Vec<Vec<u8>> {
    let mut mixed = b"record ".repeat(20_000);
    mixed.extend(noise(70_000, 7));
    vec![
        Vec::new(),
        b"x".to_vec(),
        b"hello, odradek".to_vec(),
        noise(1000, 1),
        // Past a 64 KiB lz4 block, a 32 KiB snappy-java block and a
        // 128 KiB zstd block.
        mixed,
    ]
}

#[test]
fn round_trip_every_codec() {
    for codec in ALL {
        for input in samples() {
            let packed = compress(codec, &input);
            // The limit is inclusive: exactly the output's size suffices.
            let unpacked = decompress(codec, &packed, input.len())
                .unwrap_or_else(|e| panic!("{codec:?}, {} bytes: {e}", input.len()));
            assert_eq!(unpacked, input, "{codec:?}");
            if codec != Compression::None {
                assert_ne!(packed, input, "{codec:?} wrote its input unchanged");
            }
        }
    }
}

#[test]
fn compression_is_deterministic() {
    for codec in ALL {
        for input in samples() {
            assert_eq!(
                compress(codec, &input),
                compress(codec, &input),
                "{codec:?}"
            );
        }
    }
}

#[test]
fn compressed_data_is_smaller_for_repetitive_input() {
    let input = b"odradek ".repeat(10_000);
    for codec in ALL.into_iter().skip(1) {
        let packed = compress(codec, &input);
        assert!(
            packed.len() < input.len() / 10,
            "{codec:?}: {}",
            packed.len()
        );
    }
}

#[test]
fn decodes_what_python_client_libraries_write() {
    let payload = fixtures::payload();
    let cases: [(Compression, &[&str]); 7] = [
        (Compression::Gzip, fixtures::GZIP),
        (Compression::Snappy, fixtures::SNAPPY_RAW),
        (Compression::Snappy, fixtures::SNAPPY_XERIAL),
        (Compression::Lz4, fixtures::LZ4_LINKED),
        (Compression::Lz4, fixtures::LZ4_INDEPENDENT),
        (Compression::Zstd, fixtures::ZSTD_TWO_FRAMES),
        (Compression::Zstd, fixtures::ZSTD_STREAMED),
    ];
    for (i, (codec, hex)) in cases.into_iter().enumerate() {
        let data = unhex(hex);
        let out = decompress(codec, &data, 1 << 20).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(out, payload, "case {i} ({codec:?})");
        // Every fixture is refused one byte short of its output.
        assert!(
            matches!(
                decompress(codec, &data, payload.len() - 1),
                Err(CompressionError::LimitExceeded { .. })
            ),
            "case {i}"
        );
    }
}

#[test]
fn kafka_python_batches_hold_the_same_records_under_every_codec() {
    // Records start after the 61-byte batch header.
    let plain = unhex(fixtures::KAFKA_PYTHON_BATCH_NONE);
    let records = &plain[61..];
    let cases: [(Compression, u8, &[&str]); 4] = [
        (Compression::Gzip, 1, fixtures::KAFKA_PYTHON_BATCH_GZIP),
        (Compression::Snappy, 2, fixtures::KAFKA_PYTHON_BATCH_SNAPPY),
        (Compression::Lz4, 3, fixtures::KAFKA_PYTHON_BATCH_LZ4),
        (Compression::Zstd, 4, fixtures::KAFKA_PYTHON_BATCH_ZSTD),
    ];
    for (codec, bits, hex) in cases {
        let batch = unhex(hex);
        // Attributes are bytes 21-22; the codec is the low three bits.
        assert_eq!(batch[22] & 0x07, bits);
        let out = decompress(codec, &batch[61..], records.len()).unwrap();
        assert_eq!(out, records, "{codec:?}");
    }
    // kafka-python frames snappy as the Java client does.
    assert!(unhex(fixtures::KAFKA_PYTHON_BATCH_SNAPPY)[61..].starts_with(&XERIAL_MAGIC));
}

#[test]
fn xerial_framing_laid_out_by_hand() {
    let a = b"the java client frames snappy ".repeat(3);
    let b = b"in blocks".to_vec();
    let block_a = snap::raw::Encoder::new().compress_vec(&a).unwrap();
    let block_b = snap::raw::Encoder::new().compress_vec(&b).unwrap();
    let mut framed = vec![0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
    framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    framed.extend_from_slice(&(block_a.len() as u32).to_be_bytes());
    framed.extend_from_slice(&block_a);
    framed.extend_from_slice(&(block_b.len() as u32).to_be_bytes());
    framed.extend_from_slice(&block_b);
    let mut whole = a.clone();
    whole.extend_from_slice(&b);
    assert_eq!(
        decompress(Compression::Snappy, &framed, 1 << 20).unwrap(),
        whole
    );

    // A second stream appended whole, header and all, reads on.
    let mut twice = framed.clone();
    twice.extend_from_slice(&framed);
    let mut whole_twice = whole.clone();
    whole_twice.extend_from_slice(&whole);
    assert_eq!(
        decompress(Compression::Snappy, &twice, 1 << 20).unwrap(),
        whole_twice
    );

    // Our own framing is the same layout.
    assert_eq!(
        decompress(Compression::Snappy, &compress_snappy_java(&whole), 1 << 20).unwrap(),
        whole
    );
    let big = noise(100_000, 3);
    let framed_big = compress_snappy_java(&big);
    assert!(framed_big.starts_with(&XERIAL_MAGIC));
    assert_eq!(
        decompress(Compression::Snappy, &framed_big, big.len()).unwrap(),
        big
    );

    // Header only: an empty stream, as snappy-java writes for no input.
    assert_eq!(
        decompress(Compression::Snappy, &framed[..16], 10).unwrap(),
        Vec::<u8>::new()
    );
    // Broken framings.
    let mut negative = framed[..16].to_vec();
    negative.extend_from_slice(&(-5i32).to_be_bytes());
    let mut overlong = framed[..16].to_vec();
    overlong.extend_from_slice(&1000i32.to_be_bytes());
    overlong.extend_from_slice(&block_a);
    for bad in [
        &framed[..12],
        &framed[..18],
        &framed[..framed.len() - 1],
        &negative[..],
        &overlong[..],
    ] {
        assert!(
            matches!(
                decompress(Compression::Snappy, bad, 1 << 20),
                Err(CompressionError::Malformed { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn limit_stops_a_decompression_bomb() {
    let zeros = vec![0u8; 10 << 20];
    for codec in ALL.into_iter().skip(1) {
        let bomb = compress(codec, &zeros);
        assert!(bomb.len() < 1 << 20, "{codec:?}: {} bytes", bomb.len());
        assert_eq!(
            decompress(codec, &bomb, 1 << 20),
            Err(CompressionError::LimitExceeded {
                codec,
                limit: 1 << 20
            }),
            "{codec:?}"
        );
    }
    // The same through the snappy-java framing, which the limit follows
    // block by block.
    assert!(matches!(
        decompress(Compression::Snappy, &compress_snappy_java(&zeros), 1 << 20),
        Err(CompressionError::LimitExceeded { .. })
    ));
    assert!(matches!(
        decompress(Compression::None, &zeros, 1 << 20),
        Err(CompressionError::LimitExceeded { .. })
    ));
}

#[test]
fn gzip_bomb_from_the_brief() {
    // 10 MB of zeros gzip to about 10 KB; a 1 MB limit refuses it.
    let bomb = compress(Compression::Gzip, &vec![0u8; 10_000_000]);
    assert!(bomb.len() < 64 << 10);
    assert!(matches!(
        decompress(Compression::Gzip, &bomb, 1_000_000),
        Err(CompressionError::LimitExceeded { .. })
    ));
    assert_eq!(
        decompress(Compression::Gzip, &bomb, 10_000_000)
            .unwrap()
            .len(),
        10_000_000
    );
}

#[test]
fn zstd_window_larger_than_allowed_is_refused_before_allocating() {
    let mut frame = compress(Compression::Zstd, b"small");
    // ruzstd writes a window descriptor (no single-segment flag): byte 5.
    assert_eq!(frame[4] & 0x20, 0, "expected a window descriptor");
    frame[5] = 18 << 3; // 2^(10 + 18) = 256 MiB
    assert_eq!(
        decompress(Compression::Zstd, &frame, 1 << 20),
        Err(CompressionError::LimitExceeded {
            codec: Compression::Zstd,
            limit: 1 << 20
        })
    );
    assert_eq!(zstd_window_cap(0), 8 << 20);
    assert_eq!(zstd_window_cap(64 << 20), 64 << 20);
    assert_eq!(zstd_window_cap(usize::MAX), 128 << 20);
}

#[test]
fn zstd_skippable_frames_and_checksums() {
    let mut data = vec![0x50, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 1, 2, 3];
    data.extend(compress(Compression::Zstd, b"after a skippable frame"));
    assert_eq!(
        decompress(Compression::Zstd, &data, 100).unwrap(),
        b"after a skippable frame"
    );
    // Flip a bit of a raw literal: the content checksum catches it.
    let mut frame = compress(Compression::Zstd, b"abcdefgh");
    let at = frame
        .windows(8)
        .position(|w| w == b"abcdefgh")
        .expect("tiny input is stored raw");
    frame[at] ^= 1;
    assert!(matches!(
        decompress(Compression::Zstd, &frame, 100),
        Err(CompressionError::Malformed { .. })
    ));
    // Garbage after the last frame.
    let mut trailing = compress(Compression::Zstd, b"abc");
    trailing.extend_from_slice(&[1, 2]);
    assert!(decompress(Compression::Zstd, &trailing, 100).is_err());
}

#[test]
fn empty_and_garbage_input_is_refused_by_every_codec() {
    for codec in ALL.into_iter().skip(1) {
        assert!(
            matches!(
                decompress(codec, &[], 100),
                Err(CompressionError::Malformed { .. })
            ),
            "{codec:?}"
        );
        assert!(
            decompress(codec, b"definitely not compressed", 1000).is_err(),
            "{codec:?}"
        );
    }
    assert_eq!(
        decompress(Compression::None, &[], 0).unwrap(),
        Vec::<u8>::new()
    );
}

#[test]
fn errors_read_well() {
    let e = decompress(Compression::Lz4, b"nope", 10).unwrap_err();
    assert!(e.to_string().starts_with("invalid lz4 data: "), "{e}");
    let e = CompressionError::LimitExceeded {
        codec: Compression::Gzip,
        limit: 5,
    };
    assert_eq!(e.to_string(), "gzip data decompresses to more than 5 bytes");
}

fn magic(codec: Compression) -> Vec<u8> {
    match codec {
        Compression::None => Vec::new(),
        Compression::Gzip => vec![0x1f, 0x8b, 8, 0],
        Compression::Snappy => XERIAL_MAGIC.to_vec(),
        Compression::Lz4 => vec![0x04, 0x22, 0x4d, 0x18],
        Compression::Zstd => vec![0x28, 0xb5, 0x2f, 0xfd],
    }
}

fn arb_codec() -> impl Strategy<Value = Compression> {
    prop::sample::select(ALL.to_vec())
}

proptest! {
    #[test]
    fn prop_random_bytes_never_panic(
        codec in arb_codec(),
        with_magic in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        limit in 0usize..100_000,
    ) {
        let mut input = if with_magic { magic(codec) } else { Vec::new() };
        input.extend(bytes);
        if let Ok(out) = decompress(codec, &input, limit) {
            prop_assert!(out.len() <= limit);
        }
    }

    /// Valid streams with a few bytes changed: the inputs a decoder's
    /// checks actually meet, where random bytes fail at the magic.
    #[test]
    fn prop_mutated_streams_never_panic(
        codec in arb_codec(),
        java in any::<bool>(),
        input in proptest::collection::vec(0u8..4, 1..3000),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut packed = if java && codec == Compression::Snappy {
            compress_snappy_java(&input)
        } else {
            compress(codec, &input)
        };
        for (at, byte) in edits {
            let i = at.index(packed.len());
            packed[i] = byte;
        }
        if let Ok(out) = decompress(codec, &packed, 10_000) {
            prop_assert!(out.len() <= 10_000);
        }
    }

    /// A stream cut short never decodes to the whole of what was sent.
    #[test]
    fn prop_truncated_streams_never_pass_for_whole(
        codec in prop::sample::select(ALL[1..].to_vec()),
        java in any::<bool>(),
        input in proptest::collection::vec(any::<u8>(), 1..3000),
        cut in any::<prop::sample::Index>(),
    ) {
        let packed = if java && codec == Compression::Snappy {
            compress_snappy_java(&input)
        } else {
            compress(codec, &input)
        };
        let short = &packed[..cut.index(packed.len())];
        if let Ok(out) = decompress(codec, short, 10_000) {
            prop_assert_ne!(out, input);
        }
    }

    #[test]
    fn prop_round_trip(codec in arb_codec(), input in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let packed = compress(codec, &input);
        prop_assert_eq!(decompress(codec, &packed, input.len()).unwrap(), input.clone());
        if !input.is_empty() {
            let over = decompress(codec, &packed, input.len() - 1);
            let is_limit = matches!(over, Err(CompressionError::LimitExceeded { .. }));
            prop_assert!(is_limit);
        }
    }
}
