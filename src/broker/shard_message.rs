//! What shards tell each other over their bounded channels.

use bytes::BytesMut;

use crate::protocol::Connect;
use crate::runtime::{DetachedStream, ShardId};

use super::message::Message;
use crate::bridge::source::Receipt;
use crate::metrics::stats::StatsSnapshot;

use super::context::ConnectionSlot;

pub enum ShardMessage {
    /// A connection whose client id the receiving shard owns (its socket, with the TLS
    /// session for TLS), with its CONNECT and the bytes read after it.
    Handoff {
        stream: DetachedStream,
        connect: Box<Connect>,
        buffered: BytesMut,
        assigned_client_id: bool,
        /// The verified client certificate's identity (see `Link::cert_identity`).
        cert_identity: Option<String>,
        /// Its place among `connections_max`, given back when the connection ends.
        slot: ConnectionSlot,
    },
    /// Deliver to the receiver's ordinary subscribers of the topic.
    Publish(Message),
    /// Deliver to one local member of shared group `group` matching the topic.
    SharedPublish {
        group: String,
        message: Message,
    },
    /// The sender now has (or no longer has) subscribers for `filter`. With `ack_id`, the
    /// receiver answers `InterestAck` so the sender can send its SUBACK knowing that every
    /// shard routes to it.
    Interest {
        from: ShardId,
        filter: String,
        added: bool,
        ack_id: Option<u64>,
    },
    InterestAck {
        ack_id: u64,
    },
    /// A record from a Kafka source, forwarded by the shard that took it: for the
    /// receiver's ordinary subscribers (`group` None) or one shared group's member. The
    /// receiver finishes its share of the receipt, or drops it to refuse the record.
    SourcePublish {
        message: Message,
        group: Option<String>,
        receipt: Receipt,
    },
    /// A retained message set (or cleared, with an empty payload) on another shard.
    Retained(Message),
    /// Counters of the sender, for shard 0's `$SYS` topics.
    Stats {
        from: ShardId,
        snapshot: StatsSnapshot,
    },
}
