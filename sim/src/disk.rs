//! The simulated disk: a file system that keeps, separately, what a process
//! sees (the page cache) and what would survive a power loss, and that
//! breaks in the ways real disks break.
//!
//! * File data: every write and truncate goes to the page cache at once and
//!   onto a per-file list of pending operations; `sync` applies the pending
//!   list to the durable copy. At a crash each pending operation is kept,
//!   torn (a prefix of its 512-byte sectors kept), or lost, independently —
//!   so later writes can survive while earlier ones do not, as with a real
//!   page cache flushing out of order.
//! * Directories: create, rename and remove change the visible namespace at
//!   once and the durable one only when the parent directory is synced; at a
//!   crash a random prefix of each directory's pending changes survives.
//! * Faults drawn per operation: transient bit flips on read, latent rot of
//!   synced data, misdirected writes, ENOSPC, fsync errors that drop the
//!   dirty data they were to write (as Linux does).
//! * Latency: every operation adds simulated time to `busy_ns`, which the
//!   driver charges to the node that issued it.
//!
//! Everything random comes from the disk's own ChaCha stream, so a run's
//! disk behaviour is a function of its seed.

use odradek_core::io::disk::{
    ancestors, file_name, parent_dir, Disk, DiskError, DiskFile, DiskResult,
};
use odradek_core::io::Random;
use odradek_nemesis::DiskFaults;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

const SECTOR: usize = 512;

type Inode = u64;

#[derive(Clone, Debug)]
enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

fn apply(content: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { pos, data } => {
            let end = *pos as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*pos as usize..end].copy_from_slice(data);
        }
        FileOp::Truncate { len } => content.resize(*len as usize, 0),
    }
}

#[derive(Clone, Debug, Default)]
struct File {
    /// What the page cache holds: what reads see.
    cached: Vec<u8>,
    /// What the platter holds: what survives a crash.
    durable: Vec<u8>,
    /// Operations not yet made durable, in issue order.
    pending: Vec<FileOp>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link {
        name: String,
        inode: Inode,
    },
    Unlink {
        name: String,
    },
    Rename {
        from: String,
        to: String,
        inode: Inode,
    },
}

/// Something the disk did to data, for the checker to excuse losses that
/// are the disk's fault and not the storage engine's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub path: String,
    pub kind: &'static str,
    pub at_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub syncs: u64,
    pub read_flips: u64,
    pub latent_rots: u64,
    pub misdirects: u64,
    pub no_space: u64,
    pub sync_errors: u64,
    pub crashes: u64,
    pub writes_lost_at_crash: u64,
    pub writes_torn_at_crash: u64,
    pub dir_ops_lost_at_crash: u64,
}

struct State {
    rng: ChaCha8Rng,
    faults: DiskFaults,
    files: BTreeMap<Inode, File>,
    next_inode: Inode,
    /// Path -> inode as processes see it.
    visible: BTreeMap<String, Inode>,
    /// Path -> inode as it would be after a crash.
    durable: BTreeMap<String, Inode>,
    dirs: BTreeSet<String>,
    /// Per directory, namespace changes not yet synced.
    pending_dirs: BTreeMap<String, Vec<DirOp>>,
    /// Incremented at every crash; handles from before refuse to work.
    generation: u64,
    busy_ns: u64,
    now_ns: u64,
    damage: Vec<Damage>,
    stats: DiskStats,
}

impl State {
    fn latency(&mut self, range: (u64, u64)) {
        let (lo, hi) = range;
        let us = if hi > lo {
            self.rng.between(lo, hi)
        } else {
            lo
        };
        self.busy_ns += us * 1000;
    }

    fn path_of(&self, inode: Inode) -> String {
        self.visible
            .iter()
            .find(|(_, &i)| i == inode)
            .map_or_else(|| format!("<unlinked inode {inode}>"), |(p, _)| p.clone())
    }

