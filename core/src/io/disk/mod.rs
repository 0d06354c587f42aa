//! The disk as the core sees it: a file system with explicit durability.
//!
//! The contract is the POSIX one that storage engines actually get, spelled
//! out so that the simulator can enforce exactly it and no more:
//!
//! * a write is in the page cache until [`DiskFile::sync`] returns; a crash
//!   before then may lose it, keep it, or keep part of it (torn);
//! * creating, renaming or removing a file changes the directory, and that
//!   change may be lost at a crash until [`Disk::sync_dir`] on the parent
//!   returns — syncing the file itself is not enough;
//! * any read may come back with flipped bits, and any write may fail with
//!   [`DiskError::NoSpace`]. Callers checksum what they store.
//!
//! Paths are `/`-separated and relative to the disk's root.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskError {
    NotFound(String),
    AlreadyExists(String),
    /// ENOSPC: nothing of the failed call was applied.
    NoSpace,
    /// Any other failure, with the operating system's (or simulator's) words.
    Io(String),
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::NotFound(p) => write!(f, "not found: {p}"),
            DiskError::AlreadyExists(p) => write!(f, "already exists: {p}"),
            DiskError::NoSpace => write!(f, "no space left on device"),
            DiskError::Io(m) => write!(f, "i/o error: {m}"),
        }
    }
}

impl std::error::Error for DiskError {}

pub type DiskResult<T> = Result<T, DiskError>;

/// An open file. Positional reads and writes only: there is no cursor to get
/// wrong, and the log always knows where its data belongs.
pub trait DiskFile {
    /// Reads up to `buf.len()` bytes at `pos`; fewer only at end of file.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> DiskResult<usize>;
    /// Writes all of `data` at `pos`, extending the file if needed (a gap
    /// reads back as zeros).
    fn write_at(&self, pos: u64, data: &[u8]) -> DiskResult<()>;
    /// Makes every completed write to this file durable (fdatasync).
    fn sync(&self) -> DiskResult<()>;
    /// Sets the length: cuts, or extends with zeros.
    fn truncate(&self, len: u64) -> DiskResult<()>;
    fn len(&self) -> DiskResult<u64>;
    fn is_empty(&self) -> DiskResult<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `len` bytes at `pos`, or fails if the file is shorter.
    fn read_exact_at(&self, pos: u64, len: usize) -> DiskResult<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self.read_at(pos + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(DiskError::Io(format!(
                    "short read: wanted {len} bytes at {pos}, file ends after {done}"
                )));
            }
            done += n;
        }
        Ok(buf)
    }
}

pub trait Disk {
    type File: DiskFile;

    /// Creates a new, empty file; fails with `AlreadyExists` if there is one.
    fn create(&self, path: &str) -> DiskResult<Self::File>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &str) -> DiskResult<Self::File>;
    /// Atomically replaces `to` with `from` (rename(2)).
    fn rename(&self, from: &str, to: &str) -> DiskResult<()>;
    fn remove(&self, path: &str) -> DiskResult<()>;
    /// The names (not paths) of the files in `dir`, sorted.
    fn list(&self, dir: &str) -> DiskResult<Vec<String>>;
    fn create_dir_all(&self, dir: &str) -> DiskResult<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &str) -> DiskResult<()>;
    fn exists(&self, path: &str) -> DiskResult<bool>;
}

/// The parent directory of a path ("" for the root).
pub fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The last component of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Every directory from the top down to `dir` itself: `a`, `a/b`, `a/b/c`.
pub fn ancestors(dir: &str) -> Vec<String> {
    let mut acc = String::new();
    let mut out = Vec::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        out.push(acc.clone());
    }
    out
}

/// `dir` joined with `name`.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Writes `data` to `path` so that after any crash the path holds either the
/// old content or all of the new: write a temporary file, sync it, rename it
/// over the target, sync the directory. Kafka's checkpoint files are written
/// this way.
pub fn write_file_atomically<D: Disk>(disk: &D, path: &str, data: &[u8]) -> DiskResult<()> {
    let tmp = format!("{path}.tmp");
    if disk.exists(&tmp)? {
        disk.remove(&tmp)?;
    }
    let file = disk.create(&tmp)?;
    file.write_at(0, data)?;
    file.sync()?;
    disk.rename(&tmp, path)?;
    disk.sync_dir(parent_dir(path))
}

/// Reads a whole file.
pub fn read_file<D: Disk>(disk: &D, path: &str) -> DiskResult<Vec<u8>> {
    let file = disk.open(path)?;
    let len = file.len()?;
    file.read_exact_at(0, len as usize)
}

pub mod conformance;
pub mod mem;
