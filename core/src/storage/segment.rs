//! One segment: a data file of record batches starting at `base_offset`,
//! with its offset and time indexes. Files are named as Kafka names them,
//! after the base offset padded to 20 digits.

use super::batch::{self, BatchError, BatchHeader, LOG_OVERHEAD};
use super::index::{OffsetIndex, TimeIndex, OFFSET_ENTRY, TIME_ENTRY};
use crate::io::disk::{DiskError, DiskFile};

/// How many times a read that fails its checksum is repeated before the
/// data is declared corrupt: a flip on the way from the disk is transient,
/// rot on the platter is not.
pub const READ_RETRIES: usize = 8;

/// Runs one read-and-check `attempt` until it succeeds, at most
/// [`READ_RETRIES`] times, returning the last failure otherwise. An I/O error
/// is returned at once: the disk refusing says nothing a second try would
/// change. Applied once, at the outermost point that checks what was read —
/// retries nested inside retries multiply the reads a corrupt batch costs.
pub fn retry_read<T>(mut attempt: impl FnMut() -> Result<T, ScanStop>) -> Result<T, ScanStop> {
    let mut result = attempt();
    for _ in 1..READ_RETRIES {
        match result {
            Ok(_) | Err(ScanStop::Io { .. }) => break,
            Err(_) => result = attempt(),
        }
    }
    result
}

/// The header bytes before this are not covered by the batch CRC.
const CRC_COVERS_FROM: usize = 21;

pub fn data_name(base: i64) -> String {
    format!("{base:020}.log")
}
pub fn index_name(base: i64) -> String {
    format!("{base:020}.index")
}
pub fn time_index_name(base: i64) -> String {
    format!("{base:020}.timeindex")
}
pub fn seal_name(base: i64) -> String {
    format!("{base:020}.seal")
}

/// Written when a segment stops being the active one: what recovery needs
/// to trust the segment without reading it — its end, its size, its time
/// bounds — and checksums of its two index files. Kafka trusts index files
/// after a sanity check, and takes a segment's largest timestamp (which
/// decides `retention.ms` deletion) from the time index's last entry; a
/// flipped bit there can pass any sanity check, and the simulator found
/// one that did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealRecord {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
    pub first_timestamp: i64,
    pub index_crc: u32,
    pub time_index_crc: u32,
}

impl SealRecord {
    pub fn encode(&self) -> Vec<u8> {
        super::checkpoint::seal(format!(
            "odradek-seal 1\n{} {} {} {} {} {:08x} {:08x}\n",
            self.base_offset,
            self.next_offset,
            self.size,
            self.max_timestamp,
            self.first_timestamp,
            self.index_crc,
            self.time_index_crc
        ))
    }

    pub fn decode(bytes: &[u8]) -> Result<SealRecord, String> {
        let body = super::checkpoint::unseal(bytes)?;
        let fields = body
            .strip_prefix("odradek-seal 1\n")
            .ok_or("unknown seal version")?
            .trim_end()
            .split(' ')
            .collect::<Vec<_>>();
        let [base, next, size, max_ts, first_ts, icrc, tcrc] = fields[..] else {
            return Err("wrong number of fields".into());
        };
        let num = |v: &str| v.parse::<i64>().map_err(|_| format!("bad number {v:?}"));
        let hex = |v: &str| u32::from_str_radix(v, 16).map_err(|_| format!("bad checksum {v:?}"));
        Ok(SealRecord {
            base_offset: num(base)?,
            next_offset: num(next)?,
            size: num(size)?.try_into().map_err(|_| "negative size")?,
            max_timestamp: num(max_ts)?,
            first_timestamp: num(first_ts)?,
            index_crc: hex(icrc)?,
            time_index_crc: hex(tcrc)?,
        })
    }
}

/// The base offset a data file's name encodes, if it is one of ours.
pub fn parse_data_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Why a scan of a data file stopped before its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanStop {
    Invalid {
        position: u64,
        error: BatchError,
    },
    /// A batch whose offsets do not follow the ones before it.
    OutOfOrder {
        position: u64,
        base_offset: i64,
        expected_at_least: i64,
    },
    Io {
        position: u64,
        error: DiskError,
    },
}