    fn record_damage(&mut self, inode: Inode, kind: &'static str) {
        let path = self.path_of(inode);
        let at_ns = self.now_ns;
        self.damage.push(Damage { path, kind, at_ns });
    }

    fn dir_op(&mut self, path: &str, op: DirOp) {
        self.pending_dirs
            .entry(parent_dir(path).to_string())
            .or_default()
            .push(op);
    }

    fn apply_dir_op(ns: &mut BTreeMap<String, Inode>, op: &DirOp) {
        match op {
            DirOp::Link { name, inode } => {
                ns.insert(name.clone(), *inode);
            }
            DirOp::Unlink { name } => {
                ns.remove(name);
            }
            DirOp::Rename { from, to, inode } => {
                ns.remove(from);
                ns.insert(to.clone(), *inode);
            }
        }
    }

    fn check_dir(&self, path: &str) -> DiskResult<()> {
        let dir = parent_dir(path);
        if dir.is_empty() || self.dirs.contains(dir) {
            Ok(())
        } else {
            Err(DiskError::NotFound(dir.to_string()))
        }
    }
}

/// A handle on the simulated disk. Clones share the disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
}

pub struct SimFile {
    state: Rc<RefCell<State>>,
    inode: Inode,
    generation: u64,
}

impl SimDisk {
    pub fn new(rng: ChaCha8Rng, faults: DiskFaults) -> SimDisk {
        SimDisk {
            state: Rc::new(RefCell::new(State {
                rng,
                faults,
                files: BTreeMap::new(),
                next_inode: 1,
                visible: BTreeMap::new(),
                durable: BTreeMap::new(),
                dirs: BTreeSet::new(),
                pending_dirs: BTreeMap::new(),
                generation: 0,
                busy_ns: 0,
                now_ns: 0,
                damage: Vec::new(),
                stats: DiskStats::default(),
            })),
        }
    }

    pub fn set_faults(&self, faults: DiskFaults) {
        self.state.borrow_mut().faults = faults;
    }

    pub fn faults(&self) -> DiskFaults {
        self.state.borrow().faults
    }

    /// Tells the disk the simulated time, for damage records.
    pub fn set_now(&self, now_ns: u64) {
        self.state.borrow_mut().now_ns = now_ns;
    }

    /// Simulated time spent on operations since the last call.
    pub fn take_busy_ns(&self) -> u64 {
        std::mem::take(&mut self.state.borrow_mut().busy_ns)
    }

    pub fn damage(&self) -> Vec<Damage> {
        self.state.borrow().damage.clone()
    }

    pub fn stats(&self) -> DiskStats {
        self.state.borrow().stats.clone()
    }

    /// Power loss. Every handle opened before becomes useless, the namespace
    /// falls back to what was synced plus a random prefix of each
    /// directory's pending changes, and each file keeps its durable content
    /// plus a random selection of its pending writes, some torn.
    pub fn crash(&self) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.generation += 1;
        st.stats.crashes += 1;
        let keep = st.faults.crash_keep;
        let tear = st.faults.crash_tear;

        let pending_dirs = std::mem::take(&mut st.pending_dirs);
        for (_, ops) in pending_dirs {
            let survive = st.rng.below(ops.len() as u64 + 1) as usize;
            st.stats.dir_ops_lost_at_crash += (ops.len() - survive) as u64;
            for op in &ops[..survive] {
                State::apply_dir_op(&mut st.durable, op);
            }
        }
        st.visible = st.durable.clone();

