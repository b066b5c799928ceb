//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and the crash regressions
//! (`fuzz/regressions/<target>/`) through the checks the fuzz targets run, so that plain
//! `cargo test` on stable catches a codec regression without running libFuzzer.
//!
//! The checks live in `fuzz/fuzz_targets/common.rs`, included here by path: the fuzz crate
//! is a workspace of its own and never a dependency of this one.
//!
//! The seed files of the corpus come from `generate_seed_corpus` below (ignored; run it with
//! `cargo test --test fuzz_corpus_replay -- --ignored generate_seed_corpus`); the rest of the
//! corpus is what libFuzzer found and kept, minimized with `cargo fuzz cmin`.

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;
/// The tests' raw MQTT client, for its `encode`.
#[allow(dead_code)]
#[path = "common/raw.rs"]
mod raw;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use ferrymq::protocol::{
    parse_fixed_header, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Disconnect, DisconnectProperties, MqttStr, Packet, Protocol, PubAck,
    PubComp, PubRec, PubRel, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, UserProperty, Will,
    WillProperties, PACKET_SIZE_BYTES_MAX,
};
use raw::encode;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files under `dir`, sorted, or none if `dir` does not exist.
fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("readable entry").path()).collect();
    paths.sort();
    paths
}

#[test]
fn replay_corpus_and_regressions() {
    let mut replayed = 0;
    let mut failures = Vec::new();
    for root in ["corpus", "regressions"] {
        for target_dir in sorted_entries(&fuzz_dir().join(root)) {
            if !target_dir.is_dir() {
                continue;
            }
            let target = target_dir
                .file_name()
                .and_then(|name| name.to_str())
                .expect("UTF-8 target directory name")
                .to_owned();
            for file in sorted_entries(&target_dir) {
                let data = fs::read(&file).expect("readable corpus file");
                let result = catch_unwind(AssertUnwindSafe(|| {
                    common::check_target(&target, &data);
                }));
                if result.is_err() {
                    failures.push(file.display().to_string());
                }
                replayed += 1;
            }
        }
    }
    assert!(failures.is_empty(), "failing inputs: {failures:#?}");
    assert!(replayed > 0, "no corpus under {}", fuzz_dir().display());
}

