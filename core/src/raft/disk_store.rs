//! [`RaftStore`] on a [`Disk`]: three files in one directory.
//!
//! * `quorum-state` — the epoch and the vote, replaced atomically (write a
//!   temporary file, sync it, rename it over, sync the directory).
//! * `snapshot` — the latest snapshot, replaced the same way.
//! * `log` — the entries after the snapshot, one record each:
//!
//!   ```text
//!   len u32 | hcrc u32 = crc32c(len) | crc u32 = crc32c(payload) | payload | 0xA5
//!   ```
//!
//!   (big-endian; the payload is the entry: offset, epoch, kind, data). The
//!   header has its own checksum so that a flipped bit in a length is
//!   caught rather than mistaken for a record running past the end of the
//!   file, and the trailer byte is never zero so that a record whose tail
//!   never reached the platter (which reads back as zeros, or as the end of
//!   the file) can be told from a damaged one.
//!
//! Appends go to the end of `log` and are durable after `sync`. A truncation
//! is synced at once, before anything is written over the cut, so that a
//! crash can never combine new records with stale ones beyond them.
//! Dropping a prefix (a new snapshot) writes the snapshot, then a new `log`
//! holding only the retained entries (temporary file, sync, rename, sync the
//! directory); a crash between the two leaves the new snapshot with the old
//! log, which opening reconciles.
//!
//! Opening scans `log`. The first record that is incomplete at the end of
//! the file, or whose missing part reads as zeros, is the torn tail of
//! writes that were never synced: it and everything after it are cut. A
//! record that fails its checks in any other way is corruption, and opening
//! fails with [`StoreError::Corrupt`] rather than silently dropping entries
//! that may have been acknowledged. Then opening rewrites all three files
//! (each atomically, snapshot before log) from what it read. That makes the
//! state the node starts from durable even if it was only in the page cache
//! (a process that restarted after a failed sync sees writes that may never
//! reach the disk), and leaves a log file that starts right after the
//! snapshot, with no tail.

use std::fmt;

use crate::io::disk::{ancestors, join, parent_dir, read_file, write_file_atomically};
use crate::io::{Disk, DiskError, DiskFile};

use super::codec::{err, get_entry, put_blob, put_entry, put_u32, put_u64, DecodeError, Reader};
use super::message::{MAX_SNAPSHOT_BYTES, MAX_VALUE};
use super::store::{QuorumState, RaftStore, Recovered, StoreError};
use super::{Entry, Snapshot};

const QUORUM_FILE: &str = "quorum-state";
const SNAPSHOT_FILE: &str = "snapshot";
const LOG_FILE: &str = "log";
const QUORUM_MAGIC: &[u8; 4] = b"ODQS";
const SNAPSHOT_MAGIC: &[u8; 4] = b"ODSN";
const FILE_VERSION: u8 = 1;
const RECORD_HEADER: usize = 12;
const TRAILER: u8 = 0xA5;
/// No legitimate record is larger: an entry is bounded by the messages.
const MAX_RECORD: usize = MAX_SNAPSHOT_BYTES + 64;

/// A Raft node's files in directory `dir` of `disk`. Nothing is read until
/// [`RaftStore::load`].
pub struct DiskStore<D: Disk> {
    disk: D,
    dir: String,
    log: Option<D::File>,
    /// Offset of the first record in `log`.
    first_offset: u64,
    /// File position of each record.
    positions: Vec<u64>,
    /// Bytes in `log`.
    len: u64,
    /// A call failed; every call fails until `load`.
    broken: bool,
}

