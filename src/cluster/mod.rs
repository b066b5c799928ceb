//! Many ferrymq nodes acting as one broker, with Kafka as their only shared state and only
//! coordination (`[cluster]`): no consensus, gossip or membership protocol of our own.
//!
//! Two internal topics, named `PREFIX` + `messages` and `PREFIX` + `state`:
//! - **messages** (deleted after `retention_ms`): a PUBLISH that subscribers on other nodes
//!   want, as an [`Envelope`], keyed by its publisher's client id: one publisher's messages
//!   share a partition and keep their order. Each node reads every partition as a Kafka
//!   source of its own (`bridge::source`, consumer group `ferrymq-cluster-NAME-NODE`), so a
//!   record is handed to its subscribers and committed as any source record is.
//! - **state** (compacted): what every node must know, read whole at start and followed
//!   after (`state.rs`): `i/NODE/SHARD/FILTER` a shard of NODE has subscribers for FILTER
//!   (its interest: publishers elsewhere send it matching messages), `r/TOPIC` the retained
//!   message of TOPIC (an envelope; none: cleared), `n/NODE` NODE's heartbeat.
//!
//! A node does not listen before it has read the state topic to its end: retained messages
//! and the other nodes' interest are in place before its first client.
//!
//! May import what the bridge may, and the bridge (its Kafka source machinery).

mod admin;
pub mod envelope;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam::queue::ArrayQueue;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use rdkafka::message::{BorrowedMessage, Message as _};

use crate::bridge::source::{
    consumer_config, start_consumer, CompiledSource, CrossNode, ReadRecord, RecordReader,
    SourceInbox, SourceThread,
};
use crate::config::{BrokerClusterConfig, Config, SourceConfig, SourceStart};
use crate::metrics::{ClusterMetrics, SourceMetrics};
use crate::runtime::{self, CrossThreadWake, WakeEnd};

pub use envelope::Envelope;
pub use state::StateSnapshot;

/// Records one shard may have on their way to the messages topic; beyond it QoS 1/2
/// publishers wait and QoS 0 messages for other nodes are dropped (counted).
pub const SEND_IN_FLIGHT_MAX: usize = 10_000;

/// Updates of the state topic waiting for one shard; a full queue holds the state reader
/// (Kafka keeps the rest).
pub const SHARD_UPDATES_MAX: usize = 4096;

/// Another node, as the shards number it: ids are given by the state reader in the order
/// nodes first appear, the same on every shard.
pub type NodeId = usize;

/// A change the state topic brought, for every shard.
#[derive(Clone, Debug)]
pub enum Update {
    /// A shard of `node` now has (or no longer has) subscribers for `filter`; sent when the
    /// first shard of the node gains one and when its last loses it.
    Interest {
        node: NodeId,
        node_name: Arc<str>,
        filter: String,
        added: bool,
    },
    /// The retained message of a topic, set or (empty payload) cleared.
    Retained(Box<Envelope>),
    /// Client `client`, whose session this node owned, connected to node `to`: close its
    /// connection here (DISCONNECT 0x8E) and, unless `clean`, hand its session over.
    TakenOver {
        client: String,
        to: String,
        generation: u64,
        clean: bool,
    },
    /// The will (an envelope) of a client whose node died while it was connected: this
    /// node publishes it.
    DeadWill(Bytes),
    /// The session of `client` handed over to this node for its connection `generation`
    /// (empty: the old node had none).
    HandedOver {
        client: String,
        generation: u64,
        session: Bytes,
    },
}

/// The node that owns a client id's session, as the state topic last said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    /// Unique per connection in the cluster (see [`Node::next_generation`]).
    pub generation: u64,
    /// The will of the client's connection while it is connected (an envelope): if its
    /// node dies, another node publishes it.
    pub will: Option<Bytes>,
}