impl std::fmt::Display for ScanStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanStop::Invalid { position, error } => write!(f, "invalid batch at byte {position}: {error}"),
            ScanStop::OutOfOrder {
                position,
                base_offset,
                expected_at_least,
            } => write!(
                f,
                "batch at byte {position} has base offset {base_offset}, expected at least {expected_at_least}"
            ),
            ScanStop::Io { position, error } => write!(f, "read failed at byte {position}: {error}"),
        }
    }
}

pub struct Segment<F> {
    pub base_offset: i64,
    pub data: F,
    pub index_file: F,
    pub time_file: F,
    /// Bytes of valid batches in the data file.
    pub size: u64,
    /// The offset after the last batch (the base offset if empty).
    pub next_offset: i64,
    /// Largest timestamp of any batch, -1 if none.
    pub max_timestamp: i64,
    /// The first batch's max timestamp, from which `segment.ms` is counted
    /// (Kafka's rolling-based timestamp).
    pub first_timestamp: Option<i64>,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    bytes_since_index: u64,
    /// Index entries already written to their files.
    index_written: usize,
    time_written: usize,
    /// Some write since the last sync of any of the three files.
    pub dirty: bool,
    /// No longer the active segment. Only a sealed segment's index files are
    /// synced: recovery rescans the segment holding the recovery point and
    /// everything after it, so the active segment's indexes are rebuilt
    /// anyway, and syncing them would triple the cost of every flush.
    pub sealed: bool,
    /// The `.seal` file of a sealed segment.
    pub seal_file: Option<F>,
}

/// A batch header found by scanning, with where it sits.
#[derive(Clone, Copy, Debug)]
pub struct Located {
    pub position: u64,
    pub header: BatchHeader,
}

