//! Server-side assignors for KIP-848 consumer groups: `uniform` (balanced
//! and sticky, the default) and `range` (Kafka's co-partitioning layout).
//! Both are pure functions of their inputs, so a coordinator that loads a
//! group computes the same target every time.

use std::collections::{BTreeMap, BTreeSet};

/// member id → topic id → partitions
pub type Assignment = BTreeMap<String, BTreeMap<u128, BTreeSet<i32>>>;

pub struct AssignorInput<'a> {
    /// member id → subscribed topic ids
    pub subscriptions: &'a BTreeMap<String, BTreeSet<u128>>,
    /// topic id → partition count
    pub partitions: &'a BTreeMap<u128, i32>,
    /// The current target, for stickiness.
    pub previous: &'a Assignment,
}

pub const ASSIGNORS: &[&str] = &["uniform", "range"];

pub fn assign(name: &str, input: &AssignorInput<'_>) -> Assignment {
    match name {
        "range" => range(input),
        _ => uniform(input),
    }
}

fn empty(input: &AssignorInput<'_>) -> Assignment {
    input
        .subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect()
}

/// Per topic, the subscribed members in id order take contiguous ranges,
/// the first `partitions % members` of them one more.
pub fn range(input: &AssignorInput<'_>) -> Assignment {
    let mut out = empty(input);
    for (&topic, &count) in input.partitions {
        let members: Vec<&String> = input
            .subscriptions
            .iter()
            .filter(|(_, s)| s.contains(&topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || count <= 0 {
            continue;
        }
        let n = members.len() as i32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in members.iter().enumerate() {
            let take = per + i32::from((i as i32) < extra);
            let set: BTreeSet<i32> = (next..next + take).collect();
            next += take;
            if !set.is_empty() {
                out.entry((*m).clone()).or_default().insert(topic, set);
            }
        }
    }
    out
}

/// Every partition goes to a subscribed member; a partition stays where
/// the previous target had it while that keeps the counts within one of
/// each other among members that could take it.
pub fn uniform(input: &AssignorInput<'_>) -> Assignment {
    let mut owner: BTreeMap<(u128, i32), String> = BTreeMap::new();
    let mut count: BTreeMap<String, usize> =
        input.subscriptions.keys().map(|m| (m.clone(), 0)).collect();
    let eligible = |topic: u128| -> Vec<&String> {
        input
            .subscriptions
            .iter()
            .filter(|(_, s)| s.contains(&topic))
            .map(|(m, _)| m)
            .collect()
    };
    // Sticky: keep what the previous target gave to members still
    // subscribed, for partitions that still exist.
    for (m, topics) in input.previous {
        let Some(subs) = input.subscriptions.get(m) else {
            continue;
        };
        for (t, ps) in topics {
            let Some(&n) = input.partitions.get(t) else {
                continue;
            };
            if !subs.contains(t) {
                continue;
            }
            for &p in ps {
                if p < n && !owner.contains_key(&(*t, p)) {
                    owner.insert((*t, p), m.clone());
                    *count.entry(m.clone()).or_default() += 1;
                }
            }
        }
    }
    // New partitions to the least loaded eligible member.
    for (&t, &n) in input.partitions {
        let members = eligible(t);
        if members.is_empty() {
            continue;
        }
        for p in 0..n.max(0) {
            if owner.contains_key(&(t, p)) {
                continue;
            }
            let m = members
                .iter()
                .min_by_key(|m| (count[**m], (**m).clone()))
                .map(|m| (*m).clone())
                .unwrap_or_default();
            *count.entry(m.clone()).or_default() += 1;
            owner.insert((t, p), m);
        }
    }
    // Balance: move a partition from a member holding two or more than an
    // eligible peer. Each move lowers the sum of squared counts, so this
    // ends; the bound is a guard.
    let total = owner.len();
    for _ in 0..=total * total.max(1) {
        let mut moved = false;
        let keys: Vec<(u128, i32)> = owner.keys().copied().collect();
        for key in keys.into_iter().rev() {
            let from = owner[&key].clone();
            let best = eligible(key.0)
                .into_iter()
                .min_by_key(|m| (count[*m], (*m).clone()))
                .cloned();
            if let Some(to) = best {
                if count[&to] + 2 <= count[&from] {
                    *count.get_mut(&from).expect("owner is a member") -= 1;
                    *count.get_mut(&to).expect("eligible is a member") += 1;
                    owner.insert(key, to);
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let mut out = empty(input);
    for ((t, p), m) in owner {
        out.entry(m).or_default().entry(t).or_default().insert(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(list: &[(&str, &[u128])]) -> BTreeMap<String, BTreeSet<u128>> {
        list.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().copied().collect()))
            .collect()
    }

    fn check_cover(
        a: &Assignment,
        parts: &BTreeMap<u128, i32>,
        s: &BTreeMap<String, BTreeSet<u128>>,
    ) {
        let mut seen = BTreeSet::new();
        for (m, topics) in a {
            for (t, ps) in topics {
                assert!(s[m].contains(t), "{m} got unsubscribed topic {t}");
                for p in ps {
                    assert!(seen.insert((*t, *p)), "{t}-{p} assigned twice");
                }
            }
        }
        for (t, n) in parts {
            if s.values().any(|x| x.contains(t)) {
                for p in 0..*n {
                    assert!(seen.contains(&(*t, p)), "{t}-{p} unassigned");
                }
            }
        }
    }

    fn counts(a: &Assignment) -> Vec<usize> {
        a.values()
            .map(|t| t.values().map(|p| p.len()).sum())
            .collect()
    }

    #[test]
    fn uniform_is_balanced_covering_and_sticky() {
        let parts: BTreeMap<u128, i32> = [(1, 7), (2, 3)].into_iter().collect();
        let s = subs(&[("a", &[1, 2]), ("b", &[1, 2]), ("c", &[1, 2])]);
        let prev = Assignment::new();
        let a1 = uniform(&AssignorInput {
            subscriptions: &s,
            partitions: &parts,
            previous: &prev,
        });
        check_cover(&a1, &parts, &s);
        let c = counts(&a1);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
        // A fourth member: only moves towards it, the rest stay put.
        let s2 = subs(&[
            ("a", &[1, 2]),
            ("b", &[1, 2]),
            ("c", &[1, 2]),
            ("d", &[1, 2]),
        ]);
        let a2 = uniform(&AssignorInput {
            subscriptions: &s2,
            partitions: &parts,
            previous: &a1,
        });
        check_cover(&a2, &parts, &s2);
        let c2 = counts(&a2);
        assert!(
            c2.iter().max().unwrap() - c2.iter().min().unwrap() <= 1,
            "{c2:?}"
        );
        for m in ["a", "b", "c"] {
            for (t, ps) in &a2[m] {
                assert!(
                    ps.is_subset(&a1[m][t]),
                    "{m} gained on {t} while a member joined"
                );
            }
        }
    }

    #[test]
    fn uniform_heterogeneous_subscriptions() {
        let parts: BTreeMap<u128, i32> = [(1, 4), (2, 4)].into_iter().collect();
        let s = subs(&[("a", &[1]), ("b", &[1, 2]), ("c", &[2])]);
        let a = uniform(&AssignorInput {
            subscriptions: &s,
            partitions: &parts,
            previous: &Assignment::new(),
        });
        check_cover(&a, &parts, &s);
        let c = counts(&a);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
    }

    #[test]
    fn range_layout() {
        let parts: BTreeMap<u128, i32> = [(1, 5)].into_iter().collect();
        let s = subs(&[("a", &[1]), ("b", &[1])]);
        let a = range(&AssignorInput {
            subscriptions: &s,
            partitions: &parts,
            previous: &Assignment::new(),
        });
        check_cover(&a, &parts, &s);
        assert_eq!(a["a"][&1], [0, 1, 2].into_iter().collect());
        assert_eq!(a["b"][&1], [3, 4].into_iter().collect());
    }
}
