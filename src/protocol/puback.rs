//! PUBACK (section 3.4): the answer to a QoS 1 PUBLISH.

use super::ack::publish_ack_packet;
use super::PacketType;

publish_ack_packet!(
    /// PUBACK packet. Reason codes: see [`crate::protocol::ReasonCode::is_valid_for`].
    PubAck,
    PacketType::PubAck
);
