//! The consumer protocol's bytes as a Kafka consumer writes them: the
//! subscription it sends in JoinGroup and the assignment its leader sends
//! in SyncGroup (`ConsumerProtocolSubscription` and
//! `ConsumerProtocolAssignment`, version 0). The coordinator passes both
//! through without reading them; the model's members write and read them
//! so that what travels through the real coordinator is what a real
//! client would send.

use std::collections::BTreeSet;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Version 0, one topic, no user data.
pub fn subscription(topic: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut out, topic);
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out
}

/// Version 0: `partitions` of `topic` (none: an empty topic list), no user
/// data.
pub fn assignment(topic: &str, partitions: &BTreeSet<i32>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    if partitions.is_empty() {
        out.extend_from_slice(&0i32.to_be_bytes());
    } else {
        out.extend_from_slice(&1i32.to_be_bytes());
        put_str(&mut out, topic);
        out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for p in partitions {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = usize::try_from(self.i16()?).ok()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The partitions of `topic` in an assignment; an empty assignment (what
/// the coordinator hands a member its leader left out) is no partitions,
/// as the Kafka consumer reads it. `None` if the bytes do not parse.
pub fn assigned(topic: &str, bytes: &[u8]) -> Option<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    if bytes.is_empty() {
        return Some(out);
    }
    let mut r = Reader(bytes);
    r.i16()?;
    let topics = r.i32()?;
    for _ in 0..topics.max(0) {
        let t = r.str()?;
        let n = r.i32()?;
        for _ in 0..n.max(0) {
            let p = r.i32()?;
            if t == topic {
                out.insert(p);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_round_trip() {
        for parts in [vec![], vec![0], vec![1], vec![0, 1]] {
            let set: BTreeSet<i32> = parts.into_iter().collect();
            assert_eq!(assigned("t", &assignment("t", &set)), Some(set));
        }
        assert_eq!(assigned("t", &[]), Some(BTreeSet::new()));
        assert_eq!(assigned("t", &[0, 0, 0]), None);
    }

    #[test]
    fn the_coordinator_reads_the_subscription() {
        assert_eq!(
            odradek_core::group::records::subscribed_topics(&subscription("t")),
            Some(vec!["t".to_string()])
        );
    }
}
