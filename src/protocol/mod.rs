//! The MQTT 3.1, 3.1.1 and 5.0 codec, for both ends of a connection.
//!
//! Decoding is pure and incremental: [`Decoder::decode`] takes a read buffer, returns
//! `Ok(None)` without consuming anything while a packet is incomplete, and otherwise splits
//! the packet off the buffer and returns it with its strings and payload as `Bytes` slices
//! of it. Every violation of the specifications is a [`DecodeError`] that names the reason
//! code a server answers with. Encoding appends to a caller-owned `BytesMut`, so a
//! connection reuses one write buffer for all its packets.
//!
//! One file per packet: `connect.rs` is CONNECT, `suback.rs` is SUBACK, and so on; PINGREQ
//! and PINGRESP have no body and live in `packet.rs`, which also holds the dispatch.

mod ack;
mod auth;
mod codec;
mod connack;
mod connect;
mod disconnect;
mod error;
pub(crate) mod packet;
mod properties;
mod puback;
mod pubcomp;
mod publish;
mod pubrec;
mod pubrel;
mod reason;
mod suback;
mod subscribe;
pub mod topic;
mod unsuback;
mod unsubscribe;
pub(crate) mod wire;

pub use auth::Auth;
pub use codec::Decoder;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use error::DecodeError;
pub use packet::{
    decode_packet, parse_fixed_header, Encode, FixedHeader, Packet, PacketType, Protocol, QoS,
    Role, PACKET_SIZE_BYTES_MAX,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PropertyId, PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperty,
    WillProperties,
};
pub use puback::PubAck;
pub use pubcomp::PubComp;
pub use publish::Publish;
pub use pubrec::PubRec;
pub use pubrel::PubRel;
pub use reason::{ReasonCode, ALL_REASON_CODES};
pub use suback::SubAck;
pub use subscribe::{RetainHandling, Subscribe, Subscription, SubscriptionOptions};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;
pub use wire::{MqttStr, VAR_INT_MAX};
