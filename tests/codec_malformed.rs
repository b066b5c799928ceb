//! Malformed and forbidden packets: a table of byte sequences, each with the exact
//! [`DecodeError`] the codec must return and the MQTT 5.0 reason code that error maps to
//! (0x81 Malformed Packet, 0x82 Protocol Error, 0x84 Unsupported Protocol Version, 0x94
//! Topic Alias invalid, 0x95 Packet too large). Spec references are MQTT 5.0 ids unless
//! the case is 3.1.1-specific, where they are the 3.1.1 ids.
//!
//! Every case is decoded whole, whole with another packet after it, one byte at a time,
//! through `decode_packet` and through a connection's [`Decoder`]. A second table holds
//! near misses that must decode.

use bytes::BytesMut;
use ferrymq::protocol::{
    decode_packet, parse_fixed_header, Connect, DecodeError, Decoder, Encode, Packet, PacketType,
    PropertyId, Protocol, QoS, ReasonCode, RetainHandling, Role, UserProperty,
};

/// Where the bytes arrive.
#[derive(Debug, Clone, Copy)]
enum Ctx {
    /// A server before CONNECT.
    Fresh,
    /// A server after a CONNECT of this version.
    Server(Protocol),
    /// A client that connected with this version.
    Client(Protocol),
}

const FRESH: Ctx = Ctx::Fresh;
const S4: Ctx = Ctx::Server(Protocol::V3_1_1);
const S5: Ctx = Ctx::Server(Protocol::V5);
const C4: Ctx = Ctx::Client(Protocol::V3_1_1);
const C5: Ctx = Ctx::Client(Protocol::V5);

const MAX: u32 = 1 << 20;

struct Case {
    name: &'static str,
    spec: &'static str,
    ctx: Ctx,
    max: u32,
    bytes: &'static [u8],
    error: DecodeError,
    /// The reason code `error` maps to.
    code: u8,
}

const fn case(
    name: &'static str,
    spec: &'static str,
    ctx: Ctx,
    bytes: &'static [u8],
    error: DecodeError,
    code: u8,
) -> Case {
    Case {
        name,
        spec,
        ctx,
        max: MAX,
        bytes,
        error,
        code,
    }
}

impl Case {
    const fn max(self, max: u32) -> Case {
        Case { max, ..self }
    }
}

const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const UNSUPPORTED_VERSION: u8 = 0x84;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const TOO_LARGE: u8 = 0x95;

use DecodeError as E;
use PacketType as T;
use PropertyId as P;

const fn end(field: &'static str) -> DecodeError {
    E::UnexpectedEnd { field }
}

const fn trailing(packet: PacketType, count: usize) -> DecodeError {
    E::TrailingBytes { packet, count }
}

const fn flags(packet: PacketType, flags: u8) -> DecodeError {
    E::InvalidHeaderFlags { packet, flags }
}

const fn filter(reason: &'static str) -> DecodeError {
    E::InvalidTopicFilter { reason }
}

const fn bad_value(property: PropertyId, value: u32) -> DecodeError {
    E::InvalidPropertyValue { property, value }
}

const fn bad_reason(packet: PacketType, code: u8) -> DecodeError {
    E::InvalidReasonCode { packet, code }
}

const fn not_allowed(property: PropertyId, packet: &'static str) -> DecodeError {
    E::PropertyNotAllowed { property, packet }
}

