//! Cross-checks our MQTT codec against an independent one: rumqttc's `mqttbytes`
//! (`rumqttc::mqttbytes::v4` for 3.1.1, `rumqttc::v5::mqttbytes::v5` for 5.0), a dev-dependency
//! used nowhere else.
//!
//! For every packet, hand-picked and generated (a deterministic generator, a few hundred
//! packets per type and protocol):
//! (a) what we encode, rumqttc decodes to the equivalent packet;
//! (b) what rumqttc encodes for the equivalent packet, we decode to the original packet;
//! (c) where both encodings are canonical, the bytes are identical.
//!
//! "Equivalent" is a field-by-field translation (`to_r4`/`from_r4`, `to_r5`/`from_r5`):
//! topic, QoS, retain, dup, packet id, payload, every property (user properties in order),
//! subscription options, reason codes, keep alive, client id, will, credentials. Both
//! directions compare whole structs, so a field that one side drops or alters fails.
//!
//! Not cross-checked, because rumqttc cannot express them:
//! - MQTT 3.1 (protocol name "MQIsdp", level 3): rumqttc's CONNECT decoder accepts only "MQTT".
//! - AUTH in 3.1.1 does not exist.
//!
//! rumqttc deviations from the specification, each worked around by restricting the inputs
//! or skipping one direction for one shape (our codec is never loosened):
//! - Passwords (3.1.3.5, "Binary Data") are `String`s in rumqttc: non-UTF-8 passwords fail
//!   its decoder, so generated passwords are UTF-8. It also treats an empty user name or
//!   password as absent (3.1.3.4/3.1.3.5 allow zero-length ones), so generated ones are
//!   non-empty.
//! - 5.0 Subscription Identifier (2.2.2.2, 3.3.2.3.8): `PublishProperties::read` (and
//!   `SubscribeProperties::read`) count the property's identifier byte twice
//!   (`cursor += 1 + id_len` after `cursor += 1`), so after the n-th identifier it stops
//!   reading properties n bytes early and hands the rest to the payload. Found by this test
//!   (a PUBLISH with three identifiers lost the third into its payload); generated PUBLISHes
//!   carry at most two identifiers, which the following properties always outlast.
//! - 5.0 DISCONNECT (3.14.2.1, 3.14.2.2.1): `Packet::read` refuses Remaining Length 0
//!   ("PayloadRequired"), so we call `Disconnect::read` for that frame. For a non-normal
//!   reason without properties we send Remaining Length 1 (property length omitted: "If the
//!   Remaining Length is less than 2, a value of 0 is used"), which `Disconnect::read` fails
//!   on, and rumqttc writes Remaining Length 1 followed by two bytes (reason code and a
//!   property length), one byte more than the frame: that shape is checked in neither
//!   direction, only by our own round trips.
//! - 5.0 AUTH (3.15): `Packet::read` does not know packet type 15, so we call `Auth::read`.
//!   `Auth::read` needs a reason code and a property length (3.15.2.1 lets both be omitted
//!   for Success without properties), and `AuthProperties` miscounts property lengths when
//!   writing (method, data, reason string and user properties) and when reading (method and
//!   reason string). So (a) covers AUTH with user properties only and (b) covers AUTH
//!   without properties. rumqttc does not export `AuthReasonCode`/`AuthProperties` either.
//! - 5.0 PUBACK/PUBREC/PUBREL/PUBCOMP and DISCONNECT: for a non-success reason without
//!   properties rumqttc writes an explicit empty property length where we omit it
//!   (3.4.2.2.1 etc. allow both): equal packets, different bytes, so (c) skips them.
//! - rumqttc validates little (reserved bits, duplicate properties, property values, topic
//!   syntax): irrelevant here, as only valid packets are cross-checked; malformed input is
//!   the fuzz targets' business (`fuzz/`).

use bytes::{Bytes, BytesMut};
use ferrymq::protocol::{
    decode_packet, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Disconnect, DisconnectProperties, MqttStr, Packet, Protocol, PubAck,
    PubComp, PubRec, PubRel, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, Role,
    SubAck, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions, UnsubAck,
    Unsubscribe, UnsubscribeProperties, UserProperty, Will, WillProperties, PACKET_SIZE_BYTES_MAX,
    VAR_INT_MAX,
};
use rumqttc::mqttbytes::{self as r4b, v4 as r4};
use rumqttc::v5::mqttbytes::{self as r5b, v5 as r5};

/// Generated packets per packet type and protocol.
const GENERATED_PER_TYPE: usize = 200;

// ---------------------------------------------------------------------------------------
// A small deterministic generator (SplitMix64): reproducible failures, no extra dependency.
// ---------------------------------------------------------------------------------------

struct Rng(u64);

