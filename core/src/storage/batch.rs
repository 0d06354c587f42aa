//! Kafka's record batch, magic v2 — the unit the log stores, replicates and
//! serves, byte for byte as clients send it.
//!
//! ```text
//! off len field
//!   0   8 baseOffset            \ not covered by the CRC: the log rewrites
//!   8   4 batchLength           | baseOffset and partitionLeaderEpoch
//!  12   4 partitionLeaderEpoch  / without recomputing it
//!  16   1 magic (= 2)
//!  17   4 crc (CRC-32C of bytes 21..end)
//!  21   2 attributes
//!  23   4 lastOffsetDelta
//!  27   8 baseTimestamp
//!  35   8 maxTimestamp
//!  43   8 producerId
//!  51   2 producerEpoch
//!  53   4 baseSequence
//!  57   4 recordCount
//!  61   … records
//! ```
//! All integers are big-endian; records use zig-zag varints.

use std::fmt;

use super::compression::{compress, decompress, CompressionError};

/// Bytes before and including `batchLength`: the part not counted in it.
pub const LOG_OVERHEAD: usize = 12;
pub const HEADER_SIZE: usize = 61;
pub const MAGIC_V2: i8 = 2;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;
/// A batch larger than this is rejected as nonsense before any allocation,
/// whatever the configured maximum: a corrupt length must not make us read
/// gigabytes.
pub const ABSOLUTE_MAX_BATCH: usize = 64 << 20;

pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_attributes(attrs: i16) -> Option<Compression> {
        Some(match attrs & 0x07 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            _ => return None,
        })
    }

    /// The codec's value in attributes bits 0-2.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

pub const ATTR_TIMESTAMP_TYPE: i16 = 1 << 3;
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
pub const ATTR_CONTROL: i16 = 1 << 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or than the header's length says.
    Truncated {
        have: usize,
        need: usize,
    },
    BadLength(i32),
    BadMagic(i8),
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    BadCompression(i16),
    /// recordCount does not fit lastOffsetDelta, or is negative.
    BadRecordCount {
        count: i32,
        last_offset_delta: i32,
    },
    /// A record inside the batch could not be decoded.
    BadRecord(String),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated { have, need } => {
                write!(f, "truncated batch: {have} bytes of {need}")
            }
            BatchError::BadLength(l) => write!(f, "invalid batch length {l}"),
            BatchError::BadMagic(m) => write!(f, "unsupported magic {m}"),
            BatchError::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "crc mismatch: stored {stored:08x}, computed {computed:08x}"
                )
            }
            BatchError::BadCompression(a) => write!(f, "unknown compression in attributes {a}"),
            BatchError::BadRecordCount {
                count,
                last_offset_delta,
            } => write!(
                f,
                "record count {count} inconsistent with last offset delta {last_offset_delta}"
            ),
            BatchError::BadRecord(m) => write!(f, "invalid record: {m}"),
        }
    }
}

impl std::error::Error for BatchError {}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The fixed-size header of a batch, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Decodes the header without checking anything but that it is there.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_SIZE {
            return Err(BatchError::Truncated {
                have: buf.len(),
                need: HEADER_SIZE,
            });
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: be_u32(buf, CRC_OFFSET),
            attributes: be_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// The whole batch's size in bytes, as its length field claims.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Option<Compression> {
        Compression::from_attributes(self.attributes)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTR_TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Reads the length a batch claims from its first 12 bytes, rejecting
/// lengths no valid batch can have, so that a reader can decide how much to
/// read next without trusting garbage.
pub fn claimed_size(prefix: &[u8]) -> Result<usize, BatchError> {
    if prefix.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated {
            have: prefix.len(),
            need: LOG_OVERHEAD,
        });
    }
    let len = be_i32(prefix, 8);
    let total = LOG_OVERHEAD as i64 + len as i64;
    if total < HEADER_SIZE as i64 || total > ABSOLUTE_MAX_BATCH as i64 {
        return Err(BatchError::BadLength(len));
    }
    Ok(total as usize)
}

