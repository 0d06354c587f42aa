//! An in-memory disk on which every write is durable at once: for unit tests
//! of code above the disk. The simulator's disk (`sim/`) is the one that
//! loses, tears and corrupts.

use super::{Disk, DiskError, DiskFile, DiskResult};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

#[derive(Default)]
struct State {
    files: BTreeMap<String, Rc<RefCell<Vec<u8>>>>,
    dirs: BTreeSet<String>,
}

#[derive(Clone, Default)]
pub struct MemDisk {
    state: Rc<RefCell<State>>,
}

pub struct MemFile {
    data: Rc<RefCell<Vec<u8>>>,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }
}

impl DiskFile for MemFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> DiskResult<usize> {
        let data = self.data.borrow();
        let pos = pos as usize;
        if pos >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - pos);
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        Ok(n)
    }

    fn write_at(&self, pos: u64, bytes: &[u8]) -> DiskResult<()> {
        let mut data = self.data.borrow_mut();
        let end = pos as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[pos as usize..end].copy_from_slice(bytes);
        Ok(())
    }

    fn sync(&self) -> DiskResult<()> {
        Ok(())
    }

    fn truncate(&self, len: u64) -> DiskResult<()> {
        self.data.borrow_mut().resize(len as usize, 0);
        Ok(())
    }

    fn len(&self) -> DiskResult<u64> {
        Ok(self.data.borrow().len() as u64)
    }
}

impl Disk for MemDisk {
    type File = MemFile;

    fn create(&self, path: &str) -> DiskResult<MemFile> {
        let mut st = self.state.borrow_mut();
        if st.files.contains_key(path) {
            return Err(DiskError::AlreadyExists(path.to_string()));
        }
        let data = Rc::new(RefCell::new(Vec::new()));
        st.files.insert(path.to_string(), data.clone());
        Ok(MemFile { data })
    }

    fn open(&self, path: &str) -> DiskResult<MemFile> {
        let st = self.state.borrow();
        match st.files.get(path) {
            Some(data) => Ok(MemFile { data: data.clone() }),
            None => Err(DiskError::NotFound(path.to_string())),
        }
    }

    fn rename(&self, from: &str, to: &str) -> DiskResult<()> {
        let mut st = self.state.borrow_mut();
        let data = st
            .files
            .remove(from)
            .ok_or_else(|| DiskError::NotFound(from.to_string()))?;
        st.files.insert(to.to_string(), data);
        Ok(())
    }

    fn remove(&self, path: &str) -> DiskResult<()> {
        match self.state.borrow_mut().files.remove(path) {
            Some(_) => Ok(()),
            None => Err(DiskError::NotFound(path.to_string())),
        }
    }

    fn list(&self, dir: &str) -> DiskResult<Vec<String>> {
        let st = self.state.borrow();
        if !dir.is_empty() && !st.dirs.contains(dir) {
            return Err(DiskError::NotFound(dir.to_string()));
        }
        Ok(st
            .files
            .keys()
            .filter(|p| super::parent_dir(p) == dir)
            .map(|p| super::file_name(p).to_string())
            .collect())
    }

    fn create_dir_all(&self, dir: &str) -> DiskResult<()> {
        let mut st = self.state.borrow_mut();
        st.dirs.extend(super::ancestors(dir));
        Ok(())
    }

    fn sync_dir(&self, _dir: &str) -> DiskResult<()> {
        Ok(())
    }

    fn exists(&self, path: &str) -> DiskResult<bool> {
        let st = self.state.borrow();
        Ok(st.files.contains_key(path) || st.dirs.contains(path))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_disk_conforms() {
        super::super::conformance::check(&super::MemDisk::new(), "t");
    }
}
