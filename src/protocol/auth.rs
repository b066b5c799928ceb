//! AUTH (section 3.15): extended authentication exchange, 5.0 only.

use bytes::{BufMut, BytesMut};

use super::packet::Encode;
use super::properties::check_auth_pair;
use super::wire::Reader;
use super::{AuthProperties, DecodeError, PacketType, Protocol, ReasonCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: AuthProperties,
}

impl Auth {
    pub fn new(reason_code: ReasonCode) -> Auth {
        Auth {
            reason_code,
            properties: AuthProperties::default(),
        }
    }

    pub(crate) fn decode(reader: &mut Reader, _protocol: Protocol) -> Result<Auth, DecodeError> {
        // "The Reason Code and Property Length can be omitted if the Reason Code is 0x00
        // (Success) and there are no Properties" (3.15.2.1).
        let mut packet = Auth::new(ReasonCode::Success);
        if !reader.is_empty() {
            let code = reader.u8("reason code")?;
            packet.reason_code = ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(PacketType::Auth))
                .ok_or(DecodeError::InvalidReasonCode {
                    packet: PacketType::Auth,
                    code,
                })?;
            if !reader.is_empty() {
                packet.properties = AuthProperties::decode(reader)?;
            }
        }
        check_auth_pair(
            &packet.properties.authentication_method,
            &packet.properties.authentication_data,
        )?;
        Ok(packet)
    }
}

impl Encode for Auth {
    const PACKET_TYPE: PacketType = PacketType::Auth;

    fn remaining_len(&self, _protocol: Protocol) -> usize {
        if !self.properties.is_empty() || self.reason_code != ReasonCode::Success {
            // A reason code is always followed by its property length (even 0): several
            // client libraries cannot read the one-byte form 3.15.2.1 allows.
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
