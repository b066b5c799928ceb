//! UNSUBSCRIBE (section 3.10): topic filters to remove.

use bytes::{BufMut, BytesMut};

use super::packet::{read_packet_id, Encode};
use super::topic::validate_topic_filter;
use super::wire::{binary_len, put_str, Reader};
use super::{DecodeError, MqttStr, PacketType, Protocol, UnsubscribeProperties};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: UnsubscribeProperties,
    /// At least one [MQTT-3.10.3-2].
    pub filters: Vec<MqttStr>,
}

impl Unsubscribe {
    pub fn new(packet_id: u16, filters: Vec<MqttStr>) -> Unsubscribe {
        Unsubscribe {
            packet_id,
            properties: UnsubscribeProperties::default(),
            filters,
        }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        protocol: Protocol,
    ) -> Result<Unsubscribe, DecodeError> {
        let packet_id = read_packet_id(reader)?;
        let properties = if protocol.is_v5() {
            UnsubscribeProperties::decode(reader)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !reader.is_empty() {
            let filter = reader.string("topic filter")?;
            validate_topic_filter(&filter)?;
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }
}

impl Encode for Unsubscribe {
    const PACKET_TYPE: PacketType = PacketType::Unsubscribe;

    fn remaining_len(&self, protocol: Protocol) -> usize {
        let properties = if protocol.is_v5() {
            self.properties.block_len()
        } else {
            0
        };
        2 + properties
            + self
                .filters
                .iter()
                .map(|f| binary_len(f.len()))
                .sum::<usize>()
    }

    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if protocol.is_v5() {
            self.properties.encode(buf);
        }
        for filter in &self.filters {
            put_str(buf, filter);
        }
    }
}
