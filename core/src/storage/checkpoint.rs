//! Small files that say where the log stands, each replaced atomically
//! (write a temporary file, sync, rename, sync the directory).
//!
//! * `leader-epoch-checkpoint` — Kafka's format: a version line (`0`), a
//!   count line, then one `epoch start_offset` line per leader epoch — plus
//!   a final `crc` line, which Kafka's file lacks: a flipped digit there can
//!   leave a file that still parses and is wrong, and the simulator showed
//!   it. When the check fails, recovery rebuilds the cache from the batches.
//! * `partition.checkpoint.a` and `.b` — two copies of the recovery point
//!   (offsets below it were synced, so recovery need not scan them), the log
//!   start offset, and a sequence number; recovery uses the newest copy
//!   whose CRC holds. Kafka keeps the first two per log directory in single
//!   files; Odradek keeps them per partition so that each partition recovers
//!   on its own, and twice, because the log start offset exists nowhere
//!   else and must not move back when one copy rots.

use std::fmt::Write as _;

/// The start offset of each leader epoch, in increasing epoch and offset
/// order (KIP-101). Followers use it to find where their log diverges from
/// the leader's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the
    /// cache changed. An epoch not newer than the latest is ignored, as is a
    /// newer epoch whose start offset precedes the latest's — both would be
    /// a caller bug or stale input, and the cache must stay monotonic.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 {
            return false;
        }
        match self.entries.last() {
            Some(&(e, o)) if epoch <= e || start_offset < o => false,
            _ => {
                self.entries.push((epoch, start_offset));
                true
            }
        }
    }

    /// For a follower asking "where does `epoch` end on your log?": the
    /// largest epoch `<= epoch` and the offset where the next epoch starts
    /// (or `log_end` for the latest). `None` if `epoch` predates every entry.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let i = self.entries.partition_point(|&(e, _)| e <= epoch);
        if i == 0 {
            return None;
        }
        let found = self.entries[i - 1].0;
        let end = self.entries.get(i).map_or(log_end, |&(_, o)| o);
        Some((found, end))
    }

    /// The epoch of the batch starting at `offset`, if the cache covers it.
    pub fn epoch_for(&self, offset: i64) -> Option<i32> {
        let i = self.entries.partition_point(|&(_, o)| o <= offset);
        i.checked_sub(1).map(|i| self.entries[i].0)
    }

    /// Drops epochs that start at or after `end` (the log was truncated).
    pub fn truncate_from_end(&mut self, end: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, o)| o < end);
        self.entries.len() != before
    }

    /// Forgets epochs wholly before `start` (the log's start moved up); the
    /// epoch in force at `start` is kept, starting at `start`.
    pub fn truncate_from_start(&mut self, start: i64) -> bool {
        let i = self.entries.partition_point(|&(_, o)| o <= start);
        if i <= 1 && self.entries.first().is_none_or(|&(_, o)| o >= start) {
            return false;
        }
        let keep_from = i - 1;
        let epoch = self.entries[keep_from].0;
        self.entries.drain(..keep_from);
        self.entries[0] = (epoch, start);
        true
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("0\n{}\n", self.entries.len());
        for (e, o) in &self.entries {
            let _ = writeln!(s, "{e} {o}");
        }
        seal(s)
    }

    /// Parses the file strictly: anything off is an error, not a guess.
    pub fn decode(bytes: &[u8]) -> Result<LeaderEpochCache, String> {
        let text = unseal(bytes)?;
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err("unknown leader-epoch-checkpoint version".into());
        }
        let n: usize = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or("bad entry count")?;
        let mut cache = LeaderEpochCache::default();
        for _ in 0..n {
            let line = lines.next().ok_or("fewer entries than the count")?;
            let mut parts = line.split(' ');
            let e: i32 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or("bad epoch")?;
            let o: i64 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or("bad offset")?;
            if parts.next().is_some() || o < 0 || !cache.assign(e, o) {
                return Err(format!("invalid entry {line:?}"));
            }
        }
        if lines.next().is_some() {
            return Err("more entries than the count".into());
        }
        Ok(cache)
    }
}

/// Appends a `crc` line covering everything before it.
pub(crate) fn seal(body: String) -> Vec<u8> {
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{body}crc {crc:08x}\n").into_bytes()
}