/// Every fuzz target has a seed corpus, and every corpus directory names a target.
#[test]
fn every_target_has_a_corpus() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .filter(|name| *name != "ferrymq-fuzz")
        .collect();
    assert_eq!(targets.len(), 2 + common::PACKET_TARGETS.len());
    for target in &targets {
        let dir = fuzz_dir().join("corpus").join(target);
        assert!(
            !sorted_entries(&dir).is_empty(),
            "no corpus for {target} in {}",
            dir.display()
        );
    }
    for dir in sorted_entries(&fuzz_dir().join("corpus")) {
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            targets.contains(&name.as_str()),
            "corpus for unknown target {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Seed corpus
// ---------------------------------------------------------------------------------------

fn user_properties() -> Vec<UserProperty> {
    vec![UserProperty::new("k", "v"), UserProperty::new("k", "é")]
}

fn ack_properties(v5: bool) -> AckProperties {
    if v5 {
        AckProperties {
            reason_string: Some(MqttStr::from("reason")),
            user_properties: user_properties(),
        }
    } else {
        AckProperties::default()
    }
}

/// The CONNECTs a server may receive first.
fn connects(protocol: Protocol) -> Vec<(&'static str, Connect)> {
    let v5 = protocol.is_v5();
    let mut full = Connect::new(protocol, "client-1", 60);
    full.clean_start = false;
    full.username = Some(MqttStr::from("user"));
    full.password = Some(Bytes::from_static(b"\x00pass"));
    full.will = Some(Will {
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
        topic: MqttStr::from("will/topic"),
        payload: Bytes::from_static(b"bye"),
    });
    if v5 {
        full.properties = ConnectProperties {
            session_expiry_interval_secs: Some(3_600),
            receive_maximum: Some(100),
            maximum_packet_size_bytes: Some(65_536),
            topic_alias_maximum: Some(10),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            user_properties: user_properties(),
            authentication_method: Some(MqttStr::from("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"data")),
        };
        if let Some(will) = &mut full.will {
            will.properties = WillProperties {
                will_delay_interval_secs: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval_secs: Some(60),
                content_type: Some(MqttStr::from("text/plain")),
                response_topic: Some(MqttStr::from("reply/here")),
                correlation_data: Some(Bytes::from_static(b"id")),
                user_properties: user_properties(),
            };
        }
    }
    vec![
        ("connect-min", Connect::new(protocol, "", 0)),
        ("connect-full", full),
    ]
}

/// PUBLISHes; only a server's carry Subscription Identifiers [MQTT-3.3.4-6].
fn publishes(v5: bool, from_server: bool) -> Vec<(&'static str, Publish)> {
    let mut qos1 = Publish::new("a/b", QoS::AtLeastOnce, Bytes::from_static(b"payload"));
    qos1.packet_id = 1;
    let mut qos2 = Publish::new("a/b/c", QoS::ExactlyOnce, Bytes::from_static(b"x"));
    qos2.packet_id = 0xFFFF;
    qos2.dup = true;
    qos2.retain = true;
    if v5 {
        qos1.properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval_secs: Some(30),
            topic_alias: Some(3),
            response_topic: Some(MqttStr::from("reply")),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: user_properties(),
            subscription_identifiers: if from_server {
                vec![1, 200]
            } else {
                Vec::new()
            },
            content_type: Some(MqttStr::from("json")),
        };
        qos2.topic = MqttStr::default();
        qos2.properties.topic_alias = Some(3);
    }
    vec![
        (
            "publish-qos0",
            Publish::new("t", QoS::AtMostOnce, Bytes::from_static(b"hello")),
        ),
        ("publish-qos1", qos1),
        ("publish-qos2", qos2),
    ]
}

/// What flows both ways once connected: PUBLISH and its acknowledgements (and in 5.0
/// DISCONNECT and AUTH).
fn both_ways(protocol: Protocol, from_server: bool) -> Vec<(&'static str, Packet)> {
    let v5 = protocol.is_v5();
    let mut packets: Vec<(&'static str, Packet)> = publishes(v5, from_server)
        .into_iter()
        .map(|(name, p)| (name, Packet::Publish(p)))
        .collect();
    let reason = |code: ReasonCode| if v5 { code } else { ReasonCode::Success };
    packets.extend([
        ("puback", Packet::PubAck(PubAck::new(1))),
        (
            "puback-reason",
            Packet::PubAck(PubAck {
                packet_id: 2,
                reason_code: reason(ReasonCode::NoMatchingSubscribers),
                properties: ack_properties(v5),
            }),
        ),
        (
            "pubrec",
            Packet::PubRec(PubRec {
                packet_id: 3,
                reason_code: reason(ReasonCode::QuotaExceeded),
                properties: ack_properties(v5),
            }),
        ),
        ("pubrel", Packet::PubRel(PubRel::new(4))),
        (
            "pubcomp",
            Packet::PubComp(PubComp {
                packet_id: 5,
                reason_code: reason(ReasonCode::PacketIdentifierNotFound),
                properties: AckProperties::default(),
            }),
        ),
    ]);
    if v5 {
        packets.push((
            "disconnect-reason",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::ServerShuttingDown,
                properties: DisconnectProperties {
                    session_expiry_interval_secs: Some(0),
                    reason_string: Some(MqttStr::from("bye")),
                    user_properties: user_properties(),
                    server_reference: Some(MqttStr::from("other")),
                },
            }),
        ));
        packets.push((
            "auth",
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some(MqttStr::from("SCRAM-SHA-1")),
                    authentication_data: Some(Bytes::from_static(b"step")),
                    reason_string: Some(MqttStr::from("more")),
                    user_properties: user_properties(),
                },
            }),
        ));
    }
    packets
}