/// CONNECT bodies below start with "MQTT", the level, the flags and keep alive 60:
/// `00 04 4D 51 54 54 LL FF 00 3C` (10 bytes).
static CASES: &[Case] = &[
    // --- Fixed header: remaining length, size, packet type, direction -------------------
    case(
        "remaining length over four bytes",
        "[MQTT-1.5.5-1] 1.5.5 (at most four bytes)",
        S4,
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        E::RemainingLengthTooLong,
        MALFORMED,
    ),
    case(
        "remaining length not minimal (0 in two bytes)",
        "[MQTT-1.5.5-1]",
        S5,
        &[0xC0, 0x80, 0x00],
        E::NonMinimalVarInt {
            field: "remaining length",
        },
        MALFORMED,
    ),
    case(
        "property length not minimal",
        "[MQTT-1.5.5-1]",
        S5,
        &[0x40, 0x05, 0x00, 0x01, 0x00, 0x80, 0x00],
        E::NonMinimalVarInt {
            field: "property length",
        },
        MALFORMED,
    ),
    case(
        "PUBLISH over the maximum packet size, refused from its header alone",
        "3.1.2.11.4 / 3.2.2.3.6 (Packet too large)",
        S5,
        &[0x30, 0x80, 0x01],
        E::PacketTooLarge {
            size_bytes: 131,
            max_bytes: 128,
        },
        TOO_LARGE,
    )
    .max(128),
    case(
        "CONNECT over the maximum packet size, refused from its header alone",
        "3.2.2.3.6 (Packet too large)",
        FRESH,
        &[0x10, 0xC8, 0x01],
        E::PacketTooLarge {
            size_bytes: 203,
            max_bytes: 64,
        },
        TOO_LARGE,
    )
    .max(64),
    case(
        "reserved packet type 0",
        "2.1.2 (Reserved: Forbidden)",
        S5,
        &[0x00, 0x00],
        E::ReservedPacketType { type_bits: 0 },
        MALFORMED,
    ),
    case(
        "AUTH (type 15) to a 3.1.1 server",
        "3.1.1 2.2.1 (15 Reserved: Forbidden)",
        S4,
        &[0xF0, 0x00],
        E::ReservedPacketType { type_bits: 15 },
        MALFORMED,
    ),
    case(
        "AUTH (type 15) to a 3.1.1 client",
        "3.1.1 2.2.1 (15 Reserved: Forbidden)",
        C4,
        &[0xF0, 0x00],
        E::ReservedPacketType { type_bits: 15 },
        MALFORMED,
    ),
    case(
        "CONNACK sent to a server",
        "2.1.2 table 2-1 (Server to Client)",
        S4,
        &[0x20, 0x02, 0x00, 0x00],
        E::UnexpectedPacket { packet: T::ConnAck },
        PROTOCOL_ERROR,
    ),
    case(
        "SUBACK sent to a server",
        "2.1.2 table 2-1 (Server to Client)",
        S5,
        &[0x90, 0x03, 0x00, 0x01, 0x00],
        E::UnexpectedPacket { packet: T::SubAck },
        PROTOCOL_ERROR,
    ),
    case(
        "SUBSCRIBE sent to a client",
        "2.1.2 table 2-1 (Client to Server)",
        C5,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00],
        E::UnexpectedPacket {
            packet: T::Subscribe,
        },
        PROTOCOL_ERROR,
    ),
    case(
        "PINGREQ sent to a client",
        "2.1.2 table 2-1 (Client to Server)",
        C4,
        &[0xC0, 0x00],
        E::UnexpectedPacket { packet: T::PingReq },
        PROTOCOL_ERROR,
    ),
    case(
        "CONNECT sent to a client",
        "2.1.2 table 2-1 (Client to Server)",
        C5,
        &[
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00,
            0x01, b'c',
        ],
        E::UnexpectedPacket { packet: T::Connect },
        PROTOCOL_ERROR,
    ),
    case(
        "DISCONNECT sent to a 3.1.1 client",
        "3.1.1 2.2.1 table 2.1 (DISCONNECT: Client to Server), [MQTT-4.8.0-1]",
        C4,
        &[0xE0, 0x00],
        E::UnexpectedPacket {
            packet: T::Disconnect,
        },
        PROTOCOL_ERROR,
    ),
    case(
        "first packet PINGREQ instead of CONNECT",
        "[MQTT-3.1.0-1]",
        FRESH,
        &[0xC0, 0x00],
        E::FirstPacketNotConnect { packet: T::PingReq },
        PROTOCOL_ERROR,
    ),
    case(
        "first packet PUBLISH instead of CONNECT",
        "[MQTT-3.1.0-1]",
        FRESH,
        &[0x30, 0x05, 0x00, 0x01, b'a', b'h', b'i'],
        E::FirstPacketNotConnect { packet: T::Publish },
        PROTOCOL_ERROR,
    ),
    // --- Reserved fixed header flags [MQTT-2.1.3-1]: 0b0010 for PUBREL, SUBSCRIBE and
    // --- UNSUBSCRIBE, 0 for the others --------------------------------------------------
    case(
        "CONNECT flags 0b0001",
        "[MQTT-2.1.3-1]",
        FRESH,
        &[
            0x11, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ],
        flags(T::Connect, 0b0001),
        MALFORMED,
    ),
    case(
        "CONNACK flags 0b0001",
        "[MQTT-2.1.3-1]",
        C4,
        &[0x21, 0x02, 0x00, 0x00],
        flags(T::ConnAck, 0b0001),
        MALFORMED,
    ),
    case(
        "PUBACK flags 0b0010",
        "[MQTT-2.1.3-1]",
        S4,
        &[0x42, 0x02, 0x00, 0x01],
        flags(T::PubAck, 0b0010),
        MALFORMED,
    ),
    case(
        "PUBREC flags 0b1000",
        "[MQTT-2.1.3-1]",
        S5,
        &[0x58, 0x02, 0x00, 0x01],
        flags(T::PubRec, 0b1000),
        MALFORMED,
    ),
    case(
        "PUBREL flags 0b0000",
        "[MQTT-3.6.1-1]",
        S4,
        &[0x60, 0x02, 0x00, 0x01],
        flags(T::PubRel, 0b0000),
        MALFORMED,
    ),
    case(
        "PUBREL flags 0b0011",
        "[MQTT-3.6.1-1]",
        C5,
        &[0x63, 0x02, 0x00, 0x01],
        flags(T::PubRel, 0b0011),
        MALFORMED,
    ),
    case(
        "PUBCOMP flags 0b0010",
        "[MQTT-2.1.3-1]",
        C4,
        &[0x72, 0x02, 0x00, 0x01],
        flags(T::PubComp, 0b0010),
        MALFORMED,
    ),
    case(
        "SUBSCRIBE flags 0b0000",
        "[MQTT-3.8.1-1]",
        S4,
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        flags(T::Subscribe, 0b0000),
        MALFORMED,
    ),
    case(
        "SUBACK flags 0b0001",
        "[MQTT-2.1.3-1]",
        C4,
        &[0x91, 0x03, 0x00, 0x01, 0x00],
        flags(T::SubAck, 0b0001),
        MALFORMED,
    ),
    case(
        "UNSUBSCRIBE flags 0b0000",
        "[MQTT-3.10.1-1]",
        S4,
        &[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        flags(T::Unsubscribe, 0b0000),
        MALFORMED,
    ),
    case(
        "UNSUBACK flags 0b0010",
        "[MQTT-2.1.3-1]",
        C4,
        &[0xB2, 0x02, 0x00, 0x01],
        flags(T::UnsubAck, 0b0010),
        MALFORMED,
    ),
    case(
        "PINGREQ flags 0b0001",
        "[MQTT-2.1.3-1]",
        S4,
        &[0xC1, 0x00],
        flags(T::PingReq, 0b0001),
        MALFORMED,
    ),
    case(
        "PINGRESP flags 0b0100",
        "[MQTT-2.1.3-1]",
        C4,
        &[0xD4, 0x00],
        flags(T::PingResp, 0b0100),
        MALFORMED,
    ),
    case(
        "DISCONNECT flags 0b1000",
        "[MQTT-2.1.3-1]",
        S5,
        &[0xE8, 0x00],
        flags(T::Disconnect, 0b1000),
        MALFORMED,
    ),
    case(
        "AUTH flags 0b0001",
        "[MQTT-2.1.3-1]",
        S5,
        &[0xF1, 0x00],
        flags(T::Auth, 0b0001),
        MALFORMED,
    ),
    // --- QoS and DUP --------------------------------------------------------------------
    case(
        "PUBLISH QoS 3",
        "[MQTT-3.3.1-4]",
        S4,
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        E::InvalidQos { value: 3 },
        MALFORMED,
    ),
    case(
        "will QoS 3",
        "[MQTT-3.1.2-12]",
        FRESH,
        &[
            0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x1E, 0x00, 0x3C, // flags: will QoS 3
            0x00, 0x00, 0x01, b'c', 0x00, 0x00, 0x01, b't', 0x00, 0x00,
        ],
        E::InvalidQos { value: 3 },
        MALFORMED,
    ),
    case(
        "3.1.1 subscription QoS 3",
        "3.1.1 [MQTT-3-8.3-4] (malformed)",
        S4,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
        E::InvalidQos { value: 3 },
        MALFORMED,
    ),
    case(
        "5.0 subscription Maximum QoS 3",
        "3.8.3.1 (\"It is a Protocol Error if the Maximum QoS field has the value 3\")",
        S5,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x03],
        E::InvalidMaximumQos,
        PROTOCOL_ERROR,
    ),
    case(
        "DUP on a QoS 0 PUBLISH",
        "[MQTT-3.3.1-2]",
        S4,
        &[0x38, 0x05, 0x00, 0x03, b'a', b'/', b'b'],
        E::DupOnQos0,
        MALFORMED,
    ),
    // --- Truncated fields ---------------------------------------------------------------
    case(
        "PUBLISH topic length past the packet",
        "1.5.4, 2.1.4",
        S4,
        &[0x30, 0x03, 0x00, 0x05, b'a'],
        end("topic name"),
        MALFORMED,
    ),
    case(
        "PUBACK with one byte of packet identifier",
        "3.4.2",
        S4,
        &[0x40, 0x01, 0x00],
        end("packet identifier"),
        MALFORMED,
    ),
    case(
        "QoS 1 PUBLISH without packet identifier",
        "3.3.2.2",
        S5,
        &[0x32, 0x03, 0x00, 0x01, b'a'],
        end("packet identifier"),
        MALFORMED,
    ),
    case(
        "CONNECT ending after its flags",
        "3.1.2.10",
        FRESH,
        &[0x10, 0x08, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02],
        end("keep alive"),
        MALFORMED,
    ),
    case(
        "CONNECT user name flag without user name",
        "[MQTT-3.1.2-17] (3.1.1)",
        FRESH,
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x82, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ],
        end("user name"),
        MALFORMED,
    ),
    case(
        "5.0 SUBACK without reason codes",
        "3.9.3",
        C5,
        &[0x90, 0x03, 0x00, 0x01, 0x00],
        end("SUBACK reason codes"),
        MALFORMED,
    ),
    case(
        "5.0 UNSUBACK without reason codes",
        "3.11.3",
        C5,
        &[0xB0, 0x03, 0x00, 0x01, 0x00],
        end("UNSUBACK reason codes"),
        MALFORMED,
    ),
    case(
        "property value cut short (Message Expiry Interval of 1 byte)",
        "2.2.2.2",
        S5,
        &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x02, 0x00],
        end("message expiry interval"),
        MALFORMED,
    ),
    case(
        "property length running past the packet",
        "2.2.2.1",
        S5,
        &[0x40, 0x04, 0x00, 0x01, 0x00, 0x05],
        end("properties"),
        MALFORMED,
    ),
    // --- Trailing bytes -----------------------------------------------------------------
    case(
        "PINGREQ with a body",
        "3.12 (no variable header, no payload)",
        S4,
        &[0xC0, 0x01, 0x00],
        trailing(T::PingReq, 1),
        MALFORMED,
    ),
    case(
        "PINGRESP with a body",
        "3.13 (no variable header, no payload)",
        C5,
        &[0xD0, 0x01, 0x00],
        trailing(T::PingResp, 1),
        MALFORMED,
    ),
    case(
        "3.1.1 PUBACK of 3 bytes",
        "3.1.1 3.4.1 (remaining length 2)",
        S4,
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        trailing(T::PubAck, 1),
        MALFORMED,
    ),
    case(
        "3.1.1 DISCONNECT with a body",
        "3.1.1 3.14 (remaining length 0)",
        S4,
        &[0xE0, 0x01, 0x00],
        trailing(T::Disconnect, 1),
        MALFORMED,
    ),
    case(
        "3.1.1 UNSUBACK with a reason code",
        "3.1.1 3.11.3 (no payload)",
        C4,
        &[0xB0, 0x03, 0x00, 0x01, 0x00],
        trailing(T::UnsubAck, 1),
        MALFORMED,
    ),
    case(
        "3.1.1 CONNACK with a property length",
        "3.1.1 3.2.1 (remaining length 2)",
        C4,
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        trailing(T::ConnAck, 1),
        MALFORMED,
    ),
    // --- UTF-8 strings [MQTT-1.5.4-1], [MQTT-1.5.4-2] -----------------------------------
    case(
        "invalid UTF-8 in a topic (C3 28)",
        "[MQTT-1.5.4-1]",
        S4,
        &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
        E::InvalidUtf8 {
            field: "topic name",
        },
        MALFORMED,
    ),
    case(
        "overlong UTF-8 '/' (C0 AF) in a topic",
        "[MQTT-1.5.4-1]",
        S5,
        &[0x30, 0x05, 0x00, 0x02, 0xC0, 0xAF, 0x00],
        E::InvalidUtf8 {
            field: "topic name",
        },
        MALFORMED,
    ),
    case(
        "surrogate U+D800 (ED A0 80) in a client identifier",
        "[MQTT-1.5.4-1]",
        FRESH,
        &[
            0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03,
            0xED, 0xA0, 0x80,
        ],
        E::InvalidUtf8 {
            field: "client identifier",
        },
        MALFORMED,
    ),
    case(
        "U+0000 in a topic",
        "[MQTT-1.5.4-2]",
        S4,
        &[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'],
        E::NullCharacter {
            field: "topic name",
        },
        MALFORMED,
    ),
    case(
        "U+0000 in a client identifier",
        "[MQTT-1.5.4-2]",
        FRESH,
        &[
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x02,
            b'a', 0x00,
        ],
        E::NullCharacter {
            field: "client identifier",
        },
        MALFORMED,
    ),
    case(
        "U+0000 in a user property name",
        "[MQTT-1.5.4-2]",
        S5,
        &[
            0x30, 0x0B, 0x00, 0x01, b'a', 0x07, 0x26, 0x00, 0x01, 0x00, 0x00, 0x01, b'v',
        ],
        E::NullCharacter {
            field: "user property name",
        },
        MALFORMED,
    ),
    case(
        "overlong U+0000 (C0 80) in a user property value",
        "[MQTT-1.5.4-1]",
        S5,
        &[
            0x30, 0x0C, 0x00, 0x01, b'a', 0x08, 0x26, 0x00, 0x01, b'k', 0x00, 0x02, 0xC0, 0x80,
        ],
        E::InvalidUtf8 {
            field: "user property value",
        },
        MALFORMED,
    ),
    case(
        "invalid UTF-8 in a topic filter",
        "[MQTT-1.5.4-1]",
        S4,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0xFF, 0x00],
        E::InvalidUtf8 {
            field: "topic filter",
        },
        MALFORMED,
    ),
    // --- CONNECT ------------------------------------------------------------------------
    case(
        "protocol name MQTX",
        "[MQTT-3.1.2-1]",
        FRESH,
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ],
        E::InvalidProtocolName,
        UNSUPPORTED_VERSION,
    ),
    case(
        "protocol level 6",
        "[MQTT-3.1.2-2]",
        FRESH,
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ],
        E::UnsupportedProtocolLevel { level: 6 },
        UNSUPPORTED_VERSION,
    ),
    case(
        "MQIsdp with level 4",
        "[MQTT-3.1.2-2]",
        FRESH,
        &[
            0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x04, 0x02, 0x00, 0x3C,
            0x00, 0x01, b'c',
        ],
        E::UnsupportedProtocolLevel { level: 4 },
        UNSUPPORTED_VERSION,
    ),
    case(
        "CONNECT reserved flag",
        "[MQTT-3.1.2-3]",
        FRESH,
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ],
        E::ConnectReservedFlag,
        MALFORMED,
    ),
    case(
        "will QoS 1 without will flag (3.1.1)",
        "3.1.1 [MQTT-3.1.2-13]",
        FRESH,
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x0A, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ],
        E::WillFlagsWithoutWill,
        MALFORMED,
    ),
    case(
        "will retain without will flag (5.0)",
        "[MQTT-3.1.2-13]",
        FRESH,
        &[
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x22, 0x00, 0x3C, 0x00, 0x00,
            0x01, b'c',
        ],
        E::WillFlagsWithoutWill,
        MALFORMED,
    ),
    case(
        "password without user name (3.1.1)",
        "3.1.1 [MQTT-3.1.2-22]",
        FRESH,
        &[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x01, b'p',
        ],
        E::PasswordWithoutUserName,
        MALFORMED,
    ),
    case(
        "wildcard in the will topic",
        "[MQTT-4.7.0-1] (3.1.1 [MQTT-4.7.1-1])",
        FRESH,
        &[
            0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x03, b'a', b'/', b'#', 0x00, 0x00,
        ],
        E::WildcardInTopicName,
        PROTOCOL_ERROR,
    ),
    case(
        "empty will topic",
        "[MQTT-4.7.3-1]",
        FRESH,
        &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x00, 0x00, 0x00,
        ],
        E::EmptyTopicName,
        PROTOCOL_ERROR,
    ),
    case(
        "wildcard in the will's Response Topic",
        "[MQTT-3.3.2-14], [MQTT-3.3.2-15]",
        FRESH,
        &[
            0x10, 0x19, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x3C, 0x00, // no props
            0x00, 0x01, b'c', // client identifier
            0x05, 0x08, 0x00, 0x02, b'a', b'#', // will properties: response topic "a#"
            0x00, 0x01, b't', 0x00, 0x00,
        ],
        E::WildcardInTopicName,
        PROTOCOL_ERROR,
    ),
    // --- PUBLISH topics -----------------------------------------------------------------
    case(
        "'+' in a PUBLISH topic",
        "[MQTT-3.3.2-2]",
        S4,
        &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'],
        E::WildcardInTopicName,
        PROTOCOL_ERROR,
    ),
    case(
        "'#' in a 5.0 PUBLISH topic",
        "[MQTT-3.3.2-2]",
        S5,
        &[0x30, 0x04, 0x00, 0x01, b'#', 0x00],
        E::WildcardInTopicName,
        PROTOCOL_ERROR,
    ),
    case(
        "empty PUBLISH topic in 3.1.1",
        "3.1.1 [MQTT-4.7.3-1]",
        S4,
        &[0x30, 0x02, 0x00, 0x00],
        E::EmptyTopicName,
        PROTOCOL_ERROR,
    ),
    case(
        "empty PUBLISH topic without Topic Alias in 5.0",
        "3.3.2.1 (\"a Protocol Error if the Topic Name is zero length and there is no Topic Alias\")",
        S5,
        &[0x30, 0x03, 0x00, 0x00, 0x00],
        E::EmptyTopicName,
        PROTOCOL_ERROR,
    ),
    case(
        "Topic Alias 0",
        "[MQTT-3.3.2-8]",
        S5,
        &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
        E::TopicAliasZero,
        TOPIC_ALIAS_INVALID,
    ),
    case(
        "wildcard in a PUBLISH Response Topic",
        "[MQTT-3.3.2-14]",
        S5,
        &[
            0x30, 0x0A, 0x00, 0x01, b'a', 0x06, 0x08, 0x00, 0x03, b'b', b'/', b'+',
        ],
        E::WildcardInTopicName,
        PROTOCOL_ERROR,
    ),
    // --- Topic filters [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1], [MQTT-4.8.2-1],
    // --- [MQTT-4.8.2-2] -----------------------------------------------------------------
    case(
        "filter a/#/b",
        "[MQTT-4.7.1-2]",
        S4,
        &[
            0x82, 0x0A, 0x00, 0x01, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
        ],
        filter("'#' must be the whole last level"),
        MALFORMED,
    ),
    case(
        "filter a+",
        "[MQTT-4.7.1-3]",
        S5,
        &[0x82, 0x08, 0x00, 0x01, 0x00, 0x00, 0x02, b'a', b'+', 0x00],
        filter("'+' must be a whole level"),
        MALFORMED,
    ),
    case(
        "filter #/ in UNSUBSCRIBE",
        "[MQTT-4.7.1-2]",
        S4,
        &[0xA2, 0x06, 0x00, 0x01, 0x00, 0x02, b'#', b'/'],
        filter("'#' must be the whole last level"),
        MALFORMED,
    ),
    case(
        "empty filter",
        "[MQTT-4.7.3-1]",
        S4,
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
        filter("empty topic filter"),
        MALFORMED,
    ),
    case(
        "filter $share/",
        "[MQTT-4.8.2-2]",
        S5,
        &[
            0x82, 0x0D, 0x00, 0x01, 0x00, 0x00, 0x07, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            0x00,
        ],
        filter("shared subscription without a topic filter"),
        MALFORMED,
    ),
    case(
        "filter $share//x",
        "[MQTT-4.8.2-1]",
        S5,
        &[
            0x82, 0x0F, 0x00, 0x01, 0x00, 0x00, 0x09, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            b'/', b'x', 0x00,
        ],
        filter("empty share name"),
        MALFORMED,
    ),
    case(
        "filter $share/g+/x",
        "[MQTT-4.8.2-2]",
        S5,
        &[
            0x82, 0x11, 0x00, 0x01, 0x00, 0x00, 0x0B, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            b'g', b'+', b'/', b'x', 0x00,
        ],
        filter("wildcard in share name"),
        MALFORMED,
    ),
    case(
        "filter $share/g/ in UNSUBSCRIBE",
        "[MQTT-4.8.2-2]",
        S5,
        &[
            0xA2, 0x0E, 0x00, 0x01, 0x00, 0x00, 0x09, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            b'g', b'/',
        ],
        filter("empty topic filter"),
        MALFORMED,
    ),
    case(
        "second CONNECT on a connection",
        "[MQTT-3.1.0-2]",
        S4,
        &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
        ],
        E::SecondConnect,
        PROTOCOL_ERROR,
    ),
    case(
        "PUBLISH from a client with a Subscription Identifier",
        "[MQTT-3.3.4-6]",
        S5,
        &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0B, 0x01],
        E::SubscriptionIdentifierFromClient,
        PROTOCOL_ERROR,
    ),
    // --- Packet identifiers [MQTT-2.2.1-3] (3.1.1 [MQTT-2.3.1-1]) -----------------------
    case(
        "QoS 1 PUBLISH with packet identifier 0",
        "[MQTT-2.2.1-3]",
        S4,
        &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
        E::ZeroPacketIdentifier,
        PROTOCOL_ERROR,
    ),
    case(
        "SUBSCRIBE with packet identifier 0",
        "[MQTT-2.2.1-3]",
        S5,
        &[0x82, 0x07, 0x00, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
        E::ZeroPacketIdentifier,
        PROTOCOL_ERROR,
    ),
    case(
        "UNSUBSCRIBE with packet identifier 0",
        "[MQTT-2.2.1-3]",
        S4,
        &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'],
        E::ZeroPacketIdentifier,
        PROTOCOL_ERROR,
    ),
    case(
        "PUBACK with packet identifier 0",
        "[MQTT-2.2.1-3]",
        S5,
        &[0x40, 0x02, 0x00, 0x00],
        E::ZeroPacketIdentifier,
        PROTOCOL_ERROR,
    ),
    // --- SUBSCRIBE / UNSUBSCRIBE payloads -----------------------------------------------
    case(
        "3.1.1 SUBSCRIBE without topic filters",
        "3.1.1 [MQTT-3.8.3-3]",
        S4,
        &[0x82, 0x02, 0x00, 0x01],
        E::NoTopicFilters,
        PROTOCOL_ERROR,
    ),
    case(
        "5.0 SUBSCRIBE without topic filters",
        "[MQTT-3.8.3-2]",
        S5,
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        E::NoTopicFilters,
        PROTOCOL_ERROR,
    ),
    case(
        "3.1.1 UNSUBSCRIBE without topic filters",
        "[MQTT-3.10.3-2]",
        S4,
        &[0xA2, 0x02, 0x00, 0x01],
        E::NoTopicFilters,
        PROTOCOL_ERROR,
    ),
    case(
        "5.0 UNSUBSCRIBE without topic filters",
        "[MQTT-3.10.3-2]",
        S5,
        &[0xA2, 0x03, 0x00, 0x01, 0x00],
        E::NoTopicFilters,
        PROTOCOL_ERROR,
    ),
    case(
        "3.1.1 subscription options with a reserved bit (No Local position)",
        "3.1.1 [MQTT-3-8.3-4]",
        S4,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
        E::SubscriptionOptionsReserved { options: 0x04 },
        MALFORMED,
    ),
    case(
        "5.0 subscription options with reserved bit 6",
        "[MQTT-3.8.3-5]",
        S5,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40],
        E::SubscriptionOptionsReserved { options: 0x40 },
        MALFORMED,
    ),
    case(
        "Retain Handling 3",
        "3.8.3.1 (\"It is a Protocol Error to send a Retain Handling value of 3\")",
        S5,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
        E::InvalidRetainHandling,
        PROTOCOL_ERROR,
    ),
    case(
        "No Local on a shared subscription",
        "[MQTT-3.8.3-4]",
        S5,
        &[
            0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            b'g', b'/', b'a', 0x04,
        ],
        E::NoLocalOnSharedSubscription,
        PROTOCOL_ERROR,
    ),
    // --- Properties (2.2.2) -------------------------------------------------------------
    case(
        "unknown property identifier 0x04",
        "2.2.2.2",
        S5,
        &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x04, 0x00],
        E::UnknownProperty { id: 0x04 },
        MALFORMED,
    ),
    case(
        "Topic Alias in CONNECT",
        "3.1.2.11 / 2.2.2.2",
        FRESH,
        &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x23,
            0x00, 0x01, 0x00, 0x01, b'c',
        ],
        not_allowed(P::TopicAlias, "CONNECT"),
        PROTOCOL_ERROR,
    ),
    case(
        "Maximum QoS in CONNECT",
        "3.1.2.11 / 2.2.2.2",
        FRESH,
        &[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x02, 0x24,
            0x01, 0x00, 0x01, b'c',
        ],
        not_allowed(P::MaximumQos, "CONNECT"),
        PROTOCOL_ERROR,
    ),
    case(
        "Session Expiry Interval in PUBLISH",
        "3.3.2.3 / 2.2.2.2",
        S5,
        &[
            0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A,
        ],
        not_allowed(P::SessionExpiryInterval, "PUBLISH"),
        PROTOCOL_ERROR,
    ),
    case(
        "Content Type twice",
        "3.3.2.3.9 (\"a Protocol Error to include the Content Type more than once\")",
        S5,
        &[
            0x30, 0x0C, 0x00, 0x01, b'a', 0x08, 0x03, 0x00, 0x01, b'x', 0x03, 0x00, 0x01, b'y',
        ],
        E::DuplicateProperty {
            property: P::ContentType,
        },
        PROTOCOL_ERROR,
    ),
    case(
        "Session Expiry Interval twice in CONNECT",
        "3.1.2.11.2",
        FRESH,
        &[
            0x10, 0x18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x0A, 0x11,
            0x00, 0x00, 0x00, 0x01, 0x11, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, b'c',
        ],
        E::DuplicateProperty {
            property: P::SessionExpiryInterval,
        },
        PROTOCOL_ERROR,
    ),
    case(
        "Receive Maximum 0",
        "3.1.2.11.3",
        FRESH,
        &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x21,
            0x00, 0x00, 0x00, 0x01, b'c',
        ],
        bad_value(P::ReceiveMaximum, 0),
        PROTOCOL_ERROR,
    ),
    case(
        "Maximum Packet Size 0",
        "3.1.2.11.4",
        FRESH,
        &[
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x05, 0x27,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x01, b'c',
        ],
        bad_value(P::MaximumPacketSize, 0),
        PROTOCOL_ERROR,
    ),
    case(
        "Request Problem Information 2",
        "3.1.2.11.7",
        FRESH,
        &[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x02, 0x17,
            0x02, 0x00, 0x01, b'c',
        ],
        bad_value(P::RequestProblemInformation, 2),
        PROTOCOL_ERROR,
    ),
    case(
        "Payload Format Indicator 2",
        "3.3.2.3.2",
        S5,
        &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x01, 0x02],
        bad_value(P::PayloadFormatIndicator, 2),
        PROTOCOL_ERROR,
    ),
    case(
        "Subscription Identifier 0 in SUBSCRIBE",
        "3.8.2.1.2",
        S5,
        &[0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00],
        bad_value(P::SubscriptionIdentifier, 0),
        PROTOCOL_ERROR,
    ),
    case(
        "Maximum QoS 2 in CONNACK",
        "3.2.2.3.4",
        C5,
        &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
        bad_value(P::MaximumQos, 2),
        PROTOCOL_ERROR,
    ),
    case(
        "Authentication Data without Authentication Method in CONNECT",
        "3.1.2.11.10",
        FRESH,
        &[
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x04, 0x16,
            0x00, 0x01, b'x', 0x00, 0x01, b'c',
        ],
        E::AuthDataWithoutMethod,
        PROTOCOL_ERROR,
    ),
    case(
        "Authentication Data without Authentication Method in AUTH",
        "3.15.2.2.3",
        S5,
        &[0xF0, 0x06, 0x18, 0x04, 0x16, 0x00, 0x01, b'x'],
        E::AuthDataWithoutMethod,
        PROTOCOL_ERROR,
    ),
    // --- Reason codes -------------------------------------------------------------------
    case(
        "PUBACK reason code 0x04",
        "3.4.2.1",
        S5,
        &[0x40, 0x03, 0x00, 0x01, 0x04],
        bad_reason(T::PubAck, 0x04),
        MALFORMED,
    ),
    case(
        "PUBREC reason code 0x92",
        "3.5.2.1",
        C5,
        &[0x50, 0x03, 0x00, 0x01, 0x92],
        bad_reason(T::PubRec, 0x92),
        MALFORMED,
    ),
    case(
        "PUBREL reason code 0x10",
        "3.6.2.1",
        S5,
        &[0x62, 0x03, 0x00, 0x01, 0x10],
        bad_reason(T::PubRel, 0x10),
        MALFORMED,
    ),
    case(
        "DISCONNECT reason code 0x03 (undefined)",
        "3.14.2.1",
        S5,
        &[0xE0, 0x01, 0x03],
        bad_reason(T::Disconnect, 0x03),
        MALFORMED,
    ),
    case(
        "DISCONNECT reason code 0x18 (AUTH only)",
        "3.14.2.1",
        C5,
        &[0xE0, 0x01, 0x18],
        bad_reason(T::Disconnect, 0x18),
        MALFORMED,
    ),
    case(
        "AUTH reason code 0x01",
        "3.15.2.1",
        S5,
        &[0xF0, 0x01, 0x01],
        bad_reason(T::Auth, 0x01),
        MALFORMED,
    ),
    case(
        "3.1.1 SUBACK return code 0x03",
        "3.1.1 [MQTT-3.9.3-2]",
        C4,
        &[0x90, 0x03, 0x00, 0x01, 0x03],
        bad_reason(T::SubAck, 0x03),
        MALFORMED,
    ),
    case(
        "5.0 SUBACK reason code 0x04",
        "3.9.3",
        C5,
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x04],
        bad_reason(T::SubAck, 0x04),
        MALFORMED,
    ),
    case(
        "5.0 UNSUBACK reason code 0x02",
        "3.11.3",
        C5,
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x02],
        bad_reason(T::UnsubAck, 0x02),
        MALFORMED,
    ),
    case(
        "3.1.1 CONNACK return code 6",
        "3.1.1 3.2.2.3 (6-255 reserved)",
        C4,
        &[0x20, 0x02, 0x00, 0x06],
        bad_reason(T::ConnAck, 0x06),
        MALFORMED,
    ),
    case(
        "5.0 CONNACK reason code 0x8E (DISCONNECT only)",
        "3.2.2.2",
        C5,
        &[0x20, 0x03, 0x00, 0x8E, 0x00],
        bad_reason(T::ConnAck, 0x8E),
        MALFORMED,
    ),
    // --- CONNACK flags ------------------------------------------------------------------
    case(
        "3.1.1 CONNACK reserved acknowledge flag",
        "[MQTT-3.2.2-1]",
        C4,
        &[0x20, 0x02, 0x02, 0x00],
        E::ConnAckReservedFlags { flags: 0x02 },
        MALFORMED,
    ),
    case(
        "5.0 CONNACK reserved acknowledge flag",
        "[MQTT-3.2.2-1]",
        C5,
        &[0x20, 0x03, 0x80, 0x00, 0x00],
        E::ConnAckReservedFlags { flags: 0x80 },
        MALFORMED,
    ),
];

