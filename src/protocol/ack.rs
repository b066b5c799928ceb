//! The shape shared by PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4 - 3.7): a packet
//! identifier, then in 5.0 an optional reason code and optional properties. Each packet
//! has its own file and type; this macro writes the codec they share.

/// Declares one acknowledgement packet type.
macro_rules! publish_ack_packet {
    ($(#[$meta:meta])* $name:ident, $packet_type:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            pub packet_id: u16,
            /// Always `Success` in 3.1/3.1.1, which have no reason code.
            pub reason_code: $crate::protocol::ReasonCode,
            pub properties: $crate::protocol::AckProperties,
        }

        impl $name {
            pub fn new(packet_id: u16) -> $name {
                $name {
                    packet_id,
                    reason_code: $crate::protocol::ReasonCode::Success,
                    properties: Default::default(),
                }
            }

            pub fn with_reason(packet_id: u16, reason_code: $crate::protocol::ReasonCode) -> $name {
                $name {
                    reason_code,
                    ..$name::new(packet_id)
                }
            }

            pub(crate) fn decode(
                reader: &mut $crate::protocol::wire::Reader,
                protocol: $crate::protocol::Protocol,
            ) -> Result<$name, $crate::protocol::DecodeError> {
                use $crate::protocol::{AckProperties, DecodeError, ReasonCode};
                let packet_id = $crate::protocol::packet::read_packet_id(reader)?;
                let mut packet = $name::new(packet_id);
                // 5.0: "The Reason Code and Property Length can be omitted if the Reason Code
                // is 0x00 (Success) and there are no Properties" (3.4.2.1 and siblings).
                if protocol.is_v5() && !reader.is_empty() {
                    let code = reader.u8("reason code")?;
                    packet.reason_code = ReasonCode::from_u8(code)
                        .filter(|c| c.is_valid_for($packet_type))
                        .ok_or(DecodeError::InvalidReasonCode {
                            packet: $packet_type,
                            code,
                        })?;
                    if !reader.is_empty() {
                        packet.properties = AckProperties::decode(reader)?;
                    }
                }
                Ok(packet)
            }
        }

        impl $crate::protocol::packet::Encode for $name {
            const PACKET_TYPE: $crate::protocol::PacketType = $packet_type;

            fn remaining_len(&self, protocol: $crate::protocol::Protocol) -> usize {
                // The short forms (no properties, or no reason code either) are allowed by
                // 3.4.2.1, but a reason code is always followed by its property length:
                // several client libraries cannot read a reason code alone.
                if !protocol.is_v5() {
                    2
                } else if !self.properties.is_empty()
                    || self.reason_code != $crate::protocol::ReasonCode::Success
                {
                    3 + self.properties.block_len()
                } else {
                    2
                }
            }

            fn encode_body(&self, protocol: $crate::protocol::Protocol, buf: &mut bytes::BytesMut) {
                use bytes::BufMut;
                buf.put_u16(self.packet_id);
                let len = self.remaining_len(protocol);
                if len > 2 {
                    buf.put_u8(self.reason_code as u8);
                }
                if len > 2 {
                    self.properties.encode(buf);
                }
            }
        }
    };
}

pub(crate) use publish_ack_packet;
