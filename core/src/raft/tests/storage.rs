//! The disk store: round trips, torn tails, corruption, and the crash
//! between writing a snapshot and replacing the log.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::harness::{config, Net};
use crate::io::disk::mem::MemDisk;
use crate::io::disk::{read_file, write_file_atomically};
use crate::io::{Disk, DiskFile, Instant};
use crate::raft::disk_store::encode_snapshot;
use crate::raft::{
    Apply, DiskStore, Entry, EntryKind, QuorumState, Raft, RaftStore, Snapshot, StoreError,
};

const DIR: &str = "meta/raft";

/// A named way of damaging a log file's bytes.
type Damage = (&'static str, Box<dyn Fn(&mut Vec<u8>)>);
const LOG: &str = "meta/raft/log";

fn entries(from: u64, to: u64, epoch: u64) -> Vec<Entry> {
    (from..to)
        .map(|o| Entry {
            offset: o,
            epoch,
            kind: EntryKind::Data,
            data: vec![o as u8; (o as usize * 37) % 700],
        })
        .collect()
}

/// A disk holding a log of entries 0..n in epoch 1, synced.
fn disk_with(n: u64) -> MemDisk {
    let disk = MemDisk::new();
    let mut s = DiskStore::new(disk.clone(), DIR);
    s.load().unwrap();
    s.save_quorum_state(QuorumState {
        epoch: 1,
        voted_for: Some(2),
    })
    .unwrap();
    s.append(&entries(0, n, 1)).unwrap();
    s.sync().unwrap();
    disk
}

fn reopen(disk: &MemDisk) -> Result<crate::raft::Recovered, StoreError> {
    DiskStore::new(disk.clone(), DIR).load()
}

fn log_bytes(disk: &MemDisk) -> Vec<u8> {
    read_file(disk, LOG).unwrap()
}

/// Byte positions of each record, recomputed from the lengths.
fn record_starts(raw: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 12 <= raw.len() {
        out.push(pos);
        let len = u32::from_be_bytes(raw[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 12 + len + 1;
    }
    out
}

#[test]
fn what_was_synced_comes_back() {
    let disk = disk_with(10);
    let rec = reopen(&disk).unwrap();
    assert_eq!(
        rec.quorum,
        QuorumState {
            epoch: 1,
            voted_for: Some(2)
        }
    );
    assert_eq!(rec.entries, entries(0, 10, 1));
    assert_eq!(rec.snapshot, None);
    // Truncate and append, then reopen.
    let mut s = DiskStore::new(disk.clone(), DIR);
    s.load().unwrap();
    s.truncate(4).unwrap();
    s.append(&entries(4, 6, 2)).unwrap();
    s.sync().unwrap();
    let rec = reopen(&disk).unwrap();
    let mut want = entries(0, 4, 1);
    want.extend(entries(4, 6, 2));
    assert_eq!(rec.entries, want);
}

#[test]
fn appends_that_do_not_continue_the_log_are_refused() {
    let disk = disk_with(3);
    let mut s = DiskStore::new(disk, DIR);
    s.load().unwrap();
    assert!(matches!(
        s.append(&entries(5, 6, 1)),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn a_torn_tail_is_cut_in_every_shape_a_crash_leaves() {
    let n = 8;
    let pristine = log_bytes(&disk_with(n));
    let starts = record_starts(&pristine);
    let last = *starts.last().unwrap();
    let cases: Vec<Damage> = vec![
        (
            "cut inside the last record",
            Box::new(move |b| b.truncate(last + 20)),
        ),
        (
            "cut inside the last header",
            Box::new(move |b| b.truncate(last + 5)),
        ),
        (
            "zeros after the end",
            Box::new(|b| b.extend_from_slice(&[0u8; 700])),
        ),
        (
            "last record's tail reads as zeros",
            Box::new(|b| {
                let l = b.len();
                for x in &mut b[l - 30..] {
                    *x = 0;
                }
            }),
        ),
        (
            "last header's end reads as zeros",
            Box::new(move |b| {
                for x in &mut b[last + 6..] {
                    *x = 0;
                }
            }),
        ),
        (
            "a lost write before one that survived",
            Box::new(move |b| {
                // The last record never arrived, but a later append did.
                let tail = b[starts[2]..starts[4]].to_vec();
                for x in &mut b[last..] {
                    *x = 0;
                }
                b.extend_from_slice(&tail);
            }),
        ),
    ];
    for (what, damage) in cases {
        let disk = disk_with(n);
        let mut bytes = pristine.clone();
        damage(&mut bytes);
        let f = disk.open(LOG).unwrap();
        f.truncate(0).unwrap();
        f.write_at(0, &bytes).unwrap();
        let rec = reopen(&disk).unwrap_or_else(|e| panic!("{what}: {e}"));
        let want = if what == "zeros after the end" {
            n
        } else {
            n - 1
        };
        assert_eq!(rec.entries, entries(0, want, 1), "{what}");
        // Opening left a clean file: new appends land right after.
        let mut s = DiskStore::new(disk.clone(), DIR);
        s.load().unwrap();
        s.append(&entries(want, want + 2, 1)).unwrap();
        s.sync().unwrap();
        assert_eq!(
            reopen(&disk).unwrap().entries,
            entries(0, want + 2, 1),
            "{what}: append after recovery"
        );
    }
}

#[test]
fn damage_a_crash_cannot_explain_is_an_error() {
    let n = 8;
    let pristine = log_bytes(&disk_with(n));
    let starts = record_starts(&pristine);
    let mid = starts[3];
    let cases: Vec<Damage> = vec![
        (
            "flipped payload bit",
            Box::new(move |b| b[mid + 14] ^= 0x10),
        ),
        ("flipped length bit", Box::new(move |b| b[mid + 2] ^= 0x01)),
        (
            "flipped checksum bit",
            Box::new(move |b| b[mid + 9] ^= 0x80),
        ),
        (
            "flipped length pointing past the end",
            Box::new(move |b| b[mid] ^= 0x40),
        ),
        (
            "wrong trailer",
            Box::new(move |b| {
                let end = starts[4] - 1;
                b[end] = 0x5A;
            }),
        ),
        (
            "flipped bit in the last record",
            Box::new(|b| {
                let l = b.len();
                b[l - 5] ^= 0x04;
            }),
        ),
    ];
    for (what, damage) in cases {
        let disk = disk_with(n);
        let mut bytes = pristine.clone();
        damage(&mut bytes);
        disk.open(LOG).unwrap().write_at(0, &bytes).unwrap();
        match reopen(&disk) {
            Err(StoreError::Corrupt(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn damaged_small_files_are_errors() {
    for name in ["quorum-state", "snapshot"] {
        let disk = disk_with(3);
        let mut s = DiskStore::new(disk.clone(), DIR);
        s.load().unwrap();
        s.save_snapshot(
            &Snapshot {
                last_offset: 1,
                last_epoch: 1,
                data: b"state".to_vec(),
            },
            &entries(2, 3, 1),
        )
        .unwrap();
        let path = format!("{DIR}/{name}");
        let mut b = read_file(&disk, &path).unwrap();
        b[6] ^= 1;
        disk.open(&path).unwrap().write_at(0, &b).unwrap();
        assert!(
            matches!(reopen(&disk), Err(StoreError::Corrupt(_))),
            "{name}"
        );
    }
}

#[test]
fn a_crash_between_snapshot_and_log_rewrite_is_reconciled() {
    // The snapshot file is in place, the log is still the old one.
    let cases = [
        // (snapshot last offset, its epoch, entries expected after)
        (5, 1, entries(6, 10, 1)), // agrees with the log: keep the rest
        (5, 2, vec![]),            // disagrees: the log goes
        (20, 3, vec![]),           // beyond the log: nothing to keep
        (9, 1, vec![]),            // covers the whole log
    ];
    for (last_offset, last_epoch, want) in cases {
        let disk = disk_with(10);
        let snap = Snapshot {
            last_offset,
            last_epoch,
            data: b"app".to_vec(),
        };
        write_file_atomically(&disk, &format!("{DIR}/snapshot"), &encode_snapshot(&snap)).unwrap();
        let rec = reopen(&disk).unwrap();
        assert_eq!(rec.snapshot, Some(snap.clone()));
        assert_eq!(rec.entries, want, "snapshot at {last_offset}");
        // And opening normalised the files.
        let again = reopen(&disk).unwrap();
        assert_eq!(again.entries, want);
    }
}

#[test]
fn a_log_starting_after_the_snapshot_is_an_error() {
    let disk = MemDisk::new();
    let mut s = DiskStore::new(disk.clone(), DIR);
    s.load().unwrap();
    s.save_snapshot(
        &Snapshot {
            last_offset: 3,
            last_epoch: 1,
            data: vec![],
        },
        &entries(4, 6, 1),
    )
    .unwrap();
    // Replace the snapshot by an older one: the log now has a gap before it.
    write_file_atomically(
        &disk,
        &format!("{DIR}/snapshot"),
        &encode_snapshot(&Snapshot {
            last_offset: 1,
            last_epoch: 1,
            data: vec![],
        }),
    )
    .unwrap();
    assert!(matches!(reopen(&disk), Err(StoreError::Corrupt(_))));
}

#[test]
fn leftover_temporary_files_do_not_matter() {
    let disk = disk_with(4);
    for name in ["log.tmp", "snapshot.tmp", "quorum-state.tmp"] {
        let f = disk.create(&format!("{DIR}/{name}")).unwrap();
        f.write_at(0, b"half written").unwrap();
    }
    assert_eq!(reopen(&disk).unwrap().entries, entries(0, 4, 1));
    assert_eq!(reopen(&disk).unwrap().snapshot, None);
}

#[test]
fn a_disk_backed_node_restarts_from_its_files() {
    let disk = MemDisk::new();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let cfg = config(1, 1);
    let mut r = Raft::open(disk.clone(), DIR, cfg.clone(), Instant::ZERO, &mut rng).unwrap();
    r.tick(Instant::from_millis(400), &mut rng).unwrap();
    assert!(r.is_leader());
    for i in 0..4u8 {
        r.propose(vec![i]).unwrap();
    }
    assert_eq!(r.take_ready().apply.len(), 5);
    r.compact(2, b"snap-through-2".to_vec()).unwrap();
    r.propose(vec![9]).unwrap();
    let epoch = r.epoch();
    drop(r);

    let mut r = Raft::open(disk.clone(), DIR, cfg, Instant::ZERO, &mut rng).unwrap();
    assert_eq!(r.epoch(), epoch);
    assert_eq!(r.voted_for(), Some(1));
    assert_eq!(r.log_start_offset(), 3);
    assert_eq!(r.log_end_offset(), 6);
    // The snapshot comes back at once; the entries after it once the new
    // leader has committed them.
    let first = r.take_ready().apply;
    assert!(matches!(&first[..], [Apply::Restore(s)] if s.data == b"snap-through-2"));
    r.tick(Instant::from_millis(400), &mut rng).unwrap();
    let data: Vec<_> = r
        .take_ready()
        .apply
        .into_iter()
        .filter_map(|a| match a {
            Apply::Entry(e) if e.kind == EntryKind::Data => Some(e.data),
            _ => None,
        })
        .collect();
    assert_eq!(data, vec![vec![2], vec![3], vec![9]]);
}

#[test]
fn a_disk_backed_cluster_survives_restarts_of_every_node() {
    let disks: Vec<MemDisk> = (0..3).map(|_| MemDisk::new()).collect();
    let d = disks.clone();
    let mut net = Net::with(3, config, move |id| {
        DiskStore::new(d[id as usize - 1].clone(), DIR)
    });
    let leader = net.elect_any();
    for i in 0..10u8 {
        net.propose(leader, &[i]).unwrap();
    }
    net.advance(100, None);
    net.compact(1);
    for id in 1..=3 {
        net.crash(id, 0);
        net.restart(id);
    }
    let leader = net.elect_any();
    net.propose(leader, b"more").unwrap();
    net.advance(200, None);
    let mut want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
    want.push(b"more".to_vec());
    for id in 1..=3 {
        assert_eq!(net.applied(id), want, "node {id}");
    }
}
