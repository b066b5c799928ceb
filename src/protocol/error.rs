//! Why a packet could not be decoded, and the reason code the server must answer with.
//!
//! MQTT 5.0 section 1.2 separates a *Malformed Packet* ("cannot be parsed according to this
//! specification", 0x81) from a *Protocol Error* ("detected after the packet has been parsed
//! and found to contain data that is not allowed", 0x82). Every variant below names its
//! class through [`DecodeError::reason_code`]; a 3.1.1 server closes the connection for any
//! of them ([MQTT-4.8.0-1]).

use std::fmt;

use super::{PacketType, PropertyId, ReasonCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining length uses more than four bytes [MQTT-1.5.5-1 / 2.2.3].
    RemainingLengthTooLong,
    /// A variable byte integer is not encoded in the fewest bytes [MQTT-1.5.5-1].
    NonMinimalVarInt { field: &'static str },
    /// A variable byte integer inside the packet runs past four bytes.
    VarIntTooLong { field: &'static str },
    /// The whole packet (fixed header included) is larger than the limit we announced.
    PacketTooLarge { size_bytes: usize, max_bytes: u32 },
    /// Packet type 0, or 15 (AUTH) before MQTT 5.0 [MQTT-2.1.2].
    ReservedPacketType { type_bits: u8 },
    /// A packet that only the other side may send (a CONNACK received by a server, ...).
    UnexpectedPacket { packet: PacketType },
    /// A second CONNECT on one connection [MQTT-3.1.0-2].
    SecondConnect,
    /// A PUBLISH from a client carrying a Subscription Identifier [MQTT-3.3.4-6].
    SubscriptionIdentifierFromClient,
    /// The first packet on a connection was not CONNECT [MQTT-3.1.0-1].
    FirstPacketNotConnect { packet: PacketType },
    /// Fixed header flag bits that the specification reserves [MQTT-2.1.3-1].
    InvalidHeaderFlags { packet: PacketType, flags: u8 },
    /// QoS 3 in a PUBLISH [MQTT-3.3.1-4], will [MQTT-3.1.2-12] or 3.1.1 subscription
    /// [MQTT-3.8.3-4].
    InvalidQos { value: u8 },
    /// Maximum QoS 3 in 5.0 subscription options: "It is a Protocol Error if the Maximum
    /// QoS field has the value 3" (3.8.3.1).
    InvalidMaximumQos,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    DupOnQos0,
    /// The packet ends before the field it must contain.
    UnexpectedEnd { field: &'static str },
    /// Bytes left over after the last field of a packet.
    TrailingBytes { packet: PacketType, count: usize },
    /// A UTF-8 string that is not well-formed UTF-8 [MQTT-1.5.4-1].
    InvalidUtf8 { field: &'static str },
    /// A UTF-8 string containing U+0000 [MQTT-1.5.4-2].
    NullCharacter { field: &'static str },
    /// CONNECT protocol name other than "MQTT" (or "MQIsdp" for 3.1) [MQTT-3.1.2-1].
    InvalidProtocolName,
    /// CONNECT protocol level other than 3, 4 or 5 [MQTT-3.1.2-2].
    UnsupportedProtocolLevel { level: u8 },
    /// CONNECT reserved flag bit set [MQTT-3.1.2-3].
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag [MQTT-3.1.2-11], [MQTT-3.1.2-13].
    WillFlagsWithoutWill,
    /// Password flag without user name flag in 3.1/3.1.1 [MQTT-3.1.2-22].
    PasswordWithoutUserName,
    /// CONNACK acknowledge flags bits 7-1 set [MQTT-3.2.2-1].
    ConnAckReservedFlags { flags: u8 },
    /// A property identifier MQTT 5.0 does not define.
    UnknownProperty { id: u8 },
    /// A property that this packet may not carry (section 2.2.2.2 table).
    PropertyNotAllowed {
        property: PropertyId,
        packet: &'static str,
    },
    /// A property given twice where the specification allows it once.
    DuplicateProperty { property: PropertyId },
    /// A property value outside its allowed range (0 Receive Maximum, a boolean of 2, ...).
    InvalidPropertyValue { property: PropertyId, value: u32 },
    /// Authentication Data without Authentication Method [MQTT-3.1.2-?, 3.2.2.3.17].
    AuthDataWithoutMethod,
    /// Topic Alias of 0 [MQTT-3.3.2-8].
    TopicAliasZero,
    /// A PUBLISH topic name containing '+' or '#' [MQTT-3.3.2-2].
    WildcardInTopicName,
    /// An empty PUBLISH topic without a Topic Alias (5.0), or any empty topic in 3.1.1
    /// [MQTT-4.7.3-1].
    EmptyTopicName,
    /// A topic filter that breaks the wildcard rules [MQTT-4.7.1-1..3] or is empty
    /// [MQTT-4.7.3-1], or a malformed shared subscription [MQTT-4.8.2-1..2].
    InvalidTopicFilter { reason: &'static str },
    /// A packet identifier of 0 where one is required [MQTT-2.2.1-3].
    ZeroPacketIdentifier,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-2], [MQTT-3.10.3-2].
    NoTopicFilters,
    /// Subscription options with reserved bits set [MQTT-3.8.3-5].
    SubscriptionOptionsReserved { options: u8 },
    /// Retain Handling of 3 [MQTT-3.8.3-?].
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,
    /// A reason code that this packet type cannot carry.
    InvalidReasonCode { packet: PacketType, code: u8 },
}

impl DecodeError {
    /// The MQTT 5.0 reason code a server uses in its DISCONNECT (or CONNACK, during
    /// CONNECT) for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidProtocolName | UnsupportedProtocolLevel { .. } => {
                ReasonCode::UnsupportedProtocolVersion
            }
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            // Found after parsing: data the protocol does not allow here.
            UnexpectedPacket { .. }
            | FirstPacketNotConnect { .. }
            | SecondConnect
            | SubscriptionIdentifierFromClient
            | PropertyNotAllowed { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | AuthDataWithoutMethod
            | WildcardInTopicName
            | EmptyTopicName
            | ZeroPacketIdentifier
            | NoTopicFilters
            | InvalidRetainHandling
            | InvalidMaximumQos
            | NoLocalOnSharedSubscription => ReasonCode::ProtocolError,
            // Cannot be parsed: framing, reserved bits, encodings, filter syntax (0x8F is
            // reserved for filters that are "correctly formed but not accepted").
            RemainingLengthTooLong
            | NonMinimalVarInt { .. }
            | VarIntTooLong { .. }
            | ReservedPacketType { .. }
            | InvalidHeaderFlags { .. }
            | InvalidQos { .. }
            | DupOnQos0
            | UnexpectedEnd { .. }
            | TrailingBytes { .. }
            | InvalidUtf8 { .. }
            | NullCharacter { .. }
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | PasswordWithoutUserName
            | ConnAckReservedFlags { .. }
            | UnknownProperty { .. }
            | InvalidTopicFilter { .. }
            | SubscriptionOptionsReserved { .. }
            | InvalidReasonCode { .. } => ReasonCode::MalformedPacket,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            RemainingLengthTooLong => write!(f, "remaining length longer than 4 bytes"),
            NonMinimalVarInt { field } => {
                write!(f, "{field}: variable byte integer not in its shortest form")
            }
            VarIntTooLong { field } => write!(f, "{field}: variable byte integer over 4 bytes"),
            PacketTooLarge {
                size_bytes,
                max_bytes,
            } => write!(
                f,
                "packet of {size_bytes} bytes exceeds maximum of {max_bytes}"
            ),
            ReservedPacketType { type_bits } => write!(f, "reserved packet type {type_bits}"),
            UnexpectedPacket { packet } => write!(f, "{packet:?} is not sent in this direction"),
            SecondConnect => write!(f, "second CONNECT on one connection"),
            SubscriptionIdentifierFromClient => {
                write!(f, "subscription identifier in a PUBLISH from a client")
            }
            FirstPacketNotConnect { packet } => {
                write!(f, "first packet must be CONNECT, got {packet:?}")
            }
            InvalidHeaderFlags { packet, flags } => {
                write!(f, "{packet:?} with reserved header flags 0b{flags:04b}")
            }
            InvalidQos { value } => write!(f, "invalid QoS {value}"),
            InvalidMaximumQos => write!(f, "subscription maximum QoS 3"),
            DupOnQos0 => write!(f, "DUP flag set on a QoS 0 PUBLISH"),
            UnexpectedEnd { field } => write!(f, "packet ends inside {field}"),
            TrailingBytes { packet, count } => {
                write!(f, "{count} unexpected bytes at the end of {packet:?}")
            }
            InvalidUtf8 { field } => write!(f, "{field}: not well-formed UTF-8"),
            NullCharacter { field } => write!(f, "{field}: contains U+0000"),
            InvalidProtocolName => write!(f, "unknown protocol name in CONNECT"),
            UnsupportedProtocolLevel { level } => write!(f, "unsupported protocol level {level}"),
            ConnectReservedFlag => write!(f, "CONNECT reserved flag is set"),
            WillFlagsWithoutWill => write!(f, "will QoS or will retain set without will flag"),
            PasswordWithoutUserName => write!(f, "password flag set without user name flag"),
            ConnAckReservedFlags { flags } => write!(f, "CONNACK reserved flags 0x{flags:02X}"),
            UnknownProperty { id } => write!(f, "unknown property identifier 0x{id:02X}"),
            PropertyNotAllowed { property, packet } => {
                write!(f, "property {property:?} is not allowed in {packet}")
            }
            DuplicateProperty { property } => write!(f, "property {property:?} given twice"),
            InvalidPropertyValue { property, value } => {
                write!(f, "property {property:?} has invalid value {value}")
            }
            AuthDataWithoutMethod => {
                write!(f, "authentication data without authentication method")
            }
            TopicAliasZero => write!(f, "topic alias 0"),
            WildcardInTopicName => write!(f, "wildcard in a topic name"),
            EmptyTopicName => write!(f, "empty topic name"),
            InvalidTopicFilter { reason } => write!(f, "invalid topic filter: {reason}"),
            ZeroPacketIdentifier => write!(f, "packet identifier 0"),
            NoTopicFilters => write!(f, "no topic filter in the packet"),
            SubscriptionOptionsReserved { options } => {
                write!(f, "subscription options 0x{options:02X} set reserved bits")
            }
            InvalidRetainHandling => write!(f, "retain handling 3"),
            NoLocalOnSharedSubscription => write!(f, "no local set on a shared subscription"),
            InvalidReasonCode { packet, code } => {
                write!(f, "reason code 0x{code:02X} is not valid in {packet:?}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}
