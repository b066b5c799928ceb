//! CONNACK (section 3.2): the server's answer to CONNECT.

use bytes::{BufMut, BytesMut};

use super::packet::Encode;
use super::properties::check_auth_pair;
use super::wire::Reader;
use super::{ConnAckProperties, DecodeError, PacketType, Protocol, ReasonCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// In 3.1/3.1.1 the return code, mapped to and from the nearest reason code
    /// ([`ReasonCode::to_v3_connect_return_code`]).
    pub reason_code: ReasonCode,
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub fn new(session_present: bool, reason_code: ReasonCode) -> ConnAck {
        ConnAck {
            session_present,
            reason_code,
            properties: ConnAckProperties::default(),
        }
    }

    pub(crate) fn decode(reader: &mut Reader, protocol: Protocol) -> Result<ConnAck, DecodeError> {
        let ack_flags = reader.u8("connect acknowledge flags")?;
        // [MQTT-3.2.2-1]: bits 7-1 are reserved. (3.1 reserves the whole byte.)
        let reserved_mask = if protocol == Protocol::V3_1 {
            0xFF
        } else {
            0xFE
        };
        if ack_flags & reserved_mask != 0 {
            return Err(DecodeError::ConnAckReservedFlags { flags: ack_flags });
        }
        let code = reader.u8("connect reason code")?;
        // [MQTT-3.2.2-4]/[MQTT-3.2.2-6]: a refused connection has no session, and a server
        // MUST send Session Present 0 with it. Read it as 0 whatever the server sent, as
        // `encode_body` writes it, so that the refusal reason is what the client sees.
        let session_present =
            |reason_code: ReasonCode| ack_flags & 1 != 0 && !reason_code.is_error();
        let invalid = DecodeError::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code,
        };
        if !protocol.is_v5() {
            let reason_code = ReasonCode::from_v3_connect_return_code(code).ok_or(invalid)?;
            return Ok(ConnAck::new(session_present(reason_code), reason_code));
        }
        let reason_code = ReasonCode::from_u8(code)
            .filter(|c| c.is_valid_for(PacketType::ConnAck))
            .ok_or(invalid)?;
        let properties = ConnAckProperties::decode(reader)?;
        check_auth_pair(
            &properties.authentication_method,
            &properties.authentication_data,
        )?;
        Ok(ConnAck {
            session_present: session_present(reason_code),
            reason_code,
            properties,
        })
    }
}

impl Encode for ConnAck {
    const PACKET_TYPE: PacketType = PacketType::ConnAck;

    fn remaining_len(&self, protocol: Protocol) -> usize {
        if protocol.is_v5() {
            2 + self.properties.block_len()
        } else {
            2
        }
    }

    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        // 3.1 has no Session Present flag; [MQTT-3.2.2-4]/[MQTT-3.2.2-6]: it is 0 whenever
        // the connection is refused.
        let session_present =
            self.session_present && protocol != Protocol::V3_1 && !self.reason_code.is_error();
        buf.put_u8(u8::from(session_present));
        if protocol.is_v5() {
            buf.put_u8(self.reason_code as u8);
            self.properties.encode(buf);
        } else {
            buf.put_u8(self.reason_code.to_v3_connect_return_code());
        }
    }
}
