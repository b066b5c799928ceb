//! Round trips through the MQTT codec: every packet type in every version it exists in
//! (AUTH only in 5.0), incremental and zero-copy decoding, back-to-back packets, and the
//! exact bytes of the specification's examples.
//!
//! Generated packets are the ones a version can represent: 3.x encodings drop what only 5.0
//! has (properties, reason codes of acknowledgements, subscription options other than QoS,
//! UNSUBACK reason codes), so the 3.x strategies leave those at their defaults.

use bytes::{Bytes, BytesMut};
use ferrymq::protocol::{
    decode_packet, parse_fixed_header, AckProperties, Auth, AuthProperties, ConnAck,
    ConnAckProperties, Connect, ConnectProperties, Decoder, Disconnect, DisconnectProperties,
    Encode, MqttStr, Packet, PacketType, Protocol, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, QoS, ReasonCode, RetainHandling, Role, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperty, Will, WillProperties, ALL_REASON_CODES, VAR_INT_MAX,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::Union;
use proptest::test_runner::TestCaseError;

const MAX: u32 = 1 << 20;
const ALL_PROTOCOLS: [Protocol; 3] = [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5];

// ---------------------------------------------------------------------------------------
// Strategies for the data representations (section 1.5) and topics (section 4.7).
// ---------------------------------------------------------------------------------------

fn protocol() -> impl Strategy<Value = Protocol> {
    select(ALL_PROTOCOLS.to_vec())
}

/// Mostly ASCII, sometimes any scalar value (multi-byte UTF-8), never U+0000
/// [MQTT-1.5.4-2].
fn string_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => any::<char>(),
    ]
    .prop_filter("U+0000 is not allowed", |c| *c != '\0')
}

fn mqtt_str() -> impl Strategy<Value = MqttStr> {
    vec(string_char(), 0..12).prop_map(|chars| MqttStr::from(String::from_iter(chars)))
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// A character of a topic level: no separator, no wildcard [MQTT-4.7.0-1].
fn level_char() -> impl Strategy<Value = char> {
    string_char().prop_filter("not a separator or wildcard", |c| {
        !matches!(c, '/' | '+' | '#')
    })
}

fn level() -> impl Strategy<Value = String> {
    vec(level_char(), 0..6).prop_map(String::from_iter)
}

/// A non-empty topic name [MQTT-4.7.3-1] without wildcards [MQTT-3.3.2-2]; levels may be
/// empty ("a//b", "/a").
fn topic_name() -> impl Strategy<Value = MqttStr> {
    vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |topic| !topic.is_empty())
        .prop_map(MqttStr::from)
}

/// A filter with '+' as whole levels and '#' only as the whole last level
/// [MQTT-4.7.1-2], [MQTT-4.7.1-3].
fn plain_filter() -> impl Strategy<Value = String> {
    (
        vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 0..5),
        any::<bool>(),
    )
        .prop_map(|(levels, multi_level)| {
            if levels.is_empty() {
                "#".to_string()
            } else if multi_level {
                format!("{}/#", levels.join("/"))
            } else {
                levels.join("/")
            }
        })
        .prop_filter("filters are not empty", |filter| !filter.is_empty())
        .prop_filter("not a shared subscription", |filter| {
            !filter.starts_with("$share/")
        })
}

/// `$share/{ShareName}/{filter}` [MQTT-4.8.2-1], [MQTT-4.8.2-2].
fn shared_filter() -> impl Strategy<Value = String> {
    (vec(level_char(), 1..6), plain_filter())
        .prop_map(|(group, filter)| format!("$share/{}/{filter}", String::from_iter(group)))
}

