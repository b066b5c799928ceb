//! Tests that speak bytes: raw TCP against the real `ferrymq` binary (two shards). Each test
//! writes exact bytes, malformed ones as literals, and asserts the exact answer: what the
//! broker sends and that it then closes the connection. Well-formed packets are built with
//! the codec's encoders and answers parsed with `Decoder::client`.
//!
//! Each case cites the MQTT 5.0 (or, for 3.1.1 cases, the 3.1.1) normative statement or
//! section that decides the answer.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::raw::{encode, qos1_publish, read_until_closed, RawClient};
use common::{id_on, shard_count, Broker};
use ferrymq::protocol::{
    ConnAck, Connect, Packet, Protocol, PubAck, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions,
};

/// How long a test waits for any one answer before it fails.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

fn open(broker: &Broker) -> TcpStream {
    common::raw::open(broker.addr(), READ_TIMEOUT)
}

/// A client of `protocol` on a new connection; nothing sent yet.
fn client(broker: &Broker, protocol: Protocol) -> RawClient {
    RawClient::open(broker.addr(), protocol, READ_TIMEOUT)
}

/// Sends `connect` on a new connection and returns the client and the CONNACK.
fn connect_with(broker: &Broker, connect: Connect) -> (RawClient, ConnAck) {
    let mut client = client(broker, connect.protocol);
    let connack = client.connect(connect);
    (client, connack)
}

/// A clean-start client `id` without keep alive, accepted.
fn connected(broker: &Broker, protocol: Protocol, id: &str) -> RawClient {
    client(broker, protocol).connected(id)
}

/// Two well-behaved clients on different shards: a 3.1.1 publisher and a 5.0 subscriber
/// exchanging QoS 1 messages while bad clients are thrown out around them.
struct GoodPair {
    publisher: RawClient,
    subscriber: RawClient,
    packet_id: u16,
}

impl GoodPair {
    fn start(broker: &Broker) -> GoodPair {
        let mut subscriber = connected(broker, Protocol::V5, &id_on(0, "good-sub"));
        subscriber.subscribe(1, "good/t", QoS::AtLeastOnce);
        let publisher = connected(broker, Protocol::V3_1_1, &id_on(1, "good-pub"));
        GoodPair {
            publisher,
            subscriber,
            packet_id: 0,
        }
    }

    /// One QoS 1 message from publisher to subscriber, acknowledged on both sides.
    fn round_trip(&mut self, label: &str) {
        self.packet_id = self.packet_id.wrapping_add(1).max(1);
        let id = self.packet_id;
        self.publisher
            .send(&qos1_publish("good/t", id, label.as_bytes()));
        match self.publisher.recv() {
            Some(Packet::PubAck(ack)) if ack.packet_id == id => {}
            other => panic!("good publisher, during {label}: expected PUBACK {id}, got {other:?}"),
        }
        match self.subscriber.recv() {
            Some(Packet::Publish(publish)) => {
                assert_eq!(&publish.payload[..], label.as_bytes(), "during {label}");
                assert_eq!(publish.qos, QoS::AtLeastOnce);
                let ack = PubAck::new(publish.packet_id);
                self.subscriber.send(&Packet::PubAck(ack));
            }
            other => panic!("good subscriber, during {label}: expected PUBLISH, got {other:?}"),
        }
    }
}

/// A bad packet sent after a successful CONNECT, and everything the broker must answer
/// before it closes the connection.
struct Case {
    name: &'static str,
    spec: &'static str,
    bytes: &'static [u8],
    answer: &'static [u8],
}

/// DISCONNECT with one reason code and no properties.
macro_rules! disconnect {
    ($code:expr) => {
        &[0xE0, 0x02, $code, 0x00]
    };
}

