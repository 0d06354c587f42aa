//! The single broker's topic metadata on disk: which topics exist, their ids,
//! partition counts and config overrides. A small text file closed by a CRC
//! line, so a torn or rotten copy is detected rather than half-believed,
//! kept in two copies each replaced atomically (write, sync, rename, sync
//! the directory) one after the other on every change, with a generation
//! number: rot in one copy, or a crash between the two writes, leaves the
//! other to load. When the Raft metadata log arrives, it replaces this.
//!
//! Deleting a topic is two steps so a crash in between cannot leave data
//! behind a topic that no longer exists: the topic is first marked
//! `deleting` (it vanishes for clients), its partitions' files are removed,
//! and only then is it dropped from the file; opening the broker finishes
//! any deletion it finds marked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::io::disk::{self, Disk, DiskResult};

/// The two copies; `META_FILE` is the first.
pub const META_FILES: [&str; 2] = ["odradek-topics.a", "odradek-topics.b"];
pub const META_FILE: &str = META_FILES[0];
const MAGIC: &str = "odradek-topics v1";

/// Kafka's limit on topic name length.
pub const MAX_TOPIC_NAME: usize = 249;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: u128,
    pub partitions: i32,
    pub deleting: bool,
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaState {
    pub cluster_id: String,
    /// Bumped on every store; the newer valid copy wins at load.
    pub generation: u64,
    /// Feeds topic ids, so a topic deleted and created again gets a new id.
    pub next_seq: u64,
    /// Producer ids below this are reserved (written before use); ids from
    /// `next_producer_id` up to it may be handed out without a write.
    pub producer_ids_reserved: i64,
    /// Not persisted: after a restart, allocation resumes at the reserved
    /// mark, skipping whatever of the last block went unused.
    pub next_producer_id: i64,
    pub topics: BTreeMap<String, TopicMeta>,
}

impl MetaState {
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC}");
        let _ = writeln!(s, "cluster {}", self.cluster_id);
        let _ = writeln!(s, "generation {}", self.generation);
        let _ = writeln!(s, "next-seq {}", self.next_seq);
        let _ = writeln!(s, "producer-ids {}", self.producer_ids_reserved);
        for t in self.topics.values() {
            let _ = writeln!(
                s,
                "topic {} {:032x} {} {}",
                t.name,
                t.id,
                t.partitions,
                if t.deleting { "deleting" } else { "live" }
            );
            for (k, v) in &t.configs {
                let _ = writeln!(s, "config {} {}={}", t.name, k, v);
            }
        }
        let crc = crc32c::crc32c(s.as_bytes());
        let _ = writeln!(s, "crc {crc:08x}");
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaState, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or("no crc line")?;
        let (body, crc_line) = text.split_at(body_end);
        let stored = crc_line
            .trim()
            .strip_prefix("crc ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or("bad crc line")?;
        let computed = crc32c::crc32c(body.as_bytes());
        if stored != computed {
            return Err(format!(
                "crc mismatch: stored {stored:08x}, computed {computed:08x}"
            ));
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err("unknown format".into());
        }
        let mut st = MetaState::default();
        for line in lines {
            let (kind, rest) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            match kind {
                "cluster" => st.cluster_id = rest.to_string(),
                "generation" => {
                    st.generation = rest.parse().map_err(|_| format!("bad line {line:?}"))?
                }
                "next-seq" => {
                    st.next_seq = rest.parse().map_err(|_| format!("bad line {line:?}"))?
                }
                "producer-ids" => {
                    st.producer_ids_reserved =
                        rest.parse().map_err(|_| format!("bad line {line:?}"))?;
                    st.next_producer_id = st.producer_ids_reserved;
                }
                "topic" => {
                    let f: Vec<&str> = rest.split(' ').collect();
                    if f.len() != 4 {
                        return Err(format!("bad line {line:?}"));
                    }
                    let id = u128::from_str_radix(f[1], 16)
                        .map_err(|_| format!("bad id in {line:?}"))?;
                    let partitions = f[2].parse().map_err(|_| format!("bad count in {line:?}"))?;
                    st.topics.insert(
                        f[0].to_string(),
                        TopicMeta {
                            name: f[0].to_string(),
                            id,
                            partitions,
                            deleting: f[3] == "deleting",
                            configs: BTreeMap::new(),
                        },
                    );
                }
                "config" => {
                    let (topic, kv) = rest
                        .split_once(' ')
                        .ok_or_else(|| format!("bad line {line:?}"))?;
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("bad line {line:?}"))?;
                    let t = st
                        .topics
                        .get_mut(topic)
                        .ok_or_else(|| format!("config for unknown topic in {line:?}"))?;
                    t.configs.insert(k.to_string(), v.to_string());
                }
                _ => return Err(format!("bad line {line:?}")),
            }
        }
        Ok(st)
    }

    /// The newest valid copy; `None` if there is none at all (a new data
    /// directory); an error if copies exist but none is valid.
    pub fn load<D: Disk>(disk: &D, dir: &str) -> Result<Option<MetaState>, String> {
        let mut best: Option<MetaState> = None;
        let mut problems = Vec::new();
        let mut any = false;
        for name in META_FILES {
            let path = disk::join(dir, name);
            match Self::load_copy(disk, &path) {
                Ok(None) => {}
                Ok(Some(st)) => {
                    any = true;
                    if best.as_ref().is_none_or(|b| st.generation > b.generation) {
                        best = Some(st);
                    }
                }
                Err(e) => {
                    any = true;
                    problems.push(e);
                }
            }
        }
        match best {
            Some(st) => Ok(Some(st)),
            None if any => Err(format!(
                "no valid copy of the topic metadata: {}",
                problems.join("; ")
            )),
            None => Ok(None),
        }
    }

    fn load_copy<D: Disk>(disk: &D, path: &str) -> Result<Option<MetaState>, String> {
        match disk.exists(path) {
            Ok(false) => return Ok(None),
            Ok(true) => {}
            Err(e) => return Err(format!("{path}: {e}")),
        }
        // A transient read error must not be taken for damage: retry a few
        // times before giving up on the copy.
        let mut last = String::new();
        for _ in 0..crate::storage::segment::READ_RETRIES {
            match disk::read_file(disk, path) {
                Ok(bytes) => match MetaState::decode(&bytes) {
                    Ok(st) => return Ok(Some(st)),
                    Err(e) => last = e,
                },
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("{path}: {last}"))
    }

    /// Writes both copies with the next generation. On an error the caller
    /// keeps its previous state: whichever copies were written hold the new
    /// generation, and the load picks it — which is the state the caller
    /// did not adopt, so a failed store must not be retried with different
    /// content without a restart in between (callers refuse the request and
    /// leave the broker's state as it was; the next store rewrites both).
    pub fn store<D: Disk>(&mut self, disk: &D, dir: &str) -> DiskResult<()> {
        self.generation += 1;
        for name in META_FILES {
            disk::write_file_atomically(disk, &disk::join(dir, name), &self.encode())?;
        }
        Ok(())
    }

    /// A new topic id: derived from the cluster id and a sequence number
    /// that never repeats, so deterministic under simulation and distinct
    /// for every topic this cluster ever creates.
    pub fn fresh_id(&mut self, name: &str) -> u128 {
        self.next_seq += 1;
        let mut id: u128 = 0;
        for salt in 0u32..4 {
            let mut h = crc32c::crc32c(&salt.to_be_bytes());
            h = crc32c::crc32c_append(h, self.cluster_id.as_bytes());
            h = crc32c::crc32c_append(h, &self.next_seq.to_be_bytes());
            h = crc32c::crc32c_append(h, name.as_bytes());
            id = (id << 32) | h as u128;
        }
        // Shape it as a version-4 UUID; never the nil id, which Kafka
        // reserves for "no id".
        id = (id & !(0xf << 76)) | (0x4 << 76);
        id = (id & !(0x3 << 62)) | (0x2 << 62);
        id
    }
}