fn topic_filter() -> impl Strategy<Value = MqttStr> {
    prop_oneof![4 => plain_filter(), 1 => shared_filter()].prop_map(MqttStr::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn boolean_byte() -> impl Strategy<Value = Option<u8>> {
    option::of(0..=1u8)
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec(
        (mqtt_str(), mqtt_str()).prop_map(|(name, value)| UserProperty { name, value }),
        0..3,
    )
}

/// Authentication Method and Data: data only with a method (3.1.2.11.10).
fn auth_pair() -> impl Strategy<Value = (Option<MqttStr>, Option<Bytes>)> {
    option::of((mqtt_str(), option::of(binary()))).prop_map(|pair| match pair {
        Some((method, data)) => (Some(method), data),
        None => (None, None),
    })
}

fn sub_id() -> impl Strategy<Value = u32> {
    1..=VAR_INT_MAX
}

/// The 5.0 reason codes that `packet` may carry.
fn reason_for(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = ALL_REASON_CODES
        .iter()
        .copied()
        .filter(|code| code.is_valid_for(packet))
        .collect();
    assert!(!codes.is_empty(), "{packet:?} has reason codes");
    select(codes)
}

/// `strategy` in 5.0, the default (no properties) before.
fn v5_only<T: Default + Clone + std::fmt::Debug + 'static>(
    protocol: Protocol,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if protocol.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

// ---------------------------------------------------------------------------------------
// Property strategies: only the properties each packet may carry (section 2.2.2.2), with
// values in range.
// ---------------------------------------------------------------------------------------

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        boolean_byte(),
        boolean_byte(),
        user_properties(),
        auth_pair(),
    )
        .prop_map(
            |(session, receive, max_size, alias_max, response, problem, user, (method, data))| {
                ConnectProperties {
                    session_expiry_interval_secs: session,
                    receive_maximum: receive,
                    maximum_packet_size_bytes: max_size,
                    topic_alias_maximum: alias_max,
                    request_response_information: response,
                    request_problem_information: problem,
                    user_properties: user,
                    authentication_method: method,
                    authentication_data: data,
                }
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        boolean_byte(),
        option::of(any::<u32>()),
        option::of(mqtt_str()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(
            |(delay, format, expiry, content_type, response_topic, correlation, user)| {
                WillProperties {
                    will_delay_interval_secs: delay,
                    payload_format_indicator: format,
                    message_expiry_interval_secs: expiry,
                    content_type,
                    response_topic,
                    correlation_data: correlation,
                    user_properties: user,
                }
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let limits = (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        boolean_byte(),
        boolean_byte(),
        option::of(1..=u32::MAX),
        option::of(mqtt_str()),
        option::of(any::<u16>()),
        option::of(mqtt_str()),
    );
    let rest = (
        user_properties(),
        boolean_byte(),
        boolean_byte(),
        boolean_byte(),
        option::of(any::<u16>()),
        option::of(mqtt_str()),
        option::of(mqtt_str()),
        auth_pair(),
    );
    (limits, rest).prop_map(
        |(
            (session, receive, max_qos, retain, max_size, assigned, alias_max, reason),
            (user, wildcard, sub_ids, shared, keep_alive, response, reference, (method, data)),
        )| ConnAckProperties {
            session_expiry_interval_secs: session,
            receive_maximum: receive,
            maximum_qos: max_qos,
            retain_available: retain,
            maximum_packet_size_bytes: max_size,
            assigned_client_identifier: assigned,
            topic_alias_maximum: alias_max,
            reason_string: reason,
            user_properties: user,
            wildcard_subscription_available: wildcard,
            subscription_identifiers_available: sub_ids,
            shared_subscription_available: shared,
            server_keep_alive_secs: keep_alive,
            response_information: response,
            server_reference: reference,
            authentication_method: method,
            authentication_data: data,
        },
    )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        boolean_byte(),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
        vec(sub_id(), 0..3),
        option::of(mqtt_str()),
    )
        .prop_map(
            |(format, expiry, alias, response_topic, correlation, user, sub_ids, content_type)| {
                PublishProperties {
                    payload_format_indicator: format,
                    message_expiry_interval_secs: expiry,
                    topic_alias: alias,
                    response_topic,
                    correlation_data: correlation,
                    user_properties: user,
                    subscription_identifiers: sub_ids,
                    content_type,
                }
            },
        )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(mqtt_str()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

fn subscribe_properties() -> impl Strategy<Value = SubscribeProperties> {
    (option::of(sub_id()), user_properties()).prop_map(
        |(subscription_identifier, user_properties)| SubscribeProperties {
            subscription_identifier,
            user_properties,
        },
    )
}

fn unsubscribe_properties() -> impl Strategy<Value = UnsubscribeProperties> {
    user_properties().prop_map(|user_properties| UnsubscribeProperties { user_properties })
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(mqtt_str()),
        user_properties(),
        option::of(mqtt_str()),
    )
        .prop_map(
            |(session, reason_string, user_properties, server_reference)| DisconnectProperties {
                session_expiry_interval_secs: session,
                reason_string,
                user_properties,
                server_reference,
            },
        )
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (auth_pair(), option::of(mqtt_str()), user_properties()).prop_map(
        |((method, data), reason_string, user_properties)| AuthProperties {
            authentication_method: method,
            authentication_data: data,
            reason_string,
            user_properties,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Packet strategies, one per type, for one protocol version.
// ---------------------------------------------------------------------------------------

fn will(protocol: Protocol) -> impl Strategy<Value = Will> {
    (
        qos(),
        any::<bool>(),
        v5_only(protocol, will_properties()),
        topic_name(),
        binary(),
    )
        .prop_map(|(qos, retain, properties, topic, payload)| Will {
            qos,
            retain,
            properties,
            topic,
            payload,
        })
}

fn connect(protocol: Protocol) -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        v5_only(protocol, connect_properties()),
        mqtt_str(),
        option::of(will(protocol)),
        option::of(mqtt_str()),
        option::of(binary()),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive_secs,
                properties,
                client_id,
                will,
                username,
                password,
            )| {
                // [MQTT-3.1.2-22]: before 5.0 a password needs a user name.
                let password = if protocol.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Connect {
                    protocol,
                    clean_start,
                    keep_alive_secs,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }
            },
        )
}

fn connack(protocol: Protocol) -> impl Strategy<Value = ConnAck> {
    let reason = if protocol.is_v5() {
        reason_for(PacketType::ConnAck).boxed()
    } else {
        // The reason codes the 3.1.1 return codes 0-5 map to (3.2.2.3).
        select(
            (0..=5)
                .map(|code| ReasonCode::from_v3_connect_return_code(code).unwrap())
                .collect::<Vec<_>>(),
        )
        .boxed()
    };
    (
        any::<bool>(),
        reason,
        v5_only(protocol, connack_properties()),
    )
        .prop_map(move |(session_present, reason_code, properties)| ConnAck {
            // [MQTT-3.2.2-4] (3.1.1), [MQTT-3.2.2-6] (5.0): 0 with an error code; 3.1 has
            // no Session Present flag.
            session_present: session_present
                && !reason_code.is_error()
                && protocol != Protocol::V3_1,
            reason_code,
            properties,
        })
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        v5_only(protocol, publish_properties()),
        binary(),
        any::<bool>(),
    )
        .prop_map(
            |(qos, dup, retain, topic, packet_id, properties, payload, by_alias)| {
                let at_most_once = qos == QoS::AtMostOnce;
                // 5.0: a Topic Alias may stand in for the topic (3.3.2.3.4).
                let topic = if by_alias && properties.topic_alias.is_some() {
                    MqttStr::default()
                } else {
                    topic
                };
                Publish {
                    // [MQTT-3.3.1-2]: no DUP on QoS 0; no packet identifier either.
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { 0 } else { packet_id },
                    properties,
                    payload,
                }
            },
        )
}

/// Packet identifier, reason code and properties of PUBACK, PUBREC, PUBREL or PUBCOMP:
/// the reason code is Success before 5.0, which has none.
fn ack_parts(
    protocol: Protocol,
    packet: PacketType,
) -> impl Strategy<Value = (u16, ReasonCode, AckProperties)> {
    let reason = if protocol.is_v5() {
        reason_for(packet).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (packet_id(), reason, v5_only(protocol, ack_properties()))
}

fn puback(protocol: Protocol) -> impl Strategy<Value = PubAck> {
    ack_parts(protocol, PacketType::PubAck).prop_map(|(packet_id, reason_code, properties)| {
        PubAck {
            packet_id,
            reason_code,
            properties,
        }
    })
}

fn pubrec(protocol: Protocol) -> impl Strategy<Value = PubRec> {
    ack_parts(protocol, PacketType::PubRec).prop_map(|(packet_id, reason_code, properties)| {
        PubRec {
            packet_id,
            reason_code,
            properties,
        }
    })
}

fn pubrel(protocol: Protocol) -> impl Strategy<Value = PubRel> {
    ack_parts(protocol, PacketType::PubRel).prop_map(|(packet_id, reason_code, properties)| {
        PubRel {
            packet_id,
            reason_code,
            properties,
        }
    })
}

fn pubcomp(protocol: Protocol) -> impl Strategy<Value = PubComp> {
    ack_parts(protocol, PacketType::PubComp).prop_map(|(packet_id, reason_code, properties)| {
        PubComp {
            packet_id,
            reason_code,
            properties,
        }
    })
}

fn subscription(protocol: Protocol) -> impl Strategy<Value = Subscription> {
    let retain_handling = select(vec![
        RetainHandling::OnSubscribe,
        RetainHandling::OnNewSubscribe,
        RetainHandling::Never,
    ]);
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling,
    )
        .prop_map(
            move |(filter, qos, no_local, retain_as_published, retain_handling)| {
                let options = if protocol.is_v5() {
                    SubscriptionOptions {
                        qos,
                        // [MQTT-3.8.3-4]: no No Local on a shared subscription.
                        no_local: no_local && !filter.starts_with("$share/"),
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    // 3.1.1 subscription options are the requested QoS alone.
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                };
                Subscription { filter, options }
            },
        )
}

fn subscribe(protocol: Protocol) -> impl Strategy<Value = Subscribe> {
    (
        packet_id(),
        v5_only(protocol, subscribe_properties()),
        vec(subscription(protocol), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| Subscribe {
            packet_id,
            properties,
            filters,
        })
}

fn suback(protocol: Protocol) -> impl Strategy<Value = SubAck> {
    let reason = if protocol.is_v5() {
        reason_for(PacketType::SubAck).boxed()
    } else {
        // 3.1.1 return codes 0x00, 0x01, 0x02 and 0x80 [MQTT-3.9.3-2].
        select(
            [0, 1, 2, 0x80]
                .map(|code| ReasonCode::from_v3_suback_return_code(code).unwrap())
                .to_vec(),
        )
        .boxed()
    };
    (
        packet_id(),
        v5_only(protocol, ack_properties()),
        vec(reason, 1..5),
    )
        .prop_map(|(packet_id, properties, reason_codes)| SubAck {
            packet_id,
            properties,
            reason_codes,
        })
}

fn unsubscribe(protocol: Protocol) -> impl Strategy<Value = Unsubscribe> {
    (
        packet_id(),
        v5_only(protocol, unsubscribe_properties()),
        vec(topic_filter(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| Unsubscribe {
            packet_id,
            properties,
            filters,
        })
}

fn unsuback(protocol: Protocol) -> impl Strategy<Value = UnsubAck> {
    // 3.1.1 UNSUBACK has no payload; 5.0 one reason code per filter [MQTT-3.11.3-1].
    let reasons = if protocol.is_v5() {
        vec(reason_for(PacketType::UnsubAck), 1..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), v5_only(protocol, ack_properties()), reasons).prop_map(
        |(packet_id, properties, reason_codes)| UnsubAck {
            packet_id,
            properties,
            reason_codes,
        },
    )
}

fn disconnect(protocol: Protocol) -> impl Strategy<Value = Disconnect> {
    let reason = if protocol.is_v5() {
        reason_for(PacketType::Disconnect).boxed()
    } else {
        Just(ReasonCode::NORMAL_DISCONNECTION).boxed()
    };
    (reason, v5_only(protocol, disconnect_properties())).prop_map(|(reason_code, properties)| {
        Disconnect {
            reason_code,
            properties,
        }
    })
}

fn auth() -> impl Strategy<Value = Auth> {
    (reason_for(PacketType::Auth), auth_properties()).prop_map(|(reason_code, properties)| Auth {
        reason_code,
        properties,
    })
}

/// Packets a client sends, CONNECT excepted.
fn client_packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let mut arms = vec![
        // Subscription Identifiers are added by the server only [MQTT-3.3.4-6].
        publish(protocol)
            .prop_map(|mut p| {
                p.properties.subscription_identifiers.clear();
                Packet::Publish(p)
            })
            .boxed(),
        puback(protocol).prop_map(Packet::PubAck).boxed(),
        pubrec(protocol).prop_map(Packet::PubRec).boxed(),
        pubrel(protocol).prop_map(Packet::PubRel).boxed(),
        pubcomp(protocol).prop_map(Packet::PubComp).boxed(),
        subscribe(protocol).prop_map(Packet::Subscribe).boxed(),
        unsubscribe(protocol).prop_map(Packet::Unsubscribe).boxed(),
        Just(Packet::PingReq).boxed(),
        disconnect(protocol).prop_map(Packet::Disconnect).boxed(),
    ];
    if protocol.is_v5() {
        arms.push(auth().prop_map(Packet::Auth).boxed());
    }
    Union::new(arms).boxed()
}

/// Packets a server sends.
fn server_packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let mut arms = vec![
        connack(protocol)
            .prop_map(|p| Packet::ConnAck(Box::new(p)))
            .boxed(),
        publish(protocol).prop_map(Packet::Publish).boxed(),
        puback(protocol).prop_map(Packet::PubAck).boxed(),
        pubrec(protocol).prop_map(Packet::PubRec).boxed(),
        pubrel(protocol).prop_map(Packet::PubRel).boxed(),
        pubcomp(protocol).prop_map(Packet::PubComp).boxed(),
        suback(protocol).prop_map(Packet::SubAck).boxed(),
        unsuback(protocol).prop_map(Packet::UnsubAck).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if protocol.is_v5() {
        // Only 5.0 servers send DISCONNECT (3.1.1 Table 2.1) and AUTH.
        arms.push(disconnect(protocol).prop_map(Packet::Disconnect).boxed());
        arms.push(auth().prop_map(Packet::Auth).boxed());
    }
    Union::new(arms).boxed()
}

// ---------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------

/// The roles that decode `packet`: the server decodes what clients send (table 2.1).
fn decoding_roles(packet: &Packet, protocol: Protocol) -> Vec<Role> {
    use PacketType::*;
    if let Packet::Publish(publish) = packet {
        // Only a server adds Subscription Identifiers [MQTT-3.3.4-6].
        if !publish.properties.subscription_identifiers.is_empty() {
            return vec![Role::Client];
        }
    }
    match packet.packet_type() {
        Connect | Subscribe | Unsubscribe | PingReq => vec![Role::Server],
        ConnAck | SubAck | UnsubAck | PingResp => vec![Role::Client],
        Disconnect if !protocol.is_v5() => vec![Role::Server],
        _ => vec![Role::Server, Role::Client],
    }
}

/// Encodes `typed` with the [`Encode`] trait and checks that `encoded_len` is what it
/// wrote, that the remaining length in its header is right, and that [`Packet::encode`]
/// writes the same bytes.
fn encode_checked<T: Encode>(
    typed: &T,
    packet: &Packet,
    protocol: Protocol,
) -> Result<BytesMut, TestCaseError> {
    let mut buf = BytesMut::new();
    typed.encode(protocol, &mut buf);
    prop_assert_eq!(
        buf.len(),
        typed.encoded_len(protocol),
        "Encode::encoded_len"
    );
    let header = parse_fixed_header(&buf, u32::MAX)
        .expect("valid fixed header")
        .expect("complete fixed header");
    prop_assert_eq!(header.packet_len(), buf.len(), "remaining length");
    prop_assert_eq!(header.remaining_len, typed.remaining_len(protocol));
    let mut via_packet = BytesMut::from(&b"prefix"[..]);
    packet.encode(protocol, &mut via_packet);
    prop_assert_eq!(&via_packet[6..], &buf[..], "Packet::encode");
    prop_assert_eq!(
        packet.encoded_len(protocol),
        buf.len(),
        "Packet::encoded_len"
    );
    Ok(buf)
}

/// Encodes, then decodes with every role that receives the packet, through
/// `decode_packet` and through a [`Decoder`]. A byte of the next packet follows the
/// encoding, so the decoder must consume exactly `encoded_len` bytes.
fn round_trip<T: Encode>(
    typed: &T,
    packet: Packet,
    protocol: Protocol,
) -> Result<(), TestCaseError> {
    let encoded = encode_checked(typed, &packet, protocol)?;
    // A CONNECT is only ever decoded as a connection's first packet [MQTT-3.1.0-2].
    let known_protocol = (packet.packet_type() != PacketType::Connect).then_some(protocol);
    for role in decoding_roles(&packet, protocol) {
        let mut buf = encoded.clone();
        buf.extend_from_slice(&[0xC0]);
        let decoded = decode_packet(&mut buf, role, known_protocol, MAX);
        prop_assert_eq!(decoded, Ok(Some(packet.clone())), "{:?} decoding", role);
        prop_assert_eq!(&buf[..], &[0xC0][..], "consumed exactly encoded_len bytes");
    }
    // The same through a connection's decoder (a CONNECT only as its first packet).
    let mut decoder = match decoding_roles(&packet, protocol)[0] {
        Role::Server if packet.packet_type() == PacketType::Connect => Decoder::server(MAX),
        Role::Server => connected_server(protocol),
        Role::Client => Decoder::client(protocol, MAX),
    };
    let mut buf = encoded.clone();
    prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(packet)));
    prop_assert!(buf.is_empty());
    Ok(())
}

/// A server decoder that has accepted a CONNECT of `protocol`.
fn connected_server(protocol: Protocol) -> Decoder {
    let mut decoder = Decoder::server(MAX);
    let mut buf = BytesMut::new();
    Connect::new(protocol, "client", 30).encode(protocol, &mut buf);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(decoder.protocol(), Some(protocol));
    decoder
}

/// Decodes everything in `buf` and checks that nothing is left over.
fn decode_all(decoder: &mut Decoder, buf: &mut BytesMut) -> Vec<Packet> {
    let mut packets = Vec::new();
    while let Some(packet) = decoder.decode(buf).expect("valid packets") {
        packets.push(packet);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    packets
}

// ---------------------------------------------------------------------------------------
// One round-trip property per packet type.
// ---------------------------------------------------------------------------------------

proptest! {
    /// CONNECT in 3.1 ("MQIsdp", 3), 3.1.1 and 5.0; a fresh server decoder learns the
    /// version from it [MQTT-3.1.0-1].
    #[test]
    fn connect_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), connect(p)))) {
        // CONNECT carries its own version: the argument to encode is ignored.
        let other = if protocol.is_v5() { Protocol::V3_1_1 } else { Protocol::V5 };
        let mut buf = BytesMut::new();
        packet.encode(other, &mut buf);
        prop_assert_eq!(buf.len(), packet.encoded_len(protocol));
        round_trip(&packet, Packet::Connect(Box::new(packet.clone())), protocol)?;
        // Before CONNECT the server knows no version.
        let mut copy = buf.clone();
        prop_assert_eq!(
            decode_packet(&mut copy, Role::Server, None, MAX),
            Ok(Some(Packet::Connect(Box::new(packet.clone()))))
        );
        let mut decoder = Decoder::server(MAX);
        prop_assert_eq!(decoder.protocol(), None);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::Connect(Box::new(packet)))));
        prop_assert_eq!(decoder.protocol(), Some(protocol));
    }

    #[test]
    fn connack_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), connack(p)))) {
        round_trip(&packet, Packet::ConnAck(Box::new(packet.clone())), protocol)?;
    }

    #[test]
    fn publish_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), publish(p)))) {
        round_trip(&packet, Packet::Publish(packet.clone()), protocol)?;
    }

    #[test]
    fn puback_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), puback(p)))) {
        round_trip(&packet, Packet::PubAck(packet.clone()), protocol)?;
    }

    #[test]
    fn pubrec_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), pubrec(p)))) {
        round_trip(&packet, Packet::PubRec(packet.clone()), protocol)?;
    }

    #[test]
    fn pubrel_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), pubrel(p)))) {
        round_trip(&packet, Packet::PubRel(packet.clone()), protocol)?;
    }

    #[test]
    fn pubcomp_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), pubcomp(p)))) {
        round_trip(&packet, Packet::PubComp(packet.clone()), protocol)?;
    }

    #[test]
    fn subscribe_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), subscribe(p)))) {
        round_trip(&packet, Packet::Subscribe(packet.clone()), protocol)?;
    }

    #[test]
    fn suback_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), suback(p)))) {
        round_trip(&packet, Packet::SubAck(packet.clone()), protocol)?;
    }

    #[test]
    fn unsubscribe_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), unsubscribe(p)))) {
        round_trip(&packet, Packet::Unsubscribe(packet.clone()), protocol)?;
    }

    #[test]
    fn unsuback_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), unsuback(p)))) {
        round_trip(&packet, Packet::UnsubAck(packet.clone()), protocol)?;
    }

    #[test]
    fn disconnect_round_trips((protocol, packet) in protocol().prop_flat_map(|p| (Just(p), disconnect(p)))) {
        round_trip(&packet, Packet::Disconnect(packet.clone()), protocol)?;
    }

    /// AUTH exists only in 5.0 (3.15).
    #[test]
    fn auth_round_trips(packet in auth()) {
        round_trip(&packet, Packet::Auth(packet.clone()), Protocol::V5)?;
    }

    // ------------------------------------------------------------------------------------
    // Streams.
    // ------------------------------------------------------------------------------------

    /// A client's packets split at arbitrary points: while a packet is incomplete the
    /// decoder returns `Ok(None)` and leaves the buffer alone; the packets come out whole
    /// and in order.
    #[test]
    fn server_decodes_split_stream(
        (protocol, connect, packets) in protocol().prop_flat_map(|p| {
            (Just(p), connect(p), vec(client_packet(p), 0..8))
        }),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let mut expected = vec![Packet::Connect(Box::new(connect))];
        expected.extend(packets);
        let decoded = feed_in_pieces(Decoder::server(MAX), &expected, protocol, &cuts)?;
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn client_decodes_split_stream(
        (protocol, packets) in protocol().prop_flat_map(|p| (Just(p), vec(server_packet(p), 1..8))),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let decoded = feed_in_pieces(Decoder::client(protocol, MAX), &packets, protocol, &cuts)?;
        prop_assert_eq!(decoded, packets);
    }

    /// Many packets back to back in one read buffer decode in one pass.
    #[test]
    fn back_to_back_packets_in_one_buffer(
        (protocol, packets) in protocol().prop_flat_map(|p| (Just(p), vec(client_packet(p), 1..60))),
    ) {
        let mut decoder = connected_server(protocol);
        let mut buf = BytesMut::new();
        for packet in &packets {
            packet.encode(protocol, &mut buf);
        }
        let total: usize = packets.iter().map(|p| p.encoded_len(protocol)).sum();
        prop_assert_eq!(buf.len(), total);
        prop_assert_eq!(decode_all(&mut decoder, &mut buf), packets);
    }

    /// The decoded topic and payload of a PUBLISH are slices of the read buffer, not
    /// copies; so are the strings of its properties.
    #[test]
    fn publish_decoding_is_zero_copy(
        (protocol, packets) in protocol().prop_flat_map(|p| (Just(p), vec(publish(p), 1..6))),
    ) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            packet.encode(protocol, &mut buf);
        }
        let start = buf.as_ptr() as usize;
        let range = start..start + buf.len();
        let mut decoder = Decoder::client(protocol, MAX);
        for packet in &packets {
            let Ok(Some(Packet::Publish(decoded))) = decoder.decode(&mut buf) else {
                return Err(TestCaseError::fail("PUBLISH expected"));
            };
            prop_assert_eq!(&decoded, packet);
            let mut slices: Vec<&[u8]> = vec![&decoded.topic.as_bytes()[..], &decoded.payload[..]];
            for user in &decoded.properties.user_properties {
                slices.push(&user.name.as_bytes()[..]);
                slices.push(&user.value.as_bytes()[..]);
            }
            if let Some(data) = &decoded.properties.correlation_data {
                slices.push(&data[..]);
            }
            for slice in slices.into_iter().filter(|s| !s.is_empty()) {
                let first = slice.as_ptr() as usize;
                prop_assert!(
                    range.contains(&first) && range.contains(&(first + slice.len() - 1)),
                    "slice at {:#x} is outside the read buffer {:#x?}", first, range
                );
            }
        }
        prop_assert!(buf.is_empty());
    }
}

