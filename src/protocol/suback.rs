//! SUBACK (section 3.9): one reason code per topic filter of the SUBSCRIBE.

use bytes::{BufMut, BytesMut};

use super::packet::{read_packet_id, Encode};
use super::wire::Reader;
use super::{AckProperties, DecodeError, PacketType, Protocol, ReasonCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: AckProperties,
    /// In the order of the SUBSCRIBE's filters [MQTT-3.8.4-6]. 3.1.1 return codes map to
    /// `Success`, `GrantedQos1`, `GrantedQos2` and `UnspecifiedError` (0x80).
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub fn new(packet_id: u16, reason_codes: Vec<ReasonCode>) -> SubAck {
        SubAck {
            packet_id,
            properties: AckProperties::default(),
            reason_codes,
        }
    }

    pub(crate) fn decode(reader: &mut Reader, protocol: Protocol) -> Result<SubAck, DecodeError> {
        let packet_id = read_packet_id(reader)?;
        let properties = if protocol.is_v5() {
            AckProperties::decode(reader)?
        } else {
            AckProperties::default()
        };
        let mut reason_codes = Vec::with_capacity(reader.remaining());
        while !reader.is_empty() {
            let code = reader.u8("reason code")?;
            let reason = if protocol.is_v5() {
                ReasonCode::from_u8(code).filter(|c| c.is_valid_for(PacketType::SubAck))
            } else {
                ReasonCode::from_v3_suback_return_code(code)
            };
            reason_codes.push(reason.ok_or(DecodeError::InvalidReasonCode {
                packet: PacketType::SubAck,
                code,
            })?);
        }
        if reason_codes.is_empty() {
            return Err(DecodeError::UnexpectedEnd {
                field: "SUBACK reason codes",
            });
        }
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }
}

impl Encode for SubAck {
    const PACKET_TYPE: PacketType = PacketType::SubAck;

    fn remaining_len(&self, protocol: Protocol) -> usize {
        let properties = if protocol.is_v5() {
            self.properties.block_len()
        } else {
            0
        };
        2 + properties + self.reason_codes.len()
    }

    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if protocol.is_v5() {
            self.properties.encode(buf);
            for code in &self.reason_codes {
                buf.put_u8(*code as u8);
            }
        } else {
            for code in &self.reason_codes {
                buf.put_u8(code.to_v3_suback_return_code());
            }
        }
    }
}
