use super::*;
use proptest::prelude::*;

fn sample() -> Vec<u8> {
    BatchBuilder::new(1_000)
        .add(Some(b"k1"), Some(b"v1"), 1_000)
        .add(None, Some(b"value-two"), 1_005)
        .add_with_headers(
            Some(b"k3"),
            None,
            999,
            vec![(b"h".to_vec(), Some(b"x".to_vec())), (b"n".to_vec(), None)],
        )
        .build()
}

#[test]
fn built_batch_validates_and_round_trips() {
    let b = sample();
    let h = validate(&b).unwrap();
    assert_eq!(h.total_size(), b.len());
    assert_eq!(h.magic, MAGIC_V2);
    assert_eq!(h.record_count, 3);
    assert_eq!(h.last_offset_delta, 2);
    assert_eq!(h.base_timestamp, 1_000);
    assert_eq!(h.max_timestamp, 1_005);
    assert_eq!(h.compression(), Some(Compression::None));
    assert_eq!(h.timestamp_type(), TimestampType::CreateTime);
    let recs = decode_records(&b).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[1].value.as_deref(), Some(&b"value-two"[..]));
    assert_eq!(recs[2].timestamp_delta, -1);
    assert_eq!(recs[2].headers[1], (b"n".to_vec(), None));
}

/// A batch laid out by hand from the format description, so that the
/// builder and the validator cannot agree on a wrong layout between them.
#[test]
fn hand_laid_batch_matches_format() {
    let mut rec = vec![0u8]; // attributes
    rec.push(0); // timestampDelta 0
    rec.push(0); // offsetDelta 0
    rec.push(2); // key length 1, zig-zag
    rec.push(b'k');
    rec.push(4); // value length 2
    rec.extend_from_slice(b"vv");
    rec.push(0); // no headers
    let mut b = Vec::new();
    b.extend_from_slice(&7i64.to_be_bytes());
    let length = (HEADER_SIZE - LOG_OVERHEAD + 1 + rec.len()) as i32;
    b.extend_from_slice(&length.to_be_bytes());
    b.extend_from_slice(&3i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&42i64.to_be_bytes());
    b.extend_from_slice(&42i64.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.push((rec.len() as u8) << 1);
    b.extend_from_slice(&rec);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());

    let h = validate(&b).unwrap();
    assert_eq!(h.base_offset, 7);
    assert_eq!(h.partition_leader_epoch, 3);
    let built = BatchBuilder::new(42)
        .add(Some(b"k"), Some(b"vv"), 42)
        .build();
    // Identical apart from the fields the log owns.
    assert_eq!(&built[16..], &b[16..]);
    assert_eq!(
        decode_records(&b).unwrap()[0].key.as_deref(),
        Some(&b"k"[..])
    );
}

#[test]
fn known_crc32c_vector() {
    // RFC 3720 B.4: 32 bytes of zeros.
    assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
}

#[test]
fn offset_and_epoch_rewrites_keep_crc_valid() {
    let mut b = sample();
    set_base_offset(&mut b, 1234);
    set_partition_leader_epoch(&mut b, 9);
    let h = validate(&b).unwrap();
    assert_eq!(h.base_offset, 1234);
    assert_eq!(h.last_offset(), 1236);
    assert_eq!(h.partition_leader_epoch, 9);
}

#[test]
fn log_append_time_recomputes_crc() {
    let mut b = sample();
    set_log_append_time(&mut b, 77);
    let h = validate(&b).unwrap();
    assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(h.max_timestamp, 77);
}