/// Encodes `packets`, cuts the bytes at `cuts`, and feeds the pieces to `decoder`,
/// decoding after each piece until it returns `Ok(None)`.
fn feed_in_pieces(
    mut decoder: Decoder,
    packets: &[Packet],
    protocol: Protocol,
    cuts: &[Index],
) -> Result<Vec<Packet>, TestCaseError> {
    let mut wire = BytesMut::new();
    for packet in packets {
        packet.encode(protocol, &mut wire);
    }
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut decoded = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for cut in cuts {
        buf.extend_from_slice(&wire[fed..cut]);
        fed = cut;
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => decoded.push(packet),
                Ok(None) => {
                    prop_assert_eq!(&buf, &before, "Ok(None) must not consume bytes");
                    break;
                }
                Err(error) => return Err(TestCaseError::fail(format!("{error}"))),
            }
        }
    }
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(decoded)
}

// ---------------------------------------------------------------------------------------
// Exact bytes from the specifications.
// ---------------------------------------------------------------------------------------

/// Decodes one whole packet from `bytes` (which our encoder need not produce: it writes
/// the property length after every reason code).
fn decode_only(bytes: &[u8], role: Role, protocol: Option<Protocol>) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode_packet(&mut buf, role, protocol, MAX)
        .expect("valid packet")
        .expect("complete packet");
    assert!(buf.is_empty());
    packet
}

