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
    /// A cluster node's own draws (election timeouts, clock origins,
    /// incarnations): one stream per node, see [`node_stream`].
    Node = 9,
}

pub fn stream(seed: u64, which: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(which as u64);
    rng
}

/// Stream `which` of node `node` of a multi-node run: every node's disk and
/// process draw from their own streams, so one node's extra draws do not
/// shift another's.
pub fn node_stream(seed: u64, which: Stream, node: i32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(which as u64 | (u64::from(node as u32) << 8));
    rng
}