const V5_CASES: &[Case] = &[
    Case {
        name: "PINGREQ with a reserved flag bit set",
        spec: "[MQTT-2.1.3-1]",
        bytes: &[0xC1, 0x00],
        answer: disconnect!(0x81),
    },
    Case {
        name: "SUBSCRIBE with header flags 0000",
        spec: "[MQTT-3.8.1-1]",
        bytes: &[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x01],
        answer: disconnect!(0x81),
    },
    Case {
        name: "remaining length not in its shortest form",
        spec: "[MQTT-1.5.5-1]",
        bytes: &[0xC0, 0x80, 0x00],
        answer: disconnect!(0x81),
    },
    Case {
        name: "PUBLISH with QoS 3",
        spec: "[MQTT-3.3.1-4]",
        bytes: &[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
        answer: disconnect!(0x81),
    },
    Case {
        name: "PUBLISH QoS 0 with DUP",
        spec: "[MQTT-3.3.1-2]",
        bytes: &[0x38, 0x04, 0x00, 0x01, b'a', 0x00],
        answer: disconnect!(0x81),
    },
    Case {
        name: "PUBLISH topic that is not UTF-8",
        spec: "[MQTT-1.5.4-1]",
        bytes: &[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00],
        answer: disconnect!(0x81),
    },
    Case {
        name: "PUBLISH topic containing U+0000",
        spec: "[MQTT-1.5.4-2]",
        bytes: &[0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00],
        answer: disconnect!(0x81),
    },
    Case {
        name: "PUBLISH with an unknown property 0x7F",
        spec: "section 2.2.2.2 (a Malformed Packet)",
        bytes: &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x7F, 0x00],
        answer: disconnect!(0x81),
    },
    Case {
        name: "SUBSCRIBE filter with '#' not last",
        spec: "[MQTT-4.7.1-1]",
        bytes: &[
            0x82, 0x0B, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x01,
        ],
        answer: disconnect!(0x81),
    },
    Case {
        name: "SUBSCRIBE options with reserved bits 7-6 set",
        spec: "[MQTT-3.8.3-5]",
        bytes: &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xC1],
        answer: disconnect!(0x81),
    },
    Case {
        name: "remaining length of five bytes",
        spec: "section 1.5.5 (four bytes at most)",
        bytes: &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        answer: disconnect!(0x81),
    },
    Case {
        name: "PUBLISH with an empty topic and no Topic Alias",
        spec: "[MQTT-4.7.3-1], section 3.3.2.3.4",
        bytes: &[0x30, 0x03, 0x00, 0x00, 0x00],
        answer: disconnect!(0x82),
    },
    Case {
        name: "PUBLISH with the Payload Format Indicator twice",
        spec: "section 3.3.2.3.2 (a Protocol Error)",
        bytes: &[0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x01, 0x00, 0x01, 0x01],
        answer: disconnect!(0x82),
    },
    Case {
        name: "SUBSCRIBE with Subscription Identifier 0",
        spec: "section 3.8.2.1.2 (a Protocol Error)",
        bytes: &[
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x01,
        ],
        answer: disconnect!(0x82),
    },
    Case {
        name: "UNSUBSCRIBE without any topic filter",
        spec: "[MQTT-3.10.3-2]",
        bytes: &[0xA2, 0x03, 0x00, 0x01, 0x00],
        answer: disconnect!(0x82),
    },
    Case {
        name: "PUBLISH topic with a wildcard",
        spec: "[MQTT-3.3.2-2]",
        bytes: &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
        answer: disconnect!(0x82),
    },
    Case {
        name: "PUBLISH QoS 1 with packet identifier 0",
        spec: "[MQTT-2.2.1-3]",
        bytes: &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
        answer: disconnect!(0x82),
    },
    Case {
        name: "SUBSCRIBE without any topic filter",
        spec: "[MQTT-3.8.3-2]",
        bytes: &[0x82, 0x03, 0x00, 0x01, 0x00],
        answer: disconnect!(0x82),
    },
    Case {
        name: "SUBSCRIBE with No Local on a shared subscription",
        spec: "[MQTT-3.8.3-4]",
        bytes: &[
            0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            b'g', b'/', b'a', 0x05,
        ],
        answer: disconnect!(0x82),
    },
    Case {
        name: "second CONNECT",
        spec: "[MQTT-3.1.0-2]",
        bytes: &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x00, 0x00,
            0x00,
        ],
        answer: disconnect!(0x82),
    },
    Case {
        name: "AUTH without an Authentication Method in CONNECT",
        spec: "[MQTT-4.12.0-7]",
        bytes: &[0xF0, 0x02, 0x18, 0x00],
        answer: disconnect!(0x82),
    },
    Case {
        name: "PUBLISH from a client with a Subscription Identifier",
        spec: "[MQTT-3.3.4-6]",
        bytes: &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0B, 0x01],
        answer: disconnect!(0x82),
    },
    Case {
        name: "PUBLISH with Topic Alias 0",
        spec: "[MQTT-3.3.2-8]",
        bytes: &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
        answer: disconnect!(0x94),
    },
    Case {
        name: "PUBLISH with Topic Alias 11 above the Topic Alias Maximum 10",
        spec: "[MQTT-3.3.2-9]",
        bytes: &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x0B],
        answer: disconnect!(0x94),
    },
    Case {
        name: "PUBLISH with an empty topic and a Topic Alias never set",
        spec: "section 3.3.2.3.4 (an alias must be set before use)",
        bytes: &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x05],
        answer: disconnect!(0x82),
    },
    Case {
        name: "PUBLISH of 2,003 bytes over the Maximum Packet Size 1024",
        spec: "[MQTT-3.2.2-15]",
        bytes: &[0x30, 0xD0, 0x0F, 0x00, 0x01, b'a', 0x00],
        answer: disconnect!(0x95),
    },
    Case {
        name: "three unacknowledged QoS 2 PUBLISHes with Receive Maximum 2",
        spec: "[MQTT-3.3.4-7]",
        bytes: &[
            0x34, 0x0A, 0x00, 0x05, b'b', b'a', b'd', b'/', b'q', 0x00, 0x01, 0x00, //
            0x34, 0x0A, 0x00, 0x05, b'b', b'a', b'd', b'/', b'q', 0x00, 0x02, 0x00, //
            0x34, 0x0A, 0x00, 0x05, b'b', b'a', b'd', b'/', b'q', 0x00, 0x03, 0x00,
        ],
        // PUBREC 1, PUBREC 2, then DISCONNECT 0x93.
        answer: &[
            0x50, 0x02, 0x00, 0x01, 0x50, 0x02, 0x00, 0x02, 0xE0, 0x02, 0x93, 0x00,
        ],
    },
];

