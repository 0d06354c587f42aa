//! Model checking of Odradek's protocols with stateright, wrapping the real
//! `core` state machines as actors.
//!
//! * [`group`]: the classic consumer-group protocol (JoinGroup, SyncGroup,
//!   Heartbeat) with the real `odradek_core::group::Coordinator` as the
//!   coordinator actor, two Kafka-style consumers, a lossy network and
//!   member crashes. `cargo run -p odradek-model --release -- classic
//!   --depth N` runs it deeper than the test suite does.
//!
//! Raft (issue 5) brings the next model. The storage engine of issue 2 is
//! a single-node component and is exercised by the simulator's storage
//! workload and by property tests instead.

pub mod check;
pub mod group;
