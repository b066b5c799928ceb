//! A shard's state and the operations on it. Everything here is synchronous and runs on
//! the shard's own thread: no locks. What must cross to other shards is returned to the
//! caller (`link.rs`, `router.rs`), which sends it without holding a borrow.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{AuthSnapshot, AuthStore};
use crate::cluster::NodeId;
use crate::config::BrokerConfig;
use crate::protocol::{ConnAck, Connect, MqttStr, Protocol, QoS, ReasonCode, RetainHandling};
use crate::runtime::ShardId;

use super::connection::Connection;
use super::message::Message;
use super::session::{Delivery, Session, SessionId, SourceAck, SubscriptionEntry};
use crate::metrics::stats::ShardStats;
use crate::topic::RetainedStore;
use crate::topic::SubscriptionTree;

/// The shard that owns a client id: where its session lives, whichever shard accepted the
/// connection. FNV-1a: stable across processes, cheap, good enough spread for ids.
pub fn shard_for(client_id: &[u8], shard_count: usize) -> ShardId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client_id {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shard_count as u64) as ShardId
}

/// A change of which filters this shard has subscribers for, to tell the other shards.
#[derive(Debug, Clone)]
pub struct InterestChange {
    pub filter: String,
    pub added: bool,
}

/// Where a message must go beyond this shard.
#[derive(Debug, Default)]
pub struct RemoteTargets {
    /// Shards with ordinary subscriptions matching the topic.
    pub shards: Vec<ShardId>,
    /// Shared groups whose turn fell on another shard: (shard, group).
    pub shared: Vec<(ShardId, String)>,
    /// Connected local sessions whose queue is past its high-water mark: the publisher
    /// waits for them to drain before reading on (backpressure on QoS 1/2).
    pub congested: Vec<MqttStr>,
    /// Other nodes of the cluster have ordinary subscriptions matching the topic.
    pub nodes_ordinary: bool,
    /// Shared groups whose turn fell on another node: (group, node name).
    pub nodes_shared: Vec<(String, Arc<str>)>,
}

impl RemoteTargets {
    /// Other nodes get the message.
    pub fn has_nodes(&self) -> bool {
        self.nodes_ordinary || !self.nodes_shared.is_empty()
    }
}

/// The subscribers of a message on the shard that routes it.
#[derive(Default)]
struct LocalTargets {
    /// Ordinary subscriptions match here.
    normal: bool,
    /// Shared groups whose turn fell on this shard.
    shared_groups: Vec<String>,
}

/// What CONNECT produced: the CONNACK, and whether the old connection of the client was
/// taken over with its will to publish.
pub struct Opened {
    pub connack: ConnAck,
    pub will_to_publish: Option<Message>,
    pub generation: u64,
    pub expired_on_resume: u64,
}

