//! The per-connection decoder: a packet type filter and a size limit over a read buffer.

use bytes::BytesMut;

use super::packet::{decode_packet, PACKET_SIZE_BYTES_MAX};
use super::{DecodeError, Packet, Protocol, Role};

/// Decodes the packets of one connection.
///
/// A server-side decoder starts without a protocol version and accepts only CONNECT; the
/// CONNECT it returns fixes the version for the rest of the connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    role: Role,
    protocol: Option<Protocol>,
    max_packet_size_bytes: u32,
}

impl Decoder {
    /// For a server: decodes client packets, starting with CONNECT.
    pub fn server(max_packet_size_bytes: u32) -> Decoder {
        Decoder {
            role: Role::Server,
            protocol: None,
            max_packet_size_bytes: max_packet_size_bytes.min(PACKET_SIZE_BYTES_MAX),
        }
    }

    /// For a server whose connection's CONNECT of `protocol` was decoded elsewhere (on the
    /// shard that accepted the connection before handing it over).
    pub fn server_connected(protocol: Protocol, max_packet_size_bytes: u32) -> Decoder {
        Decoder {
            protocol: Some(protocol),
            ..Decoder::server(max_packet_size_bytes)
        }
    }

    /// For a client that has sent a CONNECT of `protocol`.
    pub fn client(protocol: Protocol, max_packet_size_bytes: u32) -> Decoder {
        Decoder {
            role: Role::Client,
            protocol: Some(protocol),
            max_packet_size_bytes: max_packet_size_bytes.min(PACKET_SIZE_BYTES_MAX),
        }
    }

    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    pub fn max_packet_size_bytes(&self) -> u32 {
        self.max_packet_size_bytes
    }

    /// Decodes the next packet at the front of `buf`; see [`decode_packet`]. On an error the
    /// connection must be closed (after a DISCONNECT with [`DecodeError::reason_code`] in
    /// 5.0): the buffer position is then meaningless.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let packet = decode_packet(buf, self.role, self.protocol, self.max_packet_size_bytes)?;
        if let (Some(Packet::Connect(connect)), None) = (&packet, self.protocol) {
            self.protocol = Some(connect.protocol);
        }
        Ok(packet)
    }
}
