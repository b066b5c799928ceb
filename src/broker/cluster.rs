//! A shard's part in a cluster (`crate::cluster`): it writes the messages other nodes want
//! to the messages topic (the publisher's PUBACK/PUBREC waits for Kafka), writes its
//! interest changes, retained messages and sessions' owners to the state topic, takes
//! sessions over from other nodes and hands them over (`shard/handover.rs` moves their
//! contents), and applies what the state reader and the producer send back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::bridge::source::Receipt;
use crate::cluster::{
    Envelope, Node, NotSent, ShardLink, StateSnapshot, Update, SEND_IN_FLIGHT_MAX,
};
use crate::protocol::{MqttStr, QoS, ReasonCode};
use crate::runtime::{self, WaitList, WakeEnd};

use super::context::{DeferredAck, ShardContext, ShardRef};
use super::message::Message;
use super::publish::{settle_deferred, Verdict};
use super::router;
use super::shard::{shard_for, will_message, InterestChange, RemoteTargets};

/// What waits for a record of the messages topic.
pub enum Waiter {
    /// A QoS 1/2 publisher's acknowledgement.
    Publish(Rc<DeferredAck>),
    /// A Kafka source record's share: it is committed once other nodes' copy is in Kafka.
    Source(Receipt),
}

/// This shard's side of the cluster.
pub struct ShardCluster {
    pub node: Arc<Node>,
    link: Arc<ShardLink>,
    next_ticket: Cell<u64>,
    in_flight: Cell<usize>,
    /// What waits for a record of the messages topic, by ticket.
    waiting: RefCell<HashMap<u64, Waiter>>,
    /// Publishers waiting for room among the records in flight.
    room: WaitList,
    /// CONNECTs waiting for another node to hand their session over, by client id.
    handovers: RefCell<HashMap<MqttStr, PendingHandover>>,
    handover_arrived: WaitList,
}

impl ShardCluster {
    pub fn new(node: Arc<Node>, link: Arc<ShardLink>) -> ShardCluster {
        ShardCluster {
            node,
            link,
            next_ticket: Cell::new(1),
            in_flight: Cell::new(0),
            waiting: RefCell::new(HashMap::new()),
            room: WaitList::default(),
            handovers: RefCell::new(HashMap::new()),
            handover_arrived: WaitList::default(),
        }
    }

    /// Makes `waiter` wait for the record of `ticket`.
    pub fn wait_for(&self, ticket: u64, waiter: Waiter) {
        self.waiting.borrow_mut().insert(ticket, waiter);
    }

    /// Whether an acknowledgement `this` picks waits for the messages topic.
    pub fn is_waiting(&self, this: impl Fn(&Rc<DeferredAck>) -> bool) -> bool {
        self.waiting.borrow().values().any(|waiter| match waiter {
            Waiter::Publish(ack) => this(ack),
            Waiter::Source(_) => false,
        })
    }

