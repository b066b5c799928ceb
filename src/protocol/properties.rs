//! MQTT 5.0 properties (section 2.2.2).
//!
//! Each packet has its own property struct, declared with `property_set!`: a struct field
//! per property the packet may carry. Decoding rejects a property the struct has no field
//! for, a second copy of a single-valued one, and values out of range; encoding writes the
//! fields that are set. MQTT 3.1 and 3.1.1 have no properties: their packets decode to the
//! empty set and encoders skip it.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{binary_len, put_binary, put_str, put_var_int, var_int_len, Reader, VAR_INT_MAX};
use super::{DecodeError, MqttStr};

/// Property identifiers (section 2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQos = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    pub fn from_u8(id: u8) -> Option<PropertyId> {
        use PropertyId::*;
        Some(match id {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQos,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// The property's name in the specification, for error messages.
    pub fn name(self) -> &'static str {
        use PropertyId::*;
        match self {
            PayloadFormatIndicator => "payload format indicator",
            MessageExpiryInterval => "message expiry interval",
            ContentType => "content type",
            ResponseTopic => "response topic",
            CorrelationData => "correlation data",
            SubscriptionIdentifier => "subscription identifier",
            SessionExpiryInterval => "session expiry interval",
            AssignedClientIdentifier => "assigned client identifier",
            ServerKeepAlive => "server keep alive",
            AuthenticationMethod => "authentication method",
            AuthenticationData => "authentication data",
            RequestProblemInformation => "request problem information",
            WillDelayInterval => "will delay interval",
            RequestResponseInformation => "request response information",
            ResponseInformation => "response information",
            ServerReference => "server reference",
            ReasonString => "reason string",
            ReceiveMaximum => "receive maximum",
            TopicAliasMaximum => "topic alias maximum",
            TopicAlias => "topic alias",
            MaximumQos => "maximum QoS",
            RetainAvailable => "retain available",
            UserProperty => "user property",
            MaximumPacketSize => "maximum packet size",
            WildcardSubscriptionAvailable => "wildcard subscription available",
            SubscriptionIdentifierAvailable => "subscription identifier available",
            SharedSubscriptionAvailable => "shared subscription available",
        }
    }

    /// Range checks that the specification makes a Protocol Error.
    fn check_value(self, value: u32) -> Result<(), DecodeError> {
        use PropertyId::*;
        let valid = match self {
            // Single-byte booleans: "It is a Protocol Error to include a value other than
            // 0 or 1" (3.1.2.11.6, 3.1.2.11.7, 3.2.2.3.4, ...).
            PayloadFormatIndicator
            | RequestProblemInformation
            | RequestResponseInformation
            | MaximumQos
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => value <= 1,
            // "It is a Protocol Error to include the Receive Maximum value of 0" and the same
            // for Maximum Packet Size (3.1.2.11.3, 3.1.2.11.4) and Subscription Identifier
            // (3.8.2.1.2).
            ReceiveMaximum | MaximumPacketSize | SubscriptionIdentifier => value != 0,
            _ => true,
        };
        if valid {
            Ok(())
        } else {
            Err(DecodeError::InvalidPropertyValue {
                property: self,
                value,
            })
        }
    }
}

/// A name/value pair (property 0x26), which may appear any number of times and whose order
/// must be kept [MQTT-3.3.2-18].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserProperty {
    pub name: MqttStr,
    pub value: MqttStr,
}

