//! The things every packet shares: its type, the protocol version, QoS, the fixed header,
//! and the one dispatch from a packet type to its decoder and encoder.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{parse_var_int, put_var_int, var_int_len, Reader, VAR_INT_MAX};
use super::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, PubAck, PubComp, PubRec, PubRel, Publish,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};

/// The protocol level of a connection (CONNECT byte 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name "MQTT", level 5.
    V5,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V3_1 => 3,
            Protocol::V3_1_1 => 4,
            Protocol::V5 => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service (section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_bits(bits: u8) -> Result<QoS, DecodeError> {
        match bits {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            value => Err(DecodeError::InvalidQos { value }),
        }
    }
}

/// Control packet types (section 2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    fn from_bits(bits: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match bits {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// Who may send it: `Some(true)` client only, `Some(false)` server only, `None` both.
    fn sent_by_client(self) -> Option<bool> {
        use PacketType::*;
        match self {
            Connect | Subscribe | Unsubscribe | PingReq => Some(true),
            ConnAck | SubAck | UnsubAck | PingResp => Some(false),
            _ => None,
        }
    }

    /// The flag bits of the fixed header for every type but PUBLISH (table 2.2): 0b0010 for
    /// PUBREL, SUBSCRIBE and UNSUBSCRIBE, zero for the rest [MQTT-2.1.3-1].
    fn required_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

/// Which end of the connection is decoding: a server decodes what clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A decoded control packet. Strings, topics and payloads are slices of the buffer the
/// packet was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(Box<ConnAck>),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Appends the packet, fixed header included, to `buf`.
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) {
        match self {
            Packet::Connect(p) => p.encode(protocol, buf),
            Packet::ConnAck(p) => p.encode(protocol, buf),
            Packet::Publish(p) => p.encode(protocol, buf),
            Packet::PubAck(p) => p.encode(protocol, buf),
            Packet::PubRec(p) => p.encode(protocol, buf),
            Packet::PubRel(p) => p.encode(protocol, buf),
            Packet::PubComp(p) => p.encode(protocol, buf),
            Packet::Subscribe(p) => p.encode(protocol, buf),
            Packet::SubAck(p) => p.encode(protocol, buf),
            Packet::Unsubscribe(p) => p.encode(protocol, buf),
            Packet::UnsubAck(p) => p.encode(protocol, buf),
            Packet::PingReq => buf.put_slice(&[0xC0, 0]),
            Packet::PingResp => buf.put_slice(&[0xD0, 0]),
            Packet::Disconnect(p) => p.encode(protocol, buf),
            Packet::Auth(p) => p.encode(protocol, buf),
        }
    }

    /// The size [`Packet::encode`] will write, fixed header included: what a sender
    /// compares with the peer's Maximum Packet Size.
    pub fn encoded_len(&self, protocol: Protocol) -> usize {
        match self {
            Packet::Connect(p) => p.encoded_len(protocol),
            Packet::ConnAck(p) => p.encoded_len(protocol),
            Packet::Publish(p) => p.encoded_len(protocol),
            Packet::PubAck(p) => p.encoded_len(protocol),
            Packet::PubRec(p) => p.encoded_len(protocol),
            Packet::PubRel(p) => p.encoded_len(protocol),
            Packet::PubComp(p) => p.encoded_len(protocol),
            Packet::Subscribe(p) => p.encoded_len(protocol),
            Packet::SubAck(p) => p.encoded_len(protocol),
            Packet::Unsubscribe(p) => p.encoded_len(protocol),
            Packet::UnsubAck(p) => p.encoded_len(protocol),
            Packet::PingReq | Packet::PingResp => 2,
            Packet::Disconnect(p) => p.encoded_len(protocol),
            Packet::Auth(p) => p.encoded_len(protocol),
        }
    }
}

/// The body codec of one packet type; [`Encode::encode`] adds the fixed header.
pub trait Encode {
    const PACKET_TYPE: PacketType;

    /// Flag bits of the fixed header (only PUBLISH has variable ones).
    fn header_flags(&self) -> u8 {
        Self::PACKET_TYPE.required_flags()
    }

