//! BUGGIFY, after FoundationDB: points in the code where, under simulation
//! only, the code deliberately takes the unusual-but-legal path (roll a
//! segment early, write an index entry for every batch, delay a checkpoint),
//! so that rare paths are exercised in every run rather than once a year in
//! production.
//!
//! In production a [`Buggify`] is disabled and each site costs one branch.
//! In simulation each named site is switched on or off once per run (so that
//! a run explores some sites hard and leaves others alone), and a site that is
//! on fires with a small probability each time it is reached.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct Buggify {
    /// `None` in production.
    state: Option<State>,
}

#[derive(Clone, Debug)]
struct State {
    rng: u64,
    site_on: BTreeMap<&'static str, bool>,
    fire_rate: f64,
}

impl Buggify {
    pub fn disabled() -> Buggify {
        Buggify { state: None }
    }

    /// Enabled, with its own stream of randomness derived from `seed`.
    pub fn seeded(seed: u64) -> Buggify {
        Buggify {
            state: Some(State {
                rng: seed ^ 0x9e37_79b9_7f4a_7c15,
                site_on: BTreeMap::new(),
                fire_rate: 0.05,
            }),
        }
    }

    /// An independent Buggify for a sub-component (one per partition log),
    /// so that adding a component does not shift every other's choices.
    pub fn child(&self, salt: u64) -> Buggify {
        match &self.state {
            None => Buggify::disabled(),
            Some(st) => Buggify::seeded(st.rng ^ salt.wrapping_mul(0x2545_f491_4f6c_dd1d)),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.state.is_some()
    }

    /// Whether the site named `site` takes its unusual path this time.
    #[inline]
    pub fn fire(&mut self, site: &'static str) -> bool {
        match &mut self.state {
            None => false,
            Some(st) => st.fire(site),
        }
    }
}

impl State {
    fn next(&mut self) -> u64 {
        // splitmix64: tiny, deterministic, good enough for choosing paths.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fire(&mut self, site: &'static str) -> bool {
        let on = match self.site_on.get(site) {
            Some(on) => *on,
            None => {
                let on = self.unit() < 0.25;
                self.site_on.insert(site, on);
                on
            }
        };
        on && self.unit() < self.fire_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_never_fires() {
        let mut b = Buggify::disabled();
        assert!((0..10_000).all(|_| !b.fire("x")));
    }

    #[test]
    fn same_seed_same_choices() {
        let run = |seed| {
            let mut b = Buggify::seeded(seed);
            (0..2000)
                .map(|i| b.fire(["a", "b", "c", "d", "e", "f", "g", "h"][i % 8]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert!(run(7).iter().any(|x| *x) || run(8).iter().any(|x| *x));
    }
}
