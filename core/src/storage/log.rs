//! A partition's log: an ordered run of segments in one directory.
//!
//! The log assigns offsets, writes whole batches, and knows which of them are
//! durable: `durable_end()` moves only after the data files, their indexes
//! and — when a segment was created — the directory have been synced. It
//! never hands out a batch whose checksum fails, and it recovers after a
//! crash by trusting what was synced and validating everything after it.

use std::collections::BTreeMap;
use std::fmt;

use super::batch::{self, BatchError, BatchHeader, Compression, TimestampType};
use super::checkpoint::{LeaderEpochCache, PartitionCheckpoint};
use super::index::{OffsetIndex, TimeIndex};
use super::segment::{self, ScanStop, Segment};
use crate::buggify::Buggify;
use crate::io::disk::{self, Disk, DiskError, DiskFile};

/// The two copies of the partition checkpoint.
pub const PARTITION_CHECKPOINTS: [&str; 2] = ["partition.checkpoint.a", "partition.checkpoint.b"];
pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// When the log syncs on its own. Kafka's `flush.messages` / `flush.ms`;
/// Kafka's default leaves it to the page cache and to replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Sync before an append returns (`flush.messages=1`).
    EveryBatch,
    /// The driver calls [`Log::maybe_flush`]; a sync happens once this many
    /// milliseconds have passed since the last (`flush.ms`). Appends in
    /// between share that one sync: group commit.
    IntervalMs(u64),
    /// Only explicit [`Log::flush`] calls, roll and close sync.
    Never,
}