/// Characters for strings: ASCII, '/', '$', multi-byte UTF-8, a BOM (which must not be
/// stripped [MQTT-1.5.4-3]) and a control character. No U+0000 and no wildcards.
const ALPHABET: &[char] = &[
    'a', 'b', 'q', 'z', 'A', 'Z', '0', '7', '/', '/', ' ', '-', '_', '.', '$', 'é', 'ß', '€', '中',
    '😀', '\u{feff}', '\u{7f}',
];

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn maybe<T>(&mut self, make: impl FnOnce(&mut Rng) -> T) -> Option<T> {
        if self.chance(40) {
            Some(make(self))
        } else {
            None
        }
    }

    /// A length: mostly short, sometimes long enough for two-byte remaining lengths.
    fn len(&mut self, short_max: usize) -> usize {
        if self.chance(5) {
            100 + self.below(300)
        } else {
            self.below(short_max + 1)
        }
    }

    fn u16(&mut self) -> u16 {
        if self.chance(30) {
            self.pick(&[0, 1, 127, 128, 255, 256, u16::MAX])
        } else {
            self.next_u64() as u16
        }
    }

    fn nonzero_u16(&mut self) -> u16 {
        self.u16().max(1)
    }

    fn u32(&mut self) -> u32 {
        if self.chance(30) {
            self.pick(&[0, 1, 127, 128, 65_535, 65_536, u32::MAX])
        } else {
            self.next_u64() as u32
        }
    }

    fn nonzero_u32(&mut self) -> u32 {
        self.u32().max(1)
    }

    fn bool01(&mut self) -> u8 {
        self.below(2) as u8
    }

    fn qos(&mut self) -> QoS {
        self.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    fn text(&mut self, short_max: usize) -> String {
        let len = self.len(short_max);
        (0..len).map(|_| self.pick(ALPHABET)).collect()
    }

    fn non_empty_text(&mut self, short_max: usize) -> String {
        let mut text = self.text(short_max);
        if text.is_empty() {
            text.push(self.pick(ALPHABET));
        }
        text
    }

    fn mqtt_str(&mut self, short_max: usize) -> MqttStr {
        MqttStr::from(self.text(short_max))
    }

    /// A valid topic name: not empty, no wildcards.
    fn topic(&mut self) -> MqttStr {
        MqttStr::from(self.non_empty_text(12))
    }

    /// A valid topic filter; in 5.0 sometimes a shared subscription.
    fn filter(&mut self, allow_shared: bool) -> MqttStr {
        let levels = 1 + self.below(4);
        let mut parts: Vec<String> = (0..levels)
            .map(|_| {
                if self.chance(25) {
                    "+".to_owned()
                } else {
                    self.text(6).replace('/', "")
                }
            })
            .collect();
        if self.chance(25) {
            parts.push("#".to_owned());
        }
        let mut filter = parts.join("/");
        if filter.is_empty() {
            filter.push('#');
        }
        if allow_shared && self.chance(15) {
            let group = self.non_empty_text(6).replace('/', "");
            let group = if group.is_empty() {
                "g".to_owned()
            } else {
                group
            };
            filter = format!("$share/{group}/{filter}");
        }
        MqttStr::from(filter)
    }

    fn bytes(&mut self, short_max: usize) -> Bytes {
        let len = self.len(short_max);
        Bytes::from((0..len).map(|_| self.next_u64() as u8).collect::<Vec<u8>>())
    }

    /// A payload: usually short, sometimes past the 2-, 3-byte remaining length thresholds.
    fn payload(&mut self) -> Bytes {
        match self.below(100) {
            0 => Bytes::from(vec![0xA5; 16_384 + self.below(100)]),
            1..=4 => self.bytes(1_000),
            _ => self.bytes(20),
        }
    }

    /// A non-empty UTF-8 password (see the module comment on rumqttc's passwords).
    fn password(&mut self) -> Bytes {
        Bytes::from(self.non_empty_text(10))
    }

    fn user_properties(&mut self) -> Vec<UserProperty> {
        let count = self.pick(&[0, 0, 0, 1, 1, 2, 5]);
        (0..count)
            .map(|_| {
                // Repeated names are allowed and their order must be kept [MQTT-3.3.2-18].
                let name = if self.chance(20) {
                    MqttStr::from("dup")
                } else {
                    self.mqtt_str(8)
                };
                UserProperty {
                    name,
                    value: self.mqtt_str(8),
                }
            })
            .collect()
    }

    /// A subscription identifier: 1 to 268,435,455 (3.8.2.1.2).
    fn subscription_id(&mut self) -> u32 {
        if self.chance(30) {
            self.pick(&[
                1,
                127,
                128,
                16_383,
                16_384,
                2_097_151,
                2_097_152,
                VAR_INT_MAX,
            ])
        } else {
            1 + self.below(VAR_INT_MAX as usize) as u32
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reason code tables: our code and rumqttc's for every code both know in a packet type.
// ---------------------------------------------------------------------------------------

fn lookup<A: PartialEq + std::fmt::Debug, B: Clone>(table: &[(A, B)], key: &A) -> B {
    table
        .iter()
        .find(|(a, _)| a == key)
        .map(|(_, b)| b.clone())
        .unwrap_or_else(|| panic!("{key:?} has no counterpart"))
}

fn reverse<A: Clone, B: PartialEq + std::fmt::Debug>(table: &[(A, B)], key: &B) -> A {
    table
        .iter()
        .find(|(_, b)| b == key)
        .map(|(a, _)| a.clone())
        .unwrap_or_else(|| panic!("{key:?} has no counterpart"))
}

fn left<A: Clone, B>(table: &[(A, B)]) -> Vec<A> {
    table.iter().map(|(a, _)| a.clone()).collect()
}

const V4_CONNACK_CODES: [(ReasonCode, r4::ConnectReturnCode); 6] = [
    (ReasonCode::Success, r4::ConnectReturnCode::Success),
    (
        ReasonCode::UnsupportedProtocolVersion,
        r4::ConnectReturnCode::RefusedProtocolVersion,
    ),
    (
        ReasonCode::ClientIdentifierNotValid,
        r4::ConnectReturnCode::BadClientId,
    ),
    (
        ReasonCode::ServerUnavailable,
        r4::ConnectReturnCode::ServiceUnavailable,
    ),
    (
        ReasonCode::BadUserNameOrPassword,
        r4::ConnectReturnCode::BadUserNamePassword,
    ),
    (
        ReasonCode::NotAuthorized,
        r4::ConnectReturnCode::NotAuthorized,
    ),
];

const V4_SUBACK_CODES: [(ReasonCode, r4::SubscribeReasonCode); 4] = [
    (
        ReasonCode::Success,
        r4::SubscribeReasonCode::Success(r4b::QoS::AtMostOnce),
    ),
    (
        ReasonCode::GrantedQos1,
        r4::SubscribeReasonCode::Success(r4b::QoS::AtLeastOnce),
    ),
    (
        ReasonCode::GrantedQos2,
        r4::SubscribeReasonCode::Success(r4b::QoS::ExactlyOnce),
    ),
    (
        ReasonCode::UnspecifiedError,
        r4::SubscribeReasonCode::Failure,
    ),
];

const V5_CONNACK_CODES: [(ReasonCode, r5::ConnectReturnCode); 22] = {
    use r5::ConnectReturnCode as R;
    use ReasonCode as O;
    [
        (O::Success, R::Success),
        (O::UnspecifiedError, R::UnspecifiedError),
        (O::MalformedPacket, R::MalformedPacket),
        (O::ProtocolError, R::ProtocolError),
        (
            O::ImplementationSpecificError,
            R::ImplementationSpecificError,
        ),
        (O::UnsupportedProtocolVersion, R::UnsupportedProtocolVersion),
        (O::ClientIdentifierNotValid, R::ClientIdentifierNotValid),
        (O::BadUserNameOrPassword, R::BadUserNamePassword),
        (O::NotAuthorized, R::NotAuthorized),
        (O::ServerUnavailable, R::ServerUnavailable),
        (O::ServerBusy, R::ServerBusy),
        (O::Banned, R::Banned),
        (O::BadAuthenticationMethod, R::BadAuthenticationMethod),
        (O::TopicNameInvalid, R::TopicNameInvalid),
        (O::PacketTooLarge, R::PacketTooLarge),
        (O::QuotaExceeded, R::QuotaExceeded),
        (O::PayloadFormatInvalid, R::PayloadFormatInvalid),
        (O::RetainNotSupported, R::RetainNotSupported),
        (O::QosNotSupported, R::QoSNotSupported),
        (O::UseAnotherServer, R::UseAnotherServer),
        (O::ServerMoved, R::ServerMoved),
        (O::ConnectionRateExceeded, R::ConnectionRateExceeded),
    ]
};

/// PUBACK and PUBREC share their codes (3.4.2.1, 3.5.2.1); rumqttc has one enum each.
macro_rules! puback_codes {
    ($r:ident) => {{
        use ReasonCode as O;
        [
            (O::Success, r5::$r::Success),
            (O::NoMatchingSubscribers, r5::$r::NoMatchingSubscribers),
            (O::UnspecifiedError, r5::$r::UnspecifiedError),
            (
                O::ImplementationSpecificError,
                r5::$r::ImplementationSpecificError,
            ),
            (O::NotAuthorized, r5::$r::NotAuthorized),
            (O::TopicNameInvalid, r5::$r::TopicNameInvalid),
            (O::PacketIdentifierInUse, r5::$r::PacketIdentifierInUse),
            (O::QuotaExceeded, r5::$r::QuotaExceeded),
            (O::PayloadFormatInvalid, r5::$r::PayloadFormatInvalid),
        ]
    }};
}

const V5_PUBACK_CODES: [(ReasonCode, r5::PubAckReason); 9] = puback_codes!(PubAckReason);
const V5_PUBREC_CODES: [(ReasonCode, r5::PubRecReason); 9] = puback_codes!(PubRecReason);
const V5_PUBREL_CODES: [(ReasonCode, r5::PubRelReason); 2] = [
    (ReasonCode::Success, r5::PubRelReason::Success),
    (
        ReasonCode::PacketIdentifierNotFound,
        r5::PubRelReason::PacketIdentifierNotFound,
    ),
];
const V5_PUBCOMP_CODES: [(ReasonCode, r5::PubCompReason); 2] = [
    (ReasonCode::Success, r5::PubCompReason::Success),
    (
        ReasonCode::PacketIdentifierNotFound,
        r5::PubCompReason::PacketIdentifierNotFound,
    ),
];

const V5_SUBACK_CODES: [(ReasonCode, r5::SubscribeReasonCode); 12] = {
    use r5::SubscribeReasonCode as R;
    use ReasonCode as O;
    [
        (O::Success, R::Success(r5b::QoS::AtMostOnce)),
        (O::GrantedQos1, R::Success(r5b::QoS::AtLeastOnce)),
        (O::GrantedQos2, R::Success(r5b::QoS::ExactlyOnce)),
        // rumqttc has both `Failure` and `Unspecified` for 0x80; it decodes `Unspecified`.
        (O::UnspecifiedError, R::Unspecified),
        (O::ImplementationSpecificError, R::ImplementationSpecific),
        (O::NotAuthorized, R::NotAuthorized),
        (O::TopicFilterInvalid, R::TopicFilterInvalid),
        (O::PacketIdentifierInUse, R::PkidInUse),
        (O::QuotaExceeded, R::QuotaExceeded),
        (
            O::SharedSubscriptionsNotSupported,
            R::SharedSubscriptionsNotSupported,
        ),
        (
            O::SubscriptionIdentifiersNotSupported,
            R::SubscriptionIdNotSupported,
        ),
        (
            O::WildcardSubscriptionsNotSupported,
            R::WildcardSubscriptionsNotSupported,
        ),
    ]
};

const V5_UNSUBACK_CODES: [(ReasonCode, r5::UnsubAckReason); 7] = {
    use r5::UnsubAckReason as R;
    use ReasonCode as O;
    [
        (O::Success, R::Success),
        (O::NoSubscriptionExisted, R::NoSubscriptionExisted),
        (O::UnspecifiedError, R::UnspecifiedError),
        (
            O::ImplementationSpecificError,
            R::ImplementationSpecificError,
        ),
        (O::NotAuthorized, R::NotAuthorized),
        (O::TopicFilterInvalid, R::TopicFilterInvalid),
        (O::PacketIdentifierInUse, R::PacketIdentifierInUse),
    ]
};

/// AUTH reason codes (3.15.2.1).
const V5_AUTH_CODES: [ReasonCode; 3] = [
    ReasonCode::Success,
    ReasonCode::ContinueAuthentication,
    ReasonCode::ReAuthenticate,
];

/// Every code valid in a 5.0 DISCONNECT (3.14.2.1); rumqttc's enum is `repr(u8)` with the
/// wire values and converts with `TryFrom<u8>`.
fn v5_disconnect_codes() -> Vec<ReasonCode> {
    ferrymq::protocol::ALL_REASON_CODES
        .into_iter()
        .filter(|code| code.is_valid_for(ferrymq::protocol::PacketType::Disconnect))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Small conversions
// ---------------------------------------------------------------------------------------

fn s(value: &MqttStr) -> String {
    value.as_str().to_owned()
}

fn m(value: String) -> MqttStr {
    MqttStr::from(value)
}

fn opt_s(value: &Option<MqttStr>) -> Option<String> {
    value.as_ref().map(s)
}

fn opt_m(value: Option<String>) -> Option<MqttStr> {
    value.map(m)
}

fn pairs(properties: &[UserProperty]) -> Vec<(String, String)> {
    properties
        .iter()
        .map(|p| (s(&p.name), s(&p.value)))
        .collect()
}

fn user_properties(pairs: Vec<(String, String)>) -> Vec<UserProperty> {
    pairs
        .into_iter()
        .map(|(name, value)| UserProperty::new(name, value))
        .collect()
}

fn password_string(password: &Bytes) -> String {
    String::from_utf8(password.to_vec()).expect("cross-checked passwords are UTF-8")
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn q4(qos: QoS) -> r4b::QoS {
    match qos {
        QoS::AtMostOnce => r4b::QoS::AtMostOnce,
        QoS::AtLeastOnce => r4b::QoS::AtLeastOnce,
        QoS::ExactlyOnce => r4b::QoS::ExactlyOnce,
    }
}

fn from_q4(qos: r4b::QoS) -> QoS {
    match qos {
        r4b::QoS::AtMostOnce => QoS::AtMostOnce,
        r4b::QoS::AtLeastOnce => QoS::AtLeastOnce,
        r4b::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn q5(qos: QoS) -> r5b::QoS {
    match qos {
        QoS::AtMostOnce => r5b::QoS::AtMostOnce,
        QoS::AtLeastOnce => r5b::QoS::AtLeastOnce,
        QoS::ExactlyOnce => r5b::QoS::ExactlyOnce,
    }
}

fn from_q5(qos: r5b::QoS) -> QoS {
    match qos {
        r5b::QoS::AtMostOnce => QoS::AtMostOnce,
        r5b::QoS::AtLeastOnce => QoS::AtLeastOnce,
        r5b::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

// ---------------------------------------------------------------------------------------
// Decoding with our codec
// ---------------------------------------------------------------------------------------

/// Decodes one whole packet with our codec, as every receiver that may get it: a server
/// (before CONNECT for a CONNECT), a client, or both for packets that travel both ways.
/// All must agree and consume exactly the frame.
fn decode_ours(protocol: Protocol, frame: &[u8], expected: &Packet) -> Packet {
    let receivers: Vec<(Role, Option<Protocol>)> = match frame[0] >> 4 {
        1 => vec![(Role::Server, None)],
        // Only a server adds Subscription Identifiers to a PUBLISH [MQTT-3.3.4-6].
        3 if matches!(expected, Packet::Publish(p) if !p.properties.subscription_identifiers.is_empty()) =>
        {
            vec![(Role::Client, Some(protocol))]
        }
        8 | 10 | 12 => vec![(Role::Server, Some(protocol))],
        2 | 9 | 11 | 13 => vec![(Role::Client, Some(protocol))],
        // 3.1.1 DISCONNECT goes from client to server only (table 2.1).
        14 if !protocol.is_v5() => vec![(Role::Server, Some(protocol))],
        _ => vec![
            (Role::Server, Some(protocol)),
            (Role::Client, Some(protocol)),
        ],
    };
    let mut decoded: Option<Packet> = None;
    for (role, decoder_protocol) in receivers {
        let mut buf = BytesMut::from(frame);
        let packet = decode_packet(&mut buf, role, decoder_protocol, PACKET_SIZE_BYTES_MAX)
            .unwrap_or_else(|e| panic!("we fail to decode {:02x?}: {e}", short(frame)))
            .unwrap_or_else(|| panic!("we find {:02x?} incomplete", short(frame)));
        assert!(buf.is_empty(), "{} bytes left after the packet", buf.len());
        if let Some(previous) = &decoded {
            assert_eq!(previous, &packet, "server and client decoders disagree");
        }
        decoded = Some(packet);
    }
    decoded.expect("at least one receiver")
}

/// At most the first 128 bytes, for messages.
fn short(frame: &[u8]) -> &[u8] {
    &frame[..frame.len().min(128)]
}

fn encode_ours(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    packet.encode(protocol, &mut buf);
    assert_eq!(buf.len(), packet.encoded_len(protocol));
    buf
}

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1 <-> rumqttc::mqttbytes::v4
// ---------------------------------------------------------------------------------------

fn to_r4(packet: &Packet) -> r4::Packet {
    match packet {
        Packet::Connect(c) => {
            let login = match (&c.username, &c.password) {
                (None, None) => None,
                (username, password) => Some(r4::Login {
                    username: opt_s(username).unwrap_or_default(),
                    password: password.as_ref().map(password_string).unwrap_or_default(),
                }),
            };
            r4::Packet::Connect(r4::Connect {
                protocol: r4b::Protocol::V4,
                keep_alive: c.keep_alive_secs,
                client_id: s(&c.client_id),
                clean_session: c.clean_start,
                last_will: c.will.as_ref().map(|w| r4::LastWill {
                    topic: s(&w.topic),
                    message: w.payload.clone(),
                    qos: q4(w.qos),
                    retain: w.retain,
                }),
                login,
            })
        }
        Packet::ConnAck(c) => r4::Packet::ConnAck(r4::ConnAck {
            session_present: c.session_present,
            code: lookup(&V4_CONNACK_CODES, &c.reason_code),
        }),
        Packet::Publish(p) => r4::Packet::Publish(r4::Publish {
            dup: p.dup,
            qos: q4(p.qos),
            retain: p.retain,
            topic: s(&p.topic),
            pkid: p.packet_id,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(p) => r4::Packet::PubAck(r4::PubAck { pkid: p.packet_id }),
        Packet::PubRec(p) => r4::Packet::PubRec(r4::PubRec { pkid: p.packet_id }),
        Packet::PubRel(p) => r4::Packet::PubRel(r4::PubRel { pkid: p.packet_id }),
        Packet::PubComp(p) => r4::Packet::PubComp(r4::PubComp { pkid: p.packet_id }),
        Packet::Subscribe(p) => r4::Packet::Subscribe(r4::Subscribe {
            pkid: p.packet_id,
            filters: p
                .filters
                .iter()
                .map(|f| r4::SubscribeFilter {
                    path: s(&f.filter),
                    qos: q4(f.options.qos),
                })
                .collect(),
        }),
        Packet::SubAck(p) => r4::Packet::SubAck(r4::SubAck {
            pkid: p.packet_id,
            return_codes: p
                .reason_codes
                .iter()
                .map(|c| lookup(&V4_SUBACK_CODES, c))
                .collect(),
        }),
        Packet::Unsubscribe(p) => r4::Packet::Unsubscribe(r4::Unsubscribe {
            pkid: p.packet_id,
            topics: p.filters.iter().map(s).collect(),
        }),
        Packet::UnsubAck(p) => r4::Packet::UnsubAck(r4::UnsubAck { pkid: p.packet_id }),
        Packet::PingReq => r4::Packet::PingReq,
        Packet::PingResp => r4::Packet::PingResp,
        Packet::Disconnect(_) => r4::Packet::Disconnect,
        Packet::Auth(_) => panic!("AUTH does not exist in 3.1.1"),
    }
}

fn from_r4(packet: r4::Packet) -> Packet {
    match packet {
        r4::Packet::Connect(c) => {
            assert_eq!(c.protocol, r4b::Protocol::V4);
            let (username, password) = match c.login {
                None => (None, None),
                Some(login) => (
                    non_empty(login.username).map(m),
                    non_empty(login.password).map(Bytes::from),
                ),
            };
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V3_1_1,
                clean_start: c.clean_session,
                keep_alive_secs: c.keep_alive,
                properties: ConnectProperties::default(),
                client_id: m(c.client_id),
                will: c.last_will.map(|w| Will {
                    qos: from_q4(w.qos),
                    retain: w.retain,
                    properties: WillProperties::default(),
                    topic: m(w.topic),
                    payload: w.message,
                }),
                username,
                password,
            }))
        }
        r4::Packet::ConnAck(c) => Packet::ConnAck(Box::new(ConnAck::new(
            c.session_present,
            reverse(&V4_CONNACK_CODES, &c.code),
        ))),
        r4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: from_q4(p.qos),
            retain: p.retain,
            topic: m(p.topic),
            packet_id: p.pkid,
            properties: PublishProperties::default(),
            payload: p.payload,
        }),
        r4::Packet::PubAck(p) => Packet::PubAck(PubAck::new(p.pkid)),
        r4::Packet::PubRec(p) => Packet::PubRec(PubRec::new(p.pkid)),
        r4::Packet::PubRel(p) => Packet::PubRel(PubRel::new(p.pkid)),
        r4::Packet::PubComp(p) => Packet::PubComp(PubComp::new(p.pkid)),
        r4::Packet::Subscribe(p) => Packet::Subscribe(Subscribe::new(
            p.pkid,
            p.filters
                .into_iter()
                .map(|f| Subscription {
                    filter: m(f.path),
                    options: SubscriptionOptions {
                        qos: from_q4(f.qos),
                        ..SubscriptionOptions::default()
                    },
                })
                .collect(),
        )),
        r4::Packet::SubAck(p) => Packet::SubAck(SubAck::new(
            p.pkid,
            p.return_codes
                .iter()
                .map(|c| reverse(&V4_SUBACK_CODES, c))
                .collect(),
        )),
        r4::Packet::Unsubscribe(p) => Packet::Unsubscribe(Unsubscribe::new(
            p.pkid,
            p.topics.into_iter().map(m).collect(),
        )),
        r4::Packet::UnsubAck(p) => Packet::UnsubAck(UnsubAck::new(p.pkid, Vec::new())),
        r4::Packet::PingReq => Packet::PingReq,
        r4::Packet::PingResp => Packet::PingResp,
        r4::Packet::Disconnect => {
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
        }
    }
}

fn cross_check_v4(packet: &Packet) {
    let what = format!("3.1.1 {:?}", packet.packet_type());
    // (a) we encode, rumqttc decodes.
    let ours = encode_ours(packet, Protocol::V3_1_1);
    let mut buf = ours.clone();
    let theirs = r4::Packet::read(&mut buf, usize::MAX)
        .unwrap_or_else(|e| panic!("{what}: rumqttc fails on our {:02x?}: {e}", short(&ours)));
    assert!(buf.is_empty(), "{what}: rumqttc left {} bytes", buf.len());
    assert_eq!(
        theirs,
        to_r4(packet),
        "{what}: rumqttc decoded our bytes differently"
    );
    assert_eq!(&from_r4(theirs), packet, "{what}: (a) field mismatch");

    // (b) rumqttc encodes, we decode.
    let mut theirs = BytesMut::new();
    to_r4(packet)
        .write(&mut theirs, usize::MAX)
        .unwrap_or_else(|e| panic!("{what}: rumqttc cannot encode {packet:?}: {e}"));
    assert_eq!(
        &decode_ours(Protocol::V3_1_1, &theirs, packet),
        packet,
        "{what}: (b)"
    );

    // (c) 3.1.1 has one encoding per packet.
    assert_eq!(short(&ours), short(&theirs), "{what}: encodings differ");
    assert_eq!(ours, theirs, "{what}: encodings differ");
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0 <-> rumqttc::v5::mqttbytes::v5
// ---------------------------------------------------------------------------------------

/// rumqttc models an absent property block and an empty one alike as `None` when reading.
macro_rules! ack_properties_to_r5 {
    ($r:ident, $p:expr) => {{
        let p: &AckProperties = $p;
        (!p.is_empty()).then(|| r5::$r {
            reason_string: opt_s(&p.reason_string),
            user_properties: pairs(&p.user_properties),
        })
    }};
}

macro_rules! ack_properties_from_r5 {
    ($p:expr) => {
        $p.map(|p| AckProperties {
            reason_string: opt_m(p.reason_string),
            user_properties: user_properties(p.user_properties),
        })
        .unwrap_or_default()
    };
}

fn connect_properties_to_r5(p: &ConnectProperties) -> Option<r5::ConnectProperties> {
    (!p.is_empty()).then(|| r5::ConnectProperties {
        session_expiry_interval: p.session_expiry_interval_secs,
        receive_maximum: p.receive_maximum,
        max_packet_size: p.maximum_packet_size_bytes,
        topic_alias_max: p.topic_alias_maximum,
        request_response_info: p.request_response_information,
        request_problem_info: p.request_problem_information,
        user_properties: pairs(&p.user_properties),
        authentication_method: opt_s(&p.authentication_method),
        authentication_data: p.authentication_data.clone(),
    })
}

fn connect_properties_from_r5(p: Option<r5::ConnectProperties>) -> ConnectProperties {
    p.map(|p| ConnectProperties {
        session_expiry_interval_secs: p.session_expiry_interval,
        receive_maximum: p.receive_maximum,
        maximum_packet_size_bytes: p.max_packet_size,
        topic_alias_maximum: p.topic_alias_max,
        request_response_information: p.request_response_info,
        request_problem_information: p.request_problem_info,
        user_properties: user_properties(p.user_properties),
        authentication_method: opt_m(p.authentication_method),
        authentication_data: p.authentication_data,
    })
    .unwrap_or_default()
}

fn will_properties_to_r5(p: &WillProperties) -> Option<r5::LastWillProperties> {
    (!p.is_empty()).then(|| r5::LastWillProperties {
        delay_interval: p.will_delay_interval_secs,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval_secs,
        content_type: opt_s(&p.content_type),
        response_topic: opt_s(&p.response_topic),
        correlation_data: p.correlation_data.clone(),
        user_properties: pairs(&p.user_properties),
    })
}

fn will_properties_from_r5(p: Option<r5::LastWillProperties>) -> WillProperties {
    p.map(|p| WillProperties {
        will_delay_interval_secs: p.delay_interval,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval_secs: p.message_expiry_interval,
        content_type: opt_m(p.content_type),
        response_topic: opt_m(p.response_topic),
        correlation_data: p.correlation_data,
        user_properties: user_properties(p.user_properties),
    })
    .unwrap_or_default()
}

fn connack_properties_to_r5(p: &ConnAckProperties) -> Option<r5::ConnAckProperties> {
    (!p.is_empty()).then(|| r5::ConnAckProperties {
        session_expiry_interval: p.session_expiry_interval_secs,
        receive_max: p.receive_maximum,
        max_qos: p.maximum_qos,
        retain_available: p.retain_available,
        max_packet_size: p.maximum_packet_size_bytes,
        assigned_client_identifier: opt_s(&p.assigned_client_identifier),
        topic_alias_max: p.topic_alias_maximum,
        reason_string: opt_s(&p.reason_string),
        user_properties: pairs(&p.user_properties),
        wildcard_subscription_available: p.wildcard_subscription_available,
        subscription_identifiers_available: p.subscription_identifiers_available,
        shared_subscription_available: p.shared_subscription_available,
        server_keep_alive: p.server_keep_alive_secs,
        response_information: opt_s(&p.response_information),
        server_reference: opt_s(&p.server_reference),
        authentication_method: opt_s(&p.authentication_method),
        authentication_data: p.authentication_data.clone(),
    })
}

fn connack_properties_from_r5(p: Option<r5::ConnAckProperties>) -> ConnAckProperties {
    p.map(|p| ConnAckProperties {
        session_expiry_interval_secs: p.session_expiry_interval,
        receive_maximum: p.receive_max,
        maximum_qos: p.max_qos,
        retain_available: p.retain_available,
        maximum_packet_size_bytes: p.max_packet_size,
        assigned_client_identifier: opt_m(p.assigned_client_identifier),
        topic_alias_maximum: p.topic_alias_max,
        reason_string: opt_m(p.reason_string),
        user_properties: user_properties(p.user_properties),
        wildcard_subscription_available: p.wildcard_subscription_available,
        subscription_identifiers_available: p.subscription_identifiers_available,
        shared_subscription_available: p.shared_subscription_available,
        server_keep_alive_secs: p.server_keep_alive,
        response_information: opt_m(p.response_information),
        server_reference: opt_m(p.server_reference),
        authentication_method: opt_m(p.authentication_method),
        authentication_data: p.authentication_data,
    })
    .unwrap_or_default()
}

fn publish_properties_to_r5(p: &PublishProperties) -> Option<r5::PublishProperties> {
    (!p.is_empty()).then(|| r5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval_secs,
        topic_alias: p.topic_alias,
        response_topic: opt_s(&p.response_topic),
        correlation_data: p.correlation_data.clone(),
        user_properties: pairs(&p.user_properties),
        subscription_identifiers: p
            .subscription_identifiers
            .iter()
            .map(|&id| id as usize)
            .collect(),
        content_type: opt_s(&p.content_type),
    })
}

fn publish_properties_from_r5(p: Option<r5::PublishProperties>) -> PublishProperties {
    p.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval_secs: p.message_expiry_interval,
        topic_alias: p.topic_alias,
        response_topic: opt_m(p.response_topic),
        correlation_data: p.correlation_data,
        user_properties: user_properties(p.user_properties),
        subscription_identifiers: p
            .subscription_identifiers
            .into_iter()
            .map(|id| u32::try_from(id).expect("subscription identifier fits u32"))
            .collect(),
        content_type: opt_m(p.content_type),
    })
    .unwrap_or_default()
}

fn retain_handling_to_r5(handling: RetainHandling) -> r5::RetainForwardRule {
    match handling {
        RetainHandling::OnSubscribe => r5::RetainForwardRule::OnEverySubscribe,
        RetainHandling::OnNewSubscribe => r5::RetainForwardRule::OnNewSubscribe,
        RetainHandling::Never => r5::RetainForwardRule::Never,
    }
}

fn retain_handling_from_r5(rule: r5::RetainForwardRule) -> RetainHandling {
    match rule {
        r5::RetainForwardRule::OnEverySubscribe => RetainHandling::OnSubscribe,
        r5::RetainForwardRule::OnNewSubscribe => RetainHandling::OnNewSubscribe,
        r5::RetainForwardRule::Never => RetainHandling::Never,
    }
}

fn to_r5(packet: &Packet) -> r5::Packet {
    match packet {
        Packet::Connect(c) => {
            let login = match (&c.username, &c.password) {
                (None, None) => None,
                (username, password) => Some(r5::Login {
                    username: opt_s(username).unwrap_or_default(),
                    password: password.as_ref().map(password_string).unwrap_or_default(),
                }),
            };
            let will = c.will.as_ref().map(|w| r5::LastWill {
                topic: w.topic.as_bytes().clone(),
                message: w.payload.clone(),
                qos: q5(w.qos),
                retain: w.retain,
                properties: will_properties_to_r5(&w.properties),
            });
            let connect = r5::Connect {
                keep_alive: c.keep_alive_secs,
                client_id: s(&c.client_id),
                clean_start: c.clean_start,
                properties: connect_properties_to_r5(&c.properties),
            };
            r5::Packet::Connect(connect, will, login)
        }
        Packet::ConnAck(c) => r5::Packet::ConnAck(r5::ConnAck {
            session_present: c.session_present,
            code: lookup(&V5_CONNACK_CODES, &c.reason_code),
            properties: connack_properties_to_r5(&c.properties),
        }),
        Packet::Publish(p) => r5::Packet::Publish(r5::Publish {
            dup: p.dup,
            qos: q5(p.qos),
            retain: p.retain,
            topic: p.topic.as_bytes().clone(),
            pkid: p.packet_id,
            payload: p.payload.clone(),
            properties: publish_properties_to_r5(&p.properties),
        }),
        Packet::PubAck(p) => r5::Packet::PubAck(r5::PubAck {
            pkid: p.packet_id,
            reason: lookup(&V5_PUBACK_CODES, &p.reason_code),
            properties: ack_properties_to_r5!(PubAckProperties, &p.properties),
        }),
        Packet::PubRec(p) => r5::Packet::PubRec(r5::PubRec {
            pkid: p.packet_id,
            reason: lookup(&V5_PUBREC_CODES, &p.reason_code),
            properties: ack_properties_to_r5!(PubRecProperties, &p.properties),
        }),
        Packet::PubRel(p) => r5::Packet::PubRel(r5::PubRel {
            pkid: p.packet_id,
            reason: lookup(&V5_PUBREL_CODES, &p.reason_code),
            properties: ack_properties_to_r5!(PubRelProperties, &p.properties),
        }),
        Packet::PubComp(p) => r5::Packet::PubComp(r5::PubComp {
            pkid: p.packet_id,
            reason: lookup(&V5_PUBCOMP_CODES, &p.reason_code),
            properties: ack_properties_to_r5!(PubCompProperties, &p.properties),
        }),
        Packet::Subscribe(p) => r5::Packet::Subscribe(r5::Subscribe {
            pkid: p.packet_id,
            filters: p
                .filters
                .iter()
                .map(|f| r5::Filter {
                    path: s(&f.filter),
                    qos: q5(f.options.qos),
                    nolocal: f.options.no_local,
                    preserve_retain: f.options.retain_as_published,
                    retain_forward_rule: retain_handling_to_r5(f.options.retain_handling),
                })
                .collect(),
            properties: (!p.properties.is_empty()).then(|| r5::SubscribeProperties {
                id: p.properties.subscription_identifier.map(|id| id as usize),
                user_properties: pairs(&p.properties.user_properties),
            }),
        }),
        Packet::SubAck(p) => r5::Packet::SubAck(r5::SubAck {
            pkid: p.packet_id,
            return_codes: p
                .reason_codes
                .iter()
                .map(|c| lookup(&V5_SUBACK_CODES, c))
                .collect(),
            properties: ack_properties_to_r5!(SubAckProperties, &p.properties),
        }),
        Packet::Unsubscribe(p) => r5::Packet::Unsubscribe(r5::Unsubscribe {
            pkid: p.packet_id,
            filters: p.filters.iter().map(s).collect(),
            properties: (!p.properties.is_empty()).then(|| r5::UnsubscribeProperties {
                user_properties: pairs(&p.properties.user_properties),
            }),
        }),
        Packet::UnsubAck(p) => r5::Packet::UnsubAck(r5::UnsubAck {
            pkid: p.packet_id,
            reasons: p
                .reason_codes
                .iter()
                .map(|c| lookup(&V5_UNSUBACK_CODES, c))
                .collect(),
            properties: ack_properties_to_r5!(UnsubAckProperties, &p.properties),
        }),
        Packet::PingReq => r5::Packet::PingReq(r5::PingReq),
        Packet::PingResp => r5::Packet::PingResp(r5::PingResp),
        Packet::Disconnect(d) => r5::Packet::Disconnect(r5::Disconnect {
            reason_code: r5::DisconnectReasonCode::try_from(d.reason_code as u8)
                .expect("rumqttc knows every DISCONNECT reason code"),
            properties: (!d.properties.is_empty()).then(|| r5::DisconnectProperties {
                session_expiry_interval: d.properties.session_expiry_interval_secs,
                reason_string: opt_s(&d.properties.reason_string),
                user_properties: pairs(&d.properties.user_properties),
                server_reference: opt_s(&d.properties.server_reference),
            }),
        }),
        Packet::Auth(a) => {
            // rumqttc does not export `AuthReasonCode` and `AuthProperties` (its `auth`
            // module is private), so the only way to make one of its AUTH values is its own
            // decoder, here on the minimal frame for the reason code. It cannot write AUTH
            // properties correctly anyway (module comment).
            assert!(
                a.properties.is_empty(),
                "rumqttc cannot write AUTH properties"
            );
            let mut frame = BytesMut::from(&[0xF0, 0x02, a.reason_code as u8, 0x00][..]);
            read_r5(&mut frame).expect("rumqttc reads a minimal AUTH")
        }
    }
}

fn from_r5(packet: r5::Packet) -> Packet {
    match packet {
        r5::Packet::Connect(c, will, login) => {
            let (username, password) = match login {
                None => (None, None),
                Some(login) => (
                    non_empty(login.username).map(m),
                    non_empty(login.password).map(Bytes::from),
                ),
            };
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V5,
                clean_start: c.clean_start,
                keep_alive_secs: c.keep_alive,
                properties: connect_properties_from_r5(c.properties),
                client_id: m(c.client_id),
                will: will.map(|w| Will {
                    qos: from_q5(w.qos),
                    retain: w.retain,
                    properties: will_properties_from_r5(w.properties),
                    topic: MqttStr::from_bytes(w.topic, "will topic").expect("UTF-8 will topic"),
                    payload: w.message,
                }),
                username,
                password,
            }))
        }
        r5::Packet::ConnAck(c) => Packet::ConnAck(Box::new(ConnAck {
            session_present: c.session_present,
            reason_code: reverse(&V5_CONNACK_CODES, &c.code),
            properties: connack_properties_from_r5(c.properties),
        })),
        r5::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: from_q5(p.qos),
            retain: p.retain,
            topic: MqttStr::from_bytes(p.topic, "topic").expect("UTF-8 topic"),
            packet_id: p.pkid,
            properties: publish_properties_from_r5(p.properties),
            payload: p.payload,
        }),
        r5::Packet::PubAck(p) => Packet::PubAck(PubAck {
            packet_id: p.pkid,
            reason_code: reverse(&V5_PUBACK_CODES, &p.reason),
            properties: ack_properties_from_r5!(p.properties),
        }),
        r5::Packet::PubRec(p) => Packet::PubRec(PubRec {
            packet_id: p.pkid,
            reason_code: reverse(&V5_PUBREC_CODES, &p.reason),
            properties: ack_properties_from_r5!(p.properties),
        }),
        r5::Packet::PubRel(p) => Packet::PubRel(PubRel {
            packet_id: p.pkid,
            reason_code: reverse(&V5_PUBREL_CODES, &p.reason),
            properties: ack_properties_from_r5!(p.properties),
        }),
        r5::Packet::PubComp(p) => Packet::PubComp(PubComp {
            packet_id: p.pkid,
            reason_code: reverse(&V5_PUBCOMP_CODES, &p.reason),
            properties: ack_properties_from_r5!(p.properties),
        }),
        r5::Packet::Subscribe(p) => Packet::Subscribe(Subscribe {
            packet_id: p.pkid,
            properties: p
                .properties
                .map(|p| SubscribeProperties {
                    subscription_identifier: p
                        .id
                        .map(|id| u32::try_from(id).expect("subscription identifier fits u32")),
                    user_properties: user_properties(p.user_properties),
                })
                .unwrap_or_default(),
            filters: p
                .filters
                .into_iter()
                .map(|f| Subscription {
                    filter: m(f.path),
                    options: SubscriptionOptions {
                        qos: from_q5(f.qos),
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: retain_handling_from_r5(f.retain_forward_rule),
                    },
                })
                .collect(),
        }),
        r5::Packet::SubAck(p) => Packet::SubAck(SubAck {
            packet_id: p.pkid,
            properties: ack_properties_from_r5!(p.properties),
            reason_codes: p
                .return_codes
                .iter()
                .map(|c| reverse(&V5_SUBACK_CODES, c))
                .collect(),
        }),
        r5::Packet::Unsubscribe(p) => Packet::Unsubscribe(Unsubscribe {
            packet_id: p.pkid,
            properties: p
                .properties
                .map(|p| UnsubscribeProperties {
                    user_properties: user_properties(p.user_properties),
                })
                .unwrap_or_default(),
            filters: p.filters.into_iter().map(m).collect(),
        }),
        r5::Packet::UnsubAck(p) => Packet::UnsubAck(UnsubAck {
            packet_id: p.pkid,
            properties: ack_properties_from_r5!(p.properties),
            reason_codes: p
                .reasons
                .iter()
                .map(|c| reverse(&V5_UNSUBACK_CODES, c))
                .collect(),
        }),
        r5::Packet::PingReq(_) => Packet::PingReq,
        r5::Packet::PingResp(_) => Packet::PingResp,
        r5::Packet::Disconnect(d) => Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::from_u8(d.reason_code as u8).expect("known code"),
            properties: d
                .properties
                .map(|p| DisconnectProperties {
                    session_expiry_interval_secs: p.session_expiry_interval,
                    reason_string: opt_m(p.reason_string),
                    user_properties: user_properties(p.user_properties),
                    server_reference: opt_m(p.server_reference),
                })
                .unwrap_or_default(),
        }),
        r5::Packet::Auth(a) => Packet::Auth(Auth {
            // `AuthReasonCode` cannot be named (see `to_r5`): match on its Debug form.
            reason_code: match format!("{:?}", a.code).as_str() {
                "Success" => ReasonCode::Success,
                "Continue" => ReasonCode::ContinueAuthentication,
                "ReAuthentivate" => ReasonCode::ReAuthenticate,
                other => panic!("unknown rumqttc AUTH reason {other}"),
            },
            properties: a
                .properties
                .map(|p| AuthProperties {
                    authentication_method: opt_m(p.method),
                    authentication_data: p.data,
                    reason_string: opt_m(p.reason),
                    user_properties: user_properties(p.user_properties),
                })
                .unwrap_or_default(),
        }),
    }
}

