//! The real disk: [`odradek_core::io::Disk`] over the local file system.
//!
//! Every operation is one or two system calls with no buffering of our own,
//! so the durability the core asks for (`sync`, `sync_dir`) is exactly the
//! durability the kernel gives.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use odradek_core::io::{Disk, DiskError, DiskFile, DiskResult};

/// ENOSPC on Linux. Matched by number because `ErrorKind::StorageFull` is
/// newer than the workspace's minimum Rust version.
const ENOSPC: i32 = 28;
/// EDQUOT: a full quota is, to the log, the same as a full disk.
const EDQUOT: i32 = 122;

/// A directory of the local file system seen as a [`Disk`]. Cloning is cheap
/// and every clone sees the same files.
#[derive(Clone, Debug)]
pub struct FsDisk {
    root: Arc<PathBuf>,
}

impl FsDisk {
    /// A disk rooted at `root`, which need not exist yet
    /// (`create_dir_all("")` makes it).
    pub fn new(root: PathBuf) -> FsDisk {
        FsDisk {
            root: Arc::new(root),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path of a disk path. Absolute paths and `..` are refused so
    /// that a bad name from a request or a file on disk cannot reach outside
    /// the root.
    fn resolve(&self, path: &str) -> DiskResult<PathBuf> {
        let rel = Path::new(path);
        for c in rel.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                _ => {
                    return Err(DiskError::Io(format!(
                        "{path}: path must be relative and stay under the disk root"
                    )))
                }
            }
        }
        Ok(self.root.join(rel))
    }
}

fn map_err(e: io::Error, path: &str) -> DiskError {
    match e.raw_os_error() {
        Some(ENOSPC) | Some(EDQUOT) => return DiskError::NoSpace,
        _ => {}
    }
    match e.kind() {
        ErrorKind::NotFound => DiskError::NotFound(path.to_string()),
        ErrorKind::AlreadyExists => DiskError::AlreadyExists(path.to_string()),
        _ => DiskError::Io(format!("{path}: {e}")),
    }
}

/// An open file of an [`FsDisk`]. Reads and writes are positional
/// (pread/pwrite), so one file can be shared by readers and the writer
/// without a cursor to fight over.
#[derive(Debug)]
pub struct FsFile {
    file: fs::File,
    /// The disk path, kept for error messages.
    path: String,
}

