//! PUBCOMP (section 3.7): the last packet of the QoS 2 exchange.

use super::ack::publish_ack_packet;
use super::PacketType;

publish_ack_packet!(
    /// PUBCOMP packet. Reason codes: see [`crate::protocol::ReasonCode::is_valid_for`].
    PubComp,
    PacketType::PubComp
);
