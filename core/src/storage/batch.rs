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

fn get_bytes(buf: &[u8], pos: &mut usize) -> Result<Option<Vec<u8>>, BatchError> {
    let len = get_varint(buf, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| BatchError::BadRecord(format!("field of {len} bytes runs past the end")))?;
    let v = buf[*pos..end].to_vec();
    *pos = end;
    Ok(Some(v))
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

    fn decode(buf: &[u8], pos: &mut usize) -> Result<Record, BatchError> {
        let len = get_varint(buf, pos)?;
        if len < 0 {
            return Err(BatchError::BadRecord(format!(
                "negative record length {len}"
            )));
        }
        let end = pos
            .checked_add(len as usize)
            .filter(|e| *e <= buf.len())
            .ok_or_else(|| BatchError::BadRecord("record runs past the batch".into()))?;
        let body = &buf[..end];
        *pos += 1; // attributes
        if *pos > end {
            return Err(BatchError::BadRecord("empty record".into()));
        }
        let timestamp_delta = get_varlong(body, pos)?;
        let offset_delta = get_varint(body, pos)?;
        let key = get_bytes(body, pos)?;
        let value = get_bytes(body, pos)?;
        let n_headers = get_varint(body, pos)?;
        if n_headers < 0 {
            return Err(BatchError::BadRecord(format!(
                "negative header count {n_headers}"
            )));
        }
        let mut headers = Vec::new();
        for _ in 0..n_headers {
            let k = get_bytes(body, pos)?
                .ok_or_else(|| BatchError::BadRecord("null header key".into()))?;
            let v = get_bytes(body, pos)?;
            headers.push((k, v));
        }
        if *pos != end {
            return Err(BatchError::BadRecord(format!(
                "record length {len} disagrees with its fields"
            )));
        }
        Ok(Record {
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers,
        })
    }
}

/// Decodes the records of a valid, uncompressed batch.
pub fn decode_records(batch: &[u8]) -> Result<Vec<Record>, BatchError> {
    let header = validate(batch)?;
    if header.compression() != Some(Compression::None) {
        return Err(BatchError::BadRecord(
            "records of a compressed batch need decompression".into(),
        ));
    }
    let body = &batch[..header.total_size()];
    let mut pos = HEADER_SIZE;
    let mut out = Vec::with_capacity(header.record_count.max(0) as usize);
    for _ in 0..header.record_count {
        out.push(Record::decode(body, &mut pos)?);
    }
    if pos != body.len() {
        return Err(BatchError::BadRecord(format!(
            "{} bytes after the last record",
            body.len() - pos
        )));
    }
    Ok(out)
}

/// Builds uncompressed v2 batches, as a producer would: for tests, workloads
/// and load tools. Offsets start at zero; the log assigns the real ones.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    base_timestamp: i64,
    max_timestamp: i64,
    records: Vec<Record>,
    attributes: i16,
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
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32 - 1).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32).to_be_bytes());
        for r in &self.records {
            r.encode(&mut out);
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
