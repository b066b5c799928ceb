//! SUBSCRIBE (section 3.8): topic filters with their options.

use bytes::{BufMut, BytesMut};

use super::packet::{read_packet_id, Encode};
use super::topic::{is_shared, validate_topic_filter};
use super::wire::{binary_len, put_str, Reader};
use super::{DecodeError, MqttStr, PacketType, Protocol, QoS, SubscribeProperties};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: SubscribeProperties,
    /// At least one [MQTT-3.8.3-2].
    pub filters: Vec<Subscription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: MqttStr,
    pub options: SubscriptionOptions,
}

/// The subscription options byte (3.8.3.1). 3.1.1 only has the QoS; the other options
/// keep their defaults there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// When retained messages are sent for a new subscription (3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    #[default]
    OnSubscribe = 0,
    OnNewSubscribe = 1,
    Never = 2,
}

impl SubscriptionOptions {
    pub fn decode(byte: u8, protocol: Protocol) -> Result<SubscriptionOptions, DecodeError> {
        // 3.1.1 reserves bits 7-2 [MQTT-3.8.3-4]; 5.0 reserves bits 7-6 [MQTT-3.8.3-5].
        let reserved = if protocol.is_v5() { 0xC0 } else { 0xFC };
        if byte & reserved != 0 {
            return Err(DecodeError::SubscriptionOptionsReserved { options: byte });
        }
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            2 => RetainHandling::Never,
            // "It is a Protocol Error to send a Retain Handling value of 3".
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        let qos = match QoS::from_bits(byte & 0b11) {
            Ok(qos) => qos,
            // 5.0: "It is a Protocol Error if the Maximum QoS field has the value 3"
            // (3.8.3.1); 3.1.1 treats it as malformed [MQTT-3.8.3-4].
            Err(_) if protocol.is_v5() => return Err(DecodeError::InvalidMaximumQos),
            Err(error) => return Err(error),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    pub fn encode(&self, protocol: Protocol) -> u8 {
        let mut byte = self.qos as u8;
        if protocol.is_v5() {
            byte |= u8::from(self.no_local) << 2;
            byte |= u8::from(self.retain_as_published) << 3;
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

impl Subscribe {
    pub fn new(packet_id: u16, filters: Vec<Subscription>) -> Subscribe {
        Subscribe {
            packet_id,
            properties: SubscribeProperties::default(),
            filters,
        }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        protocol: Protocol,
    ) -> Result<Subscribe, DecodeError> {
        let packet_id = read_packet_id(reader)?;
        let properties = if protocol.is_v5() {
            SubscribeProperties::decode(reader)?
        } else {
            SubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !reader.is_empty() {
            let filter = reader.string("topic filter")?;
            validate_topic_filter(&filter)?;
            let options =
                SubscriptionOptions::decode(reader.u8("subscription options")?, protocol)?;
            // [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
            if options.no_local && is_shared(&filter) {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            filters.push(Subscription { filter, options });
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }
}

impl Encode for Subscribe {
    const PACKET_TYPE: PacketType = PacketType::Subscribe;

    fn remaining_len(&self, protocol: Protocol) -> usize {
        let mut len = 2;
        if protocol.is_v5() {
            len += self.properties.block_len();
        }
        len + self
            .filters
            .iter()
            .map(|s| binary_len(s.filter.len()) + 1)
            .sum::<usize>()
    }

    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if protocol.is_v5() {
            self.properties.encode(buf);
        }
        for subscription in &self.filters {
            put_str(buf, &subscription.filter);
            buf.put_u8(subscription.options.encode(protocol));
        }
    }
}