/// CRC-32C over the part of the batch the CRC covers.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
}

/// Checks that `buf` starts with one whole, intact v2 batch and returns its
/// header. Bytes after the batch are ignored. Checks the structure a log
/// needs to trust (length, magic, CRC, count); records are not decoded.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let total = claimed_size(buf)?;
    if buf.len() < HEADER_SIZE {
        return Err(BatchError::Truncated {
            have: buf.len(),
            need: HEADER_SIZE,
        });
    }
    let header = BatchHeader::parse(buf)?;
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    if buf.len() < total {
        return Err(BatchError::Truncated {
            have: buf.len(),
            need: total,
        });
    }
    let computed = compute_crc(&buf[..total]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.compression().is_none() {
        return Err(BatchError::BadCompression(header.attributes));
    }
    // Control batches and compacted batches may hold fewer records than the
    // offset span, but never more, and never a negative count.
    if header.record_count < 0
        || header.last_offset_delta < 0
        || (header.record_count as i64) > header.last_offset_delta as i64 + 1
    {
        return Err(BatchError::BadRecordCount {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Overwrites the base offset (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[0..8].copy_from_slice(&offset.to_be_bytes());
}

/// Overwrites the partition leader epoch (not covered by the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch as LogAppendTime with the broker's timestamp, as Kafka
/// does for topics with `message.timestamp.type=LogAppendTime`. This touches
/// covered bytes, so the CRC is recomputed.
pub fn set_log_append_time(batch: &mut [u8], timestamp: i64) {
    let attrs = be_i16(batch, ATTRIBUTES_OFFSET) | ATTR_TIMESTAMP_TYPE;
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&timestamp.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Overwrites a CreateTime batch's max timestamp with the one its records
/// carry, as Kafka's validator does for a producer that got it wrong (the
/// time index is built from it). Covered bytes change: the CRC is
/// recomputed.
pub fn set_max_timestamp(batch: &mut [u8], timestamp: i64) {
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&timestamp.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Walks a buffer of concatenated batches, validating each. Stops at the
/// first batch that is incomplete (a fetch may end in a partial batch) and
/// yields an error for the first invalid one.
pub struct Batches<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Batches<'a> {
    pub fn new(buf: &'a [u8]) -> Batches<'a> {
        Batches {
            buf,
            pos: 0,
            failed: false,
        }
    }
}

/// One batch found by [`Batches`]: where it starts in the buffer, its header,
/// and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct BatchRef<'a> {
    pub position: usize,
    pub header: BatchHeader,
    pub bytes: &'a [u8],
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<BatchRef<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let total = match claimed_size(rest) {
            Ok(t) => t,
            Err(BatchError::Truncated { .. }) => return None,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        if rest.len() < total {
            return None;
        }
        match validate(&rest[..total]) {
            Ok(header) => {
                let item = BatchRef {
                    position: self.pos,
                    header,
                    bytes: &rest[..total],
                };
                self.pos += total;
                Some(Ok(item))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

// ---- records -------------------------------------------------------------

/// One record of an uncompressed batch, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_varlong(out, v as i64)
}

/// Decodes a zig-zag varint of at most `max_bytes` bytes from `buf[*pos..]`.
fn get_zigzag(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<i64, BatchError> {
    let mut z: u64 = 0;
    for i in 0..max_bytes {
        let b = *buf
            .get(*pos)
            .ok_or_else(|| BatchError::BadRecord("varint runs past the end".into()))?;
        *pos += 1;
        z |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err(BatchError::BadRecord("varint too long".into()))
}

pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, BatchError> {
    let v = get_zigzag(buf, pos, 5)?;
    i32::try_from(v).map_err(|_| BatchError::BadRecord("varint out of range".into()))
}

pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    get_zigzag(buf, pos, 10)
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// A length-prefixed byte field; a negative length is null, as in Kafka.
fn get_slice<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, BatchError> {
    let len = get_varint(buf, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| BatchError::BadRecord(format!("field of {len} bytes runs past the end")))?;
    let v = &buf[*pos..end];
    *pos = end;
    Ok(Some(v))
}

/// The smallest record: a one-byte length, then attributes, timestamp
/// delta, offset delta, key length, value length and header count, a byte
/// each. Bounds how many records a buffer can hold, so that a batch's
/// claimed count never sizes an allocation on its own.
const MIN_RECORD_SIZE: usize = 7;

/// A record decoded in place: keys and values borrow from the batch, and
/// headers are checked but kept as their encoded bytes, so validation
/// copies nothing.
#[derive(Clone, Copy, Debug)]
struct RecordRef<'a> {
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    header_count: i32,
    headers: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// Decodes the record at `buf[*pos..]` with the checks Kafka's record
    /// reader makes: the length prefix covers exactly the fields, the
    /// header count is not negative and no header key is null. The
    /// attributes byte is read and not judged: v2 defines no record
    /// attributes and Kafka ignores the byte, so refusing values it accepts
    /// would turn away batches Kafka stores.
    fn parse(buf: &'a [u8], pos: &mut usize) -> Result<RecordRef<'a>, BatchError> {
        let len = get_varint(buf, pos)?;
        if len < 0 {
            return Err(BatchError::BadRecord(format!(
                "invalid negative record size {len}"
            )));
        }
        let start = *pos;
        let end = start
            .checked_add(len as usize)
            .filter(|e| *e <= buf.len())
            .ok_or_else(|| {
                BatchError::BadRecord(format!(
                    "record of {len} bytes runs past the end of the records ({} bytes left)",
                    buf.len() - start
                ))
            })?;
        let body = &buf[..end];
        if start == end {
            return Err(BatchError::BadRecord(
                "empty record, without even its attributes".into(),
            ));
        }
        *pos += 1; // attributes
        let timestamp_delta = get_varlong(body, pos)?;
        let offset_delta = get_varint(body, pos)?;
        let key = get_slice(body, pos)?;
        let value = get_slice(body, pos)?;
        let header_count = get_varint(body, pos)?;
        if header_count < 0 {
            return Err(BatchError::BadRecord(format!(
                "invalid number of record headers {header_count}"
            )));
        }
        let headers_start = *pos;
        for _ in 0..header_count {
            if get_slice(body, pos)?.is_none() {
                return Err(BatchError::BadRecord("null header key".into()));
            }
            get_slice(body, pos)?;
        }
        let headers = &body[headers_start..*pos];
        if *pos != end {
            return Err(BatchError::BadRecord(format!(
                "invalid record size: expected to read {len} bytes in record payload, but read {}",
                *pos - start
            )));
        }
        Ok(RecordRef {
            offset_delta,
            timestamp_delta,
            key,
            value,
            header_count,
            headers,
        })
    }

    fn to_record(self) -> Result<Record, BatchError> {
        let mut headers = Vec::with_capacity(self.header_count as usize);
        let mut pos = 0;
        for _ in 0..self.header_count {
            let k = get_slice(self.headers, &mut pos)?
                .ok_or_else(|| BatchError::BadRecord("null header key".into()))?;
            let v = get_slice(self.headers, &mut pos)?;
            headers.push((k.to_vec(), v.map(<[u8]>::to_vec)));
        }
        Ok(Record {
            offset_delta: self.offset_delta,
            timestamp_delta: self.timestamp_delta,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers,
        })
    }
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(
            16 + self.key.as_ref().map_or(0, |k| k.len())
                + self.value.as_ref().map_or(0, |v| v.len()),
        );
        body.push(0); // record attributes: unused in v2
        put_varlong(&mut body, self.timestamp_delta);
        put_varint(&mut body, self.offset_delta);
        put_bytes(&mut body, self.key.as_deref());
        put_bytes(&mut body, self.value.as_deref());
        put_varint(&mut body, self.headers.len() as i32);
        for (k, v) in &self.headers {
            put_bytes(&mut body, Some(k));
            put_bytes(&mut body, v.as_deref());
        }
        put_varint(out, body.len() as i32);
        out.extend_from_slice(&body);
    }
}

/// Decodes the `count` records a records section must hold, with no bytes
/// left over, handing each to `f` with its index in the batch.
fn walk_records<'a>(
    section: &'a [u8],
    count: i32,
    mut f: impl FnMut(i32, RecordRef<'a>) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    let mut pos = 0;
    for index in 0..count.max(0) {
        if pos == section.len() {
            return Err(RecordError::invalid(
                Some(index),
                format!("the batch declares {count} records but holds only {index}"),
            ));
        }
        let record = RecordRef::parse(section, &mut pos).map_err(|e| {
            let msg = match e {
                BatchError::BadRecord(m) => m,
                e => e.to_string(),
            };
            RecordError::invalid(Some(index), format!("invalid record {index}: {msg}"))
        })?;
        f(index, record)?;
    }
    if pos != section.len() {
        return Err(RecordError::invalid(
            None,
            format!(
                "incorrect declared batch size: {} bytes remain after the last of {count} records",
                section.len() - pos
            ),
        ));
    }
    Ok(())
}

/// Decodes the records of a valid, uncompressed batch.
pub fn decode_records(batch: &[u8]) -> Result<Vec<Record>, BatchError> {
    let header = validate(batch)?;
    if header.compression() != Some(Compression::None) {
        return Err(BatchError::BadRecord(
            "records of a compressed batch need decompression".into(),
        ));
    }
    let section = &batch[HEADER_SIZE..header.total_size()];
    let mut out = Vec::with_capacity(capacity_for(header.record_count, section));
    walk_records(section, header.record_count, |_, r| {
        out.push(r.to_record().map_err(RecordError::from)?);
        Ok(())
    })
    .map_err(|e| BatchError::BadRecord(e.message))?;
    Ok(out)
}

fn capacity_for(count: i32, section: &[u8]) -> usize {
    (count.max(0) as usize).min(section.len() / MIN_RECORD_SIZE)
}

// ---- record-level validation --------------------------------------------

/// What Kafka's produce response would say about a batch whose records are
/// wrong. `message` is for the partition's `error_message`; `batch_index`,
/// when one record is to blame, is its `record_errors[].batch_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    pub kind: RecordErrorKind,
    pub batch_index: Option<i32>,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordErrorKind {
    /// The records are malformed or disagree with the batch header.
    InvalidRecord,
    /// The batch fails its CRC, or its records section is not valid data of
    /// its codec.
    Corrupt,
    /// The records section decompresses to more than the limit.
    TooLarge,
}

impl RecordErrorKind {
    /// The Kafka error code to answer with: INVALID_RECORD (87),
    /// CORRUPT_MESSAGE (2), MESSAGE_TOO_LARGE (10).
    pub fn kafka_error_code(self) -> i16 {
        match self {
            RecordErrorKind::InvalidRecord => 87,
            RecordErrorKind::Corrupt => 2,
            RecordErrorKind::TooLarge => 10,
        }
    }
}

impl RecordError {
    fn invalid(batch_index: Option<i32>, message: String) -> RecordError {
        RecordError {
            kind: RecordErrorKind::InvalidRecord,
            batch_index,
            message,
        }
    }
}

impl From<BatchError> for RecordError {
    fn from(e: BatchError) -> RecordError {
        let kind = match e {
            BatchError::CrcMismatch { .. } => RecordErrorKind::Corrupt,
            _ => RecordErrorKind::InvalidRecord,
        };
        RecordError {
            kind,
            batch_index: None,
            message: e.to_string(),
        }
    }
}

impl From<CompressionError> for RecordError {
    fn from(e: CompressionError) -> RecordError {
        let kind = match e {
            CompressionError::LimitExceeded { .. } => RecordErrorKind::TooLarge,
            CompressionError::Malformed { .. } => RecordErrorKind::Corrupt,
        };
        RecordError {
            kind,
            batch_index: None,
            message: format!("failed to decompress the records: {e}"),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RecordError {}

/// What validating a batch's records learnt about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordsSummary {
    pub compression: Compression,
    pub record_count: i32,
    /// The largest record timestamp (base timestamp plus delta) and the
    /// offset delta of the first record carrying it; as in Kafka, both stay
    /// -1 when no record has a timestamp above -1 (NO_TIMESTAMP).
    pub max_timestamp: i64,
    pub offset_delta_of_max_timestamp: i32,
    /// How many records have a null key, and the index of the first: a
    /// compacted topic refuses such records.
    pub null_keys: i32,
    pub first_null_key: Option<i32>,
    /// The batch's size with its records uncompressed (header included), as
    /// Kafka counts it for its conversion statistics.
    pub uncompressed_size: usize,
}

impl RecordsSummary {
    pub fn has_null_key(&self) -> bool {
        self.null_keys > 0
    }
}

/// The records section of a batch, decompressed when it needs to be.
fn records_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
    limit: usize,
) -> Result<(Compression, std::borrow::Cow<'a, [u8]>), RecordError> {
    let total = header.total_size();
    if total < HEADER_SIZE || batch.len() < total {
        return Err(BatchError::Truncated {
            have: batch.len(),
            need: total.max(HEADER_SIZE),
        }
        .into());
    }
    let codec = header
        .compression()
        .ok_or(BatchError::BadCompression(header.attributes))?;
    let raw = &batch[HEADER_SIZE..total];
    Ok(match codec {
        Compression::None => (codec, std::borrow::Cow::Borrowed(raw)),
        _ => (
            codec,
            std::borrow::Cow::Owned(decompress(codec, raw, limit)?),
        ),
    })
}

/// Checks the records of a produced batch as Kafka's LogValidator does,
/// decompressing them (to at most `decompress_limit` bytes) if need be. The
/// batch must already have passed [`validate`]; its structure is not
/// re-checked beyond what decoding needs.
///
/// Checked: the record count is positive and spans exactly the offsets the
/// header claims; every record decodes, with a length prefix that matches
/// its fields and no null header key; the records are as many as the count
/// says, with nothing after the last; offset deltas run 0, 1, 2, ….
///
/// Kafka since 2.x rewrites a compressed batch whose inner offsets are not
/// consecutive instead of refusing it (older brokers refused it). Odradek
/// stores batches as sent, so it refuses, as those brokers did: no client
/// in use writes such batches.
///
/// Not checked here, because they depend on the topic's configuration or
/// the clock: timestamps against `message.timestamp.*`, null keys on a
/// compacted topic (the summary reports them), control batches and sequence
/// numbers from clients.
pub fn validate_records(
    batch: &[u8],
    decompress_limit: usize,
) -> Result<RecordsSummary, RecordError> {
    let header = BatchHeader::parse(batch)?;
    let count = header.record_count;
    if count <= 0 {
        return Err(RecordError::invalid(
            None,
            format!("invalid reported count for record batch: {count}"),
        ));
    }
    if header.last_offset_delta as i64 != count as i64 - 1 {
        return Err(RecordError::invalid(
            None,
            format!(
                "inconsistent batch offset range [{}, {}] and count of records {count}",
                header.base_offset,
                header
                    .base_offset
                    .wrapping_add(header.last_offset_delta as i64)
            ),
        ));
    }
    let (compression, section) = records_section(batch, &header, decompress_limit)?;
    let mut summary = RecordsSummary {
        compression,
        record_count: count,
        max_timestamp: NO_TIMESTAMP,
        offset_delta_of_max_timestamp: -1,
        null_keys: 0,
        first_null_key: None,
        uncompressed_size: HEADER_SIZE + section.len(),
    };
    walk_records(&section, count, |index, r| {
        if r.offset_delta != index {
            return Err(RecordError::invalid(
                Some(index),
                format!(
                    "record {index} has offset delta {}, expected {index}: inner record offsets must be consecutive",
                    r.offset_delta
                ),
            ));
        }
        let timestamp = header.base_timestamp.wrapping_add(r.timestamp_delta);
        if timestamp > summary.max_timestamp {
            summary.max_timestamp = timestamp;
            summary.offset_delta_of_max_timestamp = index;
        }
        if r.key.is_none() {
            summary.null_keys += 1;
            summary.first_null_key.get_or_insert(index);
        }
        Ok(())
    })?;
    Ok(summary)
}

/// Kafka's "no timestamp".
pub const NO_TIMESTAMP: i64 = -1;

/// Decodes the records of any valid batch, compressed or not, decompressing
/// to at most `limit` bytes: for readers of stored batches (the simulator's
/// checker, tests). Checks the CRC, then that the records are exactly as
/// many as the header says; offset deltas are taken as they are.
pub fn decode_records_any(batch: &[u8], limit: usize) -> Result<Vec<Record>, RecordError> {
    let header = validate(batch)?;
    let (_, section) = records_section(batch, &header, limit)?;
    let mut out = Vec::with_capacity(capacity_for(header.record_count, &section));
    walk_records(&section, header.record_count, |index, r| {
        out.push(r.to_record().map_err(|e| {
            RecordError::invalid(Some(index), format!("invalid record {index}: {e}"))
        })?);
        Ok(())
    })?;
    Ok(out)
}

/// Builds v2 batches, as a producer would: for tests, workloads and load
/// tools. Offsets start at zero; the log assigns the real ones. Records are
/// uncompressed unless [`BatchBuilder::compression`] says otherwise.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    base_timestamp: i64,
    max_timestamp: i64,
    records: Vec<Record>,
    attributes: i16,
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    partition_leader_epoch: i32,
}

impl BatchBuilder {
    pub fn new(base_timestamp: i64) -> BatchBuilder {
        BatchBuilder {
            base_timestamp,
            max_timestamp: base_timestamp,
            records: Vec::new(),
            attributes: 0,
            compression: Compression::None,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        }
    }

    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> BatchBuilder {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn transactional(mut self) -> BatchBuilder {
        self.attributes |= ATTR_TRANSACTIONAL;
        self
    }

    /// Compresses the records section with `codec`, in the format
    /// [`compress`] writes.
    pub fn compression(mut self, codec: Compression) -> BatchBuilder {
        self.compression = codec;
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: i32) -> BatchBuilder {
        self.partition_leader_epoch = epoch;
        self
    }

    pub fn add(self, key: Option<&[u8]>, value: Option<&[u8]>, timestamp: i64) -> BatchBuilder {
        self.add_with_headers(key, value, timestamp, Vec::new())
    }

    pub fn add_with_headers(
        mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> BatchBuilder {
        let offset_delta = self.records.len() as i32;
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self.records.push(Record {
            offset_delta,
            timestamp_delta: timestamp - self.base_timestamp,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers,
        });
        self
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encodes the batch. A batch needs at least one record.
    pub fn build(&self) -> Vec<u8> {
        assert!(!self.records.is_empty(), "a record batch needs a record");
        let mut out = Vec::with_capacity(HEADER_SIZE + self.records.len() * 32);
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes()); // length, patched below
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
        let attributes = (self.attributes & !0x07) | self.compression.attribute_bits();
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32 - 1).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32).to_be_bytes());
        if self.compression == Compression::None {
            for r in &self.records {
                r.encode(&mut out);
            }
        } else {
            let mut records = Vec::with_capacity(self.records.len() * 32);
            for r in &self.records {
                r.encode(&mut records);
            }
            out.extend_from_slice(&compress(self.compression, &records));
        }
        let length = (out.len() - LOG_OVERHEAD) as i32;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = compute_crc(&out);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod validate_tests;