// ---------------------------------------------------------------------------------------
// Running the cases.
// ---------------------------------------------------------------------------------------

fn role_and_protocol(ctx: Ctx) -> (Role, Option<Protocol>) {
    match ctx {
        Ctx::Fresh => (Role::Server, None),
        Ctx::Server(protocol) => (Role::Server, Some(protocol)),
        Ctx::Client(protocol) => (Role::Client, Some(protocol)),
    }
}

/// The connection's decoder in the state `ctx` describes.
fn decoder(ctx: Ctx, max: u32) -> Decoder {
    match ctx {
        Ctx::Fresh => Decoder::server(max),
        Ctx::Server(protocol) => {
            let mut decoder = Decoder::server(max);
            let mut buf = BytesMut::new();
            Connect::new(protocol, "c", 60).encode(protocol, &mut buf);
            assert!(matches!(
                decoder.decode(&mut buf),
                Ok(Some(Packet::Connect(_)))
            ));
            assert!(buf.is_empty());
            decoder
        }
        Ctx::Client(protocol) => Decoder::client(protocol, max),
    }
}

fn check_whole(case: &Case) -> Result<(), String> {
    if case.error.reason_code() as u8 != case.code {
        return Err(format!(
            "{:?} maps to {}, expected 0x{:02X}",
            case.error,
            case.error.reason_code(),
            case.code
        ));
    }
    // The table's own framing: the remaining length covers exactly the bytes given, so
    // the error comes from the contents, not from a short or long frame. (Oversized
    // packets are refused from the header alone, so those cases are just the header.)
    let header_only = matches!(case.error, E::PacketTooLarge { .. });
    if let (Ok(Some(header)), false) = (parse_fixed_header(case.bytes, u32::MAX), header_only) {
        if header.packet_len() != case.bytes.len() {
            return Err(format!(
                "table bug: header says {} bytes, case has {}",
                header.packet_len(),
                case.bytes.len()
            ));
        }
    }
    let (role, protocol) = role_and_protocol(case.ctx);
    let expected = Err(case.error.clone());
    // Alone, and followed by another (valid) packet: the frame bounds the error.
    for suffix in [&[][..], &[0xC0, 0x00][..]] {
        let mut buf = BytesMut::from(case.bytes);
        buf.extend_from_slice(suffix);
        let result = decode_packet(&mut buf, role, protocol, case.max);
        if result != expected {
            return Err(format!("decode_packet: {result:?}, expected {expected:?}"));
        }
        let mut buf = BytesMut::from(case.bytes);
        buf.extend_from_slice(suffix);
        let result = decoder(case.ctx, case.max).decode(&mut buf);
        if result != expected {
            return Err(format!("Decoder: {result:?}, expected {expected:?}"));
        }
    }
    Ok(())
}

