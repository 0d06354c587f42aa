//! Kafka's sparse segment indexes, kept in memory and mirrored to disk in
//! Kafka's file layout:
//!
//! * offset index (`.index`): 8-byte entries, relative offset (u32) and byte
//!   position (u32) in the segment's data file;
//! * time index (`.timeindex`): 12-byte entries, timestamp (i64) and
//!   relative offset (u32).
//!
//! Indexes are hints. A lookup yields a position to start scanning from; the
//! scan validates every batch it reads, so a stale or damaged index can cost
//! time, never correctness. On load they are sanity-checked and rebuilt from
//! the data file if anything is off.

pub const OFFSET_ENTRY: usize = 8;
pub const TIME_ENTRY: usize = 12;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    /// (relative offset, position), both strictly increasing.
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub fn entries(&self) -> &[(u32, u32)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds an entry if it keeps both columns strictly increasing; returns
    /// whether it was added.
    pub fn push(&mut self, rel_offset: u32, position: u32) -> bool {
        if let Some(&(o, p)) = self.entries.last() {
            if rel_offset <= o || position <= p {
                return false;
            }
        }
        self.entries.push((rel_offset, position));
        true
    }

    /// The entry with the greatest relative offset `<= rel`, if any.
    pub fn floor(&self, rel: u32) -> Option<(u32, u32)> {
        let i = self.entries.partition_point(|&(o, _)| o <= rel);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops entries at or past `position` (after a truncation).
    pub fn truncate_to_position(&mut self, position: u32) {
        let i = self.entries.partition_point(|&(_, p)| p < position);
        self.entries.truncate(i);
    }

    pub fn encode_entry(rel: u32, pos: u32) -> [u8; OFFSET_ENTRY] {
        let mut e = [0u8; OFFSET_ENTRY];
        e[..4].copy_from_slice(&rel.to_be_bytes());
        e[4..].copy_from_slice(&pos.to_be_bytes());
        e
    }

    pub fn encode(&self) -> Vec<u8> {
        self.entries
            .iter()
            .flat_map(|&(o, p)| Self::encode_entry(o, p))
            .collect()
    }

    /// Decodes a file's bytes, refusing anything a correct index could not
    /// be: a partial entry, non-increasing columns, a position at or past the
    /// data's size, an offset at or past the segment's end. Trailing zero
    /// entries (Kafka preallocates index files) end the index.
    pub fn decode(bytes: &[u8], data_size: u64, max_rel: u32) -> Result<OffsetIndex, String> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY) {
            return Err(format!(
                "offset index length {} is not a multiple of 8",
                bytes.len()
            ));
        }
        let mut idx = OffsetIndex::default();
        for (i, e) in bytes.chunks_exact(OFFSET_ENTRY).enumerate() {
            let rel = u32::from_be_bytes(e[..4].try_into().expect("4"));
            let pos = u32::from_be_bytes(e[4..].try_into().expect("4"));
            if i > 0 && rel == 0 && pos == 0 {
                break;
            }
            if pos as u64 >= data_size.max(1) || rel > max_rel || !idx.push(rel, pos) {
                return Err(format!(
                    "offset index entry {i} ({rel}, {pos}) is out of order or range"
                ));
            }
        }
        Ok(idx)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeIndex {
    /// (timestamp, relative offset), both strictly increasing.
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    pub fn entries(&self) -> &[(i64, u32)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    pub fn push(&mut self, timestamp: i64, rel_offset: u32) -> bool {
        if let Some(&(t, o)) = self.entries.last() {
            if timestamp <= t || rel_offset <= o {
                return false;
            }
        }
        self.entries.push((timestamp, rel_offset));
        true
    }

    /// The entry with the greatest timestamp `< ts`: batches before its
    /// offset cannot hold a record at or after `ts` — well, they can, since
    /// timestamps are not monotonic, which is why callers only use this to
    /// skip and then scan.
    pub fn floor_before(&self, ts: i64) -> Option<(i64, u32)> {
        let i = self.entries.partition_point(|&(t, _)| t < ts);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn truncate_from_rel(&mut self, rel: u32) {
        let i = self.entries.partition_point(|&(_, o)| o < rel);
        self.entries.truncate(i);
    }

    pub fn encode_entry(ts: i64, rel: u32) -> [u8; TIME_ENTRY] {
        let mut e = [0u8; TIME_ENTRY];
        e[..8].copy_from_slice(&ts.to_be_bytes());
        e[8..].copy_from_slice(&rel.to_be_bytes());
        e
    }

    pub fn encode(&self) -> Vec<u8> {
        self.entries
            .iter()
            .flat_map(|&(t, o)| Self::encode_entry(t, o))
            .collect()
    }

    pub fn decode(bytes: &[u8], max_rel: u32) -> Result<TimeIndex, String> {
        if !bytes.len().is_multiple_of(TIME_ENTRY) {
            return Err(format!(
                "time index length {} is not a multiple of 12",
                bytes.len()
            ));
        }
        let mut idx = TimeIndex::default();
        for (i, e) in bytes.chunks_exact(TIME_ENTRY).enumerate() {
            let ts = i64::from_be_bytes(e[..8].try_into().expect("8"));
            let rel = u32::from_be_bytes(e[8..].try_into().expect("4"));
            if i > 0 && ts == 0 && rel == 0 {
                break;
            }
            if rel > max_rel || !idx.push(ts, rel) {
                return Err(format!(
                    "time index entry {i} ({ts}, {rel}) is out of order or range"
                ));
            }
        }
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn floor_lookups() {
        let mut i = OffsetIndex::default();
        assert!(i.push(0, 0));
        assert!(i.push(10, 4000));
        assert!(i.push(25, 9000));
        assert!(!i.push(25, 9500), "offsets must increase");
        assert!(!i.push(30, 9000), "positions must increase");
        assert_eq!(i.floor(0), Some((0, 0)));
        assert_eq!(i.floor(9), Some((0, 0)));
        assert_eq!(i.floor(10), Some((10, 4000)));
        assert_eq!(i.floor(1000), Some((25, 9000)));
        i.truncate_to_position(9000);
        assert_eq!(i.entries(), &[(0, 0), (10, 4000)]);

        let mut t = TimeIndex::default();
        assert!(t.push(100, 0));
        assert!(t.push(200, 5));
        assert!(!t.push(150, 9), "timestamps must increase");
        assert_eq!(t.floor_before(100), None);
        assert_eq!(t.floor_before(101), Some((100, 0)));
        assert_eq!(t.floor_before(1000), Some((200, 5)));
    }

    #[test]
    fn decode_rejects_damage() {
        let mut i = OffsetIndex::default();
        i.push(0, 0);
        i.push(4, 100);
        let bytes = i.encode();
        assert_eq!(OffsetIndex::decode(&bytes, 200, 10).unwrap(), i);
        assert!(OffsetIndex::decode(&bytes[..7], 200, 10).is_err());
        assert!(
            OffsetIndex::decode(&bytes, 100, 10).is_err(),
            "position past data"
        );
        assert!(
            OffsetIndex::decode(&bytes, 200, 3).is_err(),
            "offset past segment"
        );
        let mut flipped = bytes.clone();
        flipped[8] = 0xff;
        assert!(OffsetIndex::decode(&flipped, 200, 10).is_err());
        // Preallocated zero tail is the end of the index.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 16]);
        assert_eq!(OffsetIndex::decode(&padded, 200, 10).unwrap(), i);
    }

    proptest! {
        #[test]
        fn prop_encode_decode(steps in proptest::collection::vec((1u32..100, 1u32..5000, 1i64..1000), 0..50)) {
            let mut o = OffsetIndex::default();
            let mut t = TimeIndex::default();
            let (mut rel, mut pos, mut ts) = (0u32, 0u32, 0i64);
            for (dr, dp, dt) in steps {
                rel += dr; pos += dp; ts += dt;
                o.push(rel, pos);
                t.push(ts, rel);
            }
            prop_assert_eq!(OffsetIndex::decode(&o.encode(), pos as u64 + 1, rel).unwrap(), o);
            prop_assert_eq!(TimeIndex::decode(&t.encode(), rel).unwrap(), t);
        }
    }
}