impl Owner {
    /// The record value: `NODE GENERATION CLEAN`, then a newline and the will's envelope
    /// when there is one.
    fn encode(&self, clean: bool) -> Vec<u8> {
        let mut value =
            format!("{} {} {}", self.node, self.generation, u8::from(clean)).into_bytes();
        if let Some(will) = &self.will {
            value.push(b'\n');
            value.extend_from_slice(will);
        }
        value
    }

    fn decode(value: &[u8]) -> Option<(Owner, bool)> {
        let (text, will) = match value.iter().position(|b| *b == b'\n') {
            Some(at) => (&value[..at], Some(Bytes::copy_from_slice(&value[at + 1..]))),
            None => (value, None),
        };
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.split(' ');
        let node = parts.next()?.to_string();
        let generation = parts.next()?.parse().ok()?;
        let clean = parts.next()? == "1";
        Some((
            Owner {
                node,
                generation,
                will,
            },
            clean,
        ))
    }
}

/// What the state reader learned that the shards look up: who owns each session in the
/// cluster and when each node was last heard of.
#[derive(Default)]
pub struct Directory {
    pub owners: HashMap<String, Owner>,
    /// Per node, its last heartbeat (its clock, ms since the epoch).
    pub heartbeats: HashMap<String, i64>,
}

/// A record of the messages topic that Kafka took or refused.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub ticket: u64,
    pub stored: bool,
}

/// What one shard receives from the cluster's threads: state updates from the state reader
/// and delivery reports from the producer, with one wake-up for both.
pub struct ShardLink {
    updates: ArrayQueue<Update>,
    completions: ArrayQueue<Completion>,
    wake: CrossThreadWake,
}

impl ShardLink {
    fn new() -> std::io::Result<(ShardLink, WakeEnd)> {
        let (wake, end) = runtime::cross_thread_wake()?;
        Ok((
            ShardLink {
                updates: ArrayQueue::new(SHARD_UPDATES_MAX),
                // At most SEND_IN_FLIGHT_MAX records of a shard are in flight (the shard
                // counts them), so a report always finds room.
                completions: ArrayQueue::new(SEND_IN_FLIGHT_MAX),
                wake,
            },
            end,
        ))
    }

    /// Updates waiting for the shard.
    pub fn updates_queued(&self) -> usize {
        self.updates.len()
    }

    pub fn pop_update(&self) -> Option<Update> {
        self.updates.pop()
    }

    pub fn pop_completion(&self) -> Option<Completion> {
        self.completions.pop()
    }

