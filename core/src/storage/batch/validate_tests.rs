//! Record-level validation, compressed batches, and the builder's codecs.

use proptest::prelude::*;

use super::*;
use crate::storage::compression::{compress, fixtures};

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];
const LIMIT: usize = 1 << 20;

fn unhex(parts: &[&str]) -> Vec<u8> {
    let s: String = parts.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("fixture is hex"))
        .collect()
}

fn builder() -> BatchBuilder {
    BatchBuilder::new(5_000)
        .add(Some(b"k0"), Some(&b"first value ".repeat(10)), 5_003)
        .add(None, Some(b"null key"), 5_009)
        .add_with_headers(
            Some(b"k2"),
            None,
            4_990,
            vec![(b"h".to_vec(), Some(b"x".to_vec())), (b"n".to_vec(), None)],
        )
        .add(Some(b"k3"), Some(&b"last value ".repeat(10)), 5_009)
}

/// One encoded record, as the builder lays it out.
fn rec(offset_delta: i32, key: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    Record {
        offset_delta,
        timestamp_delta: offset_delta as i64,
        key: key.map(<[u8]>::to_vec),
        value: Some(b"some value".to_vec()),
        headers: vec![(b"h".to_vec(), None)],
    }
    .encode(&mut out);
    out
}

fn recs(deltas: &[i32]) -> Vec<u8> {
    deltas.iter().flat_map(|d| rec(*d, Some(b"key"))).collect()
}

/// A batch whose header says `count` records spanning `last_offset_delta`,
/// holding `section` (uncompressed records) compressed with `codec`, with a
/// correct length and CRC: the records are all that is wrong with it.
fn batch_with(section: &[u8], count: i32, last_offset_delta: i32, codec: Compression) -> Vec<u8> {
    let template = BatchBuilder::new(1_000)
        .add(Some(b"x"), Some(b"y"), 1_000)
        .build();
    let mut b = template[..HEADER_SIZE].to_vec();
    b[21..23].copy_from_slice(&codec.attribute_bits().to_be_bytes());
    b[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&compress(codec, section));
    let length = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Validates under every codec, expecting the same verdict from each.
fn verdict(
    section: &[u8],
    count: i32,
    last_offset_delta: i32,
) -> Result<RecordsSummary, RecordError> {
    let mut first = None;
    for codec in CODECS {
        let b = batch_with(section, count, last_offset_delta, codec);
        validate(&b).expect("the header and CRC are right");
        let got = validate_records(&b, LIMIT).map(|s| (s.record_count, s.max_timestamp));
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "{codec:?} disagrees with uncompressed"),
        }
    }
    validate_records(
        &batch_with(section, count, last_offset_delta, Compression::None),
        LIMIT,
    )
}

#[test]
fn accepts_builder_batches_with_every_codec() {
    let plain = builder().build();
    let plain_records = decode_records(&plain).unwrap();
    for codec in CODECS {
        let b = builder().compression(codec).build();
        let h = validate(&b).unwrap();
        assert_eq!(h.compression(), Some(codec));
        assert_eq!(h.record_count, 4);
        assert_eq!(h.last_offset_delta, 3);
        assert_eq!(h.max_timestamp, 5_009);
        let s = validate_records(&b, LIMIT).unwrap();
        assert_eq!(
            s,
            RecordsSummary {
                compression: codec,
                record_count: 4,
                max_timestamp: 5_009,
                offset_delta_of_max_timestamp: 1,
                null_keys: 1,
                first_null_key: Some(1),
                uncompressed_size: plain.len(),
            },
            "{codec:?}"
        );
        assert!(s.has_null_key());
        assert_eq!(
            decode_records_any(&b, LIMIT).unwrap(),
            plain_records,
            "{codec:?}"
        );
        if codec != Compression::None {
            assert!(b.len() < plain.len(), "{codec:?} did not shrink the batch");
            // The old reader says plainly that it cannot read these.
            assert!(decode_records(&b).is_err());
        }
    }
}

#[test]
fn builder_keeps_other_attributes_beside_the_codec() {
    let b = builder()
        .producer(7, 1, 0)
        .transactional()
        .compression(Compression::Zstd)
        .build();
    let h = validate(&b).unwrap();
    assert!(h.is_transactional());
    assert_eq!(h.compression(), Some(Compression::Zstd));
    assert_eq!(h.producer_id, 7);
    validate_records(&b, LIMIT).unwrap();
}