    /// Bytes after the fixed header.
    fn remaining_len(&self, protocol: Protocol) -> usize;

    /// Writes the bytes after the fixed header.
    fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut);

    fn encode(&self, protocol: Protocol, buf: &mut BytesMut) {
        let remaining_len = self.remaining_len(protocol);
        assert!(
            remaining_len <= VAR_INT_MAX as usize,
            "{:?} of {remaining_len} bytes cannot be encoded",
            Self::PACKET_TYPE
        );
        buf.reserve(1 + var_int_len(remaining_len as u32) + remaining_len);
        buf.put_u8(((Self::PACKET_TYPE as u8) << 4) | self.header_flags());
        put_var_int(buf, remaining_len as u32);
        let body_start = buf.len();
        self.encode_body(protocol, buf);
        debug_assert_eq!(
            buf.len() - body_start,
            remaining_len,
            "{:?}: remaining_len disagrees with encode_body",
            Self::PACKET_TYPE
        );
    }

    fn encoded_len(&self, protocol: Protocol) -> usize {
        let remaining_len = self.remaining_len(protocol);
        1 + var_int_len(remaining_len as u32) + remaining_len
    }
}

/// The largest packet MQTT can express: 1 type byte, 4 length bytes, 268,435,455 bytes.
pub const PACKET_SIZE_BYTES_MAX: u32 = 1 + 4 + VAR_INT_MAX;

/// The fixed header of a packet whose remaining length has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub first_byte: u8,
    /// Type byte plus remaining-length bytes.
    pub header_len: usize,
    pub remaining_len: usize,
}

