//! Model checking of Odradek's protocols with stateright, wrapping the real
//! `core` state machines as actors.
//!
//! Nothing is checked here yet: the first protocols with more than one actor
//! (consumer groups, issue 4; Raft, issue 5) bring their models. The storage
//! engine of issue 2 is a single-node component and is exercised by the
//! simulator's storage workload and by property tests instead.
