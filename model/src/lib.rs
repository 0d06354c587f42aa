//! Model checking of Odradek's protocols with stateright, wrapping the real
//! `core` state machines as actors.
//!
//! * [`group`]: the classic consumer-group protocol (JoinGroup, SyncGroup,
//!   Heartbeat) with the real `odradek_core::group::Coordinator` as the
//!   coordinator actor, two Kafka-style consumers, a lossy network and
//!   member crashes. `cargo run -p odradek-model --release -- classic
//!   --depth N` runs it deeper than the test suite does.
//!
//! * [`raft`]: the metadata quorum's Raft, three real
//!   `odradek_core::raft::Raft` nodes over in-memory stores that lose what
//!   was not synced, on a lossy, duplicating network, with crashes and
//!   client proposals. `cargo run -p odradek-model --release -- raft
//!   --depth N` runs it deeper.
//! * [`check`]: the bounded search both share, and what it reports.
//!
//! The storage engine of issue 2 is a single-node component and is
//! exercised by the simulator's storage workload and by property tests
//! instead.

pub mod check;
pub mod group;
pub mod raft;
