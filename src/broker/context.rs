//! What every task of a shard reaches: its state, its channels to the other shards, its
//! Kafka bridge, its counters.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::bridge::{Bridge, Ticket};
use crate::config::BrokerConfig;
use crate::metrics::stats::{ShardStats, StatsSnapshot};
use crate::protocol::{MqttStr, QoS};
use crate::runtime::{ShardId, ShardSenders, Signal, WaitList};

use super::connection::Connection;
use super::shard::Shard;
use super::shard_message::ShardMessage;

/// One of the `connections_max` places, held from accept to the end of the connection,
/// wherever it goes (a hand-off carries it to the owning shard): dropping it gives the place
/// back, so no early return can leak one.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl ConnectionSlot {
    /// A place, if fewer than `max` are taken.
    pub fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<ConnectionSlot> {
        let slot = ConnectionSlot { open: open.clone() };
        // Counted first, then checked: two shards racing for the last place cannot both
        // get it. The slot made above gives the place back if it is not ours.
        (slot.open.fetch_add(1, Ordering::Relaxed) < max).then_some(slot)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A PUBLISH whose acknowledgement waits: for the bridge (Kafka or the spool), for the
/// cluster's messages topic, or both.
pub struct DeferredAck {
    pub connection: Rc<Connection>,
    pub client_id: MqttStr,
    pub packet_id: u16,
    pub qos: QoS,
    /// What it still waits for; the acknowledgement goes when none is left.
    pub waits: Cell<u8>,
    /// The first failure among what it waited for, if any.
    pub failure: Cell<Option<super::publish::Verdict>>,
}

/// Shard state reachable from every task of the shard.
pub struct ShardContext {
    pub id: ShardId,
    pub count: usize,
    pub config: Rc<BrokerConfig>,
    pub stats: Rc<ShardStats>,
    pub senders: ShardSenders<ShardMessage>,
    pub state: RefCell<Shard>,
    /// Interest updates waiting for every other shard to acknowledge them.
    pub interest_acks: RefCell<HashMap<u64, (usize, Rc<Signal>)>>,
    pub next_ack_id: Cell<u64>,
    /// Shard 0 only: the latest counters of every shard, for `$SYS`.
    pub remote_stats: RefCell<Vec<StatsSnapshot>>,
    /// Connections open on all shards, against `connections_max` (touched per connection,
    /// never per message).
    pub connections_open: Arc<AtomicUsize>,
    pub shutting_down: Arc<AtomicBool>,
    pub started_at: Instant,
    /// This shard's side of the Kafka pipeline (no mappings: a plain MQTT broker).
    pub bridge: Bridge,
    /// PUBLISHes whose PUBACK/PUBREC waits for the bridge, by ticket.
    pub deferred_acks: RefCell<HashMap<Ticket, Rc<DeferredAck>>>,
    /// Records from Kafka sources that a `from_sources` mapping writes to Kafka again:
    /// their receipt's share waits for the bridge, by ticket.
    pub source_tickets: RefCell<HashMap<Ticket, crate::bridge::source::Receipt>>,
    /// Publishers held while subscribers they feed are congested (`router::slow_down_for`);
    /// woken when a session's queue moves (an acknowledgement, a disconnect).
    pub congestion_eased: WaitList,
    /// Where this shard leaves its metrics once a second.
    pub board: Arc<crate::metrics::Board>,
    /// This shard's part in a cluster (`[cluster]`), if any.
    pub cluster: Option<super::cluster::ShardCluster>,
}

pub type ShardRef = Rc<ShardContext>;

impl ShardContext {
    /// A session's queue moved: publishers held for congested subscribers look again.
    pub fn ease_congestion(&self) {
        if self.congestion_eased.waiting() > 0 {
            self.congestion_eased.wake_all();
        }
    }
}