/// Decodes one whole packet from `bytes` and checks that it re-encodes to `bytes`.
fn decode_exact(bytes: &[u8], role: Role, protocol: Option<Protocol>) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode_packet(&mut buf, role, protocol, MAX)
        .expect("valid packet")
        .expect("complete packet");
    assert!(buf.is_empty());
    let encode_as = match &packet {
        Packet::Connect(connect) => connect.protocol,
        _ => protocol.expect("protocol"),
    };
    let mut encoded = BytesMut::new();
    packet.encode(encode_as, &mut encoded);
    assert_eq!(&encoded[..], bytes, "re-encoding of {packet:?}");
    packet
}

/// 3.1.1 Figure 3.6 (CONNECT variable header example): "MQTT", level 4, flags 0xCE (user
/// name, password, will QoS 1, will, clean session), keep alive 10; then the payload in
/// the order of 3.1.3: client identifier, will topic, will message, user name, password.
#[test]
fn connect_3_1_1_spec_example_mqtt_3_1_2() {
    let bytes = [
        0x10, 0x20, // CONNECT, remaining length 32
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name [MQTT-3.1.2-1]
        0x04, // protocol level 4 [MQTT-3.1.2-2]
        0xCE, // connect flags
        0x00, 0x0A, // keep alive 10 s
        0x00, 0x03, b'c', b'i', b'd', // client identifier [MQTT-3.1.3-3]
        0x00, 0x03, b'w', b'/', b't', // will topic
        0x00, 0x03, b'b', b'y', b'e', // will message
        0x00, 0x01, b'u', // user name
        0x00, 0x02, b'p', b'w', // password
    ];
    let Packet::Connect(connect) = decode_exact(&bytes, Role::Server, None) else {
        panic!("CONNECT expected");
    };
    let expected = Connect {
        protocol: Protocol::V3_1_1,
        clean_start: true,
        keep_alive_secs: 10,
        properties: ConnectProperties::default(),
        client_id: "cid".into(),
        will: Some(Will {
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"pw")),
    };
    assert_eq!(*connect, expected);
    let mut decoder = Decoder::server(MAX);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::Connect(connect))));
    assert_eq!(decoder.protocol(), Some(Protocol::V3_1_1));
}

