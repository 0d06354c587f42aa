use super::*;
use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::TopicName;
use proptest::prelude::*;

fn broker() -> Broker {
    Broker::new(BrokerConfig {
        node_id: 7,
        advertised_host: "broker.test".into(),
        advertised_port: 9999,
        cluster_id: "cluster-x".into(),
    })
}

/// A request as a client would frame it (without the size prefix).
fn request<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut out, key.request_header_version(version))
        .unwrap();
    body.encode(&mut out, version).unwrap();
    out.to_vec()
}

fn response<T: Decodable>(key: ApiKey, version: i16, outcome: FrameOutcome) -> (i32, T) {
    let FrameOutcome::Respond(bytes) = outcome else {
        panic!("expected a response, got {outcome:?}");
    };
    let mut buf = Bytes::from(bytes);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
    let body = T::decode(&mut buf, version).unwrap();
    assert!(!buf.has_remaining(), "response has trailing bytes");
    (header.correlation_id, body)
}

#[test]
fn api_versions_every_supported_version() {
    for v in 0..=3 {
        let req = request(
            ApiKey::ApiVersions,
            v,
            40 + v as i32,
            &ApiVersionsRequest::default(),
        );
        let (cid, resp): (i32, ApiVersionsResponse) =
            response(ApiKey::ApiVersions, v, broker().handle_frame(&req));
        assert_eq!(cid, 40 + v as i32);
        assert_eq!(resp.error_code, error::NONE);
        let got: Vec<(i16, i16, i16)> = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        let want: Vec<(i16, i16, i16)> = SUPPORTED
            .iter()
            .map(|&(k, lo, hi)| (k as i16, lo, hi))
            .collect();
        assert_eq!(got, want, "v{v} advertises exactly what is handled");
    }
}

#[test]
fn newer_api_versions_gets_v0_unsupported_version_with_the_list() {
    // A client newer than us sends a version we do not know how to parse.
    let mut req = request(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    req[2..4].copy_from_slice(&9i16.to_be_bytes());
    let (cid, resp): (i32, ApiVersionsResponse) =
        response(ApiKey::ApiVersions, 0, broker().handle_frame(&req));
    assert_eq!(cid, 5);
    assert_eq!(resp.error_code, error::UNSUPPORTED_VERSION);
    assert_eq!(resp.api_keys.len(), SUPPORTED.len());
}

#[test]
fn metadata_every_supported_version() {
    for v in 0..=12 {
        let mut b = broker();
        // All topics: null from v1, an empty list at v0.
        let all = if v == 0 { Some(vec![]) } else { None };
        let req = request(
            ApiKey::Metadata,
            v,
            1,
            &MetadataRequest::default().with_topics(all),
        );
        let (_, resp): (i32, MetadataResponse) =
            response(ApiKey::Metadata, v, b.handle_frame(&req));
        assert_eq!(resp.brokers.len(), 1, "v{v}");
        assert_eq!(resp.brokers[0].node_id, BrokerId(7));
        assert_eq!(&*resp.brokers[0].host, "broker.test");
        assert_eq!(resp.brokers[0].port, 9999);
        assert!(resp.topics.is_empty());
        if v >= 1 {
            assert_eq!(resp.controller_id, BrokerId(7), "v{v}");
        }
        if v >= 2 {
            assert_eq!(resp.cluster_id.as_deref(), Some("cluster-x"), "v{v}");
        }
        // Named topics do not exist yet.
        let named = vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))];
        let req = request(
            ApiKey::Metadata,
            v,
            2,
            &MetadataRequest::default().with_topics(Some(named)),
        );
        let (cid, resp): (i32, MetadataResponse) =
            response(ApiKey::Metadata, v, b.handle_frame(&req));
        assert_eq!(cid, 2);
        assert_eq!(resp.topics.len(), 1, "v{v}");
        assert_eq!(resp.topics[0].error_code, error::UNKNOWN_TOPIC_OR_PARTITION);
        assert_eq!(resp.topics[0].name.as_ref().map(|n| &*n.0), Some("orders"));
    }
}

#[test]
fn bad_requests_close_the_connection_with_a_reason() {
    let mut b = broker();
    let ok = request(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("shorter than a header", ok[..7].to_vec()),
        ("unknown api key", {
            let mut r = ok.clone();
            r[0..2].copy_from_slice(&9999i16.to_be_bytes());
            r
        }),
        ("api not handled", {
            let mut r = ok.clone();
            r[0..2].copy_from_slice(&(ApiKey::Produce as i16).to_be_bytes());
            r
        }),
        ("metadata version too new", {
            let mut r = request(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
            r[2..4].copy_from_slice(&14i16.to_be_bytes());
            r
        }),
        ("truncated body", ok[..ok.len() - 1].to_vec()),
        ("trailing bytes", {
            let mut r = ok.clone();
            r.extend_from_slice(&[1, 2, 3]);
            r
        }),
    ];
    for (what, frame) in cases {
        match b.handle_frame(&frame) {
            FrameOutcome::Close(reason) => assert!(!reason.is_empty(), "{what}"),
            other => panic!("{what}: expected a close, got {other:?}"),
        }
    }
    // The broker is unharmed.
    assert!(matches!(b.handle_frame(&ok), FrameOutcome::Respond(_)));
}

proptest! {
    /// Any bytes at all: a response or a close, never a panic.
    #[test]
    fn prop_arbitrary_frames_never_panic(mut frame in proptest::collection::vec(any::<u8>(), 0..200), key in 0i16..80, version in -1i16..15) {
        if frame.len() >= 4 {
            frame[0..2].copy_from_slice(&key.to_be_bytes());
            frame[2..4].copy_from_slice(&version.to_be_bytes());
        }
        let _ = broker().handle_frame(&frame);
    }
}