/// 3.1.1 has no DISCONNECT from the server: every protocol violation just closes the
/// connection [MQTT-4.8.0-1].
const V311_CASES: &[Case] = &[
    Case {
        name: "PINGREQ with a reserved flag bit set",
        spec: "3.1.1 [MQTT-2.2.2-2]",
        bytes: &[0xC1, 0x00],
        answer: &[],
    },
    Case {
        name: "SUBSCRIBE with header flags 0000",
        spec: "3.1.1 [MQTT-3.8.1-1]",
        bytes: &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01],
        answer: &[],
    },
    Case {
        name: "UNSUBSCRIBE with header flags 0000",
        spec: "3.1.1 [MQTT-3.10.1-1]",
        bytes: &[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        answer: &[],
    },
    Case {
        name: "PUBREL with header flags 0000",
        spec: "3.1.1 [MQTT-3.6.1-1]",
        bytes: &[0x60, 0x02, 0x00, 0x01],
        answer: &[],
    },
    Case {
        name: "PUBLISH with QoS 3",
        spec: "3.1.1 [MQTT-3.3.1-4]",
        bytes: &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        answer: &[],
    },
    Case {
        name: "PUBLISH QoS 0 with DUP",
        spec: "3.1.1 [MQTT-3.3.1-2]",
        bytes: &[0x38, 0x03, 0x00, 0x01, b'a'],
        answer: &[],
    },
    Case {
        name: "PUBLISH topic with a wildcard",
        spec: "3.1.1 [MQTT-3.3.2-2]",
        bytes: &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#'],
        answer: &[],
    },
    Case {
        name: "PUBLISH topic that is not UTF-8",
        spec: "3.1.1 [MQTT-1.5.3-1]",
        bytes: &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
        answer: &[],
    },
    Case {
        name: "PUBLISH QoS 1 with packet identifier 0",
        spec: "3.1.1 [MQTT-2.3.1-1]",
        bytes: &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
        answer: &[],
    },
    Case {
        name: "SUBSCRIBE filter with '#' not last",
        spec: "3.1.1 [MQTT-4.7.1-2]",
        bytes: &[
            0x82, 0x0A, 0x00, 0x01, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x01,
        ],
        answer: &[],
    },
    Case {
        name: "SUBSCRIBE with requested QoS 3",
        spec: "3.1.1 [MQTT-3.8.3-4]",
        bytes: &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
        answer: &[],
    },
    Case {
        name: "SUBSCRIBE without any topic filter",
        spec: "3.1.1 [MQTT-3.8.3-3]",
        bytes: &[0x82, 0x02, 0x00, 0x01],
        answer: &[],
    },
    Case {
        name: "second CONNECT",
        spec: "3.1.1 [MQTT-3.1.0-2]",
        bytes: &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
        ],
        answer: &[],
    },
    Case {
        name: "PUBLISH with an empty topic",
        spec: "3.1.1 [MQTT-4.7.3-1]",
        bytes: &[0x30, 0x02, 0x00, 0x00],
        answer: &[],
    },
    Case {
        name: "remaining length of five bytes",
        spec: "3.1.1 section 2.2.3 (four bytes at most), [MQTT-4.8.0-1]",
        bytes: &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        answer: &[],
    },
    Case {
        name: "packet type 15 (AUTH), reserved before 5.0",
        spec: "3.1.1 section 2.2.1 (reserved), [MQTT-4.8.0-1]",
        bytes: &[0xF0, 0x00],
        answer: &[],
    },
];

/// The flags the bad-client tests run the broker with.
const BAD_CLIENT_FLAGS: &[&str] = &[
    "--packet-size-bytes-max",
    "1024",
    "--receive-maximum",
    "2",
    "--topic-alias-maximum",
    "10",
];

/// Sends each case from a fresh client of `protocol` while a good pair keeps exchanging
/// QoS 1 messages: one bad client never disturbs the others.
fn run_bad_clients(protocol: Protocol, cases: &[Case]) {
    let broker = Broker::start_with(BAD_CLIENT_FLAGS);
    let mut good = GoodPair::start(&broker);
    good.round_trip("before");
    for (n, case) in cases.iter().enumerate() {
        // Alternate the owning shard of the bad clients.
        let id = id_on(n % 2, &format!("bad-{n}"));
        let mut bad = connected(&broker, protocol, &id);
        bad.send_raw(case.bytes);
        good.round_trip(case.name);
        let answer = bad.rest_until_closed();
        assert_eq!(
            answer, case.answer,
            "{:?}, {}: the broker's answer before closing",
            case.name, case.spec
        );
        good.round_trip(case.name);
    }
    good.round_trip("after");
}

