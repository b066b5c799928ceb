//! MQTT 5.0 reason codes (section 2.4) and which packet may carry which.
//!
//! One numeric value can have several names in the specification (0x00 is "Success",
//! "Normal disconnection" and "Granted QoS 0"); the enum has one variant per value and
//! associated constants for the other names.

use super::PacketType;

/// A reason code byte defined by MQTT 5.0. 3.1.1 return codes are mapped onto these by
/// the CONNACK and SUBACK codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    Success = 0x00,
    GrantedQos1 = 0x01,
    GrantedQos2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QosNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

use ReasonCode::*;

/// Every reason code, in numeric order (for tests and tables).
pub const ALL_REASON_CODES: [ReasonCode; 43] = [
    Success,
    GrantedQos1,
    GrantedQos2,
    DisconnectWithWillMessage,
    NoMatchingSubscribers,
    NoSubscriptionExisted,
    ContinueAuthentication,
    ReAuthenticate,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    BadUserNameOrPassword,
    NotAuthorized,
    ServerUnavailable,
    ServerBusy,
    Banned,
    ServerShuttingDown,
    BadAuthenticationMethod,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    PacketIdentifierInUse,
    PacketIdentifierNotFound,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    PacketTooLarge,
    MessageRateTooHigh,
    QuotaExceeded,
    AdministrativeAction,
    PayloadFormatInvalid,
    RetainNotSupported,
    QosNotSupported,
    UseAnotherServer,
    ServerMoved,
    SharedSubscriptionsNotSupported,
    ConnectionRateExceeded,
    MaximumConnectTime,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];

impl ReasonCode {
    pub const NORMAL_DISCONNECTION: ReasonCode = Success;
    pub const GRANTED_QOS_0: ReasonCode = Success;

    /// The code for a known value, `None` for a value MQTT 5.0 does not define.
    pub fn from_u8(value: u8) -> Option<ReasonCode> {
        ALL_REASON_CODES
            .binary_search_by_key(&value, |code| *code as u8)
            .ok()
            .map(|index| ALL_REASON_CODES[index])
    }

    /// Codes of 0x80 and above report a failure (section 2.4).
    pub fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// Whether MQTT 5.0 lists this code for the packet type (tables in sections 3.2.2.2,
    /// 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1 and 3.15.2.1).
    pub fn is_valid_for(self, packet: PacketType) -> bool {
        let allowed: &[ReasonCode] = match packet {
            PacketType::ConnAck => &[
                Success,
                UnspecifiedError,
                MalformedPacket,
                ProtocolError,
                ImplementationSpecificError,
                UnsupportedProtocolVersion,
                ClientIdentifierNotValid,
                BadUserNameOrPassword,
                NotAuthorized,
                ServerUnavailable,
                ServerBusy,
                Banned,
                BadAuthenticationMethod,
                TopicNameInvalid,
                PacketTooLarge,
                QuotaExceeded,
                PayloadFormatInvalid,
                RetainNotSupported,
                QosNotSupported,
                UseAnotherServer,
                ServerMoved,
                ConnectionRateExceeded,
            ],
            PacketType::PubAck | PacketType::PubRec => &[
                Success,
                NoMatchingSubscribers,
                UnspecifiedError,
                ImplementationSpecificError,
                NotAuthorized,
                TopicNameInvalid,
                PacketIdentifierInUse,
                QuotaExceeded,
                PayloadFormatInvalid,
            ],
            PacketType::PubRel | PacketType::PubComp => &[Success, PacketIdentifierNotFound],
            PacketType::SubAck => &[
                Success,
                GrantedQos1,
                GrantedQos2,
                UnspecifiedError,
                ImplementationSpecificError,
                NotAuthorized,
                TopicFilterInvalid,
                PacketIdentifierInUse,
                QuotaExceeded,
                SharedSubscriptionsNotSupported,
                SubscriptionIdentifiersNotSupported,
                WildcardSubscriptionsNotSupported,
            ],
            PacketType::UnsubAck => &[
                Success,
                NoSubscriptionExisted,
                UnspecifiedError,
                ImplementationSpecificError,
                NotAuthorized,
                TopicFilterInvalid,
                PacketIdentifierInUse,
            ],
            PacketType::Disconnect => &[
                Success,
                DisconnectWithWillMessage,
                UnspecifiedError,
                MalformedPacket,
                ProtocolError,
                ImplementationSpecificError,
                NotAuthorized,
                ServerBusy,
                ServerShuttingDown,
                KeepAliveTimeout,
                SessionTakenOver,
                TopicFilterInvalid,
                TopicNameInvalid,
                ReceiveMaximumExceeded,
                TopicAliasInvalid,
                PacketTooLarge,
                MessageRateTooHigh,
                QuotaExceeded,
                AdministrativeAction,
                PayloadFormatInvalid,
                RetainNotSupported,
                QosNotSupported,
                UseAnotherServer,
                ServerMoved,
                SharedSubscriptionsNotSupported,
                ConnectionRateExceeded,
                MaximumConnectTime,
                SubscriptionIdentifiersNotSupported,
                WildcardSubscriptionsNotSupported,
            ],
            PacketType::Auth => &[Success, ContinueAuthentication, ReAuthenticate],
            _ => &[],
        };
        allowed.contains(&self)
    }

    /// The MQTT 3.1.1 CONNACK return code (section 3.2.2.3) closest to this reason code.
    pub fn to_v3_connect_return_code(self) -> u8 {
        match self {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            BadUserNameOrPassword | BadAuthenticationMethod => 4,
            NotAuthorized | Banned => 5,
            // Everything else means "try later": 3.1.1 has no closer code.
            _ => 3,
        }
    }

    /// The reason code for an MQTT 3.1.1 CONNACK return code; `None` for 6..=255, which
    /// 3.1.1 reserves.
    pub fn from_v3_connect_return_code(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => Success,
            1 => UnsupportedProtocolVersion,
            2 => ClientIdentifierNotValid,
            3 => ServerUnavailable,
            4 => BadUserNameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 3.1.1 SUBACK return code: the granted QoS, or 0x80 for any failure.
    pub fn to_v3_suback_return_code(self) -> u8 {
        match self {
            Success | GrantedQos1 | GrantedQos2 => self as u8,
            _ => 0x80,
        }
    }

    /// The reason code for a 3.1.1 SUBACK return code (0, 1, 2 or 0x80 [MQTT-3.9.3-2]).
    pub fn from_v3_suback_return_code(code: u8) -> Option<ReasonCode> {
        match code {
            0 => Some(Success),
            1 => Some(GrantedQos1),
            2 => Some(GrantedQos2),
            0x80 => Some(UnspecifiedError),
            _ => None,
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:02X} {:?}", *self as u8, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_round_trips() {
        for code in ALL_REASON_CODES {
            assert_eq!(ReasonCode::from_u8(code as u8), Some(code));
        }
        assert_eq!(ReasonCode::from_u8(0x03), None);
        assert_eq!(ReasonCode::from_u8(0xA3), None);
    }
}