/// Checks and strips the `crc` line.
pub(crate) fn unseal(bytes: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let crc_at = text.rfind("crc ").ok_or("no crc line")?;
    let (body, crc_line) = text.split_at(crc_at);
    let stored = u32::from_str_radix(crc_line.trim_start_matches("crc ").trim_end(), 16)
        .map_err(|_| "bad crc line")?;
    if !crc_line.ends_with('\n')
        || crc_line.len() != 13
        || crc32c::crc32c(body.as_bytes()) != stored
    {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

/// What `partition.checkpoint.{a,b}` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    pub recovery_point: i64,
    pub log_start_offset: i64,
    /// Written copies count up; the newest valid copy wins.
    pub sequence: u64,
}

impl PartitionCheckpoint {
    pub fn encode(&self) -> Vec<u8> {
        seal(format!(
            "odradek-partition-checkpoint 1\nsequence {}\nrecovery_point {}\nlog_start_offset {}\n",
            self.sequence, self.recovery_point, self.log_start_offset
        ))
    }

    pub fn decode(bytes: &[u8]) -> Result<PartitionCheckpoint, String> {
        let body = unseal(bytes)?;
        let mut lines = body.lines();
        if lines.next() != Some("odradek-partition-checkpoint 1") {
            return Err("unknown checkpoint version".into());
        }
        let mut field = |name: &str| -> Result<i64, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("bad {name} line"))
        };
        let sequence = field("sequence")?;
        let recovery_point = field("recovery_point")?;
        let log_start_offset = field("log_start_offset")?;
        if recovery_point < 0 || log_start_offset < 0 || sequence < 0 {
            return Err("negative field".into());
        }
        Ok(PartitionCheckpoint {
            recovery_point,
            log_start_offset,
            sequence: sequence as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_cache_lookups() {
        let mut c = LeaderEpochCache::default();
        assert!(c.assign(1, 0));
        assert!(!c.assign(1, 5), "same epoch again is a no-op");
        assert!(c.assign(3, 10));
        assert!(!c.assign(2, 20), "older epoch ignored");
        assert!(!c.assign(4, 5), "start offsets cannot go back");
        assert!(c.assign(5, 30));
        assert_eq!(c.end_offset_for(0, 50), None);
        assert_eq!(c.end_offset_for(1, 50), Some((1, 10)));
        assert_eq!(c.end_offset_for(2, 50), Some((1, 10)));
        assert_eq!(c.end_offset_for(3, 50), Some((3, 30)));
        assert_eq!(c.end_offset_for(9, 50), Some((5, 50)));
        assert_eq!(c.epoch_for(-1), None);
        assert_eq!(c.epoch_for(9), Some(1));
        assert_eq!(c.epoch_for(10), Some(3));
        assert_eq!(c.epoch_for(1000), Some(5));
        assert!(c.truncate_from_end(30));
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        assert!(c.truncate_from_start(12));
        assert_eq!(c.entries(), &[(3, 12)]);
        assert!(!c.truncate_from_start(12));
    }

    #[test]
    fn epoch_file_round_trip_and_strictness() {
        let mut c = LeaderEpochCache::default();
        c.assign(0, 0);
        c.assign(7, 100);
        let bytes = c.encode();
        assert!(
            bytes.starts_with(b"0\n2\n0 0\n7 100\ncrc "),
            "Kafka's layout, then a crc line"
        );
        assert_eq!(LeaderEpochCache::decode(&bytes).unwrap(), c);
        let sealed = |body: &str| seal(body.to_string());
        assert!(LeaderEpochCache::decode(&sealed("0\n3\n0 0\n7 100\n")).is_err());
        assert!(LeaderEpochCache::decode(&sealed("0\n2\n7 100\n0 0\n")).is_err());
        assert!(LeaderEpochCache::decode(&sealed("1\n0\n")).is_err());
        assert!(LeaderEpochCache::decode(&sealed("0\n1\n0 0\n5 5\n")).is_err());
        assert!(
            LeaderEpochCache::decode(b"0\n2\n0 0\n7 100\n").is_err(),
            "no crc line"
        );
        // The flip the simulator found: a digit that still parses.
        let mut flipped = bytes.clone();
        let at = flipped.iter().position(|&b| b == b'7').unwrap();
        flipped[at] = b'9';
        assert!(LeaderEpochCache::decode(&flipped).is_err());
    }

    #[test]
    fn partition_checkpoint_detects_damage() {
        let cp = PartitionCheckpoint {
            recovery_point: 1234,
            log_start_offset: 17,
            sequence: 5,
        };
        let bytes = cp.encode();
        assert_eq!(PartitionCheckpoint::decode(&bytes).unwrap(), cp);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            assert!(
                PartitionCheckpoint::decode(&b).is_err(),
                "flip at {i} undetected"
            );
        }
        assert!(PartitionCheckpoint::decode(&bytes[..bytes.len() - 3]).is_err());
    }
}