#[test]
fn v5_bad_packets_get_disconnect_with_reason_code_then_close() {
    run_bad_clients(Protocol::V5, V5_CASES);
}

#[test]
fn v311_bad_packets_close_the_connection_without_a_word() {
    run_bad_clients(Protocol::V3_1_1, V311_CASES);
}

/// Opens a connection, writes `bytes` and returns everything the broker sends until it
/// closes the connection.
fn answer_to(broker: &Broker, bytes: &[u8]) -> Vec<u8> {
    let mut stream = open(broker);
    stream.write_all(bytes).unwrap();
    read_until_closed(&mut stream, Vec::new())
}

#[test]
fn connect_errors_get_the_right_connack_or_a_close() {
    let broker = Broker::start();
    // [MQTT-3.1.2-2]: protocol level 6 with name "MQTT", a version newer than 5: CONNACK in
    // the 5.0 form with 0x84 (Unsupported Protocol Version), then close.
    let level_6 = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01, b'x',
    ];
    assert_eq!(answer_to(&broker, &level_6), [0x20, 0x03, 0x00, 0x84, 0x00]);
    // Level 2, older than any version: the 3.1.1 form with return code 0x01.
    let mut level_2 = level_6;
    level_2[8] = 0x02;
    assert_eq!(answer_to(&broker, &level_2), [0x20, 0x02, 0x00, 0x01]);

    // 3.1.1 [MQTT-3.1.3-8]: an empty client id with Clean Session 0: CONNACK 0x02
    // (identifier rejected), then close.
    let empty_id_persistent = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x00, 0x00, 0x3C, 0x00, 0x00,
    ];
    assert_eq!(
        answer_to(&broker, &empty_id_persistent),
        [0x20, 0x02, 0x00, 0x02]
    );

    // 3.1.1 [MQTT-3.1.3-6], [MQTT-3.1.3-7]: an empty client id with Clean Session 1 is
    // accepted.
    let mut stream = open(&broker);
    stream
        .write_all(&[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
        ])
        .unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    drop(stream);

    // [MQTT-4.12.0-1]: a 5.0 CONNECT with an Authentication Method we do not support:
    // CONNACK 0x8C (bad authentication method), then close.
    let auth_method = [
        0x10, 0x15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x07, 0x15, 0x00,
        0x04, b'S', b'C', b'R', b'M', 0x00, 0x01, b'a',
    ];
    assert_eq!(
        answer_to(&broker, &auth_method),
        [0x20, 0x03, 0x00, 0x8C, 0x00]
    );

    // Section 3.1.2.11.7: Request Problem Information 2 is a Protocol Error: CONNACK 0x82,
    // then close.
    let problem_information_2 = [
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x02, 0x17, 0x02,
        0x00, 0x01, b'a',
    ];
    assert_eq!(
        answer_to(&broker, &problem_information_2),
        [0x20, 0x03, 0x00, 0x82, 0x00]
    );

    // [MQTT-3.1.2-3]: 5.0 CONNECT with the reserved flag set is malformed: CONNACK 0x81
    // (allowed before the connection is accepted, section 4.13.1), then close.
    let reserved_5 = [
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x03, 0x00, 0x3C, 0x00, 0x00, 0x01,
        b'a',
    ];
    assert_eq!(
        answer_to(&broker, &reserved_5),
        [0x20, 0x03, 0x00, 0x81, 0x00]
    );

    // 3.1.1 [MQTT-3.1.2-3]: the same in 3.1.1, which has no return code for it: close.
    let reserved_311 = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x01, b'a',
    ];
    assert_eq!(answer_to(&broker, &reserved_311), [0u8; 0]);

    // [MQTT-3.1.0-1]: the first packet is not CONNECT: close without a word.
    assert_eq!(answer_to(&broker, &[0xC0, 0x00]), [0u8; 0]);
    assert_eq!(
        answer_to(&broker, &[0x30, 0x03, 0x00, 0x01, b'a']),
        [0u8; 0]
    );
}

#[test]
fn no_connect_within_the_connect_timeout_closes() {
    let broker = Broker::start_with(&["--connect-timeout-ms", "300"]);
    let mut stream = open(&broker);
    let opened = Instant::now();
    assert_eq!(read_until_closed(&mut stream, Vec::new()), [0u8; 0]);
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1200),
        "closed after {waited:?}, want about 300 ms"
    );

    // Half a CONNECT is no CONNECT: the timeout covers the whole packet.
    let mut stream = open(&broker);
    let opened = Instant::now();
    stream
        .write_all(&[0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04])
        .unwrap();
    assert_eq!(read_until_closed(&mut stream, Vec::new()), [0u8; 0]);
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1200),
        "closed after {waited:?}, want about 300 ms"
    );
}

