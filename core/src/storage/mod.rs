//! The partition log: Kafka's on-disk format (record batch v2 segments with
//! sparse offset and time indexes), crash recovery, retention.

pub mod batch;
pub mod checkpoint;
pub mod compression;
pub mod group_commit;
pub mod index;
pub mod log;
pub mod segment;

pub use log::{AppendInfo, FlushPolicy, Log, LogConfig, LogError, ReadResult, RecoveryReport};