/// 5.0 Figure 3-5 (CONNECT variable header example): level 5, flags 0xCE, keep alive 10,
/// properties of length 5 holding Session Expiry Interval 10; then a will with an empty
/// will property block (3.1.3.2).
#[test]
fn connect_5_spec_example_3_1_2_11() {
    let bytes = [
        0x10, 0x27, // CONNECT, remaining length 39
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xCE, 0x00, 0x0A, //
        0x05, 0x11, 0x00, 0x00, 0x00, 0x0A, // properties: session expiry 10
        0x00, 0x03, b'c', b'i', b'd', // client identifier
        0x00, // will properties
        0x00, 0x03, b'w', b'/', b't', 0x00, 0x03, b'b', b'y', b'e', // will
        0x00, 0x01, b'u', 0x00, 0x02, b'p', b'w', // user name, password
    ];
    let Packet::Connect(connect) = decode_exact(&bytes, Role::Server, None) else {
        panic!("CONNECT expected");
    };
    assert_eq!(connect.protocol, Protocol::V5);
    assert_eq!(connect.properties.session_expiry_interval_secs, Some(10));
    assert_eq!(connect.will.as_ref().map(|w| w.qos), Some(QoS::AtLeastOnce));
    assert_eq!(connect.keep_alive_secs, 10);
}