#[test]
fn accepts_and_reads_kafka_python_batches() {
    let cases = [
        (Compression::None, fixtures::KAFKA_PYTHON_BATCH_NONE),
        (Compression::Gzip, fixtures::KAFKA_PYTHON_BATCH_GZIP),
        (Compression::Snappy, fixtures::KAFKA_PYTHON_BATCH_SNAPPY),
        (Compression::Lz4, fixtures::KAFKA_PYTHON_BATCH_LZ4),
        (Compression::Zstd, fixtures::KAFKA_PYTHON_BATCH_ZSTD),
    ];
    let plain = unhex(fixtures::KAFKA_PYTHON_BATCH_NONE);
    let expected = decode_records(&plain).unwrap();
    assert_eq!(expected.len(), 5);
    for (i, r) in expected.iter().enumerate() {
        assert_eq!(r.offset_delta, i as i32);
        assert_eq!(r.key.is_none(), i == 2);
        assert_eq!(r.value, Some(format!("value {i} ").repeat(20).into_bytes()));
        assert_eq!(r.headers.len(), if i % 2 == 0 { 1 } else { 0 });
    }
    for (codec, hex) in cases {
        let b = unhex(hex);
        let h = validate(&b).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!(h.compression(), Some(codec));
        let s = validate_records(&b, LIMIT).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!(s.record_count, 5);
        // Timestamps are base + (7i mod 5): the largest, +4, is record 2's.
        assert_eq!(s.max_timestamp, 1_700_000_000_004);
        assert_eq!(s.offset_delta_of_max_timestamp, 2);
        assert_eq!((s.null_keys, s.first_null_key), (1, Some(2)));
        assert_eq!(s.uncompressed_size, plain.len());
        assert_eq!(
            decode_records_any(&b, LIMIT).unwrap(),
            expected,
            "{codec:?}"
        );
    }
}

#[test]
fn rejects_a_count_that_disagrees_with_the_records() {
    let three = recs(&[0, 1, 2]);
    assert_eq!(verdict(&three, 3, 2).unwrap().record_count, 3);

    let e = verdict(&three, 4, 3).unwrap_err();
    assert_eq!(e.batch_index, Some(3));
    assert_eq!(e.kind, RecordErrorKind::InvalidRecord);
    assert!(
        e.message.contains("declares 4 records but holds only 3"),
        "{e}"
    );

    let e = verdict(&three, 2, 1).unwrap_err();
    assert_eq!(e.batch_index, None);
    assert!(
        e.message.contains("remain after the last of 2 records"),
        "{e}"
    );

    // Kafka's "Inconsistent batch offset range": the span is not the count.
    // (`validate` lets fewer records than the span through, for compacted
    // batches; a producer may not send those.)
    let e = verdict(&three, 3, 4).unwrap_err();
    assert!(
        e.message
            .contains("inconsistent batch offset range [0, 4] and count of records 3"),
        "{e}"
    );
    assert_eq!(e.batch_index, None);

    let e = validate_records(&batch_with(&[], 0, 0, Compression::None), LIMIT).unwrap_err();
    assert!(
        e.message
            .contains("invalid reported count for record batch: 0"),
        "{e}"
    );
}

#[test]
fn rejects_offset_deltas_that_are_not_consecutive() {
    let e = verdict(&recs(&[0, 2, 1]), 3, 2).unwrap_err();
    assert_eq!(e.batch_index, Some(1));
    assert!(e.message.contains("consecutive"), "{e}");
    let e = verdict(&recs(&[1, 2, 3]), 3, 2).unwrap_err();
    assert_eq!(e.batch_index, Some(0));
    let e = verdict(&recs(&[0, 1, 1]), 3, 2).unwrap_err();
    assert_eq!(e.batch_index, Some(2));
    assert_eq!(e.kind.kafka_error_code(), 87);
    // Reading back does not judge deltas (compaction leaves gaps).
    let b = batch_with(&recs(&[0, 2, 1]), 3, 2, Compression::Lz4);
    let read = decode_records_any(&b, LIMIT).unwrap();
    assert_eq!(
        read.iter().map(|r| r.offset_delta).collect::<Vec<_>>(),
        [0, 2, 1]
    );
}

#[test]
fn rejects_bytes_after_the_last_record() {
    for junk in [&[0u8][..], &[0x02, 0x00], &rec(2, None)] {
        let mut section = recs(&[0, 1]);
        section.extend_from_slice(junk);
        let e = verdict(&section, 2, 1).unwrap_err();
        assert_eq!(e.batch_index, None);
        assert!(
            e.message
                .contains("bytes remain after the last of 2 records"),
            "{e}"
        );
        for codec in CODECS {
            assert!(decode_records_any(&batch_with(&section, 2, 1, codec), LIMIT).is_err());
        }
    }
}

