//! Odradek's broker core.
//!
//! Nothing in this crate touches the world directly: time, randomness, the
//! network and the disk come in through the traits in [`io`], so the same code
//! runs under tokio in production (`server/`) and under the seeded simulator
//! (`sim/`). See `docs/ARCHITECTURE.md`.

pub mod buggify;
pub mod cluster;
pub mod codec;
pub mod group;
pub mod io;
pub mod kafka;
pub mod metadata;
pub mod raft;
pub mod storage;
