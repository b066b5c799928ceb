//! DISCONNECT (section 3.14). Empty in 3.1/3.1.1; sent by both sides in 5.0, with a
//! reason code and properties.

use bytes::{BufMut, BytesMut};

use super::packet::Encode;
use super::wire::Reader;
use super::{DecodeError, DisconnectProperties, PacketType, Protocol, ReasonCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// `NORMAL_DISCONNECTION` (0x00) in 3.1/3.1.1.
    pub reason_code: ReasonCode,
    pub properties: DisconnectProperties,
}

impl Disconnect {
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        protocol: Protocol,
    ) -> Result<Disconnect, DecodeError> {
        let mut packet = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
        // "If the Remaining Length is less than 1 the value of 0x00 (Normal disconnection)
        // is used" (3.14.2.1); a 3.1.1 DISCONNECT has no body at all.
        if protocol.is_v5() && !reader.is_empty() {
            let code = reader.u8("reason code")?;
            packet.reason_code = ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(PacketType::Disconnect))
                .ok_or(DecodeError::InvalidReasonCode {
                    packet: PacketType::Disconnect,
                    code,
                })?;
            if !reader.is_empty() {
                packet.properties = DisconnectProperties::decode(reader)?;
            }
        }
        Ok(packet)
    }
}

impl Encode for Disconnect {
    const PACKET_TYPE: PacketType = PacketType::Disconnect;

    fn remaining_len(&self, protocol: Protocol) -> usize {
        if !protocol.is_v5() {
            0
        } else if !self.properties.is_empty()
            || self.reason_code != ReasonCode::NORMAL_DISCONNECTION
        {
            // A reason code is always followed by its property length (even 0): several
            // client libraries cannot read the one-byte form 3.14.2.1 allows.
            1 + self.properties.block_len()
        } else {
            0
        }
    }

    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        let len = self.remaining_len(protocol);
        if len > 0 {
            buf.put_u8(self.reason_code as u8);
        }
        if len > 0 {
            self.properties.encode(buf);
        }
    }
}