#[test]
fn rejects_bad_magic_length_and_crc() {
    let b = sample();
    let mut m = b.clone();
    m[16] = 1;
    assert!(matches!(validate(&m), Err(BatchError::BadMagic(1))));

    let mut l = b.clone();
    l[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(matches!(validate(&l), Err(BatchError::BadLength(-5))));
    l[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(validate(&l), Err(BatchError::BadLength(_))));

    let short = &b[..b.len() - 1];
    assert!(matches!(validate(short), Err(BatchError::Truncated { .. })));

    let mut c = b.clone();
    let last = c.len() - 1;
    c[last] ^= 1;
    assert!(matches!(validate(&c), Err(BatchError::CrcMismatch { .. })));
}

#[test]
fn batches_iterator_stops_at_partial_and_fails_at_garbage() {
    let a = sample();
    let mut buf = a.clone();
    buf.extend_from_slice(&a);
    buf.extend_from_slice(&a[..30]);
    let got: Vec<_> = Batches::new(&buf).collect();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.is_ok()));
    assert_eq!(got[1].as_ref().unwrap().position, a.len());

    let mut bad = a.clone();
    bad.extend_from_slice(&[0xff; 80]);
    let got: Vec<_> = Batches::new(&bad).collect();
    assert_eq!(got.len(), 2);
    assert!(got[1].is_err());
}

#[test]
fn varint_edges() {
    for v in [
        0i64,
        1,
        -1,
        63,
        -64,
        64,
        i32::MAX as i64,
        i32::MIN as i64,
        i64::MAX,
        i64::MIN,
    ] {
        let mut out = Vec::new();
        put_varlong(&mut out, v);
        let mut pos = 0;
        assert_eq!(get_varlong(&out, &mut pos).unwrap(), v);
        assert_eq!(pos, out.len());
    }
    // An 11-byte varlong is invalid, as is a 6-byte varint.
    let mut pos = 0;
    assert!(get_varlong(&[0x80; 11], &mut pos).is_err());
    let mut pos = 0;
    assert!(get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut pos).is_err());
}

type Header = (Vec<u8>, Option<Vec<u8>>);
type ArbRecord = (Option<Vec<u8>>, Option<Vec<u8>>, i64, Vec<Header>);

fn arb_record() -> impl Strategy<Value = ArbRecord> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        -1_000_000i64..1_000_000,
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..8),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            ),
            0..3,
        ),
    )
}

proptest! {
    #[test]
    fn prop_round_trip(records in proptest::collection::vec(arb_record(), 1..20), base in any::<i32>()) {
        let base = base as i64;
        let mut bld = BatchBuilder::new(base);
        for (k, v, dt, hs) in &records {
            bld = bld.add_with_headers(k.as_deref(), v.as_deref(), base + dt, hs.clone());
        }
        let bytes = bld.build();
        let h = validate(&bytes).unwrap();
        prop_assert_eq!(h.record_count as usize, records.len());
        prop_assert_eq!(h.max_timestamp, records.iter().map(|r| base + r.2).max().unwrap().max(base));
        let decoded = decode_records(&bytes).unwrap();
        for (i, (r, (k, v, dt, hs))) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(r.offset_delta as usize, i);
            prop_assert_eq!(&r.key, k);
            prop_assert_eq!(&r.value, v);
            prop_assert_eq!(r.timestamp_delta, *dt);
            prop_assert_eq!(&r.headers, hs);
        }
    }

    /// Any single flipped bit in the CRC-covered part is detected.
    #[test]
    fn prop_bit_flip_detected(records in proptest::collection::vec(arb_record(), 1..5), bit in any::<u64>()) {
        let mut bld = BatchBuilder::new(0);
        for (k, v, dt, hs) in &records {
            bld = bld.add_with_headers(k.as_deref(), v.as_deref(), *dt, hs.clone());
        }
        let mut bytes = bld.build();
        let covered = (bytes.len() - 17) * 8;
        let i = 17 * 8 + (bit as usize % covered);
        bytes[i / 8] ^= 1 << (i % 8);
        prop_assert!(validate(&bytes).is_err());
    }

    /// Arbitrary bytes never panic the validator or the record decoder.
    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = validate(&bytes);
        let _ = decode_records(&bytes);
        for r in Batches::new(&bytes) { let _ = r; }
    }
}
