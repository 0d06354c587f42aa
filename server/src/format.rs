//! The data directory's identity: `meta.properties`, as Kafka writes it,
//! naming the cluster and the node the directory belongs to.
//!
//! It is written on first start (Kafka needs a separate `kafka-storage
//! format` step; here the first start is the format), and checked on every
//! start after: a directory of another cluster or another node is refused
//! before anything in it is opened. Otherwise a node pointed at the wrong
//! directory would offer another cluster's Raft log and votes to this
//! quorum, or serve another cluster's partitions as its own.

use std::fs;
use std::io::Write;
use std::path::Path;

pub const META_PROPERTIES: &str = "meta.properties";

/// The cluster id single-node data directories were made with before the
/// directory recorded one.
pub const LEGACY_CLUSTER_ID: &str = "odradek-dev";

/// Files of a single-node broker's topic metadata (core's `kafka::meta`).
const SINGLE_NODE_FILES: [&str; 2] = ["odradek-topics.a", "odradek-topics.b"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub node_id: i32,
    /// Written by this start.
    pub formatted: bool,
}

/// Reads `dir`'s identity, or formats `dir` if it has none. `given` is
/// `cluster.id`; `cluster` says whether the node is part of a metadata
/// quorum (whose nodes must all be formatted with one id, so it is not
/// made up here).
pub fn ensure(
    dir: &Path,
    node_id: i32,
    given: Option<&str>,
    cluster: bool,
) -> Result<Identity, String> {
    let path = dir.join(META_PROPERTIES);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let (cluster_id, stored_node) =
                parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some(given) = given {
                if given != cluster_id {
                    return Err(format!(
                        "the data directory {} belongs to cluster {cluster_id:?}, but this node was started for cluster {given:?}; \
                         use the directory of this cluster, or a new one",
                        dir.display()
                    ));
                }
            }
            if stored_node != node_id {
                return Err(format!(
                    "the data directory {} belongs to node {stored_node} of cluster {cluster_id:?}, but this node is node.id {node_id}",
                    dir.display()
                ));
            }
            Ok(Identity {
                cluster_id,
                node_id,
                formatted: false,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let single_node_data = SINGLE_NODE_FILES.iter().any(|f| dir.join(f).exists());
            let cluster_id = match (given, single_node_data, cluster) {
                (_, true, true) => {
                    return Err(format!(
                        "the data directory {} holds a single-node broker's data; a cluster node needs a directory of its own",
                        dir.display()
                    ))
                }
                // Made before directories recorded their cluster.
                (None, true, false) => LEGACY_CLUSTER_ID.to_string(),
                (Some(given), true, false) if given != LEGACY_CLUSTER_ID => {
                    return Err(format!(
                        "the data directory {} belongs to cluster {LEGACY_CLUSTER_ID:?}, but this node was started for cluster {given:?}",
                        dir.display()
                    ))
                }
                (Some(given), _, _) => given.to_string(),
                (None, false, false) => new_cluster_id()?,
                (None, false, true) => {
                    return Err(format!(
                        "the data directory {} is not formatted: start every node of a new cluster with the same --cluster-id, \
                         for example --cluster-id={}",
                        dir.display(),
                        new_cluster_id()?
                    ))
                }
            };
            write(dir, &cluster_id, node_id)?;
            Ok(Identity {
                cluster_id,
                node_id,
                formatted: true,
            })
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn parse(text: &str) -> Result<(String, i32), String> {
    let mut cluster_id = None;
    let mut node_id = None;
    let mut version = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("bad line {line:?}"))?;
        match k.trim() {
            "cluster.id" => cluster_id = Some(v.trim().to_string()),
            "node.id" => {
                node_id = Some(
                    v.trim()
                        .parse::<i32>()
                        .map_err(|_| format!("bad node.id {v:?}"))?,
                )
            }
            "version" => version = Some(v.trim().to_string()),
            // Kafka's own files carry more (directory.id); unknown keys
            // are not this file's problem.
            _ => {}
        }
    }
    if version.as_deref() != Some("1") {
        return Err(format!("unsupported version {version:?}, expected 1"));
    }
    match (cluster_id, node_id) {
        (Some(c), Some(n)) if !c.is_empty() => Ok((c, n)),
        _ => Err("cluster.id or node.id is missing".into()),
    }
}

/// Writes the file so that a crash leaves the old one or the new one:
/// a temporary file, synced, renamed over, and the directory synced.
fn write(dir: &Path, cluster_id: &str, node_id: i32) -> Result<(), String> {
    let text = format!(
        "# Written by odradek when it formatted this directory; do not edit.\nversion=1\ncluster.id={cluster_id}\nnode.id={node_id}\n"
    );
    let tmp = dir.join(format!("{META_PROPERTIES}.tmp"));
    let path = dir.join(META_PROPERTIES);
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// A new cluster id: 16 random bytes in URL-safe base64 without padding,
/// the shape of Kafka's (`kafka-storage random-uuid`).
pub fn new_cluster_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(base64url(&bytes))
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_standard_alphabet() {
        assert_eq!(base64url(b"Man"), "TWFu");
        assert_eq!(base64url(b"Ma"), "TWE");
        assert_eq!(base64url(b"M"), "TQ");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(new_cluster_id().unwrap().len(), 22);
    }

    #[test]
    fn formats_once_then_checks() {
        let d = tempfile::tempdir().unwrap();
        let err = ensure(d.path(), 1, None, true).unwrap_err();
        assert!(err.contains("--cluster-id"), "{err}");
        let first = ensure(d.path(), 1, Some("abc"), true).unwrap();
        assert!(first.formatted);
        let again = ensure(d.path(), 1, None, true).unwrap();
        assert_eq!(
            again,
            Identity {
                cluster_id: "abc".into(),
                node_id: 1,
                formatted: false
            }
        );
        let foreign = ensure(d.path(), 1, Some("xyz"), true).unwrap_err();
        assert!(
            foreign.contains("\"abc\"") && foreign.contains("\"xyz\""),
            "{foreign}"
        );
        let other_node = ensure(d.path(), 2, Some("abc"), true).unwrap_err();
        assert!(other_node.contains("node 1"), "{other_node}");
    }

    #[test]
    fn a_single_node_gets_an_id_of_its_own_and_old_directories_keep_theirs() {
        let fresh = tempfile::tempdir().unwrap();
        let id = ensure(fresh.path(), 1, None, false).unwrap();
        assert_eq!(id.cluster_id.len(), 22);
        let old = tempfile::tempdir().unwrap();
        fs::write(old.path().join(SINGLE_NODE_FILES[0]), b"x").unwrap();
        assert_eq!(
            ensure(old.path(), 1, None, false).unwrap().cluster_id,
            LEGACY_CLUSTER_ID
        );
        let old2 = tempfile::tempdir().unwrap();
        fs::write(old2.path().join(SINGLE_NODE_FILES[0]), b"x").unwrap();
        assert!(ensure(old2.path(), 1, Some("abc"), true).is_err());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_cluster() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(META_PROPERTIES), "version=1\nnode.id=1\n").unwrap();
        assert!(ensure(d.path(), 1, None, false).is_err());
        fs::write(d.path().join(META_PROPERTIES), "garbage").unwrap();
        assert!(ensure(d.path(), 1, None, false).is_err());
    }
}
