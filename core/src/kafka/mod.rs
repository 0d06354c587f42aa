//! Kafka request handling, sans I/O: a frame of bytes in, a frame of bytes
//! (or a reason to close the connection) out. The production listener in
//! `server/` and the simulator both call [`Broker::handle_frame`], so every
//! request a client can send is also something the simulator can send.
//!
//! The codec is the `kafka-protocol` crate, generated from Kafka's message
//! schemas. ApiVersions advertises exactly the versions in [`SUPPORTED`],
//! each of which is handled and tested here.
//!
//! What is handled so far: ApiVersions and Metadata for a single broker
//! with no topics yet (the produce and fetch path, topics and their logs
//! come with the rest of issue 3). A request for an API key Kafka does not
//! define, or for a version of a known API this broker does not handle,
//! closes the connection with a logged reason, as Kafka's broker does;
//! ApiVersions itself is answered at v0 with UNSUPPORTED_VERSION and the
//! supported list (KIP-511), so that a newer client can fall back.

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponseTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Kafka's error codes used here.
pub mod error {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}

/// The API versions this broker handles: (key, min, max).
pub const SUPPORTED: &[(ApiKey, i16, i16)] =
    &[(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 0, 12)];

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
}

/// What to do with a request frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameOutcome {
    /// Send these bytes back (without the 4-byte size prefix).
    Respond(Vec<u8>),
    /// Send nothing (a produce with acks=0, later).
    NoResponse,
    /// Close the connection; the reason is for the log.
    Close(String),
}

pub struct Broker {
    config: BrokerConfig,
}

fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, lo, hi)| (lo, hi))
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Broker {
        Broker { config }
    }

    /// Handles one request: `frame` is everything after the size prefix.
    pub fn handle_frame(&mut self, frame: &[u8]) -> FrameOutcome {
        if frame.len() < 8 {
            return FrameOutcome::Close(format!(
                "request of {} bytes is shorter than any header",
                frame.len()
            ));
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let Ok(key) = ApiKey::try_from(raw_key) else {
            return FrameOutcome::Close(format!(
                "unknown api key {raw_key} (correlation id {correlation_id})"
            ));
        };
        let Some((lo, hi)) = supported_range(key) else {
            return FrameOutcome::Close(format!(
                "api {key:?} is not supported (correlation id {correlation_id})"
            ));
        };
        if version < lo || version > hi {
            if key == ApiKey::ApiVersions {
                return self.respond(
                    key,
                    0,
                    correlation_id,
                    &self.api_versions(error::UNSUPPORTED_VERSION),
                );
            }
            return FrameOutcome::Close(format!(
                "{key:?} v{version} is not supported (supported: v{lo}..=v{hi}, correlation id {correlation_id})"
            ));
        }
        let mut buf = bytes::Bytes::copy_from_slice(frame);
        let header = match RequestHeader::decode(&mut buf, key.request_header_version(version)) {
            Ok(h) => h,
            Err(e) => {
                return FrameOutcome::Close(format!(
                    "malformed {key:?} v{version} request header: {e}"
                ))
            }
        };
        let outcome = match key {
            ApiKey::ApiVersions => ApiVersionsRequest::decode(&mut buf, version)
                .map(|_| self.encode_api_versions(version, &header)),
            ApiKey::Metadata => MetadataRequest::decode(&mut buf, version).map(|req| {
                let resp = self.metadata(&req);
                self.respond(key, version, header.correlation_id, &resp)
            }),
            // Every key in SUPPORTED has an arm above.
            _ => {
                return FrameOutcome::Close(format!(
                    "api {key:?} is listed as supported but has no handler"
                ))
            }
        };
        match outcome {
            Err(e) => FrameOutcome::Close(format!("malformed {key:?} v{version} request: {e}")),
            Ok(_) if buf.has_remaining() => FrameOutcome::Close(format!(
                "{key:?} v{version} request has {} bytes after its body",
                buf.remaining()
            )),
            Ok(o) => o,
        }
    }

    fn encode_api_versions(&self, version: i16, header: &RequestHeader) -> FrameOutcome {
        self.respond(
            ApiKey::ApiVersions,
            version,
            header.correlation_id,
            &self.api_versions(error::NONE),
        )
    }

    fn api_versions(&self, error_code: i16) -> ApiVersionsResponse {
        let keys = SUPPORTED
            .iter()
            .map(|&(k, lo, hi)| {
                ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(lo)
                    .with_max_version(hi)
            })
            .collect();
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(keys)
    }

    fn metadata(&self, req: &MetadataRequest) -> MetadataResponse {
        let broker = MetadataResponseBroker::default()
            .with_node_id(BrokerId(self.config.node_id))
            .with_host(StrBytes::from_string(self.config.advertised_host.clone()))
            .with_port(self.config.advertised_port);
        // No topics exist yet: every named topic is unknown, and "all
        // topics" (null, or an empty list before v1) is the empty list.
        let topics = req
            .topics
            .iter()
            .flatten()
            .map(|t| match &t.name {
                Some(name) => MetadataResponseTopic::default()
                    .with_name(Some(name.clone()))
                    .with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION),
                None => MetadataResponseTopic::default()
                    .with_topic_id(t.topic_id)
                    .with_error_code(error::UNKNOWN_TOPIC_ID),
            })
            .collect();
        MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_cluster_id(Some(StrBytes::from_string(self.config.cluster_id.clone())))
            .with_controller_id(BrokerId(self.config.node_id))
            .with_topics(topics)
    }

    fn respond<T: Encodable>(
        &self,
        key: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &T,
    ) -> FrameOutcome {
        let mut out = BytesMut::new();
        let header = ResponseHeader::default().with_correlation_id(correlation_id);
        let encoded = header
            .encode(&mut out, key.response_header_version(version))
            .and_then(|_| body.encode(&mut out, version));
        match encoded {
            Ok(()) => FrameOutcome::Respond(out.to_vec()),
            // Our own response not fitting its schema is a bug, but a
            // connection-level one: the client is told by the close.
            Err(e) => {
                FrameOutcome::Close(format!("cannot encode {key:?} v{version} response: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests;