        let live: BTreeSet<Inode> = st.durable.values().copied().collect();
        st.files.retain(|inode, _| live.contains(inode));
        let inodes: Vec<Inode> = st.files.keys().copied().collect();
        for inode in inodes {
            let file = st.files.get_mut(&inode).expect("listed");
            let pending = std::mem::take(&mut file.pending);
            let mut content = std::mem::take(&mut file.durable);
            for op in &pending {
                let roll = st.rng.unit();
                if roll < keep {
                    apply(&mut content, op);
                } else if roll < keep + tear {
                    if let FileOp::Write { pos, data } = op {
                        // Sectors reach the platter in order up to the cut.
                        let sectors = data.len().div_ceil(SECTOR);
                        let kept = st.rng.below(sectors as u64 + 1) as usize * SECTOR;
                        let kept = kept.min(data.len());
                        apply(
                            &mut content,
                            &FileOp::Write {
                                pos: *pos,
                                data: data[..kept].to_vec(),
                            },
                        );
                        st.stats.writes_torn_at_crash += 1;
                    }
                } else {
                    st.stats.writes_lost_at_crash += 1;
                }
            }
            file.cached = content.clone();
            file.durable = content;
        }
    }

    /// The process dies but the machine does not: the page cache survives
    /// whole, including data whose writeback failed. Old handles die.
    pub fn kill_process(&self) {
        let mut st = self.state.borrow_mut();
        st.generation += 1;
    }

    /// Total durable bytes, for reports.
    pub fn durable_bytes(&self) -> u64 {
        self.state
            .borrow()
            .files
            .values()
            .map(|f| f.durable.len() as u64)
            .sum()
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, Inode) -> DiskResult<T>) -> DiskResult<T> {
        let mut st = self.state.borrow_mut();
        if st.generation != self.generation || !st.files.contains_key(&self.inode) {
            return Err(DiskError::Io("stale file handle".into()));
        }
        f(&mut st, self.inode)
    }
}

impl DiskFile for SimFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> DiskResult<usize> {
        self.with(|st, inode| {
            st.stats.reads += 1;
            let lat = st.faults.write_us;
            st.latency((lat.0 / 2, lat.1 / 2));
            let flip = st.faults.read_flip;
            let file = &st.files[&inode];
            let pos = pos as usize;
            if pos >= file.cached.len() {
                return Ok(0);
            }
            let n = buf.len().min(file.cached.len() - pos);
            buf[..n].copy_from_slice(&file.cached[pos..pos + n]);
            if n > 0 && st.rng.chance(flip) {
                let span = if st.faults.read_flip_head {
                    n.min(64)
                } else {
                    n
                };
                let bit = st.rng.below(span as u64 * 8) as usize;
                buf[bit / 8] ^= 1 << (bit % 8);
                st.stats.read_flips += 1;
            }
            Ok(n)
        })
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> DiskResult<()> {
        self.with(|st, inode| {
            st.stats.writes += 1;
            let lat = st.faults.write_us;
            st.latency(lat);
            let (no_space, misdirect) = (st.faults.no_space, st.faults.misdirect);
            if st.rng.chance(no_space) {
                st.stats.no_space += 1;
                return Err(DiskError::NoSpace);
            }
            let mut target = pos;
            if !data.is_empty() && st.rng.chance(misdirect) {
                // Off by a few sectors either way, within or just past the file.
                let len = st.files[&inode].cached.len() as u64;
                let span = (len.max(pos) / SECTOR as u64).max(1);
                let wrong = st.rng.below(span + 2) * SECTOR as u64;
                if wrong != pos {
                    target = wrong;
                    st.stats.misdirects += 1;
                    st.record_damage(inode, "misdirected-write");
                }
            }
            let op = FileOp::Write {
                pos: target,
                data: data.to_vec(),
            };
            let file = st.files.get_mut(&inode).expect("checked");
            apply(&mut file.cached, &op);
            // A write that went elsewhere still leaves the file as long as
            // the caller thinks it is.
            let want_len = pos as usize + data.len();
            if target != pos && file.cached.len() < want_len {
                let ext = FileOp::Truncate {
                    len: want_len as u64,
                };
                apply(&mut file.cached, &ext);
                file.pending.push(op);
                file.pending.push(ext);
            } else {
                file.pending.push(op);
            }
            Ok(())
        })
    }