impl<D: Disk> fmt::Debug for DiskStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.dir)
            .field("first_offset", &self.first_offset)
            .field("records", &self.positions.len())
            .field("len", &self.len)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<D: Disk> DiskStore<D> {
    pub fn new(disk: D, dir: &str) -> DiskStore<D> {
        DiskStore {
            disk,
            dir: dir.trim_end_matches('/').to_string(),
            log: None,
            first_offset: 0,
            positions: Vec::new(),
            len: 0,
            broken: false,
        }
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    fn path(&self, name: &str) -> String {
        join(&self.dir, name)
    }

    fn file(&self) -> Result<&D::File, StoreError> {
        if self.broken {
            return Err(StoreError::Invalid("store failed; load it again".into()));
        }
        self.log
            .as_ref()
            .ok_or_else(|| StoreError::Invalid("store not loaded".into()))
    }

    /// Runs a call, marking the store broken if it fails.
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = f(self);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name);
        match read_file(&self.disk, &path) {
            Ok(b) => Ok(Some(b)),
            Err(DiskError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        self.log = None;
        self.disk.create_dir_all(&self.dir)?;
        for dir in ancestors(&self.dir) {
            self.disk.sync_dir(parent_dir(&dir))?;
        }
        let quorum = match self.read_optional(QUORUM_FILE)? {
            Some(b) => decode_quorum_state(&b)
                .map_err(|e| StoreError::Corrupt(format!("{QUORUM_FILE}: {}", e.0)))?,
            None => QuorumState::default(),
        };
        let snapshot = match self.read_optional(SNAPSHOT_FILE)? {
            Some(b) => Some(
                decode_snapshot(&b)
                    .map_err(|e| StoreError::Corrupt(format!("{SNAPSHOT_FILE}: {}", e.0)))?,
            ),
            None => None,
        };
        let raw = self.read_optional(LOG_FILE)?.unwrap_or_default();
        let entries = scan_log(&raw)?;
        let entries = reconcile(snapshot.as_ref(), entries)?;

        // Make what was read durable, snapshot before the log that follows it.
        write_file_atomically(
            &self.disk,
            &self.path(QUORUM_FILE),
            &encode_quorum_state(quorum),
        )?;
        if let Some(s) = &snapshot {
            write_file_atomically(&self.disk, &self.path(SNAPSHOT_FILE), &encode_snapshot(s))?;
        }
        let start = snapshot.as_ref().map_or(0, Snapshot::end);
        self.rewrite_log(start, &entries)?;
        Ok(Recovered {
            quorum,
            snapshot,
            entries,
        })
    }

    /// Replaces `log` with a file holding exactly `entries`, which start at
    /// `start`.
    fn rewrite_log(&mut self, start: u64, entries: &[Entry]) -> Result<(), StoreError> {
        self.log = None;
        let mut bytes = Vec::new();
        let mut positions = Vec::with_capacity(entries.len());
        for e in entries {
            positions.push(bytes.len() as u64);
            put_record(&mut bytes, e);
        }
        let path = self.path(LOG_FILE);
        write_file_atomically(&self.disk, &path, &bytes)?;
        self.log = Some(self.disk.open(&path)?);
        self.first_offset = start;
        self.positions = positions;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

impl<D: Disk> RaftStore for DiskStore<D> {
    fn load(&mut self) -> Result<Recovered, StoreError> {
        self.broken = false;
        self.guard(|s| s.recover())
    }

    fn save_quorum_state(&mut self, state: QuorumState) -> Result<(), StoreError> {
        self.file()?;
        self.guard(|s| {
            let path = s.path(QUORUM_FILE);
            Ok(write_file_atomically(
                &s.disk,
                &path,
                &encode_quorum_state(state),
            )?)
        })
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.file()?;
        let end = self.first_offset + self.positions.len() as u64;
        if entries
            .iter()
            .enumerate()
            .any(|(i, e)| e.offset != end + i as u64)
        {
            return Err(StoreError::Invalid(format!(
                "append does not continue the log at {end}"
            )));
        }
        self.guard(|s| {
            let mut bytes = Vec::new();
            let mut positions = Vec::with_capacity(entries.len());
            for e in entries {
                positions.push(s.len + bytes.len() as u64);
                put_record(&mut bytes, e);
            }
            s.file()?.write_at(s.len, &bytes)?;
            s.positions.extend(positions);
            s.len += bytes.len() as u64;
            Ok(())
        })
    }

    fn truncate(&mut self, end: u64) -> Result<(), StoreError> {
        self.file()?;
        let keep = end.saturating_sub(self.first_offset) as usize;
        if keep >= self.positions.len() {
            return Ok(());
        }
        self.guard(|s| {
            let pos = s.positions[keep];
            let file = s.file()?;
            file.truncate(pos)?;
            file.sync()?;
            s.positions.truncate(keep);
            s.len = pos;
            Ok(())
        })
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.file()?;
        self.guard(|s| Ok(s.file()?.sync()?))
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot, retained: &[Entry]) -> Result<(), StoreError> {
        self.file()?;
        if retained
            .iter()
            .enumerate()
            .any(|(i, e)| e.offset != snapshot.end() + i as u64)
        {
            return Err(StoreError::Invalid(
                "retained entries do not follow the snapshot".into(),
            ));
        }
        self.guard(|s| {
            let path = s.path(SNAPSHOT_FILE);
            write_file_atomically(&s.disk, &path, &encode_snapshot(snapshot))?;
            s.rewrite_log(snapshot.end(), retained)
        })
    }
}

fn put_record(out: &mut Vec<u8>, e: &Entry) {
    let mut payload = Vec::with_capacity(super::codec::ENTRY_HEADER + e.data.len());
    put_entry(&mut payload, e);
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&len);
    put_u32(out, crc32c::crc32c(&len));
    put_u32(out, crc32c::crc32c(&payload));
    out.extend_from_slice(&payload);
    out.push(TRAILER);
}

/// Reads the records of a log file: the entries before the torn tail, if
/// any, or an error if a record is damaged in a way a crash cannot explain.
pub(crate) fn scan_log(raw: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut pos = 0usize;
    let corrupt = |pos: usize, what: &str| {
        Err(StoreError::Corrupt(format!(
            "{LOG_FILE}: record at byte {pos}: {what}"
        )))
    };
    while pos < raw.len() {
        let rest = &raw[pos..];
        if rest.len() < RECORD_HEADER {
            break; // a header cut short by the end of the file: torn
        }
        let header = &rest[..RECORD_HEADER];
        if header.iter().all(|&b| b == 0) {
            break; // never written: torn
        }
        let len_bytes: [u8; 4] = [header[0], header[1], header[2], header[3]];
        let hcrc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if crc32c::crc32c(&len_bytes) != hcrc {
            // A tear inside the length or its checksum leaves the rest of
            // the header (the payload checksum at least) reading as zeros.
            if header[8..].iter().all(|&b| b == 0) {
                break;
            }
            return corrupt(pos, "header checksum mismatch");
        }
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_RECORD {
            return corrupt(pos, "length out of range");
        }
        let total = RECORD_HEADER + len + 1;
        if rest.len() < total {
            break; // runs past the end of the file: torn
        }
        let crc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        let trailer = rest[total - 1];
        if trailer != TRAILER || crc32c::crc32c(payload) != crc {
            if trailer == 0 {
                break; // the record's end never arrived: torn
            }
            return corrupt(pos, "checksum mismatch");
        }
        let mut r = Reader::new(payload);
        let entry = match get_entry(&mut r, MAX_SNAPSHOT_BYTES).and_then(|e| r.finish().map(|_| e))
        {
            Ok(e) => e,
            Err(e) => return corrupt(pos, &e.0),
        };
        if entry.offset > MAX_VALUE || entry.epoch > MAX_VALUE {
            return corrupt(pos, "offset or epoch out of range");
        }
        if let Some(prev) = entries.last() {
            if entry.offset != prev.offset + 1 || entry.epoch < prev.epoch {
                return corrupt(pos, "entry does not follow the one before");
            }
        }
        entries.push(entry);
        pos += total;
    }
    Ok(entries)
}

/// Fits the log to the snapshot: entries the snapshot covers are dropped,
/// and if the log disagrees with the snapshot about its last entry (a
/// snapshot from the leader was installed and the crash came before the log
/// was replaced) the whole log is, as Raft's InstallSnapshot rule says.
pub(crate) fn reconcile(
    snapshot: Option<&Snapshot>,
    entries: Vec<Entry>,
) -> Result<Vec<Entry>, StoreError> {
    let first = entries.first().map(|e| e.offset);
    let Some(s) = snapshot else {
        return match first {
            Some(o) if o != 0 => Err(StoreError::Corrupt(format!(
                "{LOG_FILE} starts at {o} with no snapshot"
            ))),
            _ => Ok(entries),
        };
    };
    let Some(first) = first else {
        return Ok(entries);
    };
    if first > s.end() {
        return Err(StoreError::Corrupt(format!(
            "{LOG_FILE} starts at {first}, after the snapshot's end {}",
            s.end()
        )));
    }
    if first == s.end() {
        return Ok(entries);
    }
    // Here first <= s.last_offset: the log reaches into the snapshot.
    let i = (s.last_offset - first) as usize;
    match entries.get(i) {
        Some(e) if e.epoch == s.last_epoch => Ok(entries[i + 1..].to_vec()),
        _ => Ok(Vec::new()),
    }
}

fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    put_u32(&mut body, crc);
    body
}

fn check_crc<'a>(bytes: &'a [u8], magic: &[u8; 4]) -> Result<Reader<'a>, DecodeError> {
    if bytes.len() < 4 + 1 + 4 {
        return err("file too short");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return err("checksum mismatch");
    }
    let mut r = Reader::new(body);
    if r.bytes(4)? != magic {
        return err("bad magic");
    }
    let v = r.u8()?;
    if v != FILE_VERSION {
        return err(format!("unknown version {v}"));
    }
    Ok(r)
}

