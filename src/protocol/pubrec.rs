//! PUBREC (section 3.5): the first answer to a QoS 2 PUBLISH.

use super::ack::publish_ack_packet;
use super::PacketType;

publish_ack_packet!(
    /// PUBREC packet. Reason codes: see [`crate::protocol::ReasonCode::is_valid_for`].
    PubRec,
    PacketType::PubRec
);