/// rumqttc's 5.0 decoder for one whole frame, around the two gaps of `Packet::read` (see the
/// module comment): AUTH, and DISCONNECT with Remaining Length 0.
fn read_r5(buf: &mut BytesMut) -> Result<r5::Packet, r5b::Error> {
    let header = r5::check(buf.iter(), None)?;
    match buf[0] >> 4 {
        15 => {
            let frame = buf.split_to(header.frame_length()).freeze();
            r5::Auth::read(header, frame).map(r5::Packet::Auth)
        }
        14 if header.frame_length() == 2 => {
            let frame = buf.split_to(header.frame_length()).freeze();
            r5::Disconnect::read(header, frame).map(r5::Packet::Disconnect)
        }
        _ => r5::Packet::read(buf, None),
    }
}

/// Whether rumqttc can decode what we encode for `packet` (module comment).
fn rumqttc_reads_v5(packet: &Packet) -> bool {
    match packet {
        Packet::Disconnect(d) => {
            d.reason_code == ReasonCode::NORMAL_DISCONNECTION || !d.properties.is_empty()
        }
        Packet::Auth(a) => {
            let p = &a.properties;
            !p.user_properties.is_empty()
                && p.authentication_method.is_none()
                && p.authentication_data.is_none()
                && p.reason_string.is_none()
        }
        _ => true,
    }
}