/// Packets a client sends after its CONNECT.
fn client_packets(protocol: Protocol) -> Vec<(&'static str, Packet)> {
    let v5 = protocol.is_v5();
    let mut subscribe = Subscribe::new(
        7,
        vec![
            Subscription {
                filter: MqttStr::from("a/+/c"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            },
            Subscription {
                filter: MqttStr::from("#"),
                options: SubscriptionOptions::default(),
            },
        ],
    );
    if v5 {
        subscribe.properties.subscription_identifier = Some(42);
        subscribe.properties.user_properties = user_properties();
        subscribe.filters[0].options.no_local = true;
        subscribe.filters[0].options.retain_as_published = true;
        subscribe.filters[0].options.retain_handling = RetainHandling::Never;
        subscribe.filters.push(Subscription {
            filter: MqttStr::from("$share/group/x/#"),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                retain_handling: RetainHandling::OnNewSubscribe,
                ..SubscriptionOptions::default()
            },
        });
    }
    let mut unsubscribe = Unsubscribe::new(8, vec![MqttStr::from("a/+/c"), MqttStr::from("#")]);
    if v5 {
        unsubscribe.properties.user_properties = user_properties();
    }
    let mut packets = both_ways(protocol, false);
    packets.extend([
        ("subscribe", Packet::Subscribe(subscribe)),
        ("unsubscribe", Packet::Unsubscribe(unsubscribe)),
        ("pingreq", Packet::PingReq),
        (
            "disconnect",
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        ),
    ]);
    packets
}

/// Packets a server sends.
fn server_packets(protocol: Protocol) -> Vec<(&'static str, Packet)> {
    let v5 = protocol.is_v5();
    let mut connack = ConnAck::new(protocol != Protocol::V3_1, ReasonCode::Success);
    if v5 {
        connack.properties = ConnAckProperties {
            session_expiry_interval_secs: Some(60),
            receive_maximum: Some(10),
            maximum_qos: Some(1),
            retain_available: Some(1),
            maximum_packet_size_bytes: Some(1_024),
            assigned_client_identifier: Some(MqttStr::from("auto-1")),
            topic_alias_maximum: Some(5),
            reason_string: Some(MqttStr::from("ok")),
            user_properties: user_properties(),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(1),
            server_keep_alive_secs: Some(30),
            response_information: Some(MqttStr::from("resp/")),
            server_reference: Some(MqttStr::from("other")),
            authentication_method: Some(MqttStr::from("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"d")),
        };
    }
    let suback_codes = if v5 {
        vec![
            ReasonCode::GrantedQos1,
            ReasonCode::Success,
            ReasonCode::NotAuthorized,
        ]
    } else {
        vec![ReasonCode::GrantedQos2, ReasonCode::UnspecifiedError]
    };
    let mut suback = SubAck::new(7, suback_codes);
    suback.properties = ack_properties(v5);
    let mut unsuback = UnsubAck::new(
        8,
        if v5 {
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        } else {
            Vec::new()
        },
    );
    unsuback.properties = ack_properties(v5);
    let mut packets = vec![
        ("connack", Packet::ConnAck(Box::new(connack))),
        (
            "connack-refused",
            Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::NotAuthorized))),
        ),
        ("suback", Packet::SubAck(suback)),
        ("unsuback", Packet::UnsubAck(unsuback)),
        ("pingresp", Packet::PingResp),
    ];
    packets.extend(both_ways(protocol, true));
    packets
}

const PROTOCOLS: [(&str, Protocol); 3] = [
    ("v3.1", Protocol::V3_1),
    ("v3.1.1", Protocol::V3_1_1),
    ("v5", Protocol::V5),
];