/// 3.1 CONNECT: protocol name "MQIsdp", level 3.
#[test]
fn connect_3_1_mqisdp() {
    let bytes = [
        0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
        0x01, b'c',
    ];
    let Packet::Connect(connect) = decode_exact(&bytes, Role::Server, None) else {
        panic!("CONNECT expected");
    };
    assert_eq!(*connect, Connect::new(Protocol::V3_1, "c", 60));
}

/// 3.1.1 Figure 3.11 (PUBLISH variable header example): topic "a/b", packet identifier
/// 10.
#[test]
fn publish_3_1_1_spec_example_3_3_2() {
    let bytes = [
        0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
    ];
    let packet = decode_exact(&bytes, Role::Server, Some(Protocol::V3_1_1));
    let mut expected = Publish::new("a/b", QoS::AtLeastOnce, Bytes::from_static(b"hi"));
    expected.packet_id = 10;
    assert_eq!(packet, Packet::Publish(expected));
}

/// 5.0 Figure 1-1 / 3.1.1 Figure 1.1 (UTF-8 example): "A\u{2A6D4}" is 00 05 41 F0 AA 9B 94.
/// A BOM is a character like any other [MQTT-1.5.4-3].
#[test]
fn utf8_spec_example_mqtt_1_5_4() {
    let bytes = [0x30, 0x07, 0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94];
    let packet = decode_exact(&bytes, Role::Client, Some(Protocol::V3_1_1));
    assert_eq!(
        packet,
        Packet::Publish(Publish::new("A\u{2A6D4}", QoS::AtMostOnce, Bytes::new()))
    );
    let bom = [0x30, 0x05, 0x00, 0x03, 0xEF, 0xBB, 0xBF];
    let Packet::Publish(publish) = decode_exact(&bom, Role::Server, Some(Protocol::V3_1_1)) else {
        panic!("PUBLISH expected");
    };
    assert_eq!(publish.topic, "\u{FEFF}");
}