#[test]
fn v5_connack_announces_limits_and_assigned_client_id() {
    let broker = Broker::start_with(&[
        "--receive-maximum",
        "7",
        "--packet-size-bytes-max",
        "4096",
        "--topic-alias-maximum",
        "5",
    ]);
    // 3.2.2.3.3, 3.2.2.3.6, 3.2.2.3.8; [MQTT-3.2.2-16]: an empty client id gets an
    // Assigned Client Identifier.
    let (_client, connack) = connect_with(&broker, Connect::new(Protocol::V5, "", 0));
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let properties = &connack.properties;
    assert_eq!(properties.receive_maximum, Some(7));
    assert_eq!(properties.maximum_packet_size_bytes, Some(4096));
    assert_eq!(properties.topic_alias_maximum, Some(5));
    let assigned = properties
        .assigned_client_identifier
        .clone()
        .expect("Assigned Client Identifier");
    assert!(!assigned.is_empty());

    let (_other, connack) = connect_with(&broker, Connect::new(Protocol::V5, "", 0));
    let other = connack.properties.assigned_client_identifier.clone();
    assert!(
        other.is_some() && other.as_ref() != Some(&assigned),
        "two clients got {assigned:?} and {other:?}"
    );

    // A client that brought its own id is not assigned one.
    let (_named, connack) = connect_with(&broker, Connect::new(Protocol::V5, "named", 0));
    assert_eq!(connack.properties.assigned_client_identifier, None);
    assert_eq!(connack.properties.receive_maximum, Some(7));
}

#[test]
fn pipelined_connect_subscribe_publish_survive_the_hand_off() {
    let broker = Broker::start_with(&["--sys-interval-secs", "1"]);
    // The accepting shard is chosen by the kernel; with ids owned by either shard, 16
    // connections leave about 2^-16 odds that none was handed off.
    for n in 0..16 {
        let protocol = if n % 2 == 0 {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        };
        let id = id_on((n / 2) % 2, &format!("pipelined-{n}"));
        let topic = format!("handoff/{n}");
        let mut bytes = encode(
            &Packet::Connect(Box::new(Connect::new(protocol, id.as_str(), 0))),
            protocol,
        );
        let subscription = Subscription {
            filter: topic.as_str().into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        };
        bytes.extend(encode(
            &Packet::Subscribe(Subscribe::new(1, vec![subscription])),
            protocol,
        ));
        bytes.extend(encode(&qos1_publish(&topic, 2, id.as_bytes()), protocol));

        let mut client = client(&broker, protocol);
        client.send_raw(&bytes);
        match client.expect() {
            Packet::ConnAck(connack) => assert_eq!(connack.reason_code, ReasonCode::Success),
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
        match client.expect() {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, 1);
                assert_eq!(suback.reason_codes, [ReasonCode::GrantedQos1]);
            }
            other => panic!("{id}: expected SUBACK, got {other:?}"),
        }
        // The PUBACK and the delivery of the message to ourselves, in either order.
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            match client.expect() {
                Packet::PubAck(ack) if !acked => {
                    assert_eq!(ack.packet_id, 2);
                    acked = true;
                }
                Packet::Publish(publish) if !delivered => {
                    assert_eq!(&publish.topic[..], topic.as_str());
                    assert_eq!(&publish.payload[..], id.as_bytes());
                    client.send(&Packet::PubAck(PubAck::new(publish.packet_id)));
                    delivered = true;
                }
                other => panic!("{id}: expected PUBACK and PUBLISH, got {other:?}"),
            }
        }
        client.send_raw(&[0xE0, 0x00]);
    }

    if shard_count() == 2 {
        // The broker's own count says a hand-off happened. The watcher brings no client
        // id: the one it is assigned is owned by the shard that accepted it, so it is not
        // handed off itself.
        let mut watcher = connected(&broker, Protocol::V5, "");
        watcher.subscribe(1, "$SYS/broker/connections/handed_off", QoS::AtMostOnce);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no hand-off counted in $SYS");
            if let Packet::Publish(publish) = watcher.expect() {
                let count: u64 = std::str::from_utf8(&publish.payload)
                    .unwrap()
                    .parse()
                    .unwrap();
                if count > 0 {
                    break;
                }
            }
        }
    }
}

/// CONNECT with keep alive 1 s.
fn connect_keep_alive_1(broker: &Broker, protocol: Protocol, id: &str) -> RawClient {
    let (client, connack) = connect_with(broker, Connect::new(protocol, id, 1));
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert_eq!(connack.properties.server_keep_alive_secs, None);
    client
}

/// The time from `since` to the broker closing, asserted to be 1.5 × keep alive of 1 s:
/// not before 1 s, and with slack for a loaded machine.
fn assert_closed_for_keep_alive(since: Instant) {
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_millis(3000),
        "closed {waited:?} after the last packet, want about 1.5 s"
    );
}