impl UserProperty {
    pub fn new(name: impl Into<MqttStr>, value: impl Into<MqttStr>) -> UserProperty {
        UserProperty {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// How one property field is read, sized and written. The wire type follows from the
/// Rust type, except that `Option<u32>` serves both four-byte integers and variable byte
/// integers, told apart by the identifier.
pub(crate) trait PropertyField {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError>;
    fn encoded_len(&self, id: PropertyId) -> usize;
    fn write(&self, id: PropertyId, buf: &mut BytesMut);
}

fn set_once<T>(slot: &mut Option<T>, id: PropertyId, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { property: id });
    }
    *slot = Some(value);
    Ok(())
}

impl PropertyField for Option<u8> {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError> {
        let value = reader.u8(id.name())?;
        id.check_value(value.into())?;
        set_once(self, id, value)
    }
    fn encoded_len(&self, _: PropertyId) -> usize {
        self.map_or(0, |_| 2)
    }
    fn write(&self, id: PropertyId, buf: &mut BytesMut) {
        if let Some(value) = self {
            buf.put_u8(id as u8);
            buf.put_u8(*value);
        }
    }
}

impl PropertyField for Option<u16> {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError> {
        let value = reader.u16(id.name())?;
        if id == PropertyId::TopicAlias && value == 0 {
            return Err(DecodeError::TopicAliasZero);
        }
        id.check_value(value.into())?;
        set_once(self, id, value)
    }
    fn encoded_len(&self, _: PropertyId) -> usize {
        self.map_or(0, |_| 3)
    }
    fn write(&self, id: PropertyId, buf: &mut BytesMut) {
        if let Some(value) = self {
            buf.put_u8(id as u8);
            buf.put_u16(*value);
        }
    }
}

fn is_var_int(id: PropertyId) -> bool {
    id == PropertyId::SubscriptionIdentifier
}

impl PropertyField for Option<u32> {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError> {
        let value = if is_var_int(id) {
            reader.var_int(id.name())?
        } else {
            reader.u32(id.name())?
        };
        id.check_value(value)?;
        set_once(self, id, value)
    }
    fn encoded_len(&self, id: PropertyId) -> usize {
        match self {
            None => 0,
            Some(value) if is_var_int(id) => 1 + var_int_len(*value),
            Some(_) => 5,
        }
    }
    fn write(&self, id: PropertyId, buf: &mut BytesMut) {
        if let Some(value) = self {
            buf.put_u8(id as u8);
            if is_var_int(id) {
                put_var_int(buf, *value);
            } else {
                buf.put_u32(*value);
            }
        }
    }
}

impl PropertyField for Option<MqttStr> {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError> {
        let value = reader.string(id.name())?;
        set_once(self, id, value)
    }
    fn encoded_len(&self, _: PropertyId) -> usize {
        self.as_ref().map_or(0, |s| 1 + binary_len(s.len()))
    }
    fn write(&self, id: PropertyId, buf: &mut BytesMut) {
        if let Some(value) = self {
            buf.put_u8(id as u8);
            put_str(buf, value);
        }
    }
}

impl PropertyField for Option<Bytes> {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError> {
        let value = reader.binary(id.name())?;
        set_once(self, id, value)
    }
    fn encoded_len(&self, _: PropertyId) -> usize {
        self.as_ref().map_or(0, |b| 1 + binary_len(b.len()))
    }
    fn write(&self, id: PropertyId, buf: &mut BytesMut) {
        if let Some(value) = self {
            buf.put_u8(id as u8);
            put_binary(buf, value);
        }
    }
}

impl PropertyField for Vec<UserProperty> {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError> {
        let name = reader.string("user property name")?;
        let value = reader.string("user property value")?;
        debug_assert_eq!(id, PropertyId::UserProperty);
        self.push(UserProperty { name, value });
        Ok(())
    }
    fn encoded_len(&self, _: PropertyId) -> usize {
        self.iter()
            .map(|p| 1 + binary_len(p.name.len()) + binary_len(p.value.len()))
            .sum()
    }
    fn write(&self, id: PropertyId, buf: &mut BytesMut) {
        for property in self {
            buf.put_u8(id as u8);
            put_str(buf, &property.name);
            put_str(buf, &property.value);
        }
    }
}

/// Subscription Identifiers of a PUBLISH sent to a subscriber: one per matching
/// subscription that had one [MQTT-3.3.4-3], so the property repeats.
impl PropertyField for Vec<u32> {
    fn read(&mut self, id: PropertyId, reader: &mut Reader) -> Result<(), DecodeError> {
        let value = reader.var_int(id.name())?;
        id.check_value(value)?;
        self.push(value);
        Ok(())
    }
    fn encoded_len(&self, _: PropertyId) -> usize {
        self.iter().map(|v| 1 + var_int_len(*v)).sum()
    }
    fn write(&self, id: PropertyId, buf: &mut BytesMut) {
        for value in self {
            buf.put_u8(id as u8);
            put_var_int(buf, *value);
        }
    }
}

/// Declares the property struct of one packet. For each field, the property identifier it
/// holds; decode, size and encode follow from the list.
macro_rules! property_set {
    ($(#[$meta:meta])* $name:ident for $packet:literal {
        $( $(#[$field_meta:meta])* $field:ident : $ty:ty = $id:ident, )*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $name {
            /// Reads a property block: the property length, then the properties.
            pub(crate) fn decode(reader: &mut Reader) -> Result<$name, DecodeError> {
                let len = reader.var_int("property length")? as usize;
                let mut block = reader.sub_reader(len, "properties")?;
                let mut properties = $name::default();
                while !block.is_empty() {
                    // Identifiers are variable byte integers, all of them one byte long in
                    // 5.0 (2.2.2.2); a multi-byte one is therefore unknown.
                    let raw = block.var_int("property identifier")?;
                    let id = u8::try_from(raw)
                        .ok()
                        .and_then(PropertyId::from_u8)
                        .ok_or(DecodeError::UnknownProperty { id: raw as u8 })?;
                    match id {
                        $( PropertyId::$id => properties.$field.read(id, &mut block)?, )*
                        #[allow(unreachable_patterns)]
                        _ => return Err(DecodeError::PropertyNotAllowed {
                            property: id,
                            packet: $packet,
                        }),
                    }
                }
                Ok(properties)
            }

            /// Size of the properties without the property length prefix.
            pub fn encoded_len(&self) -> usize {
                0 $( + self.$field.encoded_len(PropertyId::$id) )*
            }

            /// Size of the block as written: property length prefix plus properties.
            pub fn block_len(&self) -> usize {
                let len = self.encoded_len();
                var_int_len(len as u32) + len
            }

            pub fn is_empty(&self) -> bool {
                self.encoded_len() == 0
            }

            pub(crate) fn encode(&self, buf: &mut BytesMut) {
                let len = self.encoded_len();
                debug_assert!(len <= VAR_INT_MAX as usize);
                put_var_int(buf, len as u32);
                $( self.$field.write(PropertyId::$id, buf); )*
            }
        }
    };
}

property_set! {
    /// CONNECT properties (3.1.2.11).
    ConnectProperties for "CONNECT" {
        session_expiry_interval_secs: Option<u32> = SessionExpiryInterval,
        receive_maximum: Option<u16> = ReceiveMaximum,
        maximum_packet_size_bytes: Option<u32> = MaximumPacketSize,
        topic_alias_maximum: Option<u16> = TopicAliasMaximum,
        request_response_information: Option<u8> = RequestResponseInformation,
        request_problem_information: Option<u8> = RequestProblemInformation,
        user_properties: Vec<UserProperty> = UserProperty,
        authentication_method: Option<MqttStr> = AuthenticationMethod,
        authentication_data: Option<Bytes> = AuthenticationData,
    }
}

property_set! {
    /// Will properties in the CONNECT payload (3.1.3.2).
    WillProperties for "will properties" {
        will_delay_interval_secs: Option<u32> = WillDelayInterval,
        payload_format_indicator: Option<u8> = PayloadFormatIndicator,
        message_expiry_interval_secs: Option<u32> = MessageExpiryInterval,
        content_type: Option<MqttStr> = ContentType,
        response_topic: Option<MqttStr> = ResponseTopic,
        correlation_data: Option<Bytes> = CorrelationData,
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// CONNACK properties (3.2.2.3).
    ConnAckProperties for "CONNACK" {
        session_expiry_interval_secs: Option<u32> = SessionExpiryInterval,
        receive_maximum: Option<u16> = ReceiveMaximum,
        maximum_qos: Option<u8> = MaximumQos,
        retain_available: Option<u8> = RetainAvailable,
        maximum_packet_size_bytes: Option<u32> = MaximumPacketSize,
        assigned_client_identifier: Option<MqttStr> = AssignedClientIdentifier,
        topic_alias_maximum: Option<u16> = TopicAliasMaximum,
        reason_string: Option<MqttStr> = ReasonString,
        user_properties: Vec<UserProperty> = UserProperty,
        wildcard_subscription_available: Option<u8> = WildcardSubscriptionAvailable,
        subscription_identifiers_available: Option<u8> = SubscriptionIdentifierAvailable,
        shared_subscription_available: Option<u8> = SharedSubscriptionAvailable,
        server_keep_alive_secs: Option<u16> = ServerKeepAlive,
        response_information: Option<MqttStr> = ResponseInformation,
        server_reference: Option<MqttStr> = ServerReference,
        authentication_method: Option<MqttStr> = AuthenticationMethod,
        authentication_data: Option<Bytes> = AuthenticationData,
    }
}

property_set! {
    /// PUBLISH properties (3.3.2.3).
    PublishProperties for "PUBLISH" {
        payload_format_indicator: Option<u8> = PayloadFormatIndicator,
        message_expiry_interval_secs: Option<u32> = MessageExpiryInterval,
        topic_alias: Option<u16> = TopicAlias,
        response_topic: Option<MqttStr> = ResponseTopic,
        correlation_data: Option<Bytes> = CorrelationData,
        user_properties: Vec<UserProperty> = UserProperty,
        subscription_identifiers: Vec<u32> = SubscriptionIdentifier,
        content_type: Option<MqttStr> = ContentType,
    }
}

property_set! {
    /// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK (3.4.2.2,
    /// 3.5.2.2, 3.6.2.2, 3.7.2.2, 3.9.2.1, 3.11.2.1): a reason string and user properties.
    AckProperties for "acknowledgement" {
        reason_string: Option<MqttStr> = ReasonString,
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// SUBSCRIBE properties (3.8.2.1).
    SubscribeProperties for "SUBSCRIBE" {
        subscription_identifier: Option<u32> = SubscriptionIdentifier,
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// UNSUBSCRIBE properties (3.10.2.1).
    UnsubscribeProperties for "UNSUBSCRIBE" {
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// DISCONNECT properties (3.14.2.2).
    DisconnectProperties for "DISCONNECT" {
        session_expiry_interval_secs: Option<u32> = SessionExpiryInterval,
        reason_string: Option<MqttStr> = ReasonString,
        user_properties: Vec<UserProperty> = UserProperty,
        server_reference: Option<MqttStr> = ServerReference,
    }
}

property_set! {
    /// AUTH properties (3.15.2.2).
    AuthProperties for "AUTH" {
        authentication_method: Option<MqttStr> = AuthenticationMethod,
        authentication_data: Option<Bytes> = AuthenticationData,
        reason_string: Option<MqttStr> = ReasonString,
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

/// "It is a Protocol Error to include Authentication Data if there is no Authentication
/// Method" (3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3).
pub(crate) fn check_auth_pair(
    method: &Option<MqttStr>,
    data: &Option<Bytes>,
) -> Result<(), DecodeError> {
    if data.is_some() && method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(())
}