/// Kafka's topic name rules; the error text is what Kafka says for
/// INVALID_TOPIC_EXCEPTION.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > MAX_TOPIC_NAME {
        return Err(format!(
            "Topic name is illegal, it can't be longer than {MAX_TOPIC_NAME} characters, topic name: {name}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "Topic name {name} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Kafka forbids two topics whose names differ only by '.' versus '_',
/// because both map to the same metric names.
pub fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

pub fn partition_dir(data_dir: &str, topic: &str, partition: i32) -> String {
    disk::join(data_dir, &format!("{topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::disk::mem::MemDisk;
    use crate::io::disk::DiskFile;

    fn sample() -> MetaState {
        let mut st = MetaState {
            cluster_id: "c1".into(),
            ..Default::default()
        };
        let id = st.fresh_id("a.b");
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".into(), "1000".into());
        configs.insert("cleanup.policy".into(), "compact,delete".into());
        st.topics.insert(
            "a.b".into(),
            TopicMeta {
                name: "a.b".into(),
                id,
                partitions: 3,
                deleting: false,
                configs,
            },
        );
        st
    }

    #[test]
    fn round_trip_and_crc() {
        let st = sample();
        let bytes = st.encode();
        assert_eq!(MetaState::decode(&bytes).unwrap(), st);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            if let Ok(decoded) = MetaState::decode(&bad) {
                panic!("flip at {i} went unnoticed: {decoded:?}");
            }
        }
    }

    #[test]
    fn store_and_load() {
        let disk = MemDisk::new();
        disk.create_dir_all("d").unwrap();
        assert_eq!(MetaState::load(&disk, "d").unwrap(), None);
        let mut st = sample();
        st.store(&disk, "d").unwrap();
        assert_eq!(MetaState::load(&disk, "d").unwrap(), Some(st.clone()));
        // One rotten copy: the other loads.
        let a = disk::join("d", META_FILES[0]);
        let f = disk.open(&a).unwrap();
        f.write_at(20, b"XX").unwrap();
        assert_eq!(MetaState::load(&disk, "d").unwrap(), Some(st.clone()));
        // The newer generation wins.
        st.next_seq += 5;
        st.store(&disk, "d").unwrap();
        disk::write_file_atomically(&disk, &disk::join("d", META_FILES[1]), &sample().encode())
            .unwrap();
        assert_eq!(
            MetaState::load(&disk, "d").unwrap().unwrap().next_seq,
            st.next_seq
        );
        // Both rotten: an error, not an empty broker.
        for name in META_FILES {
            disk.open(&disk::join("d", name))
                .unwrap()
                .write_at(20, b"XX")
                .unwrap();
        }
        assert!(MetaState::load(&disk, "d").is_err());
    }

    #[test]
    fn ids_differ_per_creation() {
        let mut st = MetaState::default();
        let a = st.fresh_id("t");
        let b = st.fresh_id("t");
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "a b", "ä", "a/b"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert_eq!(collision_key("a.b"), collision_key("a_b"));
    }
}