#[test]
fn v5_keep_alive_silence_gets_disconnect_0x8d_then_close() {
    let broker = Broker::start();
    // [MQTT-3.1.2-22]: nothing for 1.5 × keep alive: the connection is closed; a 5.0
    // server may say why first (0x8D keep alive timeout).
    let mut client = connect_keep_alive_1(&broker, Protocol::V5, "silent-5");
    let since = Instant::now();
    assert_eq!(client.rest_until_closed(), [0xE0, 0x02, 0x8D, 0x00]);
    assert_closed_for_keep_alive(since);
}

#[test]
fn v311_pingreq_keeps_alive_then_silence_closes() {
    let broker = Broker::start();
    let mut client = connect_keep_alive_1(&broker, Protocol::V3_1_1, "pinger");
    // [MQTT-3.12.4-1]: PINGREQ is answered with PINGRESP; the pings keep the connection
    // open for 2.4 s, past 1.5 × keep alive.
    let mut last = Instant::now();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        client.send_raw(&[0xC0, 0x00]);
        last = Instant::now();
        let mut pingresp = [0u8; 2];
        client.tcp.read_exact(&mut pingresp).unwrap();
        assert_eq!(pingresp, [0xD0, 0x00]);
    }
    // 3.1.1 [MQTT-3.1.2-24]: then silence: closed, without a word in 3.1.1.
    assert_eq!(client.rest_until_closed(), [0u8; 0]);
    assert_closed_for_keep_alive(last);
}

#[test]
fn v5_pingreq_gets_pingresp() {
    let broker = Broker::start();
    let mut client = connected(&broker, Protocol::V5, "ping-5");
    client.send_raw(&[0xC0, 0x00]);
    let mut pingresp = [0u8; 2];
    client.tcp.read_exact(&mut pingresp).unwrap();
    assert_eq!(pingresp, [0xD0, 0x00]);
}

#[test]
fn v5_disconnect_cannot_set_session_expiry_after_zero() {
    let broker = Broker::start();
    // DISCONNECT, reason 0x00, Session Expiry Interval 10.
    let disconnect_expiry_10 = [0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A];

    // Section 3.14.2.2.2: "If the Session Expiry Interval in the CONNECT packet was zero,
    // then it is a Protocol Error to set a non-zero Session Expiry Interval in the
    // DISCONNECT packet" [MQTT-4.13.1-1]: DISCONNECT 0x82, then close.
    let mut client = connected(&broker, Protocol::V5, "expiry-0");
    client.send_raw(&disconnect_expiry_10);
    assert_eq!(client.rest_until_closed(), [0xE0, 0x02, 0x82, 0x00]);

    // With a non-zero expiry in CONNECT, the same DISCONNECT is a normal close.
    let mut connect = Connect::new(Protocol::V5, "expiry-60", 0);
    connect.properties.session_expiry_interval_secs = Some(60);
    let (mut client, connack) = connect_with(&broker, connect);
    assert_eq!(connack.reason_code, ReasonCode::Success);
    client.send_raw(&disconnect_expiry_10);
    assert_eq!(client.rest_until_closed(), [0u8; 0]);
}