impl<F: DiskFile> Segment<F> {
    pub fn new(base_offset: i64, data: F, index_file: F, time_file: F) -> Segment<F> {
        Segment {
            base_offset,
            data,
            index_file,
            time_file,
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            first_timestamp: None,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
            index_written: 0,
            time_written: 0,
            dirty: false,
            sealed: false,
            seal_file: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn rel(&self, offset: i64) -> u32 {
        (offset - self.base_offset) as u32
    }

    /// Whether a batch ending at `last_offset` still fits this segment's
    /// 32-bit relative offsets.
    pub fn can_hold(&self, last_offset: i64) -> bool {
        last_offset - self.base_offset <= u32::MAX as i64 && last_offset >= self.base_offset
    }

    /// Notes a batch at `position` in the in-memory state and indexes. Does
    /// not touch the data file.
    fn account(&mut self, position: u64, h: &BatchHeader, index_interval: u64, force_index: bool) {
        let size = h.total_size() as u64;
        if self.first_timestamp.is_none() {
            self.first_timestamp = Some(h.max_timestamp);
        }
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
        }
        if self.index.is_empty() || self.bytes_since_index >= index_interval || force_index {
            self.index.push(self.rel(h.base_offset), position as u32);
            self.time_index
                .push(self.max_timestamp, self.rel(h.last_offset()));
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += size;
        self.size = position + size;
        self.next_offset = h.next_offset();
    }

    /// Writes a batch (offsets already assigned) at the end of the data
    /// file. On error nothing in memory changes; the file may hold a partial
    /// write past `size`, which the next append overwrites and recovery cuts.
    pub fn append(
        &mut self,
        bytes: &[u8],
        h: &BatchHeader,
        index_interval: u64,
        force_index: bool,
    ) -> Result<(), DiskError> {
        let position = self.size;
        self.data.write_at(position, bytes)?;
        self.dirty = true;
        self.account(position, h, index_interval, force_index);
        Ok(())
    }

    /// Mirrors index entries not yet in their files. Index files are hints,
    /// so a crash that loses these writes costs a rebuild, nothing more.
    pub fn write_indexes(&mut self) -> Result<(), DiskError> {
        let entries = &self.index.entries()[self.index_written..];
        if !entries.is_empty() {
            let bytes: Vec<u8> = entries
                .iter()
                .flat_map(|&(o, p)| OffsetIndex::encode_entry(o, p))
                .collect();
            self.index_file
                .write_at((self.index_written * OFFSET_ENTRY) as u64, &bytes)?;
            self.index_written = self.index.len();
            self.dirty = true;
        }
        let entries = &self.time_index.entries()[self.time_written..];
        if !entries.is_empty() {
            let bytes: Vec<u8> = entries
                .iter()
                .flat_map(|&(t, o)| TimeIndex::encode_entry(t, o))
                .collect();
            self.time_file
                .write_at((self.time_written * TIME_ENTRY) as u64, &bytes)?;
            self.time_written = self.time_index.len();
            self.dirty = true;
        }
        Ok(())
    }

    /// Rewrites both index files from memory, cutting anything beyond.
    pub fn rewrite_indexes(&mut self) -> Result<(), DiskError> {
        self.index_written = 0;
        self.time_written = 0;
        self.index_file.truncate(0)?;
        self.time_file.truncate(0)?;
        self.write_indexes()?;
        self.dirty = true;
        Ok(())
    }

    /// Syncs data then indexes.
    pub fn sync(&mut self) -> Result<(), DiskError> {
        if self.dirty {
            self.write_indexes()?;
            self.data.sync()?;
            if self.sealed {
                self.index_file.sync()?;
                self.time_file.sync()?;
                if let Some(f) = &self.seal_file {
                    f.sync()?;
                }
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Reads `len` bytes at `pos` once, validating the batches in them.
    /// Returns the bytes and the batches' headers; the bytes cover whole
    /// batches only. `Err` only if the *first* batch is invalid; a later one
    /// failing is left for the read that starts there. Callers retry with
    /// [`retry_read`].
    pub fn read_batches(
        &self,
        pos: u64,
        len: usize,
    ) -> Result<(Vec<u8>, Vec<BatchHeader>), ScanStop> {
        let mut buf = self
            .data
            .read_exact_at(pos, len)
            .map_err(|error| ScanStop::Io {
                position: pos,
                error,
            })?;
        let mut headers = Vec::new();
        let mut good = 0usize;
        let mut failed = None;
        for b in batch::Batches::new(&buf) {
            match b {
                Ok(b) => {
                    headers.push(b.header);
                    good = b.position + b.bytes.len();
                }
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if headers.is_empty() {
            return Err(ScanStop::Invalid {
                position: pos,
                error: failed.unwrap_or(BatchError::Truncated {
                    have: len,
                    need: len + 1,
                }),
            });
        }
        buf.truncate(good);
        Ok((buf, headers))
    }

    /// Reads one batch header at `pos` without trusting it beyond its
    /// length's plausibility: for locating, not for serving.
    fn header_at(&self, pos: u64) -> Result<BatchHeader, ScanStop> {
        let buf = self
            .data
            .read_exact_at(pos, batch::HEADER_SIZE)
            .map_err(|error| ScanStop::Io {
                position: pos,
                error,
            })?;
        batch::claimed_size(&buf).map_err(|error| ScanStop::Invalid {
            position: pos,
            error,
        })?;
        BatchHeader::parse(&buf).map_err(|error| ScanStop::Invalid {
            position: pos,
            error,
        })
    }

    /// The batch holding `offset` (the first whose last offset is at least
    /// `offset`), found from the index and a walk over headers. A header
    /// that makes no sense sends the walk back to the segment's start once,
    /// in case the index entry was the thing that was wrong. One attempt:
    /// callers retry with [`retry_read`] around whatever also checks it.
    pub fn locate(&self, offset: i64) -> Result<Option<Located>, ScanStop> {
        if offset >= self.next_offset || self.size == 0 {
            return Ok(None);
        }
        let (rel, start) = self
            .index
            .floor(self.rel(offset.max(self.base_offset)))
            .unwrap_or((0, 0));
        let expected = self.base_offset + rel as i64;
        let mut result = self.walk(start as u64, expected, offset);
        if result.is_err() && start != 0 {
            result = self.walk(0, self.base_offset, offset);
        }
        result
    }

    /// As [`Segment::locate`], but the batch found is read whole and its
    /// checksum checked before it is believed. The header walk is for
    /// speed and trusts unchecked bytes; a caller about to destroy data at
    /// the location (truncation) must not.
    pub fn locate_verified(&self, offset: i64) -> Result<Option<Located>, ScanStop> {
        retry_read(|| {
            let Some(loc) = self.locate(offset)? else {
                return Ok(None);
            };
            let (_, headers) = self.read_batches(loc.position, loc.header.total_size())?;
            if headers.len() == 1 && headers[0] == loc.header {
                Ok(Some(loc))
            } else {
                Err(ScanStop::OutOfOrder {
                    position: loc.position,
                    base_offset: loc.header.base_offset,
                    expected_at_least: offset,
                })
            }
        })
    }

    /// Walks headers from `pos`, where a batch starting at `expected`
    /// must sit. Offsets are checked for exact continuity because Kafka's
    /// format leaves `baseOffset` outside the CRC: continuity is what
    /// catches a flipped or misplaced offset there.
    fn walk(
        &self,
        mut pos: u64,
        mut expected: i64,
        offset: i64,
    ) -> Result<Option<Located>, ScanStop> {
        while pos < self.size {
            let h = self.header_at(pos)?;
            if h.base_offset != expected {
                return Err(ScanStop::OutOfOrder {
                    position: pos,
                    base_offset: h.base_offset,
                    expected_at_least: expected,
                });
            }
            if h.last_offset() >= offset {
                return Ok(Some(Located {
                    position: pos,
                    header: h,
                }));
            }
            expected = h.next_offset();
            pos += h.total_size() as u64;
        }
        // Callers only ask for offsets below `next_offset`, so running off
        // the end means a header was misread: an error, to be retried.
        Err(ScanStop::OutOfOrder {
            position: pos,
            base_offset: expected,
            expected_at_least: offset,
        })
    }

    /// Walks every batch from `from` (a batch boundary), validating each
    /// fully, and rebuilds the in-memory state from what it finds. Stops at
    /// the first batch that is not valid (returned with the state covering
    /// everything before it). Used by recovery.
    pub fn recover_from(
        &mut self,
        from: u64,
        min_next: i64,
        index_interval: u64,
        rewrite: bool,
    ) -> (u64, Option<ScanStop>) {
        let file_len = match self.data.len() {
            Ok(l) => l,
            Err(error) => {
                return (
                    0,
                    Some(ScanStop::Io {
                        position: from,
                        error,
                    }),
                )
            }
        };
        let mut pos = from;
        let mut batches = 0u64;
        let mut expected = min_next.max(self.base_offset);
        while pos < file_len {
            let (h, bytes) = match retry_read(|| self.batch_at(pos, file_len, expected)) {
                Ok(found) => found,
                Err(stop) => return (batches, Some(stop)),
            };
            if rewrite {
                // fsyncgate: a page whose writeback failed can still sit in
                // the page cache, readable, marked clean, and never reach
                // the platter. Writing what recovery keeps again makes the
                // coming sync cover it for certain.
                if let Err(error) = self.data.write_at(pos, &bytes) {
                    return (
                        batches,
                        Some(ScanStop::Io {
                            position: pos,
                            error,
                        }),
                    );
                }
                self.dirty = true;
            }
            self.account(pos, &h, index_interval, false);
            expected = h.next_offset();
            pos += bytes.len() as u64;
            batches += 1;
        }
        (batches, None)
    }

    /// Reads and fully validates the batch at `pos`, which must start at
    /// offset `expected`.
    fn batch_at(
        &self,
        pos: u64,
        file_len: u64,
        expected: i64,
    ) -> Result<(BatchHeader, Vec<u8>), ScanStop> {
        let rest = file_len - pos;
        let invalid = |error| ScanStop::Invalid {
            position: pos,
            error,
        };
        if rest < LOG_OVERHEAD as u64 {
            return Err(invalid(BatchError::Truncated {
                have: rest as usize,
                need: LOG_OVERHEAD,
            }));
        }
        let prefix = self
            .data
            .read_exact_at(pos, LOG_OVERHEAD)
            .map_err(|error| ScanStop::Io {
                position: pos,
                error,
            })?;
        let total = batch::claimed_size(&prefix).map_err(invalid)?;
        if total as u64 > rest {
            return Err(invalid(BatchError::Truncated {
                have: rest as usize,
                need: total,
            }));
        }
        let bytes = self
            .data
            .read_exact_at(pos, total)
            .map_err(|error| ScanStop::Io {
                position: pos,
                error,
            })?;
        let h = batch::validate(&bytes).map_err(invalid)?;
        // The length came from a separate read; if the two reads disagree
        // (a flip in transit), neither is trusted and the caller retries.
        if h.total_size() != total {
            return Err(invalid(BatchError::BadLength(h.batch_length)));
        }
        // baseOffset, batchLength and partitionLeaderEpoch lie outside the
        // CRC. Recovery writes what it reads back to the disk, so a flip in
        // transit there would become permanent: read them a second time.
        let again = self
            .data
            .read_exact_at(pos, CRC_COVERS_FROM)
            .map_err(|error| ScanStop::Io {
                position: pos,
                error,
            })?;
        if again[..] != bytes[..CRC_COVERS_FROM] {
            return Err(invalid(BatchError::BadLength(h.batch_length)));
        }
        if h.base_offset != expected || !self.can_hold(h.last_offset()) {
            return Err(ScanStop::OutOfOrder {
                position: pos,
                base_offset: h.base_offset,
                expected_at_least: expected,
            });
        }
        Ok((h, bytes))
    }

    /// Cuts the segment so that it ends just before the batch at `position`
    /// (which must be a batch boundary known to this segment), with
    /// `next_offset` as its new end.
    /// Cuts the segment at `position` (a batch boundary) and rescans what
    /// is kept: the sparse indexes do not hold every timestamp, and
    /// retention by time must be right. If the kept part holds damage that
    /// does not read back, the cut moves down to the last batch before it —
    /// truncation exists to discard, and a follower re-fetches the rest.
    /// Returns the damage met, if any.
    pub fn truncate_at(
        &mut self,
        position: u64,
        index_interval: u64,
    ) -> Result<Option<ScanStop>, DiskError> {
        self.data.truncate(position)?;
        self.dirty = true;
        self.reset();
        let (_, stop) = self.recover_from(0, self.base_offset, index_interval, false);
        match stop {
            Some(ScanStop::Io { error, .. }) => return Err(error),
            Some(_) => self.data.truncate(self.size)?,
            None => {}
        }
        self.rewrite_indexes()?;
        Ok(stop)
    }

    /// The readable prefix's end offset, after damage stopped a lookup:
    /// rebuilds the in-memory state from a scan that stops at the damage.
    pub fn rescan_readable_prefix(&mut self, index_interval: u64) -> Result<(), DiskError> {
        self.reset();
        if let (_, Some(ScanStop::Io { error, .. })) =
            self.recover_from(0, self.base_offset, index_interval, false)
        {
            return Err(error);
        }
        Ok(())
    }

    /// Called when the segment stops being the active one: a final time
    /// index entry, as Kafka writes, and the seal record in `seal_file`
    /// (new and empty). Synced with the segment's next sync.
    pub fn seal(&mut self, seal_file: F) -> Result<(), DiskError> {
        if self.size > 0 {
            self.time_index
                .push(self.max_timestamp, self.rel(self.next_offset - 1));
        }
        self.write_indexes()?;
        seal_file.write_at(0, &self.seal_record().encode())?;
        self.seal_file = Some(seal_file);
        self.sealed = true;
        self.dirty = true;
        Ok(())
    }

    pub fn seal_record(&self) -> SealRecord {
        SealRecord {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size: self.size,
            max_timestamp: self.max_timestamp,
            first_timestamp: self.first_timestamp.unwrap_or(-1),
            index_crc: crc32c::crc32c(&self.index.encode()),
            time_index_crc: crc32c::crc32c(&self.time_index.encode()),
        }
    }

    /// Makes a sealed segment the active one again (after a truncation);
    /// the caller removes the `.seal` file.
    pub fn unseal(&mut self) {
        self.sealed = false;
        self.seal_file = None;
    }

    /// Resets the in-memory state so that `recover_from(0, ..)` can rebuild it.
    pub fn reset(&mut self) {
        self.size = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = -1;
        self.first_timestamp = None;
        self.index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.bytes_since_index = 0;
        self.index_written = 0;
        self.time_written = 0;
    }

    /// Adopts indexes loaded from their files for a segment that recovery
    /// trusts, as its seal record describes it.
    pub fn adopt_sealed(
        &mut self,
        index: OffsetIndex,
        time_index: TimeIndex,
        seal: &SealRecord,
        seal_file: F,
    ) {
        self.size = seal.size;
        self.next_offset = seal.next_offset;
        self.max_timestamp = seal.max_timestamp;
        self.first_timestamp =
            (seal.first_timestamp >= 0 || seal.size > 0).then_some(seal.first_timestamp);
        self.index_written = index.len();
        self.time_written = time_index.len();
        self.index = index;
        self.time_index = time_index;
        self.bytes_since_index = 0;
        self.sealed = true;
        self.seal_file = Some(seal_file);
    }
}