pub struct Shard {
    pub id: ShardId,
    pub count: usize,
    config: Rc<BrokerConfig>,
    pub stats: Rc<ShardStats>,
    sessions: HashMap<MqttStr, Session>,
    session_client_ids: HashMap<SessionId, MqttStr>,
    /// Ordinary subscriptions of this shard's sessions.
    subscriptions: SubscriptionTree<SessionId, SubscriptionEntry>,
    /// Shared subscriptions of this shard's sessions (`$share/GROUP/FILTER`).
    shared_subscriptions: SubscriptionTree<SessionId, SubscriptionEntry>,
    /// Which shards (this one included) have subscribers for each filter, kept in step by
    /// `Interest` messages; shared groups pick a shard round-robin.
    interest: SubscriptionTree<ShardId, ()>,
    /// Local subscriptions per filter: the interest of this shard changes at 0 ↔ 1.
    local_filter_counts: HashMap<String, u32>,
    /// A full copy on every shard: retained messages are rare writes and frequent reads on
    /// subscribe, so each shard answers subscribes from its own copy.
    pub retained: RetainedStore<Rc<Message>>,
    next_session_id: SessionId,
    /// Source of session generations (see [`Session::generation`]); never reused, so a
    /// timer armed for one connection of one session fires on that one or on nothing.
    next_generation: u64,
    next_connection_id: u64,
    next_assigned_id: u64,
    /// Scratch for merging overlapping subscriptions of one session.
    scratch: HashMap<SessionId, (QoS, bool, Vec<u32>)>,
    /// Sessions found congested while routing the current message.
    congested: Vec<MqttStr>,
    /// Password and ACL files, shared by all shards; SIGHUP loads a new snapshot into it.
    auth: Arc<AuthStore>,
    /// The snapshot this shard decides with, swapped when the store's generation moves
    /// (one atomic load per decision, no lock).
    auth_snapshot: Arc<AuthSnapshot>,
    /// Per Kafka source partition (its slot), the offset of a record refused here for a
    /// full session: later ones are refused too until the source comes back to it.
    source_blocks: HashMap<u64, i64>,
    /// Which other nodes of the cluster have subscribers for each filter (the state
    /// topic's interest records, applied by `broker::cluster`).
    remote_interest: SubscriptionTree<NodeId, ()>,
    /// Names of the other nodes, by id.
    node_names: Vec<Arc<str>>,
    /// Shared groups with members here and on other nodes: whose turn is next.
    shared_turns: HashMap<String, remote::SharedTurns>,
}

mod access;
mod delivery;
mod handover;
mod remote;
mod source;

pub use handover::GivenUp;
pub use source::SourceRouting;

impl Shard {
    pub fn new(
        id: ShardId,
        count: usize,
        config: Rc<BrokerConfig>,
        stats: Rc<ShardStats>,
    ) -> Shard {
        Shard {
            id,
            count,
            config,
            stats,
            sessions: HashMap::new(),
            session_client_ids: HashMap::new(),
            subscriptions: SubscriptionTree::new(),
            shared_subscriptions: SubscriptionTree::new(),
            interest: SubscriptionTree::new(),
            local_filter_counts: HashMap::new(),
            retained: RetainedStore::new(),
            next_session_id: 1,
            next_generation: 1,
            next_connection_id: 1,
            next_assigned_id: 0,
            scratch: HashMap::new(),
            congested: Vec::new(),
            auth: Arc::new(AuthStore::open()),
            auth_snapshot: Arc::new(AuthSnapshot::open()),
            source_blocks: HashMap::new(),
            remote_interest: SubscriptionTree::new(),
            node_names: Vec::new(),
            shared_turns: HashMap::new(),
        }
    }

    pub fn next_connection_id(&mut self) -> u64 {
        let id = self.next_connection_id;
        self.next_connection_id += 1;
        (id << 8) | self.id as u64
    }