#[test]
fn rejects_a_truncated_record() {
    let section = recs(&[0, 1]);
    let cut = &section[..section.len() - 3];
    let e = verdict(cut, 2, 1).unwrap_err();
    assert_eq!(e.batch_index, Some(1));
    assert!(e.message.contains("invalid record 1: record of"), "{e}");
    assert!(e.message.contains("runs past the end"), "{e}");
}

#[test]
fn rejects_bad_varints() {
    // A record length that never ends.
    let mut section = recs(&[0]);
    section.extend_from_slice(&[0xff; 6]);
    let e = verdict(&section, 2, 1).unwrap_err();
    assert_eq!(e.batch_index, Some(1));
    assert!(e.message.contains("varint too long"), "{e}");

    // An offset delta past i32 (5 bytes, zig-zag 2^33).
    let mut body = vec![0u8, 0x00]; // attributes, timestamp delta 0
    body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x20]);
    body.extend_from_slice(&[0x01, 0x01, 0x00]); // null key, null value, no headers
    let mut section = vec![(body.len() as u8) << 1];
    section.extend_from_slice(&body);
    let e = verdict(&section, 1, 0).unwrap_err();
    assert_eq!(e.batch_index, Some(0));
    assert!(e.message.contains("varint out of range"), "{e}");

    // A timestamp delta of eleven bytes.
    let mut body = vec![0u8];
    body.extend_from_slice(&[0x80; 10]);
    body.extend_from_slice(&[0x01, 0x00, 0x01, 0x01, 0x00]);
    let mut section = vec![(body.len() as u8) << 1];
    section.extend_from_slice(&body);
    let e = verdict(&section, 1, 0).unwrap_err();
    assert!(e.message.contains("varint too long"), "{e}");

    // A negative record length.
    let e = verdict(&[0x01], 1, 0).unwrap_err();
    assert!(e.message.contains("negative record size"), "{e}");
}

#[test]
fn rejects_a_length_prefix_that_disagrees_with_the_fields() {
    // One byte longer than its fields, the extra byte inside the record.
    let good = rec(0, Some(b"k"));
    let mut section = vec![good[0] + 2];
    section.extend_from_slice(&good[1..]);
    section.push(0);
    let e = verdict(&section, 1, 0).unwrap_err();
    assert_eq!(e.batch_index, Some(0));
    assert!(
        e.message.contains("invalid record size: expected to read"),
        "{e}"
    );

    // One byte shorter: a field runs past the record's end.
    let mut section = vec![good[0] - 2];
    section.extend_from_slice(&good[1..]);
    let e = verdict(&section, 1, 0).unwrap_err();
    assert_eq!(e.batch_index, Some(0));

    // Empty: not even the attributes byte.
    let e = verdict(&[0x00], 1, 0).unwrap_err();
    assert!(e.message.contains("empty record"), "{e}");
}

#[test]
fn rejects_null_header_keys_and_negative_header_counts() {
    let body_with = |headers: &[u8]| {
        let mut body = vec![0u8, 0x00, 0x00, 0x01, 0x01]; // attrs, ts, delta, null key, null value
        body.extend_from_slice(headers);
        let mut section = vec![(body.len() as u8) << 1];
        section.extend_from_slice(&body);
        section
    };
    // One header: key null (-1), value null.
    let e = verdict(&body_with(&[0x02, 0x01, 0x01]), 1, 0).unwrap_err();
    assert_eq!(e.batch_index, Some(0));
    assert!(e.message.contains("null header key"), "{e}");
    // Header count -1.
    let e = verdict(&body_with(&[0x01]), 1, 0).unwrap_err();
    assert!(
        e.message.contains("invalid number of record headers -1"),
        "{e}"
    );
    // A well-formed header passes.
    assert!(verdict(&body_with(&[0x02, 0x02, b'h', 0x01]), 1, 0).is_ok());
}

#[test]
fn record_attributes_are_read_and_not_judged() {
    // Kafka ignores the v2 record attributes byte; so do we.
    let mut section = rec(0, Some(b"k"));
    section[1] = 0x7f;
    assert!(verdict(&section, 1, 0).is_ok());
}

#[test]
fn corrupt_or_oversized_compressed_records() {
    let mut b = batch_with(&recs(&[0, 1]), 2, 1, Compression::None);
    b[21..23].copy_from_slice(&Compression::Gzip.attribute_bits().to_be_bytes());
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    validate(&b).unwrap();
    let e = validate_records(&b, LIMIT).unwrap_err();
    assert_eq!(e.kind, RecordErrorKind::Corrupt);
    assert_eq!(e.kind.kafka_error_code(), 2);
    assert!(
        e.message
            .starts_with("failed to decompress the records: invalid gzip data"),
        "{e}"
    );

    // Many copies of a large record, compressed: far past the limit.
    let one = {
        let mut out = Vec::new();
        Record {
            offset_delta: 0,
            timestamp_delta: 0,
            key: None,
            value: Some(vec![0; 100_000]),
            headers: vec![],
        }
        .encode(&mut out);
        out
    };
    let section = one.repeat(100);
    for codec in CODECS.into_iter().skip(1) {
        let b = batch_with(&section, 100, 99, codec);
        let e = validate_records(&b, LIMIT).unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::TooLarge, "{codec:?}");
        assert_eq!(e.kind.kafka_error_code(), 10);
        assert_eq!(
            decode_records_any(&b, LIMIT).unwrap_err().kind,
            RecordErrorKind::TooLarge
        );
    }
}

