//! Running a model: a bounded search and what it found, shared by every
//! model in the crate.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;

use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// What a bounded run found.
pub struct Outcome {
    /// The depth bound, in steps from the start.
    pub depth: usize,
    /// Whether every state within the bound was checked (breadth first, one
    /// thread), rather than nearly every one.
    pub exact: bool,
    /// States generated, with repeats; those one step past the bound are
    /// generated (and counted) but not checked.
    pub states: usize,
    pub unique_states: usize,
    /// The model's `always` properties.
    pub safety: Vec<&'static str>,
    /// Property name, and for a discovery the path to it (the actions, one
    /// a line), cut at the first state on it that makes the discovery. Not
    /// always a shortest one, even breadth first: stateright keeps the last
    /// state it checked that made the discovery, and checks a block of
    /// states past the first before it stops. A search to one step less
    /// settles whether it is.
    pub discoveries: Vec<(&'static str, Vec<String>)>,
}

impl Outcome {
    pub fn found(&self, name: &str) -> bool {
        self.discoveries.iter().any(|(n, _)| *n == name)
    }

    /// The `always` properties with a counterexample.
    pub fn violated(&self) -> Vec<&'static str> {
        self.discoveries
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| self.safety.contains(n))
            .collect()
    }

    /// The first `always` property that failed, with its counterexample.
    pub fn first_violation(&self) -> Option<(&'static str, &[String])> {
        self.discoveries
            .iter()
            .filter(|(n, _)| self.safety.contains(n))
            .min_by_key(|(_, t)| t.len())
            .map(|(n, t)| (*n, t.as_slice()))
    }

    pub fn trace(&self, name: &str) -> Option<&[String]> {
        self.discoveries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.as_slice())
    }

    /// One line for a report. No time in it: the model crate does not
    /// read the wall clock; time a run from outside (`time cargo run ...`).
    pub fn summary(&self) -> String {
        format!(
            "{} within {} steps checked: {} states generated, {} unique",
            if self.exact {
                "every state"
            } else {
                "states (not all)"
            },
            self.depth,
            self.states,
            self.unique_states,
        )
    }
}

/// How to search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Breadth first. With one thread the search is level by level, so the
    /// depth bound is exact; with more, threads run ahead of one another
    /// and a state first reached by a longer path can be cut off at the
    /// bound: faster, but "every state within the bound" is then only
    /// nearly true. Memory grows with the frontier, whole states.
    Bfs,
    /// Depth first: memory for fingerprints only, so it goes much deeper,
    /// but a state first reached by a long path is not searched again when
    /// a shorter one reaches it, so the bound is not exact. For hunting.
    Dfs,
}

/// Which properties end a run early once they have a discovery.
pub fn until_all() -> HasDiscoveries {
    HasDiscoveries::All
}

/// A run that stops as soon as `property` has a discovery (for an
/// `always` property, breadth first: one of the shortest counterexamples).
pub fn until(property: &'static str) -> HasDiscoveries {
    HasDiscoveries::AnyOf(BTreeSet::from([property]))
}

/// A run that stops as soon as any of `properties` has a discovery.
pub fn until_any(properties: &[&'static str]) -> HasDiscoveries {
    HasDiscoveries::AnyOf(properties.iter().copied().collect())
}

/// Searches `model` to `depth` steps from the start, stopping once about
/// `max_states` states have been generated (if given) or once `until` is
/// met.
pub fn run<M>(
    model: M,
    depth: usize,
    how: Search,
    threads: usize,
    max_states: Option<usize>,
    until: HasDiscoveries,
) -> Outcome
where
    M: Model + Send + Sync + 'static,
    M::State: Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Debug + Clone + PartialEq,
{
    let mut builder = model
        .checker()
        .threads(threads)
        // stateright counts the initial state as depth 1 and checks the
        // states above its target depth.
        .target_max_depth(depth + 2)
        .finish_when(until);
    if let Some(n) = max_states {
        builder = builder.target_state_count(n);
    }
    let out = match how {
        Search::Bfs => outcome(builder.spawn_bfs().join(), depth, threads == 1),
        Search::Dfs => outcome(builder.spawn_dfs().join(), depth, false),
    };
    // Stopped at the state budget: not everything within the bound.
    let cut = max_states.is_some_and(|n| out.states >= n);
    Outcome {
        exact: out.exact && !cut,
        ..out
    }
}

fn outcome<M>(checker: impl Checker<M>, depth: usize, exact: bool) -> Outcome
where
    M: Model,
    M::State: Clone + PartialEq,
    M::Action: Debug + Clone + PartialEq,
{
    let model = checker.model();
    let properties = model.properties();
    let safety = properties
        .iter()
        .filter(|p| p.expectation == Expectation::Always)
        .map(|p| p.name)
        .collect();
    let mut discoveries: Vec<(&'static str, Vec<String>)> = checker
        .discoveries()
        .into_iter()
        .map(|(name, path)| {
            let path = path.into_vec();
            // stateright keeps, for each property, the last state it
            // checked that made the discovery, not the first; cut the path
            // at its first state that does.
            let property = properties.iter().find(|p| p.name == name);
            let end = property
                .and_then(|p| {
                    path.iter().position(|(state, _)| {
                        let holds = (p.condition)(model, state);
                        match p.expectation {
                            Expectation::Always => !holds,
                            _ => holds,
                        }
                    })
                })
                .unwrap_or(path.len());
            let steps = path
                .into_iter()
                .take(end)
                .filter_map(|(_, action)| action)
                .map(|a| model.format_action(&a))
                .collect();
            (name, steps)
        })
        .collect();
    discoveries.sort_by_key(|(n, _)| *n);
    Outcome {
        depth,
        exact,
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        safety,
        discoveries,
    }
}
