//! PUBLISH (section 3.3): an application message, in either direction.
//!
//! The hot path of the broker: the topic and the payload stay slices of the read buffer.

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::{read_packet_id, Encode};
use super::topic::validate_topic_name;
use super::wire::{binary_len, put_str, Reader};
use super::{DecodeError, MqttStr, PacketType, Protocol, PublishProperties, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in 5.0 when `properties.topic_alias` names a known alias.
    pub topic: MqttStr,
    /// 0 for QoS 0 (no identifier on the wire), non-zero otherwise.
    pub packet_id: u16,
    pub properties: PublishProperties,
    pub payload: Bytes,
}

impl Publish {
    pub fn new(topic: impl Into<MqttStr>, qos: QoS, payload: impl Into<Bytes>) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: 0,
            properties: PublishProperties::default(),
            payload: payload.into(),
        }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        flags: u8,
        protocol: Protocol,
    ) -> Result<Publish, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let qos = QoS::from_bits((flags >> 1) & 0b11)?;
        let retain = flags & 1 != 0;
        // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQos0);
        }
        let topic = reader.string("topic name")?;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            read_packet_id(reader)?
        };
        let properties = if protocol.is_v5() {
            PublishProperties::decode(reader)?
        } else {
            PublishProperties::default()
        };
        // A 5.0 sender may leave the topic empty and name it by alias (3.3.2.3.4);
        // otherwise the topic must be a valid, non-empty name.
        if !(topic.is_empty() && properties.topic_alias.is_some()) {
            validate_topic_name(&topic)?;
        }
        // The Response Topic is a topic name: "MUST NOT contain wildcard characters"
        // [MQTT-3.3.2-14] and not empty [MQTT-4.7.3-1].
        if let Some(response_topic) = &properties.response_topic {
            validate_topic_name(response_topic)?;
        }
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: reader.rest(),
        })
    }
}

impl Encode for Publish {
    const PACKET_TYPE: PacketType = PacketType::Publish;

    fn header_flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    fn remaining_len(&self, protocol: Protocol) -> usize {
        let mut len = binary_len(self.topic.len()) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if protocol.is_v5() {
            len += self.properties.block_len();
        }
        len
    }

    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        put_str(buf, &self.topic);
        if self.qos != QoS::AtMostOnce {
            debug_assert_ne!(self.packet_id, 0, "QoS > 0 PUBLISH needs a packet id");
            buf.put_u16(self.packet_id);
        }
        if protocol.is_v5() {
            self.properties.encode(buf);
        }
        buf.put_slice(&self.payload);
    }
}