/// Writes the seed corpus: valid packets, alone and in sequences, for every target.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the seeds change"]
fn generate_seed_corpus() {
    let mut seeds: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &str, name: String, data: Vec<u8>| {
        seeds.push((target.to_owned(), name, data));
    };
    for (version, protocol) in PROTOCOLS {
        let selector = common::selector_for(protocol);

        // decode_server: a CONNECT, then one packet, and then all of them.
        let connect = encode(
            &Packet::Connect(Box::new(connects(protocol)[1].1.clone())),
            protocol,
        );
        let mut all = connect.clone();
        for (name, connect) in connects(protocol) {
            let packet = Packet::Connect(Box::new(connect));
            add(
                "decode_server",
                format!("{version}-{name}"),
                encode(&packet, protocol),
            );
        }
        for (name, packet) in client_packets(protocol) {
            let mut data = connect.clone();
            data.extend(encode(&packet, protocol));
            add("decode_server", format!("{version}-{name}"), data);
            all.extend(encode(&packet, protocol));
        }
        add("decode_server", format!("{version}-all"), all);

        // decode_client: the selector, then one packet, and then all of them.
        let mut all = vec![selector];
        for (name, packet) in server_packets(protocol) {
            let mut data = vec![selector];
            data.extend(encode(&packet, protocol));
            add("decode_client", format!("{version}-{name}"), data);
            all.extend(encode(&packet, protocol));
        }
        add("decode_client", format!("{version}-all"), all);

        // packet_*: the selector, then the body of one packet.
        let connect_packets = connects(protocol)
            .into_iter()
            .map(|(name, c)| (name, Packet::Connect(Box::new(c))));
        let sent = connect_packets
            .map(|(name, p)| (name, p, false))
            .chain(
                client_packets(protocol)
                    .into_iter()
                    .map(|(n, p)| (n, p, false)),
            )
            .chain(
                server_packets(protocol)
                    .into_iter()
                    .map(|(n, p)| (n, p, true)),
            );
        for (name, packet, to_client) in sent {
            let packet_type = packet.packet_type() as u8;
            let Some((target, _)) = common::PACKET_TARGETS
                .iter()
                .find(|(_, t)| *t == packet_type)
            else {
                continue; // PINGREQ, PINGRESP: no body.
            };
            let frame = encode(&packet, protocol);
            let header = parse_fixed_header(&frame, PACKET_SIZE_BYTES_MAX)
                .expect("valid header")
                .expect("whole header");
            let mut selector = selector | if to_client { 0b100 } else { 0 };
            if packet_type == 3 {
                selector |= frame[0] << 4;
            }
            let mut data = vec![selector];
            data.extend(&frame[header.header_len..]);
            let direction = if to_client { "to-client" } else { "to-server" };
            add(target, format!("{version}-{name}-{direction}"), data);
        }
    }

    for (target, name, data) in &seeds {
        // Every seed must decode cleanly: they are valid packets.
        common::check_target(target, data);
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(format!("seed-{name}")), data).expect("seed written");
    }
}

/// The seeds are valid: each decodes without error (a seed that errors would only cover
/// the error path).
#[test]
fn seed_packets_decode() {
    for (_, protocol) in PROTOCOLS {
        let mut decoder = ferrymq::protocol::Decoder::server(common::MAX_PACKET_SIZE_BYTES);
        let mut buf = BytesMut::from(
            &encode(
                &Packet::Connect(Box::new(connects(protocol)[1].1.clone())),
                protocol,
            )[..],
        );
        for (_, packet) in client_packets(protocol) {
            buf.extend_from_slice(&encode(&packet, protocol));
        }
        let mut count = 0;
        while decoder.decode(&mut buf).expect("valid seed").is_some() {
            count += 1;
        }
        assert_eq!(count, 1 + client_packets(protocol).len());

        let mut decoder =
            ferrymq::protocol::Decoder::client(protocol, common::MAX_PACKET_SIZE_BYTES);
        let mut buf = BytesMut::new();
        for (_, packet) in server_packets(protocol) {
            buf.extend_from_slice(&encode(&packet, protocol));
        }
        let mut count = 0;
        while decoder.decode(&mut buf).expect("valid seed").is_some() {
            count += 1;
        }
        assert_eq!(count, server_packets(protocol).len());
    }
}
