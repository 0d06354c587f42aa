//! Randomness for a run: one seed, split into independent ChaCha streams,
//! one per subsystem, so that a change in how often the workload draws does
//! not shift every disk fault after it (and shrinking stays meaningful).

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Swarm = 1,
    Schedule = 2,
    Workload = 3,
    Disk = 4,
    Buggify = 5,
    Network = 6,
    /// A broker's incarnation at each start: `stream(seed ^ restart, ..)`.
    Incarnation = 7,
    /// The groups workload's members' network and timing faults.
    Members = 8,
}

pub fn stream(seed: u64, which: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(which as u64);
    rng
}