    /// Queues `update`, waiting while the shard's queue is full, unless the node is
    /// stopping (its shards may serve no more: the update would never be taken).
    fn push_update(&self, mut update: Update, stop: &std::sync::atomic::AtomicBool) {
        loop {
            match self.updates.push(update) {
                Ok(()) => break,
                Err(_) if stop.load(Ordering::Acquire) => return,
                Err(back) => {
                    update = back;
                    self.wake.wake();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.wake.wake();
    }
}

/// What a record carries through the producer: the shard and ticket its report goes to
/// (shard [`NO_SHARD`]: nobody waits), and which topic it is for.
pub struct Opaque {
    shard: usize,
    ticket: u64,
    state: bool,
}

/// The shard of a record nobody waits for.
const NO_SHARD: usize = usize::MAX;

struct ProducerReports {
    links: Vec<Arc<ShardLink>>,
    metrics: Arc<ClusterMetrics>,
}

impl ClientContext for ProducerReports {}

impl ProducerContext for ProducerReports {
    type DeliveryOpaque = Box<Opaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<Opaque>) {
        let Opaque {
            shard,
            ticket,
            state,
        } = *opaque;
        let stored = result.is_ok();
        if !stored {
            let failed = if state {
                &self.metrics.state_send_failed
            } else {
                &self.metrics.messages_send_failed
            };
            failed.fetch_add(1, Ordering::Relaxed);
        }
        if shard == NO_SHARD {
            return;
        }
        let link = &self.links[shard];
        // Room is guaranteed: the shard keeps at most SEND_IN_FLIGHT_MAX in flight.
        let _ = link.completions.push(Completion { ticket, stored });
        link.wake.wake();
    }
}

/// This node: its names, the internal topics, the producer all shards write through.
pub struct Node {
    pub cluster: String,
    pub name: String,
    /// Unique per start of this node: tells this run's state records from an earlier one's.
    pub incarnation: u64,
    pub messages_topic: String,
    pub state_topic: String,
    producer: ThreadedProducer<ProducerReports>,
    /// The shards' links, for reports of records that never reached the producer.
    links: Vec<Arc<ShardLink>>,
    pub metrics: Arc<ClusterMetrics>,
    /// Filled by the state reader; read on CONNECT.
    pub directory: Arc<Mutex<Directory>>,
    next_generation: AtomicU64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    state_reader: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Why a record was not handed to the producer.
#[derive(Debug)]
pub enum NotSent {
    /// librdkafka's queue is full: try again once reports came back.
    Full,
    /// Anything else (the error, for the log).
    Failed(String),
}

impl Node {
    /// Writes a message for the other nodes; `ticket` comes back to `shard` in a
    /// [`Completion`].
    pub fn send_message(
        &self,
        shard: usize,
        ticket: u64,
        key: &[u8],
        value: &Bytes,
    ) -> Result<(), NotSent> {
        let opaque = Box::new(Opaque {
            shard,
            ticket,
            state: false,
        });
        let record = BaseRecord::with_opaque_to(&self.messages_topic, opaque)
            .key(key)
            .payload(value.as_ref());
        match self.producer.send(record) {
            Ok(()) => {
                self.metrics.messages_sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((error, _)) => Err(match error.rdkafka_error_code() {
                Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => NotSent::Full,
                _ => NotSent::Failed(error.to_string()),
            }),
        }
    }

    /// Writes a record of the state topic (`value` None: a tombstone); nobody waits for it.
    pub fn send_state(&self, key: &str, value: Option<&[u8]>) {
        self.send_state_for(NO_SHARD, 0, key, value);
    }

    /// [`Node::send_state`], with `ticket` coming back to `shard` in a [`Completion`] once
    /// Kafka has the record (or lost it).
    pub fn send_state_for(&self, shard: usize, ticket: u64, key: &str, value: Option<&[u8]>) {
        let opaque = Box::new(Opaque {
            shard,
            ticket,
            state: true,
        });
        let mut record = BaseRecord::with_opaque_to(&self.state_topic, opaque).key(key.as_bytes());
        if let Some(value) = value {
            record = record.payload(value);
        }
        // State records are few (a subscription's first and last, retained messages):
        // wait for room rather than lose one.
        for _ in 0..1000 {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((error, back)) => {
                    if error.rdkafka_error_code()
                        != Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    {
                        self.state_not_sent(shard, ticket, key, &error.to_string());
                        return;
                    }
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.state_not_sent(shard, ticket, key, "librdkafka's queue stayed full");
    }

    /// A state record that never reached the producer: counted, and its waiter told.
    fn state_not_sent(&self, shard: usize, ticket: u64, key: &str, error: &str) {
        self.metrics
            .state_send_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key, "cluster: state record not sent: {error}");
        if shard != NO_SHARD {
            let link = &self.links[shard];
            let _ = link.completions.push(Completion {
                ticket,
                stored: false,
            });
            link.wake.wake();
        }
    }

    /// A generation no other connection in the cluster has: this run's incarnation in the
    /// high bits.
    pub fn next_generation(&self) -> u64 {
        (self.incarnation << 20) + self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Who owns `client`'s session, as far as this node knows.
    pub fn owner_of(&self, client: &str) -> Option<Owner> {
        self.directory
            .lock()
            .expect("directory")
            .owners
            .get(client)
            .cloned()
    }

    /// Whether `node` sent a heartbeat recently.
    pub fn is_alive(&self, node: &str) -> bool {
        let heard = self
            .directory
            .lock()
            .expect("directory")
            .heartbeats
            .get(node)
            .copied();
        heard.is_some_and(|at| unix_ms() - at < state::MEMBER_TIMEOUT_MS)
    }

    /// This node takes `client`'s session for connection `generation` (`clean`: without
    /// what it had), whose will is `will` (an envelope). Returns the owner before.
    pub fn claim(
        &self,
        client: &str,
        generation: u64,
        clean: bool,
        will: Option<Bytes>,
    ) -> Option<Owner> {
        let owner = Owner {
            node: self.name.clone(),
            generation,
            will,
        };
        self.send_state(&format!("s/{client}"), Some(&owner.encode(clean)));
        self.directory
            .lock()
            .expect("directory")
            .owners
            .insert(client.to_string(), owner)
    }

    /// `client` disconnected and its session stays here: its will is no longer one to
    /// publish if this node dies.
    pub fn forget_will(&self, client: &str) {
        let owner = {
            let mut directory = self.directory.lock().expect("directory");
            match directory.owners.get_mut(client) {
                Some(owner) if owner.node == self.name && owner.will.is_some() => {
                    owner.will = None;
                    owner.clone()
                }
                _ => return,
            }
        };
        self.send_state(&format!("s/{client}"), Some(&owner.encode(false)));
    }

    /// `client`'s session ended here: unless another node took it meanwhile, nobody owns it.
    pub fn release(&self, client: &str) {
        let mine = {
            let mut directory = self.directory.lock().expect("directory");
            match directory.owners.get(client) {
                Some(owner) if owner.node == self.name => {
                    directory.owners.remove(client);
                    true
                }
                _ => false,
            }
        };
        if mine {
            self.send_state(&format!("s/{client}"), None);
        }
    }

    /// Hands `client`'s session (encoded; empty: none) to `to` for its connection
    /// `generation`.
    pub fn hand_over(&self, client: &str, to: &str, generation: u64, session: &[u8]) {
        let mut value = Vec::with_capacity(session.len() + to.len() + 24);
        value.extend_from_slice(format!("{to} {generation} ").as_bytes());
        value.extend_from_slice(session);
        self.send_state(&format!("h/{client}"), Some(&value));
    }

    /// The hand-over of `client` arrived: its record can go.
    pub fn handed_over(&self, client: &str) {
        self.send_state(&format!("h/{client}"), None);
    }

    /// The key of a shard's interest in `filter`.
    pub fn interest_key(&self, shard: usize, filter: &str) -> String {
        format!("i/{}/{shard}/{filter}", self.name)
    }

    /// Stops the state reader and hands Kafka what the producer holds (at most `timeout`).
    pub fn close(&self, timeout: Duration) {
        self.stop.store(true, Ordering::Release);
        if let Some(reader) = self.state_reader.lock().expect("state reader").take() {
            let _ = reader.join();
        }
        // Gone from the members at once rather than after the heartbeat's age.
        self.send_state(&format!("n/{}", self.name), None);
        let _ = self.producer.flush(timeout);
    }
}

/// What `start` hands the server: the node, what the state topic held, and each shard's
/// link with the end it waits on.
pub struct Started {
    pub node: Arc<Node>,
    pub snapshot: StateSnapshot,
    pub links: Vec<(Arc<ShardLink>, WakeEnd)>,
}

/// Milliseconds since the Unix epoch (Kafka's timestamps).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The cluster section, the Kafka cluster it names and this node's name.
pub fn settings(config: &Config) -> Option<(&BrokerClusterConfig, &str, String)> {
    let cluster = config.cluster.as_ref()?;
    let kafka = cluster
        .kafka
        .as_deref()
        .or_else(|| config.kafka.clusters.keys().next().map(String::as_str))?;
    let port = config.listeners.first().map_or(0, |l| l.bind.port());
    Some((cluster, kafka, cluster.node_name(port)))
}

/// The librdkafka configuration of the Kafka cluster `kafka`: bootstrap and the cluster's
/// own properties (security included).
fn client_config(config: &Config, kafka: &str) -> ClientConfig {
    let cluster = &config.kafka.clusters[kafka];
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &cluster.bootstrap);
    for (key, value) in &cluster.config {
        client.set(key, value);
    }
    client
}

/// The Kafka source that reads the messages topic on this node: a consumer group of its
/// own, so every node reads every partition.
pub fn messages_source(config: &Config) -> Option<SourceConfig> {
    let (cluster, kafka, node) = settings(config)?;
    Some(SourceConfig {
        name: "cluster".to_string(),
        cluster: Some(kafka.to_string()),
        topics: vec![format!("{}messages", cluster.prefix())],
        group: Some(format!("ferrymq-cluster-{}-{node}", cluster.name)),
        // Not used: envelopes carry their topic.
        mqtt: "{topic}".to_string(),
        qos: crate::protocol::QoS::AtLeastOnce,
        qos_header: None,
        retain: false,
        retain_header: None,
        user_properties: Vec::new(),
        content_type_header: None,
        response_topic_header: None,
        correlation_data_header: None,
        message_expiry_header: None,
        // A new group's offsets are set at start (`admin::start_messages_group`); a partition
        // added later is read from its beginning.
        start: SourceStart::Earliest,
        in_flight_max: 10_000,
        start_delay_ms: 0,
        config: Default::default(),
    })
}

/// Creates the internal topics if missing, sets this node's group on the messages topic's
/// end if it is new, reads the state topic to its end and starts following it. Returns
/// once this node knows the cluster's state.
pub fn start(config: &Config, shard_count: usize) -> Result<Option<Started>, String> {
    let Some((cluster, kafka, node_name)) = settings(config) else {
        return Ok(None);
    };
    let prefix = cluster.prefix();
    let messages_topic = format!("{prefix}messages");
    let state_topic = format!("{prefix}state");
    let client = client_config(config, kafka);
    admin::ensure_topics(&client, cluster, &messages_topic, &state_topic)?;
    let group = messages_source(config)
        .and_then(|s| s.group)
        .expect("a cluster has a messages source");
    admin::start_messages_group(&client, &group, &messages_topic)?;

    let metrics = Arc::new(ClusterMetrics::new(&cluster.name, &node_name));
    let mut links = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (link, end) = ShardLink::new().map_err(|e| format!("cluster: {e}"))?;
        links.push((Arc::new(link), end));
    }
    let mut producer_config = client.clone();
    producer_config
        .set("client.id", format!("ferrymq-cluster-{node_name}"))
        .set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A message for other nodes is worth nothing late: its publisher waits for it.
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.messages", "200000");
    let producer: ThreadedProducer<ProducerReports> = producer_config
        .create_with_context(ProducerReports {
            links: links.iter().map(|(link, _)| link.clone()).collect(),
            metrics: metrics.clone(),
        })
        .map_err(|e| format!("cluster.kafka: cannot create the producer: {e}"))?;
    let incarnation = (unix_ms() as u64) << 16 ^ u64::from(std::process::id() & 0xffff);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let node = Arc::new(Node {
        cluster: cluster.name.clone(),
        name: node_name,
        incarnation,
        messages_topic,
        state_topic,
        producer,
        links: links.iter().map(|(link, _)| link.clone()).collect(),
        metrics,
        directory: Arc::new(Mutex::new(Directory::default())),
        next_generation: AtomicU64::new(1),
        stop: stop.clone(),
        state_reader: std::sync::Mutex::new(None),
    });
    let shard_links: Vec<Arc<ShardLink>> = links.iter().map(|(link, _)| link.clone()).collect();
    let (snapshot, reader) = state::start(&client, node.clone(), shard_links, stop)?;
    *node.state_reader.lock().expect("state reader") = Some(reader);
    Ok(Some(Started {
        node,
        snapshot,
        links,
    }))
}

/// Reads the envelopes of the messages topic for this node's shards: records this node
/// wrote are skipped (its own subscribers had them at once), as are those for nobody here.
/// Time a message spent on its way counts against its Message Expiry Interval
/// [MQTT-3.3.2-5].
fn messages_reader(node: String, metrics: Arc<ClusterMetrics>) -> RecordReader {
    RecordReader(Arc::new(move |message: &BorrowedMessage<'_>| {
        let envelope = match Envelope::decode(message.payload().unwrap_or_default()) {
            Ok(envelope) => envelope,
            Err(error) => {
                if metrics.malformed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "cluster: a record of the messages topic is unreadable: {error}"
                    );
                }
                return None;
            }
        };
        if envelope.node == node {
            return None;
        }
        metrics.messages_received.fetch_add(1, Ordering::Relaxed);
        let spent_ms = message
            .timestamp()
            .to_millis()
            .map_or(0, |at| (unix_ms() - at).max(0));
        metrics.record_latency(Duration::from_millis(spent_ms as u64));
        let groups: Vec<String> = (envelope.shared.into_iter())
            .filter(|(_, to)| *to == node)
            .map(|(group, _)| group)
            .collect();
        if !envelope.ordinary && groups.is_empty() {
            return None;
        }
        let mut properties = envelope.properties;
        if let Some(secs) = properties.message_expiry_interval_secs {
            let spent_secs = (spent_ms / 1000) as u32;
            if spent_secs >= secs {
                return None;
            }
            properties.message_expiry_interval_secs = Some(secs - spent_secs);
        }
        Some(ReadRecord {
            topic: envelope.topic,
            payload: envelope.payload,
            qos: envelope.qos,
            retain: envelope.retain,
            properties,
            publisher: envelope.publisher,
            cross_node: Some(Box::new(CrossNode {
                ordinary: envelope.ordinary,
                groups,
            })),
        })
    }))
}

/// Starts the consumer of the messages topic: a Kafka source whose records go to the
/// shards' source inboxes.
pub fn start_messages_consumer(
    config: &Config,
    node: &Node,
    inboxes: Arc<Vec<Arc<SourceInbox>>>,
    metrics: Arc<SourceMetrics>,
) -> Result<SourceThread, String> {
    let source = messages_source(config).expect("a cluster has a messages source");
    let mut compiled = CompiledSource::new(config.kafka.sources.len(), &source)?;
    compiled.reader = Some(messages_reader(node.name.clone(), node.metrics.clone()));
    let client = consumer_config(config, &source);
    start_consumer(compiled, client, inboxes, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn interest(filter: &str) -> Update {
        Update::Interest {
            node: 0,
            node_name: Arc::from("b"),
            filter: filter.to_string(),
            added: true,
        }
    }

    #[test]
    fn a_full_shard_queue_holds_the_reader_until_the_node_stops() {
        let (link, _end) = ShardLink::new().unwrap();
        let running = AtomicBool::new(false);
        for i in 0..SHARD_UPDATES_MAX {
            link.push_update(interest(&format!("f/{i}")), &running);
        }
        // Full: a stopping node's reader gives up instead of waiting for ever.
        let stopping = AtomicBool::new(true);
        link.push_update(interest("one/more"), &stopping);
        assert!(link.pop_update().is_some());
        let mut left = 1;
        while link.pop_update().is_some() {
            left += 1;
        }
        assert_eq!(left, SHARD_UPDATES_MAX);
    }

    #[test]
    fn an_owner_record_reads_back_with_its_will() {
        let owner = Owner {
            node: "n1".into(),
            generation: 42,
            will: Some(Bytes::from_static(b"\x01will\nwith newline")),
        };
        assert_eq!(
            Owner::decode(&owner.encode(true)),
            Some((owner.clone(), true))
        );
        let plain = Owner {
            will: None,
            ..owner
        };
        assert_eq!(Owner::decode(&plain.encode(false)), Some((plain, false)));
        assert_eq!(Owner::decode(b"n1 notanumber 0"), None);
    }
}