    fn sync(&self) -> DiskResult<()> {
        self.with(|st, inode| {
            st.stats.syncs += 1;
            let lat = st.faults.sync_us;
            st.latency(lat);
            let sync_error = st.faults.sync_error;
            if st.rng.chance(sync_error) {
                st.stats.sync_errors += 1;
                // The kernel gives up on the dirty pages: they stay readable
                // in the cache but are no longer queued for the platter.
                st.files.get_mut(&inode).expect("checked").pending.clear();
                return Err(DiskError::Io("fsync: input/output error".into()));
            }
            let file = st.files.get_mut(&inode).expect("checked");
            let pending = std::mem::take(&mut file.pending);
            for op in &pending {
                apply(&mut file.durable, op);
            }
            let rot = !file.durable.is_empty();
            let latent_rot = st.faults.latent_rot;
            if rot && st.rng.chance(latent_rot) {
                let file = st.files.get_mut(&inode).expect("checked");
                let bit = st.rng.below(file.durable.len() as u64 * 8) as usize;
                file.durable[bit / 8] ^= 1 << (bit % 8);
                if bit / 8 < file.cached.len() {
                    file.cached[bit / 8] ^= 1 << (bit % 8);
                }
                st.stats.latent_rots += 1;
                st.record_damage(inode, "latent-rot");
            }
            Ok(())
        })
    }

    fn truncate(&self, len: u64) -> DiskResult<()> {
        self.with(|st, inode| {
            let lat = st.faults.write_us;
            st.latency(lat);
            let op = FileOp::Truncate { len };
            let file = st.files.get_mut(&inode).expect("checked");
            apply(&mut file.cached, &op);
            file.pending.push(op);
            Ok(())
        })
    }