/// Fed one byte at a time, the decoder says "incomplete" without consuming anything until
/// it has seen enough, then returns the case's error: never a packet, never another error.
fn check_byte_by_byte(case: &Case) -> Result<(), String> {
    let mut decoder = decoder(case.ctx, case.max);
    let mut buf = BytesMut::new();
    for (index, &byte) in case.bytes.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        match decoder.decode(&mut buf) {
            Ok(None) if buf.len() == index + 1 => {}
            Ok(None) => return Err(format!("Ok(None) consumed bytes after {}", index + 1)),
            Ok(Some(packet)) => return Err(format!("decoded {packet:?} after {}", index + 1)),
            Err(error) if error == case.error => return Ok(()),
            Err(error) => return Err(format!("{error:?} after {} bytes", index + 1)),
        }
    }
    Err("no error after the last byte".to_string())
}

fn run_all(check: fn(&Case) -> Result<(), String>) {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|case| {
            // A panic is a failure of its own case, not of the whole table.
            match std::panic::catch_unwind(|| check(case)) {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(format!("{} {}: {why}", case.name, case.spec)),
                Err(_) => Some(format!("{} {}: panicked", case.name, case.spec)),
            }
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn every_malformed_case_fails_with_its_error_and_reason_code() {
    assert!(CASES.len() >= 45, "{} cases", CASES.len());
    run_all(check_whole);
}

#[test]
fn every_malformed_case_fed_byte_by_byte_fails_the_same_way() {
    run_all(check_byte_by_byte);
}

#[test]
fn table_names_are_unique_and_cited() {
    let mut names: Vec<&str> = CASES.iter().map(|case| case.name).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "duplicate case name");
    }
    assert!(CASES.iter().all(|case| !case.spec.is_empty()));
}