    /// A client id for a client that sent none [MQTT-3.1.3-6], chosen so that this shard
    /// owns it and the connection need not move.
    pub fn assign_client_id(&mut self) -> MqttStr {
        let process_tag = std::process::id();
        loop {
            self.next_assigned_id += 1;
            let id = format!(
                "ferrymq-{process_tag:x}-{}-{:x}",
                self.id, self.next_assigned_id
            );
            let id = MqttStr::from(id);
            if shard_for(id.as_bytes(), self.count) == self.id && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn session(&mut self, client_id: &MqttStr) -> Option<&mut Session> {
        self.sessions.get_mut(client_id)
    }

    /// CONNECT on the owner shard: takes over a connected session [MQTT-3.1.4-3], keeps or
    /// discards the old one per Clean Start [MQTT-3.1.2-4..6], and builds the CONNACK.
    pub fn open_session(
        &mut self,
        connect: &mut Connect,
        connection: Rc<Connection>,
        assigned_client_id: bool,
        now: Instant,
    ) -> Opened {
        let config = self.config.clone();
        let client_id = connect.client_id.clone();
        let mut will_to_publish = None;
        if let Some(session) = self.sessions.get_mut(&client_id) {
            if let Some(old) = session.connection.take() {
                // [MQTT-3.1.4-3]: the old connection goes, with DISCONNECT 0x8E in 5.0.
                old.close(Some(ReasonCode::SessionTakenOver));
                ShardStats::decr(&self.stats.clients_connected);
                // Its will goes out unless the session lives on and the will is delayed
                // [MQTT-3.1.3-9].
                if let Some(will) = session.will.take() {
                    let delayed = will.properties.will_delay_interval_secs.unwrap_or(0) > 0;
                    if !delayed || connect.clean_start {
                        will_to_publish = Some(will_message(will, session.client_id.clone(), now));
                    }
                }
            }
        }
        let session_present = if connect.clean_start {
            self.remove_session(&client_id);
            false
        } else {
            self.sessions.contains_key(&client_id)
        };
        if !session_present {
            let id = self.next_session_id;
            self.next_session_id += 1;
            self.sessions.insert(
                client_id.clone(),
                Session::new(id, client_id.clone(), connect.protocol),
            );
            self.session_client_ids.insert(id, client_id.clone());
            ShardStats::incr(&self.stats.sessions);
        }
        let session = self
            .sessions
            .get_mut(&client_id)
            .expect("session just ensured");
        session.protocol = connect.protocol;
        session.generation = self.next_generation;
        self.next_generation += 1;
        session.disconnected_at = None;
        session.will = connect.will.take();
        session.connection = Some(connection);
        ShardStats::incr(&self.stats.clients_connected);

        // Session expiry: 3.1.1's clean session 0 keeps the session (up to our maximum);
        // 5.0 says how long with the Session Expiry Interval property [MQTT-3.1.2-23].
        let requested_expiry = match connect.protocol {
            Protocol::V5 => connect.properties.session_expiry_interval_secs.unwrap_or(0),
            _ if connect.clean_start => 0,
            _ => u32::MAX,
        };
        session.session_expiry_secs = requested_expiry.min(config.session_expiry_secs_max);
        let client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        session.inflight_max =
            usize::from(client_receive_maximum.min(config.inflight_messages_max.max(1)));

        let mut connack = ConnAck::new(session_present, ReasonCode::Success);
        if connect.protocol.is_v5() {
            let properties = &mut connack.properties;
            properties.receive_maximum = Some(config.receive_maximum);
            properties.maximum_packet_size_bytes = Some(config.packet_size_bytes_max);
            properties.topic_alias_maximum = Some(config.topic_alias_maximum);
            if !config.retain_available {
                properties.retain_available = Some(0);
            }
            if assigned_client_id {
                properties.assigned_client_identifier = Some(client_id.clone());
            }
            if requested_expiry != session.session_expiry_secs {
                properties.session_expiry_interval_secs = Some(session.session_expiry_secs);
            }
            if let Some(keep_alive) = granted_keep_alive(connect.keep_alive_secs, &config) {
                properties.server_keep_alive_secs = Some(keep_alive);
            }
        }
        let generation = session.generation;
        Opened {
            connack,
            will_to_publish,
            generation,
            expired_on_resume: 0,
        }
    }

    /// Resends what was in flight and starts on the queue, after the CONNACK is queued.
    pub fn resume_session(&mut self, client_id: &MqttStr, now: Instant) {
        if let Some(session) = self.sessions.get_mut(client_id) {
            let expired = session.resume(now);
            self.stats
                .dropped_expired
                .set(self.stats.dropped_expired.get() + expired);
        }
    }

    /// The connection `connection_id` of `client_id` ended. Returns the will to publish now
    /// (if any) and, when the session outlives the connection, its expiry and generation
    /// for the caller's timers.
    pub fn close_connection(
        &mut self,
        client_id: &MqttStr,
        connection_id: u64,
        publish_will: bool,
        now: Instant,
    ) -> Closed {
        let mut closed = Closed::default();
        let Some(session) = self.sessions.get_mut(client_id) else {
            return closed;
        };
        // A connection that was taken over no longer owns the session.
        if session.connection.as_ref().map(|c| c.id) != Some(connection_id) {
            return closed;
        }
        session.connection = None;
        session.settle_sources();
        session.disconnected_at = Some(now);
        ShardStats::decr(&self.stats.clients_connected);
        let will = session.will.take();
        let expiry = session.session_expiry_secs;
        closed.generation = session.generation;
        if let (true, Some(will)) = (publish_will, will) {
            let delay = will.properties.will_delay_interval_secs.unwrap_or(0);
            let message = will_message(will, client_id.clone(), now);
            // The will goes at the earlier of its delay and the end of the session
            // [MQTT-3.1.3-9].
            if delay == 0 || expiry == 0 {
                closed.will_now = Some(message);
            } else {
                closed.will_later = Some((Duration::from_secs(delay.min(expiry).into()), message));
            }
        }
        if expiry == 0 {
            closed.interest_changes = self.remove_session(client_id);
        } else if expiry != u32::MAX {
            closed.expire_after = Some(Duration::from_secs(expiry.into()));
        }
        closed
    }

    /// The session's expiry timer fired: drop it unless the client came back.
    pub fn expire_session(&mut self, client_id: &MqttStr, generation: u64) -> Vec<InterestChange> {
        match self.sessions.get(client_id) {
            Some(session) if session.generation == generation && session.connection.is_none() => {
                self.remove_session(client_id)
            }
            _ => Vec::new(),
        }
    }

    /// Whether a delayed will may still go: the client has not reconnected since.
    pub fn will_still_due(&self, client_id: &MqttStr, generation: u64) -> bool {
        match self.sessions.get(client_id) {
            Some(session) => session.generation == generation && session.connection.is_none(),
            // The session ended meanwhile: its will was due at that moment.
            None => true,
        }
    }

    /// Updates the Session Expiry Interval from a 5.0 DISCONNECT [MQTT-3.14.2-?].
    pub fn set_session_expiry(&mut self, client_id: &MqttStr, secs: u32) {
        let max = self.config.session_expiry_secs_max;
        if let Some(session) = self.sessions.get_mut(client_id) {
            session.session_expiry_secs = secs.min(max);
        }
    }

    pub fn session_expiry(&self, client_id: &MqttStr) -> u32 {
        self.sessions
            .get(client_id)
            .map_or(0, |s| s.session_expiry_secs)
    }

    fn remove_session(&mut self, client_id: &MqttStr) -> Vec<InterestChange> {
        let Some(session) = self.sessions.remove(client_id) else {
            return Vec::new();
        };
        self.session_client_ids.remove(&session.id);
        ShardStats::decr(&self.stats.sessions);
        let mut changes = Vec::new();
        for filter in session.subscriptions.keys() {
            self.remove_subscription(filter, session.id, &mut changes);
        }
        changes
    }

    /// Adds one subscription; returns whether it is new for this session (Retain Handling 1
    /// needs that [MQTT-3.8.4-?]) and records interest changes.
    pub fn add_subscription(
        &mut self,
        client_id: &MqttStr,
        filter: &str,
        entry: SubscriptionEntry,
        changes: &mut Vec<InterestChange>,
    ) -> bool {
        let Some(session) = self.sessions.get_mut(client_id) else {
            return false;
        };
        let session_id = session.id;
        let is_new = session
            .subscriptions
            .insert(filter.to_string(), entry)
            .is_none();
        let tree = if crate::protocol::topic::is_shared(filter) {
            &mut self.shared_subscriptions
        } else {
            &mut self.subscriptions
        };
        tree.subscribe(filter, session_id, entry);
        if is_new {
            ShardStats::incr(&self.stats.subscriptions);
            let count = self
                .local_filter_counts
                .entry(filter.to_string())
                .or_insert(0);
            *count += 1;
            if *count == 1 {
                self.interest.subscribe(filter, self.id, ());
                changes.push(InterestChange {
                    filter: filter.to_string(),
                    added: true,
                });
            }
        }
        is_new
    }

    /// Removes one subscription of `client_id`; `false` if it had none for `filter`.
    pub fn unsubscribe(
        &mut self,
        client_id: &MqttStr,
        filter: &str,
        changes: &mut Vec<InterestChange>,
    ) -> bool {
        let Some(session) = self.sessions.get_mut(client_id) else {
            return false;
        };
        if session.subscriptions.remove(filter).is_none() {
            return false;
        }
        let session_id = session.id;
        self.remove_subscription(filter, session_id, changes);
        true
    }

    fn remove_subscription(
        &mut self,
        filter: &str,
        session_id: SessionId,
        changes: &mut Vec<InterestChange>,
    ) {
        let tree = if crate::protocol::topic::is_shared(filter) {
            &mut self.shared_subscriptions
        } else {
            &mut self.subscriptions
        };
        tree.unsubscribe(filter, &session_id);
        ShardStats::decr(&self.stats.subscriptions);
        if let Some(count) = self.local_filter_counts.get_mut(filter) {
            *count -= 1;
            if *count == 0 {
                self.local_filter_counts.remove(filter);
                self.interest.unsubscribe(filter, &self.id);
                changes.push(InterestChange {
                    filter: filter.to_string(),
                    added: false,
                });
            }
        }
    }

    /// Another shard's interest changed.
    pub fn apply_interest(&mut self, shard: ShardId, filter: &str, added: bool) {
        if added {
            self.interest.subscribe(filter, shard, ());
        } else {
            self.interest.unsubscribe(filter, &shard);
        }
    }

    /// Sets or clears (empty payload) the retained message of a topic [MQTT-3.3.1-5..7].
    pub fn set_retained(&mut self, message: &Rc<Message>) {
        if message.payload.is_empty() {
            self.retained.remove(&message.topic);
        } else {
            let mut retained = (**message).clone();
            retained.retain = true;
            self.retained.set(&message.topic, Rc::new(retained));
        }
        self.stats.retained_messages.set(self.retained.len() as u64);
    }

    /// Retained messages for a new subscription, per its Retain Handling [MQTT-3.3.1-9..11];
    /// none for shared subscriptions [MQTT-3.8.4-?].
    pub fn deliver_retained(
        &mut self,
        client_id: &MqttStr,
        filter: &str,
        entry: SubscriptionEntry,
        is_new: bool,
        now: Instant,
    ) {
        if crate::protocol::topic::is_shared(filter) {
            return;
        }
        match entry.options.retain_handling {
            RetainHandling::Never => return,
            RetainHandling::OnNewSubscribe if !is_new => return,
            _ => {}
        }
        let mut found = Vec::new();
        self.retained
            .for_each_match(filter, |_, message| found.push(message.clone()));
        let Some(session_id) = self.sessions.get(client_id).map(|s| s.id) else {
            return;
        };
        for message in found {
            if message.is_expired(now) {
                continue;
            }
            let qos = entry.options.qos.min(message.qos);
            let ids = entry.subscription_id.into_iter().collect();
            // Sent because of a new subscription: RETAIN is set [MQTT-3.3.1-8].
            self.deliver_to(
                session_id,
                Delivery {
                    message: message.clone(),
                    qos,
                    retain: true,
                    subscription_ids: ids,
                    source: SourceAck::default(),
                },
                now,
            );
        }
    }

    /// PUBACK from the client.
    pub fn on_puback(&mut self, client_id: &MqttStr, packet_id: u16, now: Instant) {
        if let Some(session) = self.sessions.get_mut(client_id) {
            session.complete(packet_id, super::session::OutboundState::AwaitingPubAck);
            let expired = session.pump(now);
            self.stats
                .dropped_expired
                .set(self.stats.dropped_expired.get() + expired);
        }
    }

    /// PUBREC from the client: `true` if the packet id was in flight.
    pub fn on_pubrec(
        &mut self,
        client_id: &MqttStr,
        packet_id: u16,
        reason: ReasonCode,
        now: Instant,
    ) -> bool {
        let Some(session) = self.sessions.get_mut(client_id) else {
            return false;
        };
        if reason.is_error() {
            // A PUBREC with an error ends the exchange [MQTT-4.3.3-?]: no PUBREL follows.
            session.complete(packet_id, super::session::OutboundState::AwaitingPubRec);
            session.pump(now);
            return false;
        }
        session.received(packet_id)
    }

    pub fn on_pubcomp(&mut self, client_id: &MqttStr, packet_id: u16, now: Instant) {
        if let Some(session) = self.sessions.get_mut(client_id) {
            session.complete(packet_id, super::session::OutboundState::AwaitingPubComp);
            let expired = session.pump(now);
            self.stats
                .dropped_expired
                .set(self.stats.dropped_expired.get() + expired);
        }
    }

    /// Sessions found congested since the last call (deliveries from other shards).
    pub fn take_congested(&mut self) -> Vec<MqttStr> {
        std::mem::take(&mut self.congested)
    }

    /// A connected session whose queue holds half its maximum or more.
    pub fn is_congested(&self, client_id: &MqttStr) -> bool {
        self.sessions.get(client_id).is_some_and(|session| {
            session.connection.is_some()
                && session.pending.len() * 2 >= self.config.session_queue_messages_max
        })
    }

    pub fn connection(&self, client_id: &MqttStr) -> Option<Rc<Connection>> {
        self.sessions
            .get(client_id)
            .and_then(|s| s.connection.clone())
    }

    /// Sizes of the bounded queues of this shard's sessions and connections, for the
    /// gauges: (session queues, in flight, connection write queues).
    pub fn queue_totals(&self) -> (u64, u64, u64) {
        let mut totals = (0, 0, 0);
        for session in self.sessions.values() {
            totals.0 += session.pending.len() as u64;
            totals.1 += session.outbound.len() as u64;
            if let Some(connection) = &session.connection {
                totals.2 += connection.queued_len() as u64;
            }
        }
        totals
    }

    /// Every connection of this shard, for shutdown.
    pub fn connections(&self) -> Vec<Rc<Connection>> {
        self.sessions
            .values()
            .filter_map(|s| s.connection.clone())
            .collect()
    }

    pub fn has_session(&self, client_id: &MqttStr) -> bool {
        self.sessions.contains_key(client_id)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// What a closed connection leaves to do.
#[derive(Default)]
pub struct Closed {
    pub will_now: Option<Message>,
    pub will_later: Option<(Duration, Message)>,
    pub expire_after: Option<Duration>,
    pub generation: u64,
    pub interest_changes: Vec<InterestChange>,
}

pub(super) fn will_message(
    will: crate::protocol::Will,
    publisher: MqttStr,
    now: Instant,
) -> Message {
    let mut properties = crate::protocol::PublishProperties {
        payload_format_indicator: will.properties.payload_format_indicator,
        message_expiry_interval_secs: will.properties.message_expiry_interval_secs,
        content_type: will.properties.content_type,
        response_topic: will.properties.response_topic,
        correlation_data: will.properties.correlation_data,
        user_properties: will.properties.user_properties,
        ..Default::default()
    };
    properties.topic_alias = None;
    Message {
        expires_at: properties
            .message_expiry_interval_secs
            .map(|secs| now + Duration::from_secs(secs.into())),
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        publisher,
    }
}

/// The keep alive the server imposes, if it differs from the client's (3.2.2.3.14).
pub fn granted_keep_alive(requested_secs: u16, config: &BrokerConfig) -> Option<u16> {
    let max = config.keep_alive_secs_max;
    if max > 0 && (requested_secs == 0 || requested_secs > max) {
        Some(max)
    } else {
        None
    }
}