    fn len(&self) -> DiskResult<u64> {
        self.with(|st, inode| Ok(st.files[&inode].cached.len() as u64))
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    fn create(&self, path: &str) -> DiskResult<SimFile> {
        let mut st = self.state.borrow_mut();
        st.check_dir(path)?;
        if st.visible.contains_key(path) {
            return Err(DiskError::AlreadyExists(path.to_string()));
        }
        let no_space = st.faults.no_space;
        if st.rng.chance(no_space) {
            st.stats.no_space += 1;
            return Err(DiskError::NoSpace);
        }
        let lat = st.faults.write_us;
        st.latency(lat);
        let inode = st.next_inode;
        st.next_inode += 1;
        st.files.insert(inode, File::default());
        st.visible.insert(path.to_string(), inode);
        st.dir_op(
            path,
            DirOp::Link {
                name: path.to_string(),
                inode,
            },
        );
        Ok(SimFile {
            state: self.state.clone(),
            inode,
            generation: st.generation,
        })
    }

    fn open(&self, path: &str) -> DiskResult<SimFile> {
        let st = self.state.borrow();
        match st.visible.get(path) {
            Some(&inode) => Ok(SimFile {
                state: self.state.clone(),
                inode,
                generation: st.generation,
            }),
            None => Err(DiskError::NotFound(path.to_string())),
        }
    }

    fn rename(&self, from: &str, to: &str) -> DiskResult<()> {
        let mut st = self.state.borrow_mut();
        st.check_dir(to)?;
        let inode = *st
            .visible
            .get(from)
            .ok_or_else(|| DiskError::NotFound(from.to_string()))?;
        let lat = st.faults.write_us;
        st.latency(lat);
        st.visible.remove(from);
        st.visible.insert(to.to_string(), inode);
        if parent_dir(from) == parent_dir(to) {
            st.dir_op(
                to,
                DirOp::Rename {
                    from: from.to_string(),
                    to: to.to_string(),
                    inode,
                },
            );
        } else {
            st.dir_op(
                from,
                DirOp::Unlink {
                    name: from.to_string(),
                },
            );
            st.dir_op(
                to,
                DirOp::Link {
                    name: to.to_string(),
                    inode,
                },
            );
        }
        Ok(())
    }

    fn remove(&self, path: &str) -> DiskResult<()> {
        let mut st = self.state.borrow_mut();
        if st.visible.remove(path).is_none() {
            return Err(DiskError::NotFound(path.to_string()));
        }
        let lat = st.faults.write_us;
        st.latency(lat);
        st.dir_op(
            path,
            DirOp::Unlink {
                name: path.to_string(),
            },
        );
        Ok(())
    }

    fn list(&self, dir: &str) -> DiskResult<Vec<String>> {
        let st = self.state.borrow();
        if !dir.is_empty() && !st.dirs.contains(dir) {
            return Err(DiskError::NotFound(dir.to_string()));
        }
        Ok(st
            .visible
            .keys()
            .filter(|p| parent_dir(p) == dir)
            .map(|p| file_name(p).to_string())
            .collect())
    }

    fn create_dir_all(&self, dir: &str) -> DiskResult<()> {
        // Directories themselves are modelled as always durable: the
        // interesting losses are of the entries inside them.
        let mut st = self.state.borrow_mut();
        st.dirs.extend(ancestors(dir));
        Ok(())
    }

    fn sync_dir(&self, dir: &str) -> DiskResult<()> {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.stats.syncs += 1;
        let lat = st.faults.sync_us;
        st.latency(lat);
        let sync_error = st.faults.sync_error;
        if st.rng.chance(sync_error) {
            st.stats.sync_errors += 1;
            return Err(DiskError::Io(format!("fsync {dir}: input/output error")));
        }
        if let Some(ops) = st.pending_dirs.remove(dir) {
            for op in &ops {
                State::apply_dir_op(&mut st.durable, op);
            }
        }
        Ok(())
    }

    fn exists(&self, path: &str) -> DiskResult<bool> {
        let st = self.state.borrow();
        Ok(st.visible.contains_key(path) || st.dirs.contains(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn quiet_disk(seed: u64) -> SimDisk {
        SimDisk::new(ChaCha8Rng::seed_from_u64(seed), DiskFaults::none().quiet())
    }

    #[test]
    fn conforms_without_faults() {
        odradek_core::io::disk::conformance::check(&quiet_disk(1), "t");
    }

    #[test]
    fn synced_data_survives_and_unsynced_may_not() {
        let disk = SimDisk::new(
            ChaCha8Rng::seed_from_u64(2),
            DiskFaults {
                crash_keep: 0.0,
                crash_tear: 0.0,
                ..DiskFaults::none()
            },
        );
        disk.create_dir_all("d").unwrap();
        let f = disk.create("d/f").unwrap();
        f.write_at(0, b"durable").unwrap();
        f.sync().unwrap();
        disk.sync_dir("d").unwrap();
        f.write_at(7, b"-lost").unwrap();
        disk.crash();
        assert!(f.len().is_err(), "handles die with the process");
        let f = disk.open("d/f").unwrap();
        assert_eq!(f.read_exact_at(0, 7).unwrap(), b"durable");
        assert_eq!(f.len().unwrap(), 7);
    }

    #[test]
    fn unsynced_directory_entries_vanish() {
        let disk = SimDisk::new(
            ChaCha8Rng::seed_from_u64(3),
            DiskFaults {
                crash_keep: 1.0,
                ..DiskFaults::none()
            },
        );
        disk.create_dir_all("d").unwrap();
        // Over many seeds of the crash lottery, a file that was synced but
        // whose directory was not is sometimes gone.
        let mut vanished = 0;
        for i in 0..50 {
            let name = format!("d/f{i}");
            let f = disk.create(&name).unwrap();
            f.write_at(0, b"x").unwrap();
            f.sync().unwrap();
            let g = disk.create(&format!("d/g{i}")).unwrap();
            g.sync().unwrap();
            disk.crash();
            if !disk.exists(&name).unwrap() {
                vanished += 1;
            }
            disk.sync_dir("d").unwrap();
        }
        assert!(vanished > 0);
        // After a directory sync, entries are there for good.
        let f = disk.create("d/kept").unwrap();
        f.sync().unwrap();
        disk.sync_dir("d").unwrap();
        disk.crash();
        assert!(disk.exists("d/kept").unwrap());
    }

    #[test]
    fn rename_is_atomic_across_crashes() {
        for seed in 0..40 {
            let disk = SimDisk::new(
                ChaCha8Rng::seed_from_u64(seed),
                DiskFaults {
                    crash_tear: 0.3,
                    ..DiskFaults::none()
                },
            );
            disk.create_dir_all("d").unwrap();
            odradek_core::io::disk::write_file_atomically(&disk, "d/c", b"old-content").unwrap();
            let tmp = disk.create("d/c.tmp").unwrap();
            tmp.write_at(0, b"new-content").unwrap();
            tmp.sync().unwrap();
            disk.rename("d/c.tmp", "d/c").unwrap();
            disk.crash();
            let got = odradek_core::io::disk::read_file(&disk, "d/c").unwrap();
            assert!(
                got == b"old-content" || got == b"new-content",
                "seed {seed}: {got:?}"
            );
        }
    }

    #[test]
    fn failed_fsync_loses_the_data_even_if_a_later_fsync_succeeds() {
        let disk = SimDisk::new(
            ChaCha8Rng::seed_from_u64(4),
            DiskFaults {
                sync_error: 1.0,
                crash_keep: 1.0,
                ..DiskFaults::none()
            },
        );
        disk.create_dir_all("d").unwrap();
        let f = disk.create("d/f").unwrap();
        disk.set_faults(DiskFaults {
            crash_keep: 1.0,
            ..DiskFaults::none()
        });
        disk.sync_dir("d").unwrap();
        disk.set_faults(DiskFaults {
            sync_error: 1.0,
            ..DiskFaults::none()
        });
        f.write_at(0, b"data").unwrap();
        assert!(f.sync().is_err());
        disk.set_faults(DiskFaults {
            crash_keep: 1.0,
            ..DiskFaults::none()
        });
        assert_eq!(
            f.read_exact_at(0, 4).unwrap(),
            b"data",
            "still in the cache"
        );
        f.sync().unwrap();
        disk.crash();
        let f = disk.open("d/f").unwrap();
        assert_eq!(f.len().unwrap(), 0, "the second fsync had nothing to write");
    }

    #[test]
    fn read_flips_are_transient_and_counted() {
        let disk = SimDisk::new(
            ChaCha8Rng::seed_from_u64(5),
            DiskFaults {
                read_flip: 0.5,
                ..DiskFaults::none()
            },
        );
        disk.create_dir_all("d").unwrap();
        let f = disk.create("d/f").unwrap();
        f.write_at(0, &[0u8; 64]).unwrap();
        let mut flipped = 0;
        for _ in 0..100 {
            if f.read_exact_at(0, 64).unwrap() != [0u8; 64] {
                flipped += 1;
            }
        }
        assert!(flipped > 20 && flipped < 80);
        assert_eq!(disk.stats().read_flips, flipped);
    }

    #[test]
    fn same_seed_same_disk() {
        let run = |seed| {
            let disk = SimDisk::new(
                ChaCha8Rng::seed_from_u64(seed),
                DiskFaults {
                    crash_keep: 0.4,
                    crash_tear: 0.4,
                    misdirect: 0.05,
                    ..DiskFaults::none()
                },
            );
            disk.create_dir_all("d").unwrap();
            let f = disk.create("d/f").unwrap();
            for i in 0..200u64 {
                f.write_at(i * 100, &[i as u8; 700]).unwrap();
                if i % 7 == 0 {
                    f.sync().unwrap();
                }
            }
            disk.sync_dir("d").unwrap();
            disk.crash();
            (
                odradek_core::io::disk::read_file(&disk, "d/f").unwrap(),
                disk.stats(),
            )
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9).0, run(10).0);
    }
}