/// 3.1.1 Figures 3.21/3.22 (SUBSCRIBE example): packet identifier 10, "a/b" QoS 1, "c/d"
/// QoS 2; flags 0b0010 [MQTT-3.8.1-1].
#[test]
fn subscribe_3_1_1_spec_example_3_8_3() {
    let bytes = [
        0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'd',
        0x02,
    ];
    let packet = decode_exact(&bytes, Role::Server, Some(Protocol::V3_1_1));
    let subscription = |filter: &str, qos| Subscription {
        filter: filter.into(),
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
    };
    assert_eq!(
        packet,
        Packet::Subscribe(Subscribe::new(
            10,
            vec![
                subscription("a/b", QoS::AtLeastOnce),
                subscription("c/d", QoS::ExactlyOnce)
            ]
        ))
    );
}

/// 3.1.1 Figure 3.26 (SUBACK payload example): 0x00, 0x02 and 0x80 (failure).
#[test]
fn suback_3_1_1_spec_example_3_9_3() {
    let bytes = [0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80];
    let packet = decode_exact(&bytes, Role::Client, Some(Protocol::V3_1_1));
    assert_eq!(
        packet,
        Packet::SubAck(SubAck::new(
            10,
            vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GrantedQos2,
                ReasonCode::UnspecifiedError
            ]
        ))
    );
}

/// 3.1.1 Figure 3.30 (UNSUBSCRIBE payload example): "a/b", "c/d"; flags 0b0010
/// [MQTT-3.10.1-1]. UNSUBACK is the packet identifier alone.
#[test]
fn unsubscribe_3_1_1_spec_example_3_10_3() {
    let bytes = [
        0xA2, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x03, b'c', b'/', b'd',
    ];
    let packet = decode_exact(&bytes, Role::Server, Some(Protocol::V3_1_1));
    assert_eq!(
        packet,
        Packet::Unsubscribe(Unsubscribe::new(10, vec!["a/b".into(), "c/d".into()]))
    );
    let unsuback = decode_exact(
        &[0xB0, 0x02, 0x00, 0x0A],
        Role::Client,
        Some(Protocol::V3_1_1),
    );
    assert_eq!(unsuback, Packet::UnsubAck(UnsubAck::new(10, Vec::new())));
}

/// 3.1.1 CONNACK (3.2): session present, return code 0; 5.0 adds the property length.
#[test]
fn connack_exact_bytes_3_2_2() {
    let v3 = decode_exact(
        &[0x20, 0x02, 0x01, 0x00],
        Role::Client,
        Some(Protocol::V3_1_1),
    );
    assert_eq!(
        v3,
        Packet::ConnAck(Box::new(ConnAck::new(true, ReasonCode::Success)))
    );
    let refused = decode_exact(
        &[0x20, 0x02, 0x00, 0x05],
        Role::Client,
        Some(Protocol::V3_1_1),
    );
    assert_eq!(
        refused,
        Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::NotAuthorized)))
    );
    let v5 = decode_exact(
        &[0x20, 0x03, 0x00, 0x87, 0x00],
        Role::Client,
        Some(Protocol::V5),
    );
    assert_eq!(
        v5,
        Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::NotAuthorized)))
    );
}

/// 5.0 3.4.2.1: "The Reason Code and Property Length can be omitted if the Reason Code is
/// 0x00 (Success) and there are no Properties. In this case the PUBACK has a Remaining
/// Length of 2." The same holds for PUBREC, PUBREL and PUBCOMP.
#[test]
fn puback_5_remaining_length_2_is_success_3_4_2_1() {
    for role in [Role::Server, Role::Client] {
        let packet = decode_exact(&[0x40, 0x02, 0x12, 0x34], role, Some(Protocol::V5));
        assert_eq!(packet, Packet::PubAck(PubAck::new(0x1234)));
    }
    assert_eq!(
        decode_exact(&[0x50, 0x02, 0x00, 0x01], Role::Client, Some(Protocol::V5)),
        Packet::PubRec(PubRec::new(1))
    );
    assert_eq!(
        decode_exact(&[0x62, 0x02, 0x00, 0x01], Role::Server, Some(Protocol::V5)),
        Packet::PubRel(PubRel::new(1))
    );
    assert_eq!(
        decode_exact(&[0x70, 0x02, 0x00, 0x01], Role::Client, Some(Protocol::V5)),
        Packet::PubComp(PubComp::new(1))
    );
}