/// Whether rumqttc writes `packet` correctly (module comment).
fn rumqttc_writes_v5(packet: &Packet) -> bool {
    match packet {
        Packet::Auth(a) => a.properties.is_empty(),
        Packet::Disconnect(d) => {
            d.reason_code == ReasonCode::NORMAL_DISCONNECTION || !d.properties.is_empty()
        }
        _ => true,
    }
}

/// Whether rumqttc's bytes for `packet` must equal ours (module comment).
fn same_bytes_v5(packet: &Packet) -> bool {
    let ack = |reason: ReasonCode, properties: &AckProperties| {
        reason == ReasonCode::Success || !properties.is_empty()
    };
    match packet {
        Packet::PubAck(p) => ack(p.reason_code, &p.properties),
        Packet::PubRec(p) => ack(p.reason_code, &p.properties),
        Packet::PubRel(p) => ack(p.reason_code, &p.properties),
        Packet::PubComp(p) => ack(p.reason_code, &p.properties),
        Packet::Disconnect(d) => {
            d.reason_code == ReasonCode::NORMAL_DISCONNECTION || !d.properties.is_empty()
        }
        Packet::Auth(_) => false,
        _ => true,
    }
}

/// Cross-checks one 5.0 packet; returns whether directions (a) and (b) ran.
fn cross_check_v5(packet: &Packet) -> (bool, bool) {
    let what = format!("5.0 {:?}", packet.packet_type());
    let ours = encode_ours(packet, Protocol::V5);
    let (mut read, mut written) = (false, false);

    // (a) we encode, rumqttc decodes.
    if rumqttc_reads_v5(packet) {
        let mut buf = ours.clone();
        let theirs = read_r5(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: rumqttc fails on our {:02x?}: {e}", short(&ours)));
        assert!(buf.is_empty(), "{what}: rumqttc left {} bytes", buf.len());
        assert_eq!(
            &from_r5(theirs),
            packet,
            "{what}: (a) field mismatch for {:02x?}",
            short(&ours)
        );
        read = true;
    }

    // (b) rumqttc encodes, we decode.
    if rumqttc_writes_v5(packet) {
        let mut theirs = BytesMut::new();
        to_r5(packet)
            .write(&mut theirs, None)
            .unwrap_or_else(|e| panic!("{what}: rumqttc cannot encode {packet:?}: {e}"));
        assert_eq!(
            &decode_ours(Protocol::V5, &theirs, packet),
            packet,
            "{what}: (b)"
        );
        // (c)
        if same_bytes_v5(packet) {
            assert_eq!(short(&ours), short(&theirs), "{what}: encodings differ");
            assert_eq!(ours, theirs, "{what}: encodings differ");
        }
        written = true;
    }
    (read, written)
}

// ---------------------------------------------------------------------------------------
// Generators of valid packets, within what both codecs express
// ---------------------------------------------------------------------------------------

const PACKET_TYPES_V4: [u8; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
const PACKET_TYPES_V5: [u8; 15] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

fn gen_ack_properties(rng: &mut Rng, v5: bool) -> AckProperties {
    if !v5 {
        return AckProperties::default();
    }
    AckProperties {
        reason_string: rng.maybe(|r| r.mqtt_str(12)),
        user_properties: rng.user_properties(),
    }
}

fn gen_connect(rng: &mut Rng, protocol: Protocol) -> Connect {
    let v5 = protocol.is_v5();
    let mut properties = ConnectProperties::default();
    let mut will = None;
    if rng.chance(40) {
        let mut will_properties = WillProperties::default();
        if v5 {
            will_properties = WillProperties {
                will_delay_interval_secs: rng.maybe(Rng::u32),
                payload_format_indicator: rng.maybe(Rng::bool01),
                message_expiry_interval_secs: rng.maybe(Rng::u32),
                content_type: rng.maybe(|r| r.mqtt_str(10)),
                response_topic: rng.maybe(Rng::topic),
                correlation_data: rng.maybe(|r| r.bytes(10)),
                user_properties: rng.user_properties(),
            };
        }
        will = Some(Will {
            qos: rng.qos(),
            retain: rng.chance(50),
            properties: will_properties,
            topic: rng.topic(),
            payload: rng.bytes(30),
        });
    }
    if v5 {
        let authentication_method = rng.maybe(|r| r.mqtt_str(10));
        properties = ConnectProperties {
            session_expiry_interval_secs: rng.maybe(Rng::u32),
            receive_maximum: rng.maybe(Rng::nonzero_u16),
            maximum_packet_size_bytes: rng.maybe(Rng::nonzero_u32),
            topic_alias_maximum: rng.maybe(Rng::u16),
            request_response_information: rng.maybe(Rng::bool01),
            request_problem_information: rng.maybe(Rng::bool01),
            user_properties: rng.user_properties(),
            // Authentication Data only with a method (3.1.2.11.10).
            authentication_data: authentication_method
                .as_ref()
                .and_then(|_| rng.maybe(|r| r.bytes(10))),
            authentication_method,
        };
    }
    let username = rng.maybe(|r| MqttStr::from(r.non_empty_text(10)));
    // 3.1.1 needs a user name for a password [MQTT-3.1.2-22]; 5.0 does not.
    let password = if username.is_some() || v5 {
        rng.maybe(Rng::password)
    } else {
        None
    };
    Connect {
        protocol,
        clean_start: rng.chance(50),
        keep_alive_secs: rng.u16(),
        properties,
        client_id: rng.mqtt_str(23),
        will,
        username,
        password,
    }
}

fn gen_connack(rng: &mut Rng, protocol: Protocol) -> ConnAck {
    let v5 = protocol.is_v5();
    let reason_code = if v5 {
        rng.pick(&left(&V5_CONNACK_CODES))
    } else {
        rng.pick(&left(&V4_CONNACK_CODES))
    };
    // Session Present is 0 on a refused connection [MQTT-3.2.2-4], [MQTT-3.2.2-6].
    let session_present = !reason_code.is_error() && rng.chance(50);
    let mut properties = ConnAckProperties::default();
    if v5 {
        let authentication_method = rng.maybe(|r| r.mqtt_str(10));
        properties = ConnAckProperties {
            session_expiry_interval_secs: rng.maybe(Rng::u32),
            receive_maximum: rng.maybe(Rng::nonzero_u16),
            maximum_qos: rng.maybe(Rng::bool01),
            retain_available: rng.maybe(Rng::bool01),
            maximum_packet_size_bytes: rng.maybe(Rng::nonzero_u32),
            assigned_client_identifier: rng.maybe(|r| r.mqtt_str(23)),
            topic_alias_maximum: rng.maybe(Rng::u16),
            reason_string: rng.maybe(|r| r.mqtt_str(20)),
            user_properties: rng.user_properties(),
            wildcard_subscription_available: rng.maybe(Rng::bool01),
            subscription_identifiers_available: rng.maybe(Rng::bool01),
            shared_subscription_available: rng.maybe(Rng::bool01),
            server_keep_alive_secs: rng.maybe(Rng::u16),
            response_information: rng.maybe(|r| r.mqtt_str(10)),
            server_reference: rng.maybe(|r| r.mqtt_str(10)),
            authentication_data: authentication_method
                .as_ref()
                .and_then(|_| rng.maybe(|r| r.bytes(10))),
            authentication_method,
        };
    }
    ConnAck {
        session_present,
        reason_code,
        properties,
    }
}

fn gen_publish(rng: &mut Rng, protocol: Protocol) -> Publish {
    let qos = rng.qos();
    let mut properties = PublishProperties::default();
    if protocol.is_v5() {
        properties = PublishProperties {
            payload_format_indicator: rng.maybe(Rng::bool01),
            message_expiry_interval_secs: rng.maybe(Rng::u32),
            topic_alias: rng.maybe(Rng::nonzero_u16),
            response_topic: rng.maybe(Rng::topic),
            correlation_data: rng.maybe(|r| r.bytes(16)),
            user_properties: rng.user_properties(),
            // At most two: see the module comment on rumqttc's Subscription Identifiers.
            subscription_identifiers: (0..rng.pick(&[0, 0, 0, 1, 2]))
                .map(|_| rng.subscription_id())
                .collect(),
            content_type: rng.maybe(|r| r.mqtt_str(12)),
        };
    }
    // 5.0: an empty topic name with a Topic Alias (3.3.2.3.4).
    let topic = if properties.topic_alias.is_some() && rng.chance(30) {
        MqttStr::default()
    } else {
        rng.topic()
    };
    Publish {
        // DUP only with QoS > 0 [MQTT-3.3.1-2].
        dup: qos != QoS::AtMostOnce && rng.chance(50),
        qos,
        retain: rng.chance(50),
        topic,
        packet_id: if qos == QoS::AtMostOnce {
            0
        } else {
            rng.nonzero_u16()
        },
        properties,
        payload: rng.payload(),
    }
}

fn gen_subscribe(rng: &mut Rng, protocol: Protocol) -> Subscribe {
    let v5 = protocol.is_v5();
    let filters = (0..1 + rng.below(4))
        .map(|_| {
            let filter = rng.filter(v5);
            let mut options = SubscriptionOptions {
                qos: rng.qos(),
                ..SubscriptionOptions::default()
            };
            if v5 {
                // No Local is a Protocol Error on a shared subscription [MQTT-3.8.3-4].
                options.no_local = !filter.starts_with("$share/") && rng.chance(50);
                options.retain_as_published = rng.chance(50);
                options.retain_handling = rng.pick(&[
                    RetainHandling::OnSubscribe,
                    RetainHandling::OnNewSubscribe,
                    RetainHandling::Never,
                ]);
            }
            Subscription { filter, options }
        })
        .collect();
    let mut properties = SubscribeProperties::default();
    if v5 {
        properties = SubscribeProperties {
            subscription_identifier: rng.maybe(Rng::subscription_id),
            user_properties: rng.user_properties(),
        };
    }
    Subscribe {
        packet_id: rng.nonzero_u16(),
        properties,
        filters,
    }
}

fn gen_packet(rng: &mut Rng, protocol: Protocol, packet_type: u8) -> Packet {
    let v5 = protocol.is_v5();
    let ack = |rng: &mut Rng, table: &[ReasonCode]| {
        let packet_id = rng.nonzero_u16();
        let reason = if v5 {
            rng.pick(table)
        } else {
            ReasonCode::Success
        };
        (packet_id, reason, gen_ack_properties(rng, v5))
    };
    match packet_type {
        1 => Packet::Connect(Box::new(gen_connect(rng, protocol))),
        2 => Packet::ConnAck(Box::new(gen_connack(rng, protocol))),
        3 => Packet::Publish(gen_publish(rng, protocol)),
        4 => {
            let (packet_id, reason_code, properties) = ack(rng, &left(&V5_PUBACK_CODES));
            Packet::PubAck(PubAck {
                packet_id,
                reason_code,
                properties,
            })
        }
        5 => {
            let (packet_id, reason_code, properties) = ack(rng, &left(&V5_PUBREC_CODES));
            Packet::PubRec(PubRec {
                packet_id,
                reason_code,
                properties,
            })
        }
        6 => {
            let (packet_id, reason_code, properties) = ack(rng, &left(&V5_PUBREL_CODES));
            Packet::PubRel(PubRel {
                packet_id,
                reason_code,
                properties,
            })
        }
        7 => {
            let (packet_id, reason_code, properties) = ack(rng, &left(&V5_PUBCOMP_CODES));
            Packet::PubComp(PubComp {
                packet_id,
                reason_code,
                properties,
            })
        }
        8 => Packet::Subscribe(gen_subscribe(rng, protocol)),
        9 => {
            let codes = if v5 {
                left(&V5_SUBACK_CODES)
            } else {
                left(&V4_SUBACK_CODES)
            };
            Packet::SubAck(SubAck {
                packet_id: rng.nonzero_u16(),
                properties: gen_ack_properties(rng, v5),
                reason_codes: (0..1 + rng.below(5)).map(|_| rng.pick(&codes)).collect(),
            })
        }
        10 => Packet::Unsubscribe(Unsubscribe {
            packet_id: rng.nonzero_u16(),
            properties: UnsubscribeProperties {
                user_properties: if v5 {
                    rng.user_properties()
                } else {
                    Vec::new()
                },
            },
            filters: (0..1 + rng.below(4)).map(|_| rng.filter(v5)).collect(),
        }),
        11 => Packet::UnsubAck(UnsubAck {
            packet_id: rng.nonzero_u16(),
            properties: gen_ack_properties(rng, v5),
            // 3.1.1 UNSUBACK has no reason codes; 5.0 has one per filter.
            reason_codes: if v5 {
                let codes = left(&V5_UNSUBACK_CODES);
                (0..1 + rng.below(5)).map(|_| rng.pick(&codes)).collect()
            } else {
                Vec::new()
            },
        }),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 if v5 => Packet::Disconnect(Disconnect {
            reason_code: if rng.chance(30) {
                ReasonCode::NORMAL_DISCONNECTION
            } else {
                rng.pick(&v5_disconnect_codes())
            },
            properties: DisconnectProperties {
                session_expiry_interval_secs: rng.maybe(Rng::u32),
                reason_string: rng.maybe(|r| r.mqtt_str(20)),
                user_properties: rng.user_properties(),
                server_reference: rng.maybe(|r| r.mqtt_str(10)),
            },
        }),
        14 => Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        15 => Packet::Auth(Auth {
            reason_code: rng.pick(&V5_AUTH_CODES),
            // See `rumqttc_reads_v5`/`rumqttc_writes_v5`: no properties, or user properties.
            properties: AuthProperties {
                user_properties: if rng.chance(50) {
                    let mut properties = rng.user_properties();
                    if properties.is_empty() {
                        properties.push(UserProperty::new("k", "v"));
                    }
                    properties
                } else {
                    Vec::new()
                },
                ..AuthProperties::default()
            },
        }),
        other => panic!("no packet type {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Hand-picked packets
// ---------------------------------------------------------------------------------------

fn hand_picked(protocol: Protocol) -> Vec<Packet> {
    let v5 = protocol.is_v5();
    let mut packets = Vec::new();

    // CONNECT: minimal (empty client id), and everything set.
    packets.push(Packet::Connect(Box::new(Connect::new(protocol, "", 0))));
    let mut full = Connect::new(protocol, "client-é-😀", u16::MAX);
    full.clean_start = false;
    full.username = Some(MqttStr::from("user"));
    full.password = Some(Bytes::from_static(b"secret"));
    full.will = Some(Will {
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: WillProperties::default(),
        topic: MqttStr::from("clients/last/will"),
        payload: Bytes::from_static(b"\x00\x01\xFFgone"),
    });
    if v5 {
        full.properties = ConnectProperties {
            session_expiry_interval_secs: Some(u32::MAX),
            receive_maximum: Some(1),
            maximum_packet_size_bytes: Some(PACKET_SIZE_BYTES_MAX),
            topic_alias_maximum: Some(u16::MAX),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            user_properties: vec![
                UserProperty::new("a", "1"),
                UserProperty::new("a", "2"),
                UserProperty::new("", ""),
            ],
            authentication_method: Some(MqttStr::from("SCRAM-SHA-256")),
            authentication_data: Some(Bytes::from_static(b"\x00\x01")),
        };
        if let Some(will) = &mut full.will {
            will.properties = WillProperties {
                will_delay_interval_secs: Some(30),
                payload_format_indicator: Some(0),
                message_expiry_interval_secs: Some(0),
                content_type: Some(MqttStr::from("application/octet-stream")),
                response_topic: Some(MqttStr::from("replies/x")),
                correlation_data: Some(Bytes::new()),
                user_properties: vec![UserProperty::new("w", "x")],
            };
        }
    }
    packets.push(Packet::Connect(Box::new(full)));
    if v5 {
        // 5.0 allows a password without a user name (3.1.2.9).
        let mut password_only = Connect::new(protocol, "p", 10);
        password_only.password = Some(Bytes::from_static(b"pw"));
        packets.push(Packet::Connect(Box::new(password_only)));
    }

    // CONNACK
    packets.push(Packet::ConnAck(Box::new(ConnAck::new(
        true,
        ReasonCode::Success,
    ))));
    packets.push(Packet::ConnAck(Box::new(ConnAck::new(
        false,
        ReasonCode::NotAuthorized,
    ))));

    // PUBLISH: QoS 0 with an empty payload; QoS 2 with DUP, retain, the largest packet id;
    // payloads across the 2-, 3- and 4-byte remaining length thresholds.
    packets.push(Packet::Publish(Publish::new(
        "a",
        QoS::AtMostOnce,
        Bytes::new(),
    )));
    let mut publish = Publish::new("a/b/c/$d/é", QoS::ExactlyOnce, Bytes::from_static(b"x"));
    publish.dup = true;
    publish.retain = true;
    publish.packet_id = u16::MAX;
    packets.push(Packet::Publish(publish));
    for payload_len in [120, 16_380, 2_097_150] {
        let mut publish = Publish::new(
            "big",
            QoS::AtLeastOnce,
            Bytes::from(vec![0x5A; payload_len]),
        );
        publish.packet_id = 1;
        packets.push(Packet::Publish(publish));
    }
    if v5 {
        let mut publish = Publish::new("", QoS::AtLeastOnce, Bytes::from_static(b"{}"));
        publish.packet_id = 7;
        publish.properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval_secs: Some(3_600),
            topic_alias: Some(u16::MAX),
            response_topic: Some(MqttStr::from("resp")),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![UserProperty::new("k", "v1"), UserProperty::new("k", "v2")],
            subscription_identifiers: vec![1, 16_384, VAR_INT_MAX],
            content_type: Some(MqttStr::from("application/json")),
        };
        packets.push(Packet::Publish(publish));
    }

    // The publish acknowledgements, smallest and largest packet ids, and in 5.0 with a
    // non-success reason, with and without properties.
    for packet_id in [1, u16::MAX] {
        packets.push(Packet::PubAck(PubAck::new(packet_id)));
        packets.push(Packet::PubRec(PubRec::new(packet_id)));
        packets.push(Packet::PubRel(PubRel::new(packet_id)));
        packets.push(Packet::PubComp(PubComp::new(packet_id)));
    }
    if v5 {
        let properties = AckProperties {
            reason_string: Some(MqttStr::from("why")),
            user_properties: vec![UserProperty::new("n", "v")],
        };
        let mut puback = PubAck::with_reason(9, ReasonCode::QuotaExceeded);
        packets.push(Packet::PubAck(puback.clone()));
        puback.properties = properties.clone();
        packets.push(Packet::PubAck(puback));
        let mut pubrel = PubRel::with_reason(9, ReasonCode::PacketIdentifierNotFound);
        packets.push(Packet::PubRel(pubrel.clone()));
        pubrel.properties = properties.clone();
        packets.push(Packet::PubRel(pubrel));
        // Success with properties: the reason code must be written.
        let mut pubcomp = PubComp::new(3);
        pubcomp.properties = properties.clone();
        packets.push(Packet::PubComp(pubcomp));
    }

    // SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK
    let mut subscribe = Subscribe::new(
        10,
        vec![
            Subscription {
                filter: MqttStr::from("#"),
                options: SubscriptionOptions::default(),
            },
            Subscription {
                filter: MqttStr::from("+/+/x/#"),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..SubscriptionOptions::default()
                },
            },
        ],
    );
    if v5 {
        subscribe.filters.push(Subscription {
            filter: MqttStr::from("$share/group/sensors/+"),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            },
        });
        subscribe.filters[0].options.no_local = true;
        subscribe.filters[0].options.retain_handling = RetainHandling::OnNewSubscribe;
        subscribe.properties.subscription_identifier = Some(VAR_INT_MAX);
    }
    packets.push(Packet::Subscribe(subscribe));
    let suback_codes = if v5 {
        left(&V5_SUBACK_CODES)
    } else {
        left(&V4_SUBACK_CODES)
    };
    packets.push(Packet::SubAck(SubAck::new(11, suback_codes)));
    packets.push(Packet::Unsubscribe(Unsubscribe::new(
        12,
        vec![MqttStr::from("a/+"), MqttStr::from("#")],
    )));
    packets.push(Packet::UnsubAck(UnsubAck::new(
        12,
        if v5 {
            left(&V5_UNSUBACK_CODES)
        } else {
            Vec::new()
        },
    )));

    packets.push(Packet::PingReq);
    packets.push(Packet::PingResp);
    packets.push(Packet::Disconnect(Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )));
    if v5 {
        let mut disconnect = Disconnect::new(ReasonCode::DisconnectWithWillMessage);
        packets.push(Packet::Disconnect(disconnect.clone()));
        disconnect.properties = DisconnectProperties {
            session_expiry_interval_secs: Some(0),
            reason_string: Some(MqttStr::from("bye")),
            user_properties: vec![UserProperty::new("x", "y")],
            server_reference: Some(MqttStr::from("other:1883")),
        };
        packets.push(Packet::Disconnect(disconnect));
        // Normal disconnection with properties: the reason code must be written.
        let mut disconnect = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
        disconnect.properties.reason_string = Some(MqttStr::from("done"));
        packets.push(Packet::Disconnect(disconnect));
        packets.push(Packet::Auth(Auth::new(ReasonCode::ContinueAuthentication)));
        let mut auth = Auth::new(ReasonCode::ReAuthenticate);
        auth.properties.user_properties = vec![UserProperty::new("step", "2")];
        packets.push(Packet::Auth(auth));
    }
    packets
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn hand_picked_v3_1_1() {
    for packet in hand_picked(Protocol::V3_1_1) {
        cross_check_v4(&packet);
    }
}

#[test]
fn hand_picked_v5() {
    for packet in hand_picked(Protocol::V5) {
        cross_check_v5(&packet);
    }
}

#[test]
fn generated_v3_1_1() {
    let mut rng = Rng(0x3_1_1);
    for packet_type in PACKET_TYPES_V4 {
        for _ in 0..GENERATED_PER_TYPE {
            let packet = gen_packet(&mut rng, Protocol::V3_1_1, packet_type);
            cross_check_v4(&packet);
        }
    }
}

#[test]
fn generated_v5() {
    let mut rng = Rng(0x5_0);
    for packet_type in PACKET_TYPES_V5 {
        let (mut read, mut written) = (0, 0);
        for _ in 0..GENERATED_PER_TYPE {
            let packet = gen_packet(&mut rng, Protocol::V5, packet_type);
            let (a, b) = cross_check_v5(&packet);
            read += usize::from(a);
            written += usize::from(b);
        }
        // Every type is checked in both directions, most of them in all its packets.
        assert!(
            read >= GENERATED_PER_TYPE / 3 && written >= GENERATED_PER_TYPE / 3,
            "type {packet_type}: only {read} read and {written} written by rumqttc"
        );
    }
}

/// The generators do reach the shapes the cross-check is meant to cover.
#[test]
fn generators_cover_the_interesting_shapes() {
    let mut rng = Rng(7);
    let (mut empty_alias_topic, mut shared, mut long_payload, mut dup_names) = (0, 0, 0, 0);
    for _ in 0..2_000 {
        if let Packet::Publish(p) = gen_packet(&mut rng, Protocol::V5, 3) {
            empty_alias_topic += usize::from(p.topic.is_empty());
            long_payload += usize::from(p.payload.len() >= 16_384);
            dup_names += usize::from(
                p.properties
                    .user_properties
                    .iter()
                    .filter(|u| u.name == "dup")
                    .count()
                    > 1,
            );
        }
        if let Packet::Subscribe(s) = gen_packet(&mut rng, Protocol::V5, 8) {
            shared += s
                .filters
                .iter()
                .filter(|f| f.filter.starts_with("$share/"))
                .count();
        }
    }
    assert!(empty_alias_topic > 0 && shared > 0 && long_payload > 0 && dup_names > 0);
}