/// Per-log configuration, named after Kafka's topic configs.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`
    pub segment_bytes: u64,
    /// `segment.ms`
    pub segment_ms: i64,
    /// `retention.bytes`, -1 for unlimited.
    pub retention_bytes: i64,
    /// `retention.ms`, -1 for unlimited.
    pub retention_ms: i64,
    /// `index.interval.bytes`
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    pub flush: FlushPolicy,
    /// After how many syncs the recovery point is checkpointed (Kafka does
    /// it on a timer, `log.flush.offset.checkpoint.interval.ms`). A lagging
    /// checkpoint only makes recovery scan more.
    pub checkpoint_every_flushes: u32,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            flush: FlushPolicy::Never,
            checkpoint_every_flushes: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogError {
    /// The batch is not a valid v2 batch (Kafka: CORRUPT_MESSAGE, or
    /// INVALID_RECORD).
    InvalidBatch(BatchError),
    /// Larger than `max.message.bytes` (Kafka: MESSAGE_TOO_LARGE).
    BatchTooLarge { size: usize, max: usize },
    /// A replicated batch that does not continue the log.
    NonContiguous { base_offset: i64, expected: i64 },
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// Stored data failed its checksum on every try: it is not served
    /// (Kafka: KAFKA_STORAGE_ERROR / CORRUPT_MESSAGE to the reader).
    Corrupt { offset: i64, detail: String },
    /// The disk refused; the log's state is unchanged.
    Disk(DiskError),
    /// An earlier failure left the log in a state only recovery can vouch
    /// for; every call fails until it is reopened (Kafka takes the log
    /// directory offline).
    Offline(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::InvalidBatch(e) => write!(f, "invalid batch: {e}"),
            LogError::BatchTooLarge { size, max } => {
                write!(f, "batch of {size} bytes exceeds {max}")
            }
            LogError::NonContiguous {
                base_offset,
                expected,
            } => {
                write!(
                    f,
                    "batch at offset {base_offset} does not continue the log at {expected}"
                )
            }
            LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            } => {
                write!(f, "offset {offset} outside [{log_start}, {log_end}]")
            }
            LogError::Corrupt { offset, detail } => {
                write!(f, "corrupt data at offset {offset}: {detail}")
            }
            LogError::Disk(e) => write!(f, "disk: {e}"),
            LogError::Offline(why) => write!(f, "log offline: {why}"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<BatchError> for LogError {
    fn from(e: BatchError) -> LogError {
        LogError::InvalidBatch(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub record_count: i32,
    /// Whether the batch is already durable (flush policy `EveryBatch`).
    pub durable: bool,
}

/// What recovery found and did, for logs and for the simulator's checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// The checkpointed recovery point, or `None` if missing or damaged.
    pub checkpoint: Option<PartitionCheckpoint>,
    pub checkpoint_problem: Option<String>,
    pub batches_scanned: u64,
    /// Bytes cut from the tail (torn or unsynced writes), and why.
    pub truncated_bytes: u64,
    pub truncation_reason: Option<String>,
    /// Whole segments dropped because an earlier one ended in a cut.
    pub segments_dropped: usize,
    /// Indexes found damaged and rebuilt from the data.
    pub indexes_rebuilt: usize,
    /// Damage found in data that recovery trusts (below the recovery point):
    /// kept, reported, and refused to readers.
    pub corruption: Vec<String>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// The bytes of whole, verified batches, starting with the one that holds
/// the requested offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadResult {
    pub bytes: Vec<u8>,
    pub batches: Vec<BatchHeader>,
}

pub struct Log<D: Disk> {
    disk: D,
    dir: String,
    config: LogConfig,
    buggify: Buggify,
    segments: BTreeMap<i64, Segment<D::File>>,
    log_start_offset: i64,
    /// Offsets below this are durable.
    recovery_point: i64,
    /// The recovery point as last checkpointed.
    checkpointed: PartitionCheckpoint,
    epochs: LeaderEpochCache,
    epochs_dirty: bool,
    /// Files were created or removed since the directory was last synced.
    dir_dirty: bool,
    flushes_since_checkpoint: u32,
    last_flush_ms: Option<u64>,
    offline: Option<String>,
}

impl<D: Disk> Log<D> {
    /// Opens the log in `dir`, creating it if absent, and recovers it.
    pub fn open(
        disk: D,
        dir: &str,
        config: LogConfig,
        buggify: Buggify,
    ) -> Result<Log<D>, LogError> {
        Self::open_with_report(disk, dir, config, buggify).map(|(log, _)| log)
    }

    pub fn open_with_report(
        disk: D,
        dir: &str,
        config: LogConfig,
        buggify: Buggify,
    ) -> Result<(Log<D>, RecoveryReport), LogError> {
        let mut log = Log {
            disk,
            dir: dir.to_string(),
            config,
            buggify,
            segments: BTreeMap::new(),
            log_start_offset: 0,
            recovery_point: 0,
            checkpointed: PartitionCheckpoint {
                recovery_point: 0,
                log_start_offset: 0,
                sequence: 0,
            },
            epochs: LeaderEpochCache::default(),
            epochs_dirty: false,
            dir_dirty: false,
            flushes_since_checkpoint: 0,
            last_flush_ms: None,
            offline: None,
        };
        let report = log.recover().map_err(LogError::Disk)?;
        Ok((log, report))
    }

    fn path(&self, name: &str) -> String {
        disk::join(&self.dir, name)
    }

    fn open_or_create(&self, name: &str) -> Result<D::File, DiskError> {
        let path = self.path(name);
        match self.disk.open(&path) {
            Ok(f) => Ok(f),
            Err(DiskError::NotFound(_)) => self.disk.create(&path),
            Err(e) => Err(e),
        }
    }

    fn new_segment(&mut self, base: i64) -> Result<Segment<D::File>, DiskError> {
        // Any leftovers under these names are from a segment that was cut
        // away; start clean.
        for name in segment_file_names(base) {
            let p = self.path(&name);
            if self.disk.exists(&p)? {
                self.disk.remove(&p)?;
            }
        }
        let data = self.disk.create(&self.path(&segment::data_name(base)))?;
        let index = self.disk.create(&self.path(&segment::index_name(base)))?;
        let time = self
            .disk
            .create(&self.path(&segment::time_index_name(base)))?;
        self.dir_dirty = true;
        Ok(Segment::new(base, data, index, time))
    }

    /// Seals the segment at `base`, writing a fresh `.seal` file.
    fn seal_segment(&mut self, base: i64) -> Result<(), DiskError> {
        let path = self.path(&segment::seal_name(base));
        if self.disk.exists(&path)? {
            self.disk.remove(&path)?;
        }
        let file = self.disk.create(&path)?;
        self.dir_dirty = true;
        self.segments
            .get_mut(&base)
            .expect("segment to seal")
            .seal(file)
    }

    fn remove_segment_files(&mut self, base: i64) -> Result<(), DiskError> {
        for name in segment_file_names(base) {
            match self.disk.remove(&self.path(&name)) {
                Ok(()) | Err(DiskError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.dir_dirty = true;
        Ok(())
    }

    // ---- recovery --------------------------------------------------------

    fn recover(&mut self) -> Result<RecoveryReport, DiskError> {
        let mut report = RecoveryReport::default();
        self.disk.create_dir_all(&self.dir)?;
        let names = self.disk.list(&self.dir)?;

        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            self.disk.remove(&self.path(name))?;
            self.dir_dirty = true;
        }
        let mut bases: Vec<i64> = names
            .iter()
            .filter_map(|n| segment::parse_data_name(n))
            .collect();
        bases.sort_unstable();
        // Index files whose data file is gone are leftovers of a deletion
        // that a crash interrupted.
        for name in &names {
            let stem = name
                .strip_suffix(".index")
                .or_else(|| name.strip_suffix(".timeindex"))
                .or_else(|| name.strip_suffix(".seal"));
            if let Some(stem) = stem {
                if segment::parse_data_name(&format!("{stem}.log"))
                    .is_none_or(|b| !bases.contains(&b))
                {
                    self.disk.remove(&self.path(name))?;
                    self.dir_dirty = true;
                }
            }
        }

        let mut checkpoint: Option<PartitionCheckpoint> = None;
        let mut problems = Vec::new();
        for name in PARTITION_CHECKPOINTS {
            match self.read_decoded(name, PartitionCheckpoint::decode)? {
                Some(Ok(cp)) if checkpoint.is_none_or(|c| cp.sequence > c.sequence) => {
                    checkpoint = Some(cp)
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => problems.push(format!("{name} unreadable: {e}")),
            }
        }
        if !problems.is_empty() {
            report.checkpoint_problem = Some(problems.join("; "));
        }
        if let Some(cp) = checkpoint {
            self.checkpointed = cp;
        }
        report.checkpoint = checkpoint;
        // Without a trustworthy checkpoint every segment is scanned.
        let recovery_point = checkpoint.map_or(0, |c| c.recovery_point);
        let checkpoint_start = checkpoint.map_or(0, |c| c.log_start_offset);

        let interval = self.config.index_interval_bytes;
        let mut cut = false;
        for (i, &base) in bases.iter().enumerate() {
            if cut {
                self.remove_segment_files(base)?;
                report.segments_dropped += 1;
                continue;
            }
            // Each segment must start exactly where the one before ends; a
            // gap means data in between was lost (a segment emptied by a
            // crash), and nothing after a gap can be offered as the log.
            if let Some(prev) = self.segments.values().next_back() {
                if prev.next_offset != base {
                    report.truncation_reason = Some(format!(
                        "segment {base} does not follow the previous segment's end {}",
                        prev.next_offset
                    ));
                    cut = true;
                    self.remove_segment_files(base)?;
                    report.segments_dropped += 1;
                    continue;
                }
            }
            let data = self.disk.open(&self.path(&segment::data_name(base)))?;
            let index = self.open_or_create(&segment::index_name(base))?;
            let time = self.open_or_create(&segment::time_index_name(base))?;
            let mut seg = Segment::new(base, data, index, time);
            let next_base = bases.get(i + 1).copied();
            let trusted = next_base.is_some_and(|nb| nb <= recovery_point);
            if trusted {
                let nb = next_base.expect("trusted implies a next segment");
                if !self.load_trusted(&mut seg, nb, &mut report)? {
                    report.indexes_rebuilt += 1;
                }
            } else {
                let min_next = self
                    .segments
                    .values()
                    .next_back()
                    .map_or(base, |s| s.next_offset);
                let (n, stop) = seg.recover_from(0, min_next.max(base), interval, true);
                report.batches_scanned += n;
                if let Some(stop) = stop {
                    // Only bad data justifies a cut. A disk that refuses
                    // to read or write says nothing about the data: give
                    // up on this open and let the operator (or the next
                    // restart) try again, with the log untouched.
                    if let ScanStop::Io { error, .. } = stop {
                        return Err(error);
                    }
                    let file_len = seg.data.len()?;
                    report.truncated_bytes += file_len - seg.size;
                    report.truncation_reason = Some(format!("segment {base}: {stop}"));
                    cut = true;
                }
                // Re-issued even when nothing was cut: a truncation whose
                // fsync failed may be visible now and still undone on the
                // platter, and would come back at the next power loss.
                seg.data.truncate(seg.size)?;
                seg.rewrite_indexes()?;
            }
            self.segments.insert(base, seg);
        }
        report.segments = self.segments.len();
        // All but the last segment are sealed, with their final time index
        // entry, exactly as if they had been rolled.
        let unsealed: Vec<i64> = self
            .segments
            .iter()
            .rev()
            .skip(1)
            .filter(|(_, s)| !s.sealed)
            .map(|(&b, _)| b)
            .collect();
        for base in unsealed {
            self.seal_segment(base)?;
        }

        let first_base = self.segments.keys().next().copied();
        self.log_start_offset = checkpoint_start.max(first_base.unwrap_or(checkpoint_start));
        if self.segments.is_empty() {
            let start = self.log_start_offset;
            let seg = self.new_segment(start)?;
            self.segments.insert(start, seg);
        }
        if self.log_start_offset > self.end_offset() {
            // Everything was deleted up to a point past what survived.
            let start = self.log_start_offset;
            let bases: Vec<i64> = self.segments.keys().copied().collect();
            for b in bases {
                self.segments.remove(&b);
                self.remove_segment_files(b)?;
            }
            let seg = self.new_segment(start)?;
            self.segments.insert(start, seg);
        }
        self.delete_segments_below_start()?;

        // Leader epochs: the checkpoint, cut to what survived, then every
        // scanned batch's epoch (which recovery just read anyway).
        self.epochs = match self.read_decoded(LEADER_EPOCH_CHECKPOINT, LeaderEpochCache::decode)? {
            Some(Ok(cache)) => cache,
            Some(Err(e)) => {
                report.corruption.push(format!(
                    "leader-epoch-checkpoint unreadable ({e}); rebuilt from the log"
                ));
                self.epochs_dirty = true;
                LeaderEpochCache::default()
            }
            None => LeaderEpochCache::default(),
        };
        let end = self.end_offset();
        self.epochs_dirty |= self.epochs.truncate_from_end(end);
        let rebuild_from = if self.epochs.entries().is_empty() {
            self.log_start_offset
        } else {
            recovery_point.min(end)
        };
        self.rebuild_epochs_from(rebuild_from, &mut report);
        // The first batch read may start below the log start; and an epoch
        // that would start at the very end covers nothing, so the canonical
        // cache has none (whatever order the truncations came in before).
        self.epochs_dirty |= self.epochs.truncate_from_start(self.log_start_offset);
        self.epochs_dirty |= self.epochs.truncate_from_end(end);

        report.log_start_offset = self.log_start_offset;
        report.log_end_offset = self.end_offset();
        // Whatever recovery kept is now made durable and becomes the new
        // recovery point; a machine crash right after must not resurrect
        // what recovery cut.
        for seg in self.segments.values_mut() {
            seg.dirty = true;
        }
        self.dir_dirty = true;
        self.flush_inner().map_err(|e| match e {
            LogError::Disk(d) => d,
            other => DiskError::Io(other.to_string()),
        })?;
        self.write_checkpoint()?;
        Ok(report)
    }

    /// Loads a segment that lies wholly below the recovery point from its
    /// seal record and index files, if they all agree with each other and
    /// with the data file's length. Returns false if anything disagreed and
    /// the segment was rescanned instead.
    fn load_trusted(
        &mut self,
        seg: &mut Segment<D::File>,
        next_base: i64,
        report: &mut RecoveryReport,
    ) -> Result<bool, DiskError> {
        let base = seg.base_offset;
        let size = seg.data.len()?;
        let seal_path = self.path(&segment::seal_name(base));
        let seal_file = match self.disk.open(&seal_path) {
            Ok(f) => Some(f),
            Err(DiskError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(file) = seal_file {
            // A failed check is read again: a flip in transit goes away.
            for _ in 0..segment::READ_RETRIES {
                if let Some((index, time, record)) = Self::check_seal(seg, &file, next_base, size)?
                {
                    seg.adopt_sealed(index, time, &record, file);
                    return Ok(true);
                }
            }
        }
        let (n, stop) = seg.recover_from(0, base, self.config.index_interval_bytes, false);
        report.batches_scanned += n;
        if let Some(ScanStop::Io { error, .. }) = stop {
            return Err(error);
        }
        if let Some(stop) = stop {
            // Synced data that no longer reads back: keep it where it is
            // (the bytes might yet be repaired from a replica) and let reads
            // report it; only the length is taken from the file.
            report
                .corruption
                .push(format!("segment {base} below the recovery point: {stop}"));
            seg.size = size;
        }
        seg.next_offset = next_base;
        seg.rewrite_indexes()?;
        Ok(false)
    }

    /// Reads a small checksummed file and decodes it, reading again while
    /// the decode fails: a flip in transit goes away, damage does not.
    /// `None` if the file does not exist.
    fn read_decoded<T>(
        &self,
        name: &str,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Option<Result<T, String>>, DiskError> {
        let mut last = None;
        for _ in 0..segment::READ_RETRIES {
            let bytes = match disk::read_file(&self.disk, &self.path(name)) {
                Ok(bytes) => bytes,
                Err(DiskError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            match decode(&bytes) {
                Ok(v) => return Ok(Some(Ok(v))),
                Err(e) => last = Some(e),
            }
        }
        Ok(last.map(Err))
    }

    /// The seal record, offset index and time index of a segment, if all
    /// three read back, decode, and agree with each other and with the data
    /// file's `size` and the next segment's base.
    #[allow(clippy::type_complexity)]
    fn check_seal(
        seg: &Segment<D::File>,
        seal_file: &D::File,
        next_base: i64,
        size: u64,
    ) -> Result<Option<(OffsetIndex, TimeIndex, segment::SealRecord)>, DiskError> {
        let read_all =
            |f: &D::File| -> Result<Vec<u8>, DiskError> { f.read_exact_at(0, f.len()? as usize) };
        let Ok(record) = segment::SealRecord::decode(&read_all(seal_file)?) else {
            return Ok(None);
        };
        let index_bytes = read_all(&seg.index_file)?;
        let time_bytes = read_all(&seg.time_file)?;
        let consistent = record.base_offset == seg.base_offset
            && record.next_offset == next_base
            && record.size == size
            && crc32c::crc32c(&index_bytes) == record.index_crc
            && crc32c::crc32c(&time_bytes) == record.time_index_crc;
        if !consistent {
            return Ok(None);
        }
        let max_rel = (next_base - seg.base_offset - 1).clamp(0, u32::MAX as i64) as u32;
        match (
            OffsetIndex::decode(&index_bytes, size, max_rel),
            TimeIndex::decode(&time_bytes, max_rel),
        ) {
            (Ok(index), Ok(time)) => Ok(Some((index, time, record))),
            _ => Ok(None),
        }
    }

    fn rebuild_epochs_from(&mut self, from: i64, report: &mut RecoveryReport) {
        let mut offset = from.max(self.log_start_offset);
        let end = self.end_offset();
        while offset < end {
            // The epoch field is outside the CRC, and what is read here is
            // written back to the checkpoint: two reads must agree.
            let mut agreed = None;
            for _ in 0..segment::READ_RETRIES {
                let first = self.read_checked(offset, 1 << 20, i64::MAX, false);
                let second = self.read_checked(offset, 1 << 20, i64::MAX, false);
                match (first, second) {
                    (Ok(a), Ok(b)) if a == b => {
                        agreed = Some(Ok(a));
                        break;
                    }
                    // The reads already retried: an error stands.
                    (Err(e), _) | (_, Err(e)) => {
                        agreed = Some(Err(e));
                        break;
                    }
                    _ => {}
                }
            }
            match agreed {
                Some(Ok(r)) if !r.batches.is_empty() => {
                    for h in &r.batches {
                        self.epochs_dirty |=
                            self.epochs.assign(h.partition_leader_epoch, h.base_offset);
                    }
                    offset = r.batches.last().expect("non-empty").next_offset();
                }
                Some(Ok(_)) => break,
                Some(Err(e)) => {
                    report
                        .corruption
                        .push(format!("epoch rebuild stopped at {offset}: {e}"));
                    break;
                }
                None => {
                    report.corruption.push(format!(
                        "epoch rebuild stopped at {offset}: reads keep disagreeing"
                    ));
                    break;
                }
            }
        }
    }

    fn delete_segments_below_start(&mut self) -> Result<(), DiskError> {
        loop {
            let mut it = self.segments.iter();
            let (Some((&first, _)), Some((_, second))) = (it.next(), it.next()) else {
                return Ok(());
            };
            if second.base_offset > self.log_start_offset {
                return Ok(());
            }
            self.segments.remove(&first);
            self.remove_segment_files(first)?;
        }
    }

    // ---- state -------------------------------------------------------------

    pub fn dir(&self) -> &str {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The next offset to be assigned (Kafka's log end offset).
    pub fn end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Offsets below this are durable.
    pub fn durable_end(&self) -> i64 {
        self.recovery_point
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn segment_bases(&self) -> Vec<i64> {
        self.segments.keys().copied().collect()
    }

    pub fn leader_epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    pub fn is_offline(&self) -> bool {
        self.offline.is_some()
    }

    fn active(&self) -> &Segment<D::File> {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn check_online(&self) -> Result<(), LogError> {
        match &self.offline {
            Some(why) => Err(LogError::Offline(why.clone())),
            None => Ok(()),
        }
    }

    /// Takes the log offline after a failure that left disk and memory
    /// possibly disagreeing; returns the error to give the caller.
    fn go_offline(&mut self, what: &str, e: impl fmt::Display) -> LogError {
        let why = format!("{what}: {e}");
        self.offline = Some(why.clone());
        LogError::Offline(why)
    }

    // ---- writes ------------------------------------------------------------

    /// Appends a producer's batch as the leader: assigns the next offsets,
    /// stamps `leader_epoch`, and returns where it landed. Durable only if
    /// the flush policy made it so (`AppendInfo::durable`).
    pub fn append_as_leader(
        &mut self,
        batch: &[u8],
        leader_epoch: i32,
        wall_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        let mut bytes = self.checked_batch(batch)?;
        let base = self.end_offset();
        batch::set_base_offset(&mut bytes, base);
        batch::set_partition_leader_epoch(&mut bytes, leader_epoch);
        self.write_batch(bytes, wall_ms)
    }

    /// Appends as a leader with no epoch (a standalone log).
    pub fn append(&mut self, batch: &[u8], wall_ms: i64) -> Result<AppendInfo, LogError> {
        self.append_as_leader(batch, batch::NO_PARTITION_LEADER_EPOCH, wall_ms)
    }

    /// Appends a batch copied from the leader, offsets and epoch as they
    /// are; it must continue the log exactly.
    pub fn append_replicated(
        &mut self,
        batch: &[u8],
        wall_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        let bytes = self.checked_batch(batch)?;
        let h = batch::BatchHeader::parse(&bytes)?;
        if h.base_offset != self.end_offset() {
            return Err(LogError::NonContiguous {
                base_offset: h.base_offset,
                expected: self.end_offset(),
            });
        }
        self.write_batch(bytes, wall_ms)
    }

    fn checked_batch(&self, batch: &[u8]) -> Result<Vec<u8>, LogError> {
        if batch.len() > self.config.max_message_bytes {
            return Err(LogError::BatchTooLarge {
                size: batch.len(),
                max: self.config.max_message_bytes,
            });
        }
        let h = batch::validate(batch)?;
        if h.total_size() != batch.len() {
            return Err(LogError::InvalidBatch(BatchError::BadLength(
                h.batch_length,
            )));
        }
        Ok(batch.to_vec())
    }

    fn write_batch(&mut self, bytes: Vec<u8>, wall_ms: i64) -> Result<AppendInfo, LogError> {
        let h = BatchHeader::parse(&bytes)?;
        if self.should_roll(&h, bytes.len(), wall_ms) {
            self.roll().map_err(|e| self.go_offline("roll", e))?;
        }
        let force_index = self.buggify.fire("log.index_every_batch");
        let interval = self.config.index_interval_bytes;
        let seg = self
            .segments
            .values_mut()
            .next_back()
            .expect("active segment");
        // A failed data write changes nothing in memory: the append simply
        // fails (ENOSPC, EIO) and the log stays usable.
        seg.append(&bytes, &h, interval, force_index)
            .map_err(LogError::Disk)?;
        self.epochs_dirty |= self.epochs.assign(h.partition_leader_epoch, h.base_offset);
        let mut durable = false;
        if self.config.flush == FlushPolicy::EveryBatch {
            self.flush()?;
            durable = true;
        }
        Ok(AppendInfo {
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
            record_count: h.record_count,
            durable,
        })
    }

    fn should_roll(&mut self, h: &BatchHeader, size: usize, wall_ms: i64) -> bool {
        let active = self.active();
        if active.is_empty() {
            return false;
        }
        let full = active.size + size as u64 > self.config.segment_bytes;
        let old = active
            .first_timestamp
            .is_some_and(|t| wall_ms.saturating_sub(t) >= self.config.segment_ms);
        let offsets_overflow = !active.can_hold(h.base_offset + h.last_offset_delta as i64);
        let position_overflow = active.size + size as u64 > u32::MAX as u64;
        full || old || offsets_overflow || position_overflow || self.buggify.fire("log.roll_early")
    }

    /// Starts a new active segment at the log end.
    pub fn roll(&mut self) -> Result<(), DiskError> {
        let base = self.end_offset();
        if self.active().base_offset == base {
            return Ok(());
        }
        let active = self.active().base_offset;
        self.seal_segment(active)?;
        let seg = self.new_segment(base)?;
        self.segments.insert(base, seg);
        Ok(())
    }

    /// Syncs everything appended so far; afterwards `durable_end()` equals
    /// `end_offset()`. A failed sync takes the log offline: after fsync
    /// reports an error the kernel may have dropped the dirty pages, and a
    /// second fsync that succeeds proves nothing.
    pub fn flush(&mut self) -> Result<i64, LogError> {
        self.check_online()?;
        self.flush_inner()?;
        self.flushes_since_checkpoint += 1;
        if self.flushes_since_checkpoint >= self.config.checkpoint_every_flushes
            && !self.buggify.fire("log.delay_checkpoint")
        {
            self.write_checkpoint()
                .map_err(|e| self.go_offline("checkpoint", e))?;
        }
        Ok(self.recovery_point)
    }

    fn flush_inner(&mut self) -> Result<(), LogError> {
        let end = self.end_offset();
        let mut result = Ok(());
        for seg in self.segments.values_mut() {
            if let Err(e) = seg.sync() {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() && self.dir_dirty {
            result = self.disk.sync_dir(&self.dir);
            if result.is_ok() {
                self.dir_dirty = false;
            }
        }
        if result.is_ok() && self.epochs_dirty {
            result = disk::write_file_atomically(
                &self.disk,
                &self.path(LEADER_EPOCH_CHECKPOINT),
                &self.epochs.encode(),
            );
            if result.is_ok() {
                self.epochs_dirty = false;
            }
        }
        if let Err(e) = result {
            return Err(self.go_offline("sync", e));
        }
        self.recovery_point = end;
        Ok(())
    }

    /// For `FlushPolicy::IntervalMs`: syncs if the interval has passed since
    /// the last sync and there is something to sync. `now_ms` is monotonic.
    pub fn maybe_flush(&mut self, now_ms: u64) -> Result<bool, LogError> {
        let FlushPolicy::IntervalMs(every) = self.config.flush else {
            return Ok(false);
        };
        let last = *self.last_flush_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(last) < every || self.recovery_point == self.end_offset() {
            return Ok(false);
        }
        self.last_flush_ms = Some(now_ms);
        self.flush()?;
        Ok(true)
    }

    fn write_checkpoint(&mut self) -> Result<(), DiskError> {
        let cp = PartitionCheckpoint {
            recovery_point: self.recovery_point,
            log_start_offset: self.log_start_offset,
            sequence: self.checkpointed.sequence + 1,
        };
        // Both copies, one after the other: a crash between them leaves one
        // new and one old, and the sequence number says which is which.
        let bytes = cp.encode();
        for name in PARTITION_CHECKPOINTS {
            disk::write_file_atomically(&self.disk, &self.path(name), &bytes)?;
        }
        self.checkpointed = cp;
        self.flushes_since_checkpoint = 0;
        Ok(())
    }

    /// Removes every batch from the one holding `offset` on, durably, and
    /// returns the new end offset (which is `offset` when it falls on a
    /// batch boundary, as replication truncation points do). Data that a
    /// truncation removed must never come back, so files are synced and the
    /// recovery point lowered before this returns.
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64, LogError> {
        self.check_online()?;
        if offset >= self.end_offset() {
            return Ok(self.end_offset());
        }
        let offset = offset.max(self.log_start_offset);
        let result = self.truncate_inner(offset);
        result.map_err(|e| self.go_offline("truncate", e))
    }

    fn truncate_inner(&mut self, offset: i64) -> Result<i64, DiskError> {
        let interval = self.config.index_interval_bytes;
        // The recovery point goes down, durably, before anything is
        // destroyed. File truncations and directory removals reach the
        // platter independently; a crash part-way can leave any mix of
        // them, and recovery must rescan that region rather than trust it
        // on the word of a checkpoint written before the truncation.
        if self.recovery_point > offset || self.checkpointed.recovery_point > offset {
            self.recovery_point = self.recovery_point.min(offset);
            self.write_checkpoint()?;
        }
        // Segments starting at or after the target go whole, newest first,
        // so that a crash part-way leaves a prefix of the old log. The first
        // segment always stays (offset >= log start >= its base).
        let doomed: Vec<i64> = self.segments.range(offset..).map(|(&b, _)| b).collect();
        for base in doomed.into_iter().rev() {
            if self.segments.len() == 1 {
                break;
            }
            self.segments.remove(&base);
            self.remove_segment_files(base)?;
        }
        let seg = self
            .segments
            .values_mut()
            .next_back()
            .expect("a segment remains");
        if seg.sealed {
            // Active again: its seal no longer describes it.
            seg.unseal();
            let base = seg.base_offset;
            let seal = self.path(&segment::seal_name(base));
            match self.disk.remove(&seal) {
                Ok(()) | Err(DiskError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            self.dir_dirty = true;
        }
        let seg = self
            .segments
            .values_mut()
            .next_back()
            .expect("a segment remains");
        let position = match seg.locate_verified(offset) {
            Ok(found) => found.map(|loc| loc.position),
            Err(ScanStop::Io { error, .. }) => return Err(error),
            Err(_) => {
                // Damage between the segment's start and the truncation
                // point: only the readable prefix can be kept.
                seg.rescan_readable_prefix(interval)?;
                if seg.next_offset > offset {
                    match seg.locate_verified(offset) {
                        Ok(found) => found.map(|loc| loc.position),
                        Err(ScanStop::Io { error, .. }) => return Err(error),
                        Err(_) => Some(seg.size),
                    }
                } else {
                    Some(seg.size)
                }
            }
        };
        if let Some(position) = position {
            seg.truncate_at(position, interval)?;
        }
        if self.end_offset() < self.log_start_offset {
            // The batch straddling the log start went: nothing readable is
            // left, so the log starts over, empty, at its start offset
            // (Kafka's truncateFullyAndStartAt).
            let start = self.log_start_offset;
            let bases: Vec<i64> = self.segments.keys().copied().collect();
            for base in bases {
                self.segments.remove(&base);
                self.remove_segment_files(base)?;
            }
            let seg = self.new_segment(start)?;
            self.segments.insert(start, seg);
        }
        let end = self.end_offset();
        self.epochs_dirty |= self.epochs.truncate_from_end(end);
        for s in self.segments.values_mut() {
            s.dirty = true;
        }
        self.dir_dirty = true;
        self.flush_inner()
            .map_err(|e| DiskError::Io(e.to_string()))?;
        self.write_checkpoint()?;
        Ok(end)
    }

    /// Moves the log start offset up (Kafka's DeleteRecords), deleting
    /// segments that fall wholly below it. Durable before it returns: a log
    /// start offset must not move back after a crash.
    pub fn advance_log_start(&mut self, offset: i64) -> Result<i64, LogError> {
        self.check_online()?;
        let end = self.end_offset();
        if offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset,
                log_end: end,
            });
        }
        if offset <= self.log_start_offset {
            return Ok(self.log_start_offset);
        }
        self.set_log_start(offset)
            .map_err(|e| self.go_offline("advance log start", e))?;
        Ok(self.log_start_offset)
    }

    fn set_log_start(&mut self, offset: i64) -> Result<(), DiskError> {
        self.log_start_offset = offset;
        self.epochs_dirty |= self.epochs.truncate_from_start(offset);
        // The new start is made durable first; deleting files afterwards is
        // then safe at any point, as recovery drops segments below it.
        self.write_checkpoint()?;
        self.delete_segments_below_start()?;
        self.disk.sync_dir(&self.dir)?;
        self.dir_dirty = false;
        Ok(())
    }

    /// Applies `retention.bytes` and `retention.ms`, deleting whole segments
    /// from the oldest; the active segment is never deleted. Returns how
    /// many segments went.
    pub fn apply_retention(&mut self, wall_ms: i64) -> Result<usize, LogError> {
        self.check_online()?;
        let mut total = self.size_bytes() as i64;
        let mut new_start = None;
        let mut count = 0;
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        for pair in bases.windows(2) {
            let seg = &self.segments[&pair[0]];
            let by_size = self.config.retention_bytes >= 0
                && total - seg.size as i64 >= self.config.retention_bytes;
            let by_time = self.config.retention_ms >= 0
                && seg.max_timestamp >= 0
                && wall_ms.saturating_sub(seg.max_timestamp) > self.config.retention_ms;
            // Nothing past the durable end is deleted: retention must not
            // decide about data whose fate a crash has not settled.
            if !(by_size || by_time) || pair[1] > self.recovery_point {
                break;
            }
            total -= seg.size as i64;
            new_start = Some(pair[1]);
            count += 1;
        }
        if let Some(start) = new_start {
            if start > self.log_start_offset {
                self.set_log_start(start)
                    .map_err(|e| self.go_offline("retention", e))?;
            }
        }
        Ok(count)
    }

    /// Syncs and checkpoints, so that the next open scans nothing.
    pub fn close(mut self) -> Result<(), LogError> {
        self.check_online()?;
        if let Some(seg) = self.segments.values_mut().next_back() {
            seg.write_indexes().map_err(LogError::Disk)?;
        }
        self.flush_inner()?;
        self.write_checkpoint().map_err(LogError::Disk)
    }

    // ---- reads -------------------------------------------------------------

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` — but always at least one whole batch, as Kafka's fetch
    /// does, so a consumer can never be stuck behind a large batch. An
    /// offset equal to the log end reads nothing. Every batch returned has
    /// passed its checksum.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, LogError> {
        self.read_bounded(offset, max_bytes, i64::MAX)
    }

    /// As [`Log::read`], but no batch starting at or after `upper` (a high
    /// watermark) is returned.
    pub fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        upper: i64,
    ) -> Result<ReadResult, LogError> {
        self.read_checked(offset, max_bytes, upper, true)
    }

    /// `check_epochs` is off only while recovery rebuilds the epoch cache
    /// from the batches themselves.
    fn read_checked(
        &self,
        offset: i64,
        max_bytes: usize,
        upper: i64,
        check_epochs: bool,
    ) -> Result<ReadResult, LogError> {
        self.check_online()?;
        let end = self.end_offset();
        if offset < self.log_start_offset || offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset,
                log_end: end,
            });
        }
        if offset == end || offset >= upper {
            return Ok(ReadResult::default());
        }
        let (_, seg) = self
            .segments
            .range(..=offset)
            .next_back()
            .expect("offset >= log start has a segment");
        let seg = if offset >= seg.next_offset {
            // In a gap after this segment's last batch: read the next one.
            match self.segments.range(offset + 1..).next() {
                Some((_, s)) => s,
                None => return Ok(ReadResult::default()),
            }
        } else {
            seg
        };
        let corrupt = |stop: ScanStop| LogError::Corrupt {
            offset,
            detail: format!("segment {}: {stop}", seg.base_offset),
        };
        let attempt = segment::retry_read(|| {
            self.read_in_segment(seg, offset, max_bytes, upper, check_epochs)
        });
        let Some((mut bytes, mut batches)) = attempt.map_err(corrupt)? else {
            return Ok(ReadResult::default());
        };
        // Offsets must keep increasing through what is served.
        let mut keep = 0;
        let mut cut_at = 0;
        let mut prev: Option<&BatchHeader> = None;
        for h in &batches {
            if h.base_offset >= upper || prev.is_some_and(|p| h.base_offset != p.next_offset()) {
                break;
            }
            keep += 1;
            cut_at += h.total_size();
            prev = Some(h);
        }
        batches.truncate(keep);
        bytes.truncate(cut_at);
        Ok(ReadResult { bytes, batches })
    }

    /// One try at reading from `seg`: locate the batch holding `offset`,
    /// read from there, and check that both reads agree on where it starts
    /// (its base offset is not covered by the CRC).
    #[allow(clippy::type_complexity)]
    fn read_in_segment(
        &self,
        seg: &Segment<D::File>,
        offset: i64,
        max_bytes: usize,
        upper: i64,
        check_epochs: bool,
    ) -> Result<Option<(Vec<u8>, Vec<BatchHeader>)>, ScanStop> {
        let Some(loc) = seg.locate(offset)? else {
            return Ok(None);
        };
        if loc.header.base_offset >= upper {
            return Ok(None);
        }
        let first = loc.header.total_size();
        let available = (seg.size - loc.position) as usize;
        if first > available {
            return Err(ScanStop::Invalid {
                position: loc.position,
                error: BatchError::Truncated {
                    have: available,
                    need: first,
                },
            });
        }
        let len = max_bytes.max(first).min(available);
        let (bytes, batches) = seg.read_batches(loc.position, len)?;
        if batches[0].base_offset != loc.header.base_offset || batches[0].last_offset() < offset {
            return Err(ScanStop::OutOfOrder {
                position: loc.position,
                base_offset: batches[0].base_offset,
                expected_at_least: loc.header.base_offset,
            });
        }
        // The leader epoch is outside the CRC too; epochs only grow along a
        // log, so the cache knows what each batch must say.
        let mut pos = loc.position;
        for h in batches.iter().filter(|_| check_epochs) {
            // The batch holding the log start begins below it, where the
            // cache (cut at the log start) has no entry.
            if let Some(epoch) = self
                .epochs
                .epoch_for(h.base_offset.max(self.log_start_offset))
            {
                if h.partition_leader_epoch != epoch {
                    return Err(ScanStop::Invalid {
                        position: pos,
                        error: BatchError::BadRecord(format!(
                            "leader epoch {} where the log's history says {epoch}",
                            h.partition_leader_epoch
                        )),
                    });
                }
            }
            pos += h.total_size() as u64;
        }
        Ok(Some((bytes, batches)))
    }

    /// Kafka's ListOffsets MAX_TIMESTAMP (KIP-734): the first record with
    /// the largest timestamp among offsets below `upper`, and that
    /// timestamp. Only segments that could beat the best so far are read.
    pub fn max_timestamp_below(&self, upper: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.check_online()?;
        let mut best: Option<(i64, i64)> = None;
        for seg in self.segments.values() {
            if seg.base_offset >= upper || best.is_some_and(|(_, t)| seg.max_timestamp <= t) {
                continue;
            }
            let mut offset = seg.base_offset.max(self.log_start_offset);
            while offset < seg.next_offset.min(upper) {
                let r = self.read_bounded(offset, 1 << 16, upper)?;
                let Some(last) = r.batches.last() else { break };
                let mut pos = 0;
                for h in &r.batches {
                    let bytes = &r.bytes[pos..pos + h.total_size()];
                    pos += h.total_size();
                    if h.last_offset() < self.log_start_offset
                        || best.is_some_and(|(_, t)| h.max_timestamp <= t)
                    {
                        continue;
                    }
                    best =
                        first_record_at_or_after(bytes, h, h.max_timestamp, self.log_start_offset)
                            .or(best);
                }
                offset = last.next_offset();
            }
        }
        Ok(best)
    }

    /// Changes the configuration of an open log (AlterConfigs): limits take
    /// effect from the next append, retention from its next run.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// Kafka's ListOffsets by timestamp: the earliest offset whose record
    /// timestamp is at least `ts`, with that timestamp; `None` if every
    /// record is older.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.check_online()?;
        for seg in self.segments.values() {
            if seg.max_timestamp < ts {
                continue;
            }
            // Batches up to the floor entry's offset all predate `ts`.
            let from = seg
                .time_index
                .floor_before(ts)
                .map_or(seg.base_offset, |(_, rel)| seg.base_offset + rel as i64 + 1)
                .max(self.log_start_offset);
            let mut offset = from;
            while offset < seg.next_offset {
                let r = self.read(offset, 1 << 16)?;
                let Some(last) = r.batches.last() else { break };
                let mut pos = 0;
                for h in &r.batches {
                    let bytes = &r.bytes[pos..pos + h.total_size()];
                    pos += h.total_size();
                    if h.max_timestamp < ts || h.last_offset() < self.log_start_offset {
                        continue;
                    }
                    if let Some(found) =
                        first_record_at_or_after(bytes, h, ts, self.log_start_offset)
                    {
                        return Ok(Some(found));
                    }
                }
                offset = last.next_offset();
            }
        }
        Ok(None)
    }
}

/// Within a batch whose max timestamp is at least `ts`, the first record at
/// or after `ts` and at or after the log start — `None` when the only such
/// records lie below the log start (the batch straddles it), so the search
/// goes on. LogAppendTime batches carry one timestamp for all records.
/// Compressed batches are decompressed (bounded); one that cannot be is
/// answered at batch granularity, as it passed its CRC and was validated on
/// the way in.
fn first_record_at_or_after(
    bytes: &[u8],
    h: &BatchHeader,
    ts: i64,
    log_start: i64,
) -> Option<(i64, i64)> {
    let batch_answer = Some((h.base_offset.max(log_start), h.max_timestamp));
    if h.timestamp_type() == TimestampType::LogAppendTime {
        return batch_answer;
    }
    let records = if h.compression() == Some(Compression::None) {
        batch::decode_records(bytes).ok()
    } else {
        batch::decode_records_any(bytes, TIMESTAMP_LOOKUP_DECOMPRESS_LIMIT).ok()
    };
    match records {
        Some(records) => records
            .iter()
            .map(|r| {
                (
                    h.base_offset + r.offset_delta as i64,
                    h.base_timestamp + r.timestamp_delta,
                )
            })
            .find(|&(o, t)| t >= ts && o >= log_start),
        None => batch_answer,
    }
}

/// Batches were validated on append with the same bound.
const TIMESTAMP_LOOKUP_DECOMPRESS_LIMIT: usize = 256 << 20;

fn segment_file_names(base: i64) -> [String; 4] {
    [
        segment::data_name(base),
        segment::index_name(base),
        segment::time_index_name(base),
        segment::seal_name(base),
    ]
}

#[cfg(test)]
mod tests;