impl FixedHeader {
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads the fixed header at the start of `buf` without consuming it. `Ok(None)` means the
/// header is not complete yet. A packet larger than `max_packet_size_bytes` is refused as
/// soon as its length is known, before its body arrives.
pub fn parse_fixed_header(
    buf: &[u8],
    max_packet_size_bytes: u32,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    let (remaining_len, len_bytes) = match parse_var_int(&buf[1..], "remaining length") {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(DecodeError::VarIntTooLong { .. }) => return Err(DecodeError::RemainingLengthTooLong),
        Err(other) => return Err(other),
    };
    let header = FixedHeader {
        first_byte,
        header_len: 1 + len_bytes,
        remaining_len: remaining_len as usize,
    };
    if header.packet_len() > max_packet_size_bytes as usize {
        return Err(DecodeError::PacketTooLarge {
            size_bytes: header.packet_len(),
            max_bytes: max_packet_size_bytes,
        });
    }
    Ok(Some(header))
}

/// Decodes one packet from the front of `buf`.
///
/// `Ok(None)`: `buf` holds less than a whole packet and is left untouched. `Ok(Some(_))`:
/// the packet's bytes were split off `buf` (no copy) and the packet refers into them.
/// `protocol` is `None` on a server before CONNECT: then only a CONNECT is accepted; once
/// it is known, another CONNECT is a protocol error [MQTT-3.1.0-2].
pub fn decode_packet(
    buf: &mut BytesMut,
    role: Role,
    protocol: Option<Protocol>,
    max_packet_size_bytes: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = parse_fixed_header(buf, max_packet_size_bytes)? else {
        return Ok(None);
    };
    // Check the type before waiting for the body: a peer speaking another protocol is
    // refused at once instead of after megabytes.
    let packet_type = check_type(header.first_byte, role, protocol)?;
    if packet_type == PacketType::Connect && protocol.is_some() {
        return Err(DecodeError::SecondConnect);
    }
    if buf.len() < header.packet_len() {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.packet_len());
    let body = frame.split_off(header.header_len).freeze();
    decode_body(packet_type, header.first_byte & 0x0F, body, role, protocol).map(Some)
}

fn check_type(
    first_byte: u8,
    role: Role,
    protocol: Option<Protocol>,
) -> Result<PacketType, DecodeError> {
    let type_bits = first_byte >> 4;
    let packet_type =
        PacketType::from_bits(type_bits).ok_or(DecodeError::ReservedPacketType { type_bits })?;
    if packet_type == PacketType::Auth && protocol.is_some_and(|p| !p.is_v5()) {
        // Type 15 is reserved before 5.0.
        return Err(DecodeError::ReservedPacketType { type_bits });
    }
    match protocol {
        None if role == Role::Server && packet_type != PacketType::Connect => {
            return Err(DecodeError::FirstPacketNotConnect {
                packet: packet_type,
            })
        }
        _ => {}
    }
    let from_client = role == Role::Server;
    let sent_by_client = match packet_type {
        // Only 5.0 lets the server send DISCONNECT: 3.1.1 Table 2.1 has it client to
        // server only.
        PacketType::Disconnect if protocol.is_some_and(|p| !p.is_v5()) => Some(true),
        other => other.sent_by_client(),
    };
    if sent_by_client.is_some_and(|by_client| by_client != from_client) {
        return Err(DecodeError::UnexpectedPacket {
            packet: packet_type,
        });
    }
    let flags = first_byte & 0x0F;
    if packet_type != PacketType::Publish && flags != packet_type.required_flags() {
        return Err(DecodeError::InvalidHeaderFlags {
            packet: packet_type,
            flags,
        });
    }
    Ok(packet_type)
}

fn decode_body(
    packet_type: PacketType,
    flags: u8,
    body: Bytes,
    role: Role,
    protocol: Option<Protocol>,
) -> Result<Packet, DecodeError> {
    let mut reader = Reader::new(body);
    let reader = &mut reader;
    // A client decodes with a known protocol; a server knows it once CONNECT is decoded.
    let protocol = match (packet_type, protocol) {
        (PacketType::Connect, _) => {
            let connect = Connect::decode(reader)?;
            expect_end(reader, packet_type)?;
            return Ok(Packet::Connect(Box::new(connect)));
        }
        (_, Some(protocol)) => protocol,
        (packet, None) => return Err(DecodeError::FirstPacketNotConnect { packet }),
    };
    let packet = match packet_type {
        PacketType::Connect => unreachable!("handled above"),
        PacketType::ConnAck => Packet::ConnAck(Box::new(ConnAck::decode(reader, protocol)?)),
        PacketType::Publish => {
            let publish = Publish::decode(reader, flags, protocol)?;
            // Subscription Identifiers are the server's to add [MQTT-3.3.4-6].
            if role == Role::Server && !publish.properties.subscription_identifiers.is_empty() {
                return Err(DecodeError::SubscriptionIdentifierFromClient);
            }
            Packet::Publish(publish)
        }
        PacketType::PubAck => Packet::PubAck(PubAck::decode(reader, protocol)?),
        PacketType::PubRec => Packet::PubRec(PubRec::decode(reader, protocol)?),
        PacketType::PubRel => Packet::PubRel(PubRel::decode(reader, protocol)?),
        PacketType::PubComp => Packet::PubComp(PubComp::decode(reader, protocol)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(reader, protocol)?),
        PacketType::SubAck => Packet::SubAck(SubAck::decode(reader, protocol)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(reader, protocol)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(reader, protocol)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(reader, protocol)?),
        PacketType::Auth => Packet::Auth(Auth::decode(reader, protocol)?),
    };
    expect_end(reader, packet_type)?;
    Ok(packet)
}

/// Every decoder reads its whole body; bytes left over make the packet malformed.
pub(crate) fn expect_end(reader: &Reader, packet: PacketType) -> Result<(), DecodeError> {
    match reader.remaining() {
        0 => Ok(()),
        count => Err(DecodeError::TrailingBytes { packet, count }),
    }
}

/// [MQTT-2.2.1-3]: PUBLISH with QoS > 0, SUBSCRIBE, UNSUBSCRIBE and the acknowledgements
/// carry a non-zero packet identifier.
pub(crate) fn read_packet_id(reader: &mut Reader) -> Result<u16, DecodeError> {
    match reader.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketIdentifier),
        id => Ok(id),
    }
}