/// 5.0 3.4.2.2.1: "If the Remaining Length is less than 4 there is no Property Length and
/// the value of 0 is used"; a property length of 0 decodes the same.
#[test]
fn puback_5_reason_code_without_property_length_3_4_2_2() {
    let packet = decode_only(
        &[0x40, 0x03, 0x00, 0x07, 0x10],
        Role::Server,
        Some(Protocol::V5),
    );
    assert_eq!(
        packet,
        Packet::PubAck(PubAck::with_reason(7, ReasonCode::NoMatchingSubscribers))
    );
    let mut buf = BytesMut::from(&[0x40, 0x04, 0x00, 0x07, 0x10, 0x00][..]);
    assert_eq!(
        decode_packet(&mut buf, Role::Server, Some(Protocol::V5), MAX),
        Ok(Some(packet))
    );
    // 3.1.1 PUBACK is the packet identifier alone.
    assert_eq!(
        decode_exact(
            &[0x40, 0x02, 0x00, 0x07],
            Role::Server,
            Some(Protocol::V3_1_1)
        ),
        Packet::PubAck(PubAck::new(7))
    );
}

/// 5.0 3.14.2.1: "If the Remaining Length is less than 1 the value of 0x00 (Normal
/// disconnection) is used." AUTH likewise (3.15.2.1).
#[test]
fn disconnect_5_remaining_length_0_is_normal_3_14_2_1() {
    for role in [Role::Server, Role::Client] {
        let packet = decode_exact(&[0xE0, 0x00], role, Some(Protocol::V5));
        assert_eq!(
            packet,
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
        );
        assert_eq!(
            decode_exact(&[0xF0, 0x00], role, Some(Protocol::V5)),
            Packet::Auth(Auth::new(ReasonCode::Success))
        );
    }
    let with_will = decode_only(&[0xE0, 0x01, 0x04], Role::Server, Some(Protocol::V5));
    assert_eq!(
        with_will,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage))
    );
    assert_eq!(
        decode_exact(&[0xE0, 0x00], Role::Server, Some(Protocol::V3_1_1)),
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
    );
}

/// PINGREQ is C0 00 and PINGRESP D0 00 (3.12, 3.13).
#[test]
fn ping_exact_bytes_3_12_3_13() {
    for protocol in ALL_PROTOCOLS {
        assert_eq!(
            decode_exact(&[0xC0, 0x00], Role::Server, Some(protocol)),
            Packet::PingReq
        );
        assert_eq!(
            decode_exact(&[0xD0, 0x00], Role::Client, Some(protocol)),
            Packet::PingResp
        );
    }
}

/// 5.0 Table 1-1 / 3.1.1 Table 2.4: the boundaries of the variable byte integer, read as a
/// remaining length [MQTT-1.5.5-1].
#[test]
fn remaining_length_table_1_5_5() {
    let table: [(u32, &[u8]); 8] = [
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for (value, encoding) in table {
        let mut header = vec![0x30];
        header.extend_from_slice(encoding);
        let parsed = parse_fixed_header(&header, u32::MAX)
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.remaining_len, value as usize);
        assert_eq!(parsed.header_len, 1 + encoding.len());
        // Every proper prefix is incomplete, not an error.
        for end in 0..header.len() {
            assert_eq!(parse_fixed_header(&header[..end], u32::MAX), Ok(None));
        }
        // And the encoder writes exactly this header: a PUBLISH of topic "t" (3 bytes)
        // with the rest as payload.
        if (3..=2_097_152).contains(&value) {
            let publish = Publish::new("t", QoS::AtMostOnce, vec![0; value as usize - 3]);
            let mut buf = BytesMut::new();
            publish.encode(Protocol::V3_1_1, &mut buf);
            assert_eq!(buf.len(), 1 + encoding.len() + value as usize);
            assert_eq!(&buf[1..1 + encoding.len()], encoding);
        }
    }
}

/// A PUBLISH whose remaining length needs 3 bytes round-trips, and its header says so.
#[test]
fn large_publish_round_trips() {
    for size in [124, 125, 16_379, 16_380, 100_000] {
        for protocol in ALL_PROTOCOLS {
            let mut publish = Publish::new("t", QoS::ExactlyOnce, vec![0xA5; size]);
            publish.packet_id = 9;
            let mut buf = BytesMut::new();
            publish.encode(protocol, &mut buf);
            assert_eq!(buf.len(), publish.encoded_len(protocol));
            let mut decoder = Decoder::client(protocol, MAX);
            assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::Publish(publish))));
            assert!(buf.is_empty());
        }
    }
}

/// An empty buffer and a lone type byte are incomplete for every decoder.
#[test]
fn empty_and_partial_header_are_incomplete() {
    for protocol in ALL_PROTOCOLS {
        let mut empty = BytesMut::new();
        assert_eq!(Decoder::client(protocol, MAX).decode(&mut empty), Ok(None));
        let mut one = BytesMut::from(&[0x30][..]);
        assert_eq!(connected_server(protocol).decode(&mut one), Ok(None));
        assert_eq!(&one[..], &[0x30]);
    }
    let mut partial_connect = BytesMut::from(&[0x10, 0x0D, 0x00, 0x04, b'M'][..]);
    assert_eq!(Decoder::server(MAX).decode(&mut partial_connect), Ok(None));
    assert_eq!(partial_connect.len(), 5);
}
