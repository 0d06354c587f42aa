//! Odradek's production runtime: the real disk, clock and network behind the
//! core's interfaces, and the commands of the `odradek` binary.

pub mod disk;
pub mod perf;
pub mod sim_cmd;
