//! Cluster metadata: the records of the Raft metadata log, the image every
//! node builds by applying them, and the controller that proposes them.
//!
//! Nothing here knows about Raft: the driver proposes a controller's
//! batches through the quorum, and applies committed entries to its image
//! with [`MetadataImage::apply`]. A snapshot is the image's records
//! ([`MetadataImage::encode_snapshot`]).

pub mod controller;
pub mod image;
pub mod quorum;
pub mod records;
pub mod rpc;

#[cfg(test)]
mod quorum_tests;
#[cfg(test)]
mod tests;

pub use controller::{Controller, ControllerConfig};
pub use image::{MetadataImage, TopicImage};
pub use records::{
    decode_batch, encode_batch, BrokerRegistration, ConfigResource, Endpoint, MetadataRecord,
    PartitionRecord,
};