#[test]
fn decode_records_any_checks_the_crc() {
    let mut b = builder().compression(Compression::Snappy).build();
    let last = b.len() - 1;
    b[last] ^= 0x10;
    let e = decode_records_any(&b, LIMIT).unwrap_err();
    assert_eq!(e.kind, RecordErrorKind::Corrupt);
    assert!(e.message.contains("crc mismatch"), "{e}");
}

#[test]
fn a_huge_claimed_count_sizes_no_allocation() {
    // i32::MAX records claimed, one present: an error, not an attempt to
    // allocate room for two billion records.
    let b = batch_with(&recs(&[0]), i32::MAX, i32::MAX - 1, Compression::None);
    assert!(decode_records(&b).is_err());
    let b = batch_with(&recs(&[0]), i32::MAX, i32::MAX - 1, Compression::Zstd);
    let e = decode_records_any(&b, LIMIT).unwrap_err();
    assert_eq!(e.batch_index, Some(1));
    let e = validate_records(&b, LIMIT).unwrap_err();
    assert_eq!(e.batch_index, Some(1));
}

#[test]
fn validate_records_never_reads_past_a_short_buffer() {
    let b = builder().compression(Compression::Gzip).build();
    for cut in [0, 10, HEADER_SIZE - 1, HEADER_SIZE, b.len() - 1] {
        assert!(validate_records(&b[..cut], LIMIT).is_err(), "cut at {cut}");
    }
}

fn arb_codec() -> impl Strategy<Value = Compression> {
    prop::sample::select(CODECS.to_vec())
}

proptest! {
    #[test]
    fn prop_every_codec_round_trips(
        codec in arb_codec(),
        records in proptest::collection::vec(
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                proptest::option::of(proptest::collection::vec(0u8..3, 0..300)),
                -1_000i64..1_000,
            ),
            1..30,
        ),
    ) {
        let mut bld = BatchBuilder::new(10_000).compression(codec);
        for (k, v, dt) in &records {
            bld = bld.add(k.as_deref(), v.as_deref(), 10_000 + dt);
        }
        let b = bld.build();
        let s = validate_records(&b, LIMIT).unwrap();
        prop_assert_eq!(s.record_count as usize, records.len());
        let max = records.iter().map(|r| 10_000 + r.2).max().unwrap();
        prop_assert_eq!(s.max_timestamp, max);
        let first_max = records.iter().position(|r| 10_000 + r.2 == max).unwrap();
        prop_assert_eq!(s.offset_delta_of_max_timestamp as usize, first_max);
        prop_assert_eq!(s.null_keys as usize, records.iter().filter(|r| r.0.is_none()).count());
        let read = decode_records_any(&b, LIMIT).unwrap();
        for (r, (k, v, dt)) in read.iter().zip(&records) {
            prop_assert_eq!(&r.key, k);
            prop_assert_eq!(&r.value, v);
            prop_assert_eq!(r.timestamp_delta, *dt);
        }
    }

    /// Batches with bytes of their records changed and the CRC fixed, so
    /// that the damage reaches the decompressor and the record decoder.
    #[test]
    fn prop_damaged_records_never_panic(
        codec in arb_codec(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        count in prop::sample::select(vec![1, 2, 4, 1000, i32::MAX]),
    ) {
        let mut b = builder().compression(codec).build();
        let n = b.len() - HEADER_SIZE;
        for (at, byte) in edits {
            let i = HEADER_SIZE + at.index(n);
            b[i] = byte;
        }
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        let crc = compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = validate_records(&b, 100_000);
        let _ = decode_records_any(&b, 100_000);
    }

    #[test]
    fn prop_garbage_never_panics_the_record_validators(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        codec in arb_codec(),
    ) {
        let mut bytes = bytes;
        if bytes.len() >= HEADER_SIZE {
            bytes[21..23].copy_from_slice(&codec.attribute_bits().to_be_bytes());
        }
        let _ = validate_records(&bytes, 10_000);
        let _ = decode_records_any(&bytes, 10_000);
    }
}