#[test]
fn v5_topic_alias_is_set_reused_and_not_carried_to_a_new_connection() {
    let broker = Broker::start();
    let mut subscriber = connected(&broker, Protocol::V5, &id_on(0, "alias-sub"));
    subscriber.subscribe(1, "alias/t", QoS::AtMostOnce);
    let publisher_id = id_on(1, "alias-pub");
    let mut publisher = connected(&broker, Protocol::V5, &publisher_id);
    // [MQTT-3.3.2-12]: PUBLISH QoS 1 "alias/t" setting alias 1, then
    // PUBLISH QoS 1 with an empty topic and alias 1.
    publisher.send_raw(&[
        0x32, 0x10, 0x00, 0x07, b'a', b'l', b'i', b'a', b's', b'/', b't', 0x00, 0x01, 0x03, 0x23,
        0x00, 0x01, b'1',
    ]);
    publisher.send_raw(&[
        0x32, 0x09, 0x00, 0x00, 0x00, 0x02, 0x03, 0x23, 0x00, 0x01, b'2',
    ]);
    let mut pubacks = [0u8; 8];
    publisher.tcp.read_exact(&mut pubacks).unwrap();
    assert_eq!(pubacks, [0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x02]);
    for payload in [b"1", b"2"] {
        match subscriber.expect() {
            Packet::Publish(publish) => {
                assert_eq!(&publish.topic[..], "alias/t");
                assert_eq!(&publish.payload[..], payload);
                // The publisher's alias is not passed on: the subscriber allowed none
                // [MQTT-3.3.2-11].
                assert_eq!(publish.properties.topic_alias, None);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    publisher.send_raw(&[0xE0, 0x00]);
    assert_eq!(publisher.rest_until_closed(), [0u8; 0]);

    // [MQTT-3.3.2-7]: a new connection of the same client does not know alias 1.
    let mut publisher = connected(&broker, Protocol::V5, &publisher_id);
    publisher.send_raw(&[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, b'3']);
    assert_eq!(publisher.rest_until_closed(), [0xE0, 0x02, 0x82, 0x00]);
}

#[test]
fn connections_max_closes_the_extra_connection_at_once() {
    let broker = Broker::start_with(&["--connections-max", "3"]);
    let mut clients: Vec<RawClient> = (0..3)
        .map(|n| connected(&broker, Protocol::V3_1_1, &format!("max-{n}")))
        .collect();

    // The 4th is closed without a word, even after sending a valid CONNECT.
    let mut fourth = open(&broker);
    let opened = Instant::now();
    let _ = fourth.write_all(&encode(
        &Packet::Connect(Box::new(Connect::new(Protocol::V3_1_1, "max-3", 0))),
        Protocol::V3_1_1,
    ));
    assert_eq!(read_until_closed(&mut fourth, Vec::new()), [0u8; 0]);
    assert!(
        opened.elapsed() < Duration::from_secs(1),
        "not closed at once"
    );

    // [MQTT-3.12.4-1]: the first three still work.
    for client in &mut clients {
        client.send_raw(&[0xC0, 0x00]);
        let mut pingresp = [0u8; 2];
        client.tcp.read_exact(&mut pingresp).unwrap();
        assert_eq!(pingresp, [0xD0, 0x00]);
    }

    // One leaves: its place is free again.
    let mut leaving = clients.pop().unwrap();
    leaving.send_raw(&[0xE0, 0x00]);
    assert_eq!(leaving.rest_until_closed(), [0u8; 0]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut stream = open(&broker);
        stream
            .write_all(&[
                0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x03,
                b'n', b'e', b'w',
            ])
            .unwrap();
        let answer = read_connack_or_close(&mut stream);
        if answer == [0x20, 0x02, 0x00, 0x00] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a client left: {answer:02X?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Four bytes of CONNACK, or what came before the broker closed.
fn read_connack_or_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4];
    while got.len() < 4 {
        match stream.read(&mut chunk[..4 - got.len()]) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no CONNACK and no close: {e}"),
        }
    }
    got
}

#[test]
fn bad_packet_in_the_same_write_as_connect_follows_the_hand_off() {
    let broker = Broker::start();
    // CONNECT and a PUBLISH with QoS 3 in one write, for ids of both shards: whichever shard
    // accepts, the owner answers CONNACK, then DISCONNECT 0x81 [MQTT-3.3.1-4].
    for n in 0..8 {
        let id = id_on(n % 2, &format!("pipelined-bad-{n}"));
        let mut bytes = encode(
            &Packet::Connect(Box::new(Connect::new(Protocol::V5, id.as_str(), 0))),
            Protocol::V5,
        );
        bytes.extend_from_slice(&[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00]);
        let answer = answer_to(&broker, &bytes);
        #[rustfmt::skip]
        let expected = [
            // CONNACK, success, properties: Receive Maximum 1024, Maximum Packet Size
            // 1 MiB, Topic Alias Maximum 64.
            0x20, 0x0E, 0x00, 0x00, 0x0B,
            0x21, 0x04, 0x00,
            0x27, 0x00, 0x10, 0x00, 0x00,
            0x22, 0x00, 0x40,
            // DISCONNECT 0x81.
            0xE0, 0x02, 0x81, 0x00,
        ];
        assert_eq!(answer, expected, "{id}");
    }
}

#[test]
fn session_take_over_disconnects_the_old_connection_with_0x8e() {
    let broker = Broker::start();
    for shard in 0..2 {
        let id = id_on(shard, "taken");
        let mut old = connected(&broker, Protocol::V5, &id);
        let mut new = connected(&broker, Protocol::V5, &id);
        // [MQTT-3.1.4-3]: DISCONNECT 0x8E to the existing connection, then close.
        assert_eq!(old.rest_until_closed(), [0xE0, 0x02, 0x8E, 0x00]);
        new.send_raw(&[0xC0, 0x00]);
        new.expect_bytes(&[0xD0, 0x00]);
    }
}

#[test]
fn v5_qos2_receive_maximum_counts_until_pubrel() {
    let broker = Broker::start_with(&["--receive-maximum", "2"]);
    let mut client = connected(&broker, Protocol::V5, "qos2");
    // PUBLISH QoS 2 "q" ids 1 and 2: PUBREC for each.
    client.send_raw(&[
        0x34, 0x06, 0x00, 0x01, b'q', 0x00, 0x01, 0x00, //
        0x34, 0x06, 0x00, 0x01, b'q', 0x00, 0x02, 0x00,
    ]);
    client.expect_bytes(&[0x50, 0x02, 0x00, 0x01, 0x50, 0x02, 0x00, 0x02]);
    // Id 2 again with DUP: answered again, not counted twice (section 4.3.3).
    client.send_raw(&[0x3C, 0x06, 0x00, 0x01, b'q', 0x00, 0x02, 0x00]);
    client.expect_bytes(&[0x50, 0x02, 0x00, 0x02]);
    // Section 4.3.3: PUBREL 1 gets PUBCOMP 1, which frees a place of the window.
    client.send_raw(&[0x62, 0x02, 0x00, 0x01]);
    client.expect_bytes(&[0x70, 0x02, 0x00, 0x01]);
    client.send_raw(&[0x34, 0x06, 0x00, 0x01, b'q', 0x00, 0x03, 0x00]);
    client.expect_bytes(&[0x50, 0x02, 0x00, 0x03]);
    // PUBREL of an unknown id: PUBCOMP 0x92 (packet identifier not found), section 3.7.2.1.
    client.send_raw(&[0x62, 0x02, 0x00, 0x09]);
    client.expect_bytes(&[0x70, 0x04, 0x00, 0x09, 0x92, 0x00]);
    // Ids 2 and 3 are unreleased: a third QoS 2 PUBLISH exceeds Receive Maximum 2
    // [MQTT-3.3.4-7]: DISCONNECT 0x93, then close.
    client.send_raw(&[0x34, 0x06, 0x00, 0x01, b'q', 0x00, 0x04, 0x00]);
    assert_eq!(client.rest_until_closed(), [0xE0, 0x02, 0x93, 0x00]);
}

#[test]
fn v5_disconnect_may_set_session_expiry_when_connect_asked_for_one() {
    // The server grants no session expiry at all, and says so in CONNACK (0).
    let broker = Broker::start_with(&["--session-expiry-secs-max", "0"]);
    let mut watcher = connected(&broker, Protocol::V5, &id_on(0, "will-watcher"));
    watcher.subscribe(1, "will/t", QoS::AtMostOnce);

    let mut connect = Connect::new(Protocol::V5, id_on(1, "asked-60").as_str(), 0);
    connect.properties.session_expiry_interval_secs = Some(60);
    connect.will = Some(ferrymq::protocol::Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        topic: "will/t".into(),
        payload: bytes::Bytes::from_static(b"will"),
    });
    let (mut client, connack) = connect_with(&broker, connect);
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert_eq!(connack.properties.session_expiry_interval_secs, Some(0));
    // Section 3.14.2.2.2: only a zero Session Expiry Interval *in the CONNECT packet* makes
    // a non-zero one in DISCONNECT a Protocol Error. This is a normal disconnection: no
    // DISCONNECT back, and the will is discarded [MQTT-3.1.2-10].
    client.send_raw(&[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x3C]);
    assert_eq!(client.rest_until_closed(), [0u8; 0]);
    watcher
        .tcp
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    match watcher.tcp.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(n) => panic!(
            "the will went out after a normal disconnection: {:02X?}",
            &buf[..n]
        ),
        Err(e) => panic!("watcher: {e}"),
    }
}

/// The server sets Topic Aliases on PUBLISHes to a 5.0 client that allows them: a topic
/// goes once in full with its alias, then as the alias alone, up to the client's Topic
/// Alias Maximum; beyond it, full topics without alias (3.3.2.3.4, [MQTT-3.3.2-11]).
#[test]
fn v5_server_sets_topic_aliases_up_to_the_client_maximum() {
    let broker = Broker::start();
    let mut connect = Connect::new(Protocol::V5, "alias-receiver", 0);
    connect.properties.topic_alias_maximum = Some(2);
    let (mut receiver, connack) = connect_with(&broker, connect);
    assert_eq!(connack.reason_code, ReasonCode::Success);
    receiver.subscribe(1, "alias/#", QoS::AtMostOnce);
    let mut publisher = connected(&broker, Protocol::V3_1_1, "alias-publisher");
    let topics = ["alias/a", "alias/a", "alias/b", "alias/c", "alias/b"];
    for (index, topic) in topics.iter().enumerate() {
        publisher.send(&qos1_publish(topic, index as u16 + 1, topic.as_bytes()));
        assert!(matches!(publisher.expect(), Packet::PubAck(_)));
    }
    let mut seen = Vec::new();
    for _ in &topics {
        match receiver.expect() {
            Packet::Publish(publish) => seen.push((
                publish.topic.to_string(),
                publish.properties.topic_alias,
                String::from_utf8(publish.payload.to_vec()).unwrap(),
            )),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    let expected = [
        ("alias/a", Some(1), "alias/a"),
        ("", Some(1), "alias/a"),
        ("alias/b", Some(2), "alias/b"),
        ("alias/c", None, "alias/c"),
        ("", Some(2), "alias/b"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(t, a, p)| (t.to_string(), *a, p.to_string()))
        .collect();
    assert_eq!(seen, expected);
}
