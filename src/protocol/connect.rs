//! CONNECT (section 3.1): the first packet a client sends.

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::Encode;
use super::properties::check_auth_pair;
use super::topic::validate_topic_name;
use super::wire::{binary_len, put_binary, put_str, Reader};
use super::{ConnectProperties, DecodeError, MqttStr, PacketType, Protocol, QoS, WillProperties};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean Session in 3.1.1, Clean Start in 5.0.
    pub clean_start: bool,
    pub keep_alive_secs: u16,
    pub properties: ConnectProperties,
    /// May be empty: the server assigns one (5.0) or accepts it with a clean session.
    pub client_id: MqttStr,
    pub will: Option<Will>,
    pub username: Option<MqttStr>,
    pub password: Option<Bytes>,
}

/// The will message of a CONNECT (3.1.2.5 - 3.1.2.7, 3.1.3.2 - 3.1.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
    pub topic: MqttStr,
    pub payload: Bytes,
}

mod flags {
    pub const USERNAME: u8 = 0x80;
    pub const PASSWORD: u8 = 0x40;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_QOS_MASK: u8 = 0x18;
    pub const WILL: u8 = 0x04;
    pub const CLEAN_START: u8 = 0x02;
    pub const RESERVED: u8 = 0x01;
}

impl Connect {
    /// A clean-start CONNECT with no will, credentials or properties.
    pub fn new(protocol: Protocol, client_id: impl Into<MqttStr>, keep_alive_secs: u16) -> Self {
        Connect {
            protocol,
            clean_start: true,
            keep_alive_secs,
            properties: ConnectProperties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub(crate) fn decode(reader: &mut Reader) -> Result<Connect, DecodeError> {
        let protocol = decode_protocol(reader)?;
        let connect_flags = reader.u8("connect flags")?;
        // [MQTT-3.1.2-3]: the reserved flag must be zero, else the packet is malformed.
        if connect_flags & flags::RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let has_will = connect_flags & flags::WILL != 0;
        let will_qos =
            QoS::from_bits((connect_flags & flags::WILL_QOS_MASK) >> flags::WILL_QOS_SHIFT)?;
        let will_retain = connect_flags & flags::WILL_RETAIN != 0;
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13]: no will QoS or retain without a will.
        if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let has_username = connect_flags & flags::USERNAME != 0;
        let has_password = connect_flags & flags::PASSWORD != 0;
        // [MQTT-3.1.2-22]: 3.1.1 forbids a password without a user name; 5.0 allows it.
        if !protocol.is_v5() && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUserName);
        }
        let keep_alive_secs = reader.u16("keep alive")?;
        let properties = if protocol.is_v5() {
            let properties = ConnectProperties::decode(reader)?;
            check_auth_pair(
                &properties.authentication_method,
                &properties.authentication_data,
            )?;
            properties
        } else {
            ConnectProperties::default()
        };
        let client_id = reader.string("client identifier")?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                WillProperties::decode(reader)?
            } else {
                WillProperties::default()
            };
            // The will's Response Topic goes out unaltered in its PUBLISH [MQTT-3.3.2-15],
            // so it must be a valid topic name there [MQTT-3.3.2-14].
            if let Some(response_topic) = &properties.response_topic {
                validate_topic_name(response_topic)?;
            }
            let topic = reader.string("will topic")?;
            validate_topic_name(&topic)?;
            let payload = reader.binary("will payload")?;
            Some(Will {
                qos: will_qos,
                retain: will_retain,
                properties,
                topic,
                payload,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(reader.string("user name")?)
        } else {
            None
        };
        let password = if has_password {
            Some(reader.binary("password")?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            clean_start: connect_flags & flags::CLEAN_START != 0,
            keep_alive_secs,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn connect_flags(&self) -> u8 {
        let mut bits = 0;
        if self.username.is_some() {
            bits |= flags::USERNAME;
        }
        if self.password.is_some() {
            bits |= flags::PASSWORD;
        }
        if let Some(will) = &self.will {
            bits |= flags::WILL | ((will.qos as u8) << flags::WILL_QOS_SHIFT);
            if will.retain {
                bits |= flags::WILL_RETAIN;
            }
        }
        if self.clean_start {
            bits |= flags::CLEAN_START;
        }
        bits
    }
}

/// Protocol name and level (3.1.2.1, 3.1.2.2). An unknown name or level is answered with
/// CONNACK 0x01 (3.1.1) or 0x84 (5.0) [MQTT-3.1.2-2].
fn decode_protocol(reader: &mut Reader) -> Result<Protocol, DecodeError> {
    let name = reader.binary("protocol name")?;
    let level = reader.u8("protocol level")?;
    match (name.as_ref(), level) {
        (b"MQTT", 4) => Ok(Protocol::V3_1_1),
        (b"MQTT", 5) => Ok(Protocol::V5),
        (b"MQIsdp", 3) => Ok(Protocol::V3_1),
        (b"MQTT" | b"MQIsdp", level) => Err(DecodeError::UnsupportedProtocolLevel { level }),
        _ => Err(DecodeError::InvalidProtocolName),
    }
}

impl Encode for Connect {
    const PACKET_TYPE: PacketType = PacketType::Connect;

    /// The protocol is the CONNECT's own: `_protocol` is ignored.
    fn remaining_len(&self, _protocol: Protocol) -> usize {
        let v5 = self.protocol.is_v5();
        let mut len = binary_len(self.protocol.name().len()) + 1 + 1 + 2;
        if v5 {
            len += self.properties.block_len();
        }
        len += binary_len(self.client_id.len());
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.block_len();
            }
            len += binary_len(will.topic.len()) + binary_len(will.payload.len());
        }
        len += self.username.as_ref().map_or(0, |u| binary_len(u.len()));
        len += self.password.as_ref().map_or(0, |p| binary_len(p.len()));
        len
    }

    fn encode_body(&self, _protocol: Protocol, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_binary(buf, self.protocol.name().as_bytes());
        buf.put_u8(self.protocol.level());
        buf.put_u8(self.connect_flags());
        buf.put_u16(self.keep_alive_secs);
        if v5 {
            self.properties.encode(buf);
        }
        put_str(buf, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(buf);
            }
            put_str(buf, &will.topic);
            put_binary(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_str(buf, username);
        }
        if let Some(password) = &self.password {
            put_binary(buf, password);
        }
    }
}