impl DiskFile for FsFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> DiskResult<usize> {
        // pread may return less than asked for before the end of the file
        // (signals, some file systems); the contract allows a short result
        // only at the end, so keep reading until the kernel says 0.
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(map_err(e, &self.path)),
            }
        }
        Ok(done)
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> DiskResult<()> {
        // The contract says a NoSpace write applied nothing. Linux reports a
        // full disk as a short write followed by ENOSPC, so remember the
        // length to take the partial extension back out. (A partial
        // overwrite inside the file cannot be undone, but on a full disk
        // overwrites need no new blocks and do not fail this way.)
        let len_before = self.len()?;
        let mut done = 0;
        while done < data.len() {
            match self.file.write_at(&data[done..], pos + done as u64) {
                Ok(0) => {
                    return Err(DiskError::Io(format!(
                        "{}: write returned 0 bytes at {}",
                        self.path,
                        pos + done as u64
                    )))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let err = map_err(e, &self.path);
                    if err == DiskError::NoSpace && done > 0 && pos + done as u64 > len_before {
                        // Best effort: if this fails too, recovery still cuts
                        // the unchecksummed tail.
                        let _ = self.file.set_len(len_before);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> DiskResult<()> {
        self.file.sync_data().map_err(|e| map_err(e, &self.path))
    }

    fn truncate(&self, len: u64) -> DiskResult<()> {
        self.file.set_len(len).map_err(|e| map_err(e, &self.path))
    }

    fn len(&self) -> DiskResult<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| map_err(e, &self.path))
    }
}

impl Disk for FsDisk {
    type File = FsFile;

    fn create(&self, path: &str) -> DiskResult<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.resolve(path)?)
            .map_err(|e| map_err(e, path))?;
        Ok(FsFile {
            file,
            path: path.to_string(),
        })
    }

    fn open(&self, path: &str) -> DiskResult<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.resolve(path)?)
            .map_err(|e| map_err(e, path))?;
        Ok(FsFile {
            file,
            path: path.to_string(),
        })
    }

    fn rename(&self, from: &str, to: &str) -> DiskResult<()> {
        fs::rename(self.resolve(from)?, self.resolve(to)?).map_err(|e| match e.kind() {
            // Almost always the source; the target's directory missing is
            // the other possibility, so name both.
            ErrorKind::NotFound => DiskError::NotFound(format!("{from} (renaming to {to})")),
            _ => map_err(e, &format!("rename {from} -> {to}")),
        })
    }

    fn remove(&self, path: &str) -> DiskResult<()> {
        fs::remove_file(self.resolve(path)?).map_err(|e| map_err(e, path))
    }

    fn list(&self, dir: &str) -> DiskResult<Vec<String>> {
        let entries = fs::read_dir(self.resolve(dir)?).map_err(|e| map_err(e, dir))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| map_err(e, dir))?;
            let is_file = entry.file_type().map_err(|e| map_err(e, dir))?.is_file();
            if !is_file {
                continue;
            }
            // The log only ever creates UTF-8 names; anything else in the
            // directory was put there by someone else and is none of ours.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &str) -> DiskResult<()> {
        fs::create_dir_all(self.resolve(dir)?).map_err(|e| map_err(e, dir))
    }

    fn sync_dir(&self, dir: &str) -> DiskResult<()> {
        // On Linux a directory opened read-only can be fsynced, and that is
        // what makes its entries (creates, renames, removes) durable.
        let handle = fs::File::open(self.resolve(dir)?).map_err(|e| map_err(e, dir))?;
        handle.sync_all().map_err(|e| map_err(e, dir))
    }

    fn exists(&self, path: &str) -> DiskResult<bool> {
        match fs::symlink_metadata(self.resolve(path)?) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(map_err(e, path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odradek_core::io::disk::conformance;

    fn disk() -> (tempfile::TempDir, FsDisk) {
        let dir = tempfile::tempdir().unwrap();
        let disk = FsDisk::new(dir.path().to_path_buf());
        (dir, disk)
    }

    #[test]
    fn conforms_to_the_disk_contract() {
        let (_dir, disk) = disk();
        conformance::check(&disk, "t");
    }

    #[test]
    fn conforms_in_a_nested_directory() {
        let (_dir, disk) = disk();
        conformance::check(&disk, "a/b/c");
    }

    #[test]
    fn missing_paths_are_not_found() {
        let (_dir, disk) = disk();
        assert_eq!(
            disk.open("nope").unwrap_err(),
            DiskError::NotFound("nope".into())
        );
        assert_eq!(
            disk.remove("x/nope").unwrap_err(),
            DiskError::NotFound("x/nope".into())
        );
        assert!(matches!(disk.list("nodir"), Err(DiskError::NotFound(_))));
        assert!(matches!(
            disk.sync_dir("nodir"),
            Err(DiskError::NotFound(_))
        ));
        assert!(matches!(
            disk.rename("nope", "other"),
            Err(DiskError::NotFound(_))
        ));
        assert!(!disk.exists("nope").unwrap());
    }

    #[test]
    fn list_skips_directories_and_sorts() {
        let (_dir, disk) = disk();
        disk.create_dir_all("d/sub").unwrap();
        for name in ["c", "a", "b"] {
            disk.create(&format!("d/{name}")).unwrap();
        }
        assert_eq!(disk.list("d").unwrap(), vec!["a", "b", "c"]);
    }

    #[test]
    fn the_root_itself_is_the_empty_path() {
        let (dir, _) = disk();
        let disk = FsDisk::new(dir.path().join("fresh"));
        disk.create_dir_all("").unwrap();
        disk.create("f").unwrap();
        disk.sync_dir("").unwrap();
        assert_eq!(disk.list("").unwrap(), vec!["f"]);
    }

    #[test]
    fn paths_cannot_escape_the_root() {
        let (_dir, disk) = disk();
        assert!(matches!(disk.create("../x"), Err(DiskError::Io(_))));
        assert!(matches!(disk.open("/etc/passwd"), Err(DiskError::Io(_))));
        assert!(matches!(disk.list("a/../.."), Err(DiskError::Io(_))));
    }

    #[test]
    fn clones_share_files_and_cross_threads() {
        let (_dir, disk) = disk();
        let other = disk.clone();
        std::thread::spawn(move || {
            let f = other.create("shared").unwrap();
            f.write_at(0, b"from a thread").unwrap();
            f.sync().unwrap();
        })
        .join()
        .unwrap();
        let f = disk.open("shared").unwrap();
        assert_eq!(f.read_exact_at(0, 13).unwrap(), b"from a thread");
    }

    #[test]
    fn large_writes_and_reads_are_complete() {
        let (_dir, disk) = disk();
        let data: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let f = disk.create("big").unwrap();
        f.write_at(7, &data).unwrap();
        let mut buf = vec![0u8; data.len() + 100];
        assert_eq!(f.read_at(7, &mut buf).unwrap(), data.len());
        assert_eq!(&buf[..data.len()], &data[..]);
    }

    #[test]
    fn error_mapping() {
        let full = io::Error::from_raw_os_error(ENOSPC);
        assert_eq!(map_err(full, "p"), DiskError::NoSpace);
        let gone = io::Error::from(ErrorKind::NotFound);
        assert_eq!(map_err(gone, "p"), DiskError::NotFound("p".into()));
        let denied = io::Error::from(ErrorKind::PermissionDenied);
        match map_err(denied, "p") {
            DiskError::Io(m) => assert!(m.starts_with("p: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