/// Every reason code class the table claims is covered at least once.
#[test]
fn table_covers_every_reason_code_class() {
    for code in [
        MALFORMED,
        PROTOCOL_ERROR,
        UNSUPPORTED_VERSION,
        TOPIC_ALIAS_INVALID,
        TOO_LARGE,
    ] {
        assert!(
            CASES.iter().any(|case| case.code == code),
            "no case for 0x{code:02X}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Near misses: packets close to a malformed case that the specification allows.
// ---------------------------------------------------------------------------------------

struct Accepted {
    name: &'static str,
    spec: &'static str,
    ctx: Ctx,
    bytes: &'static [u8],
    check: fn(&Packet) -> bool,
}

static ACCEPTED: &[Accepted] = &[
    Accepted {
        name: "password without user name in 5.0",
        spec: "3.1.2.9 (5.0 drops [MQTT-3.1.2-22])",
        ctx: FRESH,
        bytes: &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x3C, 0x00, 0x00,
            0x01, b'c', 0x00, 0x01, b'p',
        ],
        check: |p| {
            matches!(p, Packet::Connect(c)
                if c.username.is_none() && c.password.as_deref() == Some(&b"p"[..]))
        },
    },
    Accepted {
        name: "two User Properties with the same name, order kept",
        spec: "[MQTT-3.3.2-18], 3.3.2.3.7 (may appear more than once)",
        ctx: S5,
        bytes: &[
            0x30, 0x12, 0x00, 0x01, b'a', 0x0E, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'2', 0x26,
            0x00, 0x01, b'k', 0x00, 0x01, b'1',
        ],
        check: |p| {
            matches!(p, Packet::Publish(publish)
                if publish.properties.user_properties
                    == [UserProperty::new("k", "2"), UserProperty::new("k", "1")])
        },
    },
    Accepted {
        name: "two Subscription Identifiers in a PUBLISH to a client",
        spec: "[MQTT-3.3.4-3]",
        ctx: C5,
        bytes: &[0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x0B, 0x01, 0x0B, 0x02],
        check: |p| {
            matches!(p, Packet::Publish(publish)
                if publish.properties.subscription_identifiers == [1, 2])
        },
    },
    Accepted {
        name: "empty topic with a Topic Alias",
        spec: "3.3.2.3.4",
        ctx: S5,
        bytes: &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07],
        check: |p| {
            matches!(p, Packet::Publish(publish)
                if publish.topic.is_empty() && publish.properties.topic_alias == Some(7))
        },
    },
    Accepted {
        name: "5.0 PUBACK of remaining length 2",
        spec: "3.4.2.1",
        ctx: S5,
        bytes: &[0x40, 0x02, 0x00, 0x01],
        check: |p| matches!(p, Packet::PubAck(a) if a.reason_code == ReasonCode::Success),
    },
    Accepted {
        name: "5.0 DISCONNECT of remaining length 0",
        spec: "3.14.2.1",
        ctx: C5,
        bytes: &[0xE0, 0x00],
        check: |p| {
            matches!(p, Packet::Disconnect(d)
                if d.reason_code == ReasonCode::NORMAL_DISCONNECTION)
        },
    },
    Accepted {
        name: "shared subscription without No Local, Retain Handling 2",
        spec: "[MQTT-3.8.3-4], 3.8.3.1",
        ctx: S5,
        bytes: &[
            0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            b'g', b'/', b'a', 0x2A,
        ],
        check: |p| {
            matches!(p, Packet::Subscribe(s)
                if s.filters[0].options.retain_handling == RetainHandling::Never
                    && s.filters[0].options.retain_as_published
                    && s.filters[0].options.qos == QoS::ExactlyOnce
                    && !s.filters[0].options.no_local)
        },
    },
    Accepted {
        name: "BOM U+FEFF in a topic is not stripped",
        spec: "[MQTT-1.5.4-3]",
        ctx: S4,
        bytes: &[0x30, 0x05, 0x00, 0x03, 0xEF, 0xBB, 0xBF],
        check: |p| matches!(p, Packet::Publish(publish) if publish.topic == "\u{FEFF}"),
    },
    Accepted {
        name: "will QoS 2 with retain and will flag",
        spec: "[MQTT-3.1.2-12]",
        ctx: FRESH,
        bytes: &[
            0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x36, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x00,
        ],
        check: |p| {
            matches!(p, Packet::Connect(c)
                if c.will.as_ref().is_some_and(|w| w.qos == QoS::ExactlyOnce && w.retain))
        },
    },
    Accepted {
        name: "3.1.1 SUBACK failure 0x80",
        spec: "[MQTT-3.9.3-2]",
        ctx: C4,
        bytes: &[0x90, 0x03, 0x00, 0x01, 0x80],
        check: |p| matches!(p, Packet::SubAck(s) if s.reason_codes == [ReasonCode::UnspecifiedError]),
    },
    Accepted {
        name: "PUBLISH exactly at the maximum packet size",
        spec: "3.2.2.3.6",
        ctx: S5,
        bytes: &[0x30, 0x04, 0x00, 0x01, b'a', 0x00],
        check: |p| matches!(p, Packet::Publish(_)),
    },
];

#[test]
fn near_misses_decode() {
    let mut failures = Vec::new();
    for accepted in ACCEPTED {
        let (role, protocol) = role_and_protocol(accepted.ctx);
        let mut buf = BytesMut::from(accepted.bytes);
        // Each packet exactly at the maximum packet size: the limit is inclusive.
        let max = accepted.bytes.len() as u32;
        let direct = decode_packet(&mut buf, role, protocol, max);
        let via_decoder = decoder(accepted.ctx, MAX).decode(&mut BytesMut::from(accepted.bytes));
        for (how, result) in [("decode_packet", direct), ("Decoder", via_decoder)] {
            match result {
                Ok(Some(packet)) if (accepted.check)(&packet) => {}
                other => failures.push(format!(
                    "{} {} ({how}): {other:?}",
                    accepted.name, accepted.spec
                )),
            }
        }
        if !buf.is_empty() {
            failures.push(format!("{}: {} bytes left", accepted.name, buf.len()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
