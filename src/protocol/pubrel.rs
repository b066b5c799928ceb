//! PUBREL (section 3.6): the second packet of the QoS 2 exchange, from the publisher (fixed header flags 0b0010).

use super::ack::publish_ack_packet;
use super::PacketType;

publish_ack_packet!(
    /// PUBREL packet. Reason codes: see [`crate::protocol::ReasonCode::is_valid_for`].
    PubRel,
    PacketType::PubRel
);