    /// A ticket and a place among the records in flight, waiting for one while all are
    /// taken (backpressure: the publisher is not read meanwhile).
    async fn reserve(&self) -> Option<u64> {
        while self.in_flight.get() >= SEND_IN_FLIGHT_MAX {
            self.room.wait(Duration::from_millis(100)).await;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.node
            .metrics
            .records_in_flight
            .fetch_add(1, Ordering::Relaxed);
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        Some(ticket)
    }

    /// Gives back a place taken by [`ShardCluster::reserve`] (for a record never sent, or
    /// one Kafka answered for).
    fn release(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.node
            .metrics
            .records_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Loads what the state topic held at start: the other nodes' interest and the retained
/// messages.
pub fn load_snapshot(shard: &ShardContext, snapshot: &StateSnapshot) {
    let mut state = shard.state.borrow_mut();
    for (node, name, filter) in &snapshot.interest {
        state.apply_node_interest(*node, name, filter, true);
    }
    let now = Instant::now();
    for envelope in &snapshot.retained {
        state.set_retained(&Rc::new(message_of(envelope.clone(), now)));
    }
}

/// An envelope read back as a message (from another node, the state topic, a hand-over).
pub(super) fn message_of(envelope: Envelope, now: Instant) -> Message {
    Message {
        expires_at: envelope
            .properties
            .message_expiry_interval_secs
            .map(|secs| now + Duration::from_secs(secs.into())),
        topic: envelope.topic,
        payload: envelope.payload,
        qos: envelope.qos,
        retain: envelope.retain,
        properties: envelope.properties,
        publisher: envelope.publisher,
    }
}

/// Applies the state reader's updates and the producer's reports until the process ends.
pub async fn serve_cluster(shard: ShardRef, wake: WakeEnd) {
    let mut woken = wake.listen();
    let Some(cluster) = shard.cluster.as_ref() else {
        return;
    };
    loop {
        while let Some(completion) = cluster.link.pop_completion() {
            cluster.release();
            let waiter = cluster.waiting.borrow_mut().remove(&completion.ticket);
            match waiter {
                Some(Waiter::Publish(ack)) => {
                    let verdict = if completion.stored {
                        Verdict::Accepted
                    } else {
                        Verdict::Failed(ReasonCode::UnspecifiedError)
                    };
                    settle_deferred(&shard, &ack, verdict);
                }
                // Not stored: left unfinished, the record is read again.
                Some(Waiter::Source(receipt)) if completion.stored => receipt.finish(true),
                Some(Waiter::Source(_)) | None => {}
            }
        }
        if cluster.room.waiting() > 0 && cluster.in_flight.get() < SEND_IN_FLIGHT_MAX {
            cluster.room.wake_all();
        }
        let now = Instant::now();
        let mut taken_over = Vec::new();
        let mut dead_wills = Vec::new();
        while let Some(update) = cluster.link.pop_update() {
            let mut state = shard.state.borrow_mut();
            match update {
                Update::Interest {
                    node,
                    node_name,
                    filter,
                    added,
                } => state.apply_node_interest(node, &node_name, &filter, added),
                Update::Retained(envelope) => {
                    state.set_retained(&Rc::new(message_of(*envelope, now)));
                }
                Update::TakenOver {
                    client,
                    to,
                    generation,
                    clean,
                } => {
                    let client = MqttStr::from(client.as_str());
                    if shard_for(client.as_bytes(), shard.count) == shard.id {
                        taken_over.push((client, to, generation, clean));
                    }
                }
                Update::DeadWill(will) => match Envelope::decode(&will) {
                    Ok(envelope) => dead_wills.push(message_of(envelope, now)),
                    Err(error) => tracing::warn!("cluster: a will is unreadable: {error}"),
                },
                Update::HandedOver {
                    client,
                    generation,
                    session,
                } => {
                    let client = MqttStr::from(client.as_str());
                    let mut handovers = cluster.handovers.borrow_mut();
                    if let Some(pending) = handovers.get_mut(&client) {
                        if pending.generation == generation {
                            pending.session = Some(session);
                            cluster.handover_arrived.wake_all();
                        }
                    }
                }
            }
        }
        for will in dead_wills {
            let shard = shard.clone();
            runtime::spawn(async move {
                router::publish(&shard, will).await;
            });
        }
        for (client, to, generation, clean) in taken_over {
            runtime::spawn(give_up(shard.clone(), client, to, generation, clean));
        }
        if !woken.wait().await {
            return;
        }
    }
}

/// Sends `message` to the other nodes that want it (`targets`). Returns the ticket the
/// publisher's acknowledgement waits for (QoS 1/2), or None (QoS 0, or no node wants it).
pub async fn send_to_nodes(
    shard: &ShardRef,
    message: &Message,
    targets: &RemoteTargets,
) -> Option<u64> {
    let cluster = shard.cluster.as_ref()?;
    if !targets.has_nodes() {
        return None;
    }
    let qos = message.qos;
    if qos == QoS::AtMostOnce && cluster.in_flight.get() >= SEND_IN_FLIGHT_MAX {
        cluster
            .node
            .metrics
            .messages_dropped_in_flight_full
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let ticket = cluster.reserve().await?;
    let Some(mut envelope) = envelope_of(message, &cluster.node.name, Instant::now()) else {
        // Expired on the way [MQTT-3.3.2-5].
        cluster.release();
        return None;
    };
    envelope.ordinary = targets.nodes_ordinary;
    envelope.shared = (targets.nodes_shared.iter())
        .map(|(group, node)| (group.clone(), node.to_string()))
        .collect();
    let envelope = envelope.encode();
    // One publisher's messages share a partition: their order holds for every subscriber.
    let key = if message.publisher.is_empty() {
        message.topic.as_bytes()
    } else {
        message.publisher.as_bytes()
    };
    loop {
        match cluster.node.send_message(shard.id, ticket, key, &envelope) {
            Ok(()) => break,
            Err(NotSent::Full) if qos != QoS::AtMostOnce => {
                runtime::sleep(Duration::from_millis(1)).await;
            }
            Err(NotSent::Full) => {
                cluster
                    .node
                    .metrics
                    .messages_dropped_in_flight_full
                    .fetch_add(1, Ordering::Relaxed);
                cluster.release();
                return None;
            }
            Err(NotSent::Failed(error)) => {
                tracing::warn!("cluster: a message for other nodes was not sent: {error}");
                cluster
                    .node
                    .metrics
                    .messages_send_failed
                    .fetch_add(1, Ordering::Relaxed);
                cluster.release();
                return None;
            }
        }
    }
    (qos != QoS::AtMostOnce).then_some(ticket)
}

/// `message` as it crosses to other nodes (for nobody yet: the caller says who), its
/// Message Expiry Interval what is left of it [MQTT-3.3.2-6]; None once expired.
fn envelope_of(message: &Message, node: &str, now: Instant) -> Option<Envelope> {
    let mut properties = message.properties.clone();
    if let Some(at) = message.expires_at {
        let left = at.saturating_duration_since(now);
        if left.is_zero() {
            return None;
        }
        // Rounded up: a message with time left never goes as "0 seconds".
        properties.message_expiry_interval_secs =
            Some(left.as_secs() as u32 + u32::from(left.subsec_nanos() > 0));
    }
    Some(Envelope {
        node: node.to_string(),
        publisher: message.publisher.clone(),
        ordinary: false,
        shared: Vec::new(),
        topic: message.topic.clone(),
        qos: message.qos,
        retain: message.retain,
        properties,
        payload: message.payload.clone(),
    })
}

/// A retained message set or cleared on this node: every node keeps it (state topic).
/// Returns the ticket a QoS 1/2 publisher's acknowledgement waits for: a retained message
/// acknowledged is in Kafka, and outlives the node.
pub async fn share_retained(shard: &ShardContext, message: &Message) -> Option<u64> {
    let cluster = shard.cluster.as_ref()?;
    let ticket = if message.qos == QoS::AtMostOnce {
        None
    } else {
        cluster.reserve().await
    };
    let key = format!("r/{}", message.topic);
    let (shard_id, number) = ticket.map_or((usize::MAX, 0), |t| (shard.id, t));
    if message.payload.is_empty() {
        cluster.node.send_state_for(shard_id, number, &key, None);
        return ticket;
    }
    let Some(mut envelope) = envelope_of(message, &cluster.node.name, Instant::now()) else {
        return ticket;
    };
    envelope.retain = true;
    let value = envelope.encode();
    cluster
        .node
        .send_state_for(shard_id, number, &key, Some(&value));
    ticket
}

/// This shard's interest changed: the other nodes must know (state topic).
pub fn share_interest(shard: &ShardContext, changes: &[InterestChange]) {
    let Some(cluster) = shard.cluster.as_ref() else {
        return;
    };
    for change in changes {
        let key = cluster.node.interest_key(shard.id, &change.filter);
        let value: Option<&[u8]> = change.added.then_some(b"1");
        cluster.node.send_state(&key, value);
    }
}

/// How long a CONNECT waits for the node that had its session to hand it over.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// A CONNECT on this node: the session becomes this node's in the whole cluster (its
/// owner record), and the node that had it closes the old connection. Unless Clean Start,
/// that node hands the session over and it is installed here before the CONNACK.
pub async fn claim_session(
    shard: &ShardRef,
    client_id: &MqttStr,
    clean_start: bool,
    will: Option<crate::protocol::Will>,
) {
    let Some(cluster) = shard.cluster.as_ref() else {
        return;
    };
    let node = &cluster.node;
    let generation = node.next_generation();
    let will = will.and_then(|will| {
        let now = Instant::now();
        envelope_of(&will_message(will, client_id.clone(), now), &node.name, now)
    });
    let will = will.map(|envelope| envelope.encode());
    let Some(previous) = node.claim(client_id.as_str(), generation, clean_start, will) else {
        return;
    };
    if previous.node == node.name || clean_start || !node.is_alive(&previous.node) {
        return;
    }
    cluster.handovers.borrow_mut().insert(
        client_id.clone(),
        PendingHandover {
            generation,
            session: None,
        },
    );
    let deadline = Instant::now() + HANDOVER_WAIT;
    let session = loop {
        let arrived = cluster
            .handovers
            .borrow_mut()
            .get_mut(client_id)
            .and_then(|pending| pending.session.take());
        if arrived.is_some() {
            break arrived;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        cluster.handover_arrived.wait(left).await;
    };
    cluster.handovers.borrow_mut().remove(client_id);
    let metrics = &node.metrics;
    let Some(session) = session else {
        metrics.handover_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client_id = %client_id,
            node = %previous.node,
            "client {client_id}: node {} did not hand its session over within {}s; it starts afresh",
            previous.node,
            HANDOVER_WAIT.as_secs()
        );
        return;
    };
    node.handed_over(client_id.as_str());
    if session.is_empty() {
        return;
    }
    let installed = shard
        .state
        .borrow_mut()
        .install_session(client_id, &session, Instant::now());
    match installed {
        Ok(changes) => {
            metrics.sessions_moved_in.fetch_add(1, Ordering::Relaxed);
            router::announce_interest(shard, changes, true).await;
        }
        Err(error) => tracing::warn!(client_id = %client_id, "client {client_id}: {error}"),
    }
}

/// A session handed over, waiting for the CONNECT that asked for it.
pub struct PendingHandover {
    generation: u64,
    session: Option<Bytes>,
}

/// The connection of `client_id` ended or its session expired here: if the session is
/// gone, nobody in the cluster owns it any more (unless another node took it meanwhile).
pub fn session_closed(shard: &ShardContext, client_id: &MqttStr) {
    let Some(cluster) = shard.cluster.as_ref() else {
        return;
    };
    let (kept, connected) = {
        let state = shard.state.borrow();
        (
            state.has_session(client_id),
            state.connection(client_id).is_some(),
        )
    };
    if !kept {
        cluster.node.release(client_id.as_str());
    } else if !connected {
        // Kept for a client that is away (not taken over by a new connection here).
        cluster.node.forget_will(client_id.as_str());
    }
}

/// Whether `client_id`'s session now belongs to another node of the cluster (its client
/// connected there).
pub fn moved_away(shard: &ShardContext, client_id: &MqttStr) -> bool {
    shard.cluster.as_ref().is_some_and(|cluster| {
        cluster
            .node
            .owner_of(client_id.as_str())
            .is_some_and(|owner| owner.node != cluster.node.name)
    })
}

/// Another node took a client whose session this shard has: the connection closes with
/// 0x8E, its will goes if due, and (unless the new connection starts clean) the session
/// is handed over to that node.
async fn give_up(shard: ShardRef, client: MqttStr, to: String, generation: u64, clean: bool) {
    let given = shard
        .state
        .borrow_mut()
        .give_up_session(&client, clean, Instant::now());
    let Some(cluster) = shard.cluster.as_ref() else {
        return;
    };
    if !clean {
        let session = given.session.clone().unwrap_or_default();
        if given.session.is_some() {
            cluster
                .node
                .metrics
                .sessions_moved_out
                .fetch_add(1, Ordering::Relaxed);
        }
        cluster
            .node
            .hand_over(client.as_str(), &to, generation, &session);
    }
    shard.ease_congestion();
    router::announce_interest(&shard, given.interest_changes, false).await;
    if let Some(will) = given.will_now {
        router::publish(&shard, will).await;
    }
}
