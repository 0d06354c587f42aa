//! Jepsen-style testing against real `odradek` processes.
//!
//! Empty until there is a network-facing broker to attack (issue 3) and a
//! cluster to partition (issue 5). The fault vocabulary it will execute is
//! already defined once, in `odradek-nemesis`, and shared with the simulator.
