//! UNSUBACK (section 3.11). 3.1.1 carries only the packet identifier; 5.0 adds properties
//! and one reason code per topic filter.

use bytes::{BufMut, BytesMut};

use super::packet::{read_packet_id, Encode};
use super::wire::Reader;
use super::{AckProperties, DecodeError, PacketType, Protocol, ReasonCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: AckProperties,
    /// Empty in 3.1/3.1.1; one per filter of the UNSUBSCRIBE in 5.0 [MQTT-3.11.3-1].
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub fn new(packet_id: u16, reason_codes: Vec<ReasonCode>) -> UnsubAck {
        UnsubAck {
            packet_id,
            properties: AckProperties::default(),
            reason_codes,
        }
    }

    pub(crate) fn decode(reader: &mut Reader, protocol: Protocol) -> Result<UnsubAck, DecodeError> {
        let packet_id = read_packet_id(reader)?;
        if !protocol.is_v5() {
            return Ok(UnsubAck::new(packet_id, Vec::new()));
        }
        let properties = AckProperties::decode(reader)?;
        let mut reason_codes = Vec::with_capacity(reader.remaining());
        while !reader.is_empty() {
            let code = reader.u8("reason code")?;
            let reason = ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(PacketType::UnsubAck))
                .ok_or(DecodeError::InvalidReasonCode {
                    packet: PacketType::UnsubAck,
                    code,
                })?;
            reason_codes.push(reason);
        }
        if reason_codes.is_empty() {
            return Err(DecodeError::UnexpectedEnd {
                field: "UNSUBACK reason codes",
            });
        }
        Ok(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }
}

impl Encode for UnsubAck {
    const PACKET_TYPE: PacketType = PacketType::UnsubAck;

    fn remaining_len(&self, protocol: Protocol) -> usize {
        if protocol.is_v5() {
            2 + self.properties.block_len() + self.reason_codes.len()
        } else {
            2
        }
    }

    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if protocol.is_v5() {
            self.properties.encode(buf);
            for code in &self.reason_codes {
                buf.put_u8(*code as u8);
            }
        }
    }
}