pub(crate) fn encode_quorum_state(q: QuorumState) -> Vec<u8> {
    let mut b = QUORUM_MAGIC.to_vec();
    b.push(FILE_VERSION);
    put_u64(&mut b, q.epoch);
    match q.voted_for {
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&v.to_be_bytes());
        }
        None => {
            b.push(0);
            b.extend_from_slice(&0i32.to_be_bytes());
        }
    }
    with_crc(b)
}

pub(crate) fn decode_quorum_state(bytes: &[u8]) -> Result<QuorumState, DecodeError> {
    let mut r = check_crc(bytes, QUORUM_MAGIC)?;
    let epoch = r.u64()?;
    let has_vote = r.bool()?;
    let v = r.i32()?;
    r.finish()?;
    if epoch > MAX_VALUE {
        return err("epoch out of range");
    }
    Ok(QuorumState {
        epoch,
        voted_for: has_vote.then_some(v),
    })
}

pub(crate) fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut b = SNAPSHOT_MAGIC.to_vec();
    b.push(FILE_VERSION);
    put_u64(&mut b, s.last_offset);
    put_u64(&mut b, s.last_epoch);
    put_blob(&mut b, &s.data);
    with_crc(b)
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    let mut r = check_crc(bytes, SNAPSHOT_MAGIC)?;
    let last_offset = r.u64()?;
    let last_epoch = r.u64()?;
    let data = r.blob(MAX_SNAPSHOT_BYTES)?;
    r.finish()?;
    if last_offset > MAX_VALUE || last_epoch > MAX_VALUE {
        return err("snapshot offset or epoch out of range");
    }
    Ok(Snapshot {
        last_offset,
        last_epoch,
        data,
    })
}
