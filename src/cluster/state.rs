//! The state reader: one thread per node that reads the compacted state topic from its
//! beginning, hands what it held to the shards before the node listens ([`StateSnapshot`]),
//! then follows it, turning records into [`Update`]s for every shard. It also writes this
//! node's heartbeat.
//!
//! Interest is kept per (node, shard, filter) in the topic and per (node, filter) for the
//! shards: a shard hears "node N has subscribers for F" when the first shard of N gains
//! one, and "no longer" when the last loses it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use std::sync::Mutex;

use super::{unix_ms, Directory, Envelope, Node, NodeId, Owner, ShardLink, Update};

/// How long start-up waits for the state topic to be read.
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);
/// How often a node writes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A node whose last heartbeat is older is not counted among the members, and is taken
/// for dead.
pub const MEMBER_TIMEOUT_MS: i64 = 10_000;
/// How often the reader samples its lag.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// How often the reader looks for nodes that died with sessions.
const DEATH_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Records of the state topic after the reader's position, over all partitions; None
/// when Kafka does not answer.
fn lag(consumer: &BaseConsumer, topic: &str, partitions: &[i32]) -> Option<u64> {
    let positions = consumer.position().ok()?;
    let mut lag = 0u64;
    for &partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(1))
            .ok()?;
        let position = positions
            .find_partition(topic, partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(at) => Some(at),
                _ => None,
            })
            // Nothing read from it yet: its records start at the low watermark.
            .unwrap_or(low);
        lag += (high - position).max(0) as u64;
    }
    Some(lag)
}

/// Sessions of nodes that died (no heartbeat for [`MEMBER_TIMEOUT_MS`]), when this node is
/// the one to deal with them (the first living node by name, so that one node does):
/// their owner records are removed, and the wills of those that were connected returned,
/// to publish. A node that stops cleanly removes its heartbeat, and its clients' wills
/// were published by itself.
fn take_dead_sessions(node: &Node) -> Vec<bytes::Bytes> {
    let now = unix_ms();
    let (dead, clients) = {
        let directory = node.directory.lock().expect("directory");
        let alive = |name: &str| {
            name == node.name
                || directory
                    .heartbeats
                    .get(name)
                    .is_some_and(|at| now - *at < MEMBER_TIMEOUT_MS)
        };
        let first_alive = directory
            .heartbeats
            .keys()
            .filter(|name| alive(name))
            .chain(std::iter::once(&node.name))
            .min()
            .cloned();
        if first_alive.as_deref() != Some(node.name.as_str()) {
            return Vec::new();
        }
        let dead: HashSet<String> = (directory.owners.values())
            .filter(|owner| !alive(&owner.node))
            .map(|owner| owner.node.clone())
            .collect();
        let clients: Vec<(String, Option<bytes::Bytes>)> = (directory.owners.iter())
            .filter(|(_, owner)| dead.contains(&owner.node))
            .map(|(client, owner)| (client.clone(), owner.will.clone()))
            .collect();
        (dead, clients)
    };
    if clients.is_empty() {
        return Vec::new();
    }
    tracing::warn!(
        nodes = ?dead,
        "cluster: node(s) {dead:?} stopped answering; {} of their sessions end here",
        clients.len()
    );
    let mut wills = Vec::new();
    let mut directory = node.directory.lock().expect("directory");
    for (client, will) in clients {
        directory.owners.remove(&client);
        node.send_state(&format!("s/{client}"), None);
        wills.extend(will);
    }
    wills
}

/// What the state topic held when the node started: loaded by every shard before it serves.
#[derive(Default)]
pub struct StateSnapshot {
    pub retained: Vec<Envelope>,
    /// Other nodes' interest: (node, its name, filter).
    pub interest: Vec<(NodeId, Arc<str>, String)>,
}

/// What the reader knows, from every record read so far.
struct Tables {
    own: String,
    node_ids: HashMap<String, NodeId>,
    names: Vec<Arc<str>>,
    /// Interest keys of other nodes present in the topic.
    interest_keys: HashSet<String>,
    /// Per (node, filter): how many of the node's shards have subscribers.
    node_filters: HashMap<(NodeId, String), u32>,
    /// Topics with a retained message.
    retained: HashSet<String>,
    /// Session owners and heartbeats, shared with the shards.
    directory: Arc<Mutex<Directory>>,
    /// This run's incarnation: session records of this node with another are stale.
    incarnation: u64,
    /// This node's interest keys left by an earlier run (they are cleared after catch-up:
    /// the sessions they stood for did not survive it).
    own_stale: HashSet<String>,
    /// Client ids whose sessions this node owned in an earlier run (cleared likewise).
    own_stale_sessions: HashSet<String>,
}

impl Tables {
    fn node_id(&mut self, name: &str) -> (NodeId, Arc<str>) {
        if let Some(&id) = self.node_ids.get(name) {
            return (id, self.names[id].clone());
        }
        let id = self.names.len();
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.node_ids.insert(name.to_string(), id);
        (id, name)
    }

    /// Applies one record; returns the update the shards must hear, if any.
    fn apply(&mut self, key: &str, value: Option<&[u8]>, caught_up: bool) -> Option<Update> {
        if let Some(rest) = key.strip_prefix("i/") {
            let mut parts = rest.splitn(3, '/');
            let (node, _shard, filter) = (parts.next()?, parts.next()?, parts.next()?);
            if node == self.own {
                if !caught_up {
                    if value.is_some() {
                        self.own_stale.insert(key.to_string());
                    } else {
                        self.own_stale.remove(key);
                    }
                }
                return None;
            }
            let (id, name) = self.node_id(node);
            let filter = filter.to_string();
            if value.is_some() {
                if !self.interest_keys.insert(key.to_string()) {
                    return None;
                }
                let count = self.node_filters.entry((id, filter.clone())).or_insert(0);
                *count += 1;
                return (*count == 1).then_some(Update::Interest {
                    node: id,
                    node_name: name,
                    filter,
                    added: true,
                });
            }
            if !self.interest_keys.remove(key) {
                return None;
            }
            let entry = (id, filter);
            let count = self.node_filters.get_mut(&entry)?;
            *count -= 1;
            if *count > 0 {
                return None;
            }
            self.node_filters.remove(&entry);
            return Some(Update::Interest {
                node: id,
                node_name: name,
                filter: entry.1,
                added: false,
            });
        }
        if let Some(topic) = key.strip_prefix("r/") {
            let envelope = value.and_then(|v| Envelope::decode(v).ok());
            return Some(Update::Retained(Box::new(match envelope {
                Some(envelope) if !envelope.payload.is_empty() => {
                    self.retained.insert(topic.to_string());
                    envelope
                }
                _ => {
                    self.retained.remove(topic);
                    cleared(topic)
                }
            })));
        }
        if let Some(client) = key.strip_prefix("s/") {
            return self.apply_owner(client, value, caught_up);
        }
        if let Some(client) = key.strip_prefix("h/") {
            let value = value?;
            if !caught_up {
                return None;
            }
            let mut parts = value.splitn(3, |b| *b == b' ');
            let to = std::str::from_utf8(parts.next()?).ok()?;
            let generation = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
            let session = parts.next().unwrap_or_default();
            return (to == self.own).then(|| Update::HandedOver {
                client: client.to_string(),
                generation,
                session: bytes::Bytes::copy_from_slice(session),
            });
        }
        if let Some(node) = key.strip_prefix("n/") {
            let heard = value
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|text| text.split(' ').nth(1))
                .and_then(|ms| ms.parse::<i64>().ok());
            let mut directory = self.directory.lock().expect("directory");
            match heard {
                Some(at) => directory.heartbeats.insert(node.to_string(), at),
                None => directory.heartbeats.remove(node),
            };
        }
        None
    }

    /// A session's owner changed (`value` None: the session ended). When another node took
    /// one this node owned, the shards must give it up.
    fn apply_owner(
        &mut self,
        client: &str,
        value: Option<&[u8]>,
        caught_up: bool,
    ) -> Option<Update> {
        let mut directory = self.directory.lock().expect("directory");
        let Some((owner, clean)) = value.and_then(Owner::decode) else {
            directory.owners.remove(client);
            self.own_stale_sessions.remove(client);
            return None;
        };
        let taken = owner.node != self.own;
        let previous = directory.owners.insert(client.to_string(), owner.clone());
        if !caught_up {
            if !taken && owner.generation >> 20 != self.incarnation {
                self.own_stale_sessions.insert(client.to_string());
            } else {
                self.own_stale_sessions.remove(client);
            }
            return None;
        }
        let was_mine = previous.is_some_and(|p| p.node == self.own);
        (taken && was_mine).then(|| Update::TakenOver {
            client: client.to_string(),
            to: owner.node,
            generation: owner.generation,
            clean,
        })
    }

    fn members(&self, now_ms: i64) -> u64 {
        let directory = self.directory.lock().expect("directory");
        let others = directory
            .heartbeats
            .iter()
            .filter(|(node, at)| **node != self.own && now_ms - **at < MEMBER_TIMEOUT_MS)
            .count();
        others as u64 + 1
    }
}

/// An envelope that clears the retained message of `topic`.
fn cleared(topic: &str) -> Envelope {
    Envelope {
        node: String::new(),
        publisher: Default::default(),
        ordinary: false,
        shared: Vec::new(),
        topic: crate::protocol::MqttStr::from(topic),
        qos: crate::protocol::QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        payload: Default::default(),
    }
}

/// Starts the reader; returns once the state topic was read to the end it had at start.
pub fn start(
    client: &ClientConfig,
    node: Arc<Node>,
    links: Vec<Arc<ShardLink>>,
    stop: Arc<AtomicBool>,
) -> Result<(StateSnapshot, JoinHandle<()>), String> {
    let mut config = client.clone();
    config
        .set(
            "group.id",
            format!("ferrymq-state-{}-{}", node.name, node.incarnation),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cluster.kafka: cannot create the state reader: {e}"))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("cluster-state".into())
        .spawn(move || {
            if let Err(error) = run(&consumer, &node, &links, &stop, &ready_tx) {
                let _ = ready_tx.send(Err(error));
            }
        })
        .map_err(|e| format!("cluster: cannot start the state reader: {e}"))?;
    match ready_rx.recv_timeout(CATCH_UP_WAIT) {
        Ok(Ok(snapshot)) => Ok((snapshot, thread)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!(
            "cluster.kafka: the state topic was not read within {}s",
            CATCH_UP_WAIT.as_secs()
        )),
    }
}

type Ready = mpsc::Sender<Result<StateSnapshot, String>>;

fn run(
    consumer: &BaseConsumer,
    node: &Node,
    links: &[Arc<ShardLink>],
    stop: &AtomicBool,
    ready: &Ready,
) -> Result<(), String> {
    let started = Instant::now();
    let topic = node.state_topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), CATCH_UP_WAIT)
        .map_err(|e| format!("cluster.kafka: no metadata for {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut assignment = TopicPartitionList::new();
    // Per partition, the offset to reach before the node knows the state it had at start.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, CATCH_UP_WAIT)
            .map_err(|e| format!("cluster.kafka: no offsets for {topic}: {e}"))?;
        if high > low {
            ends.insert(partition, high);
        }
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(|e| format!("cluster.kafka: {e}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("cluster.kafka: cannot read {topic}: {e}"))?;

    let mut tables = Tables {
        own: node.name.clone(),
        node_ids: HashMap::new(),
        names: Vec::new(),
        interest_keys: HashSet::new(),
        node_filters: HashMap::new(),
        retained: HashSet::new(),
        directory: node.directory.clone(),
        incarnation: node.incarnation,
        own_stale: HashSet::new(),
        own_stale_sessions: HashSet::new(),
    };
    let mut retained: HashMap<String, Envelope> = HashMap::new();
    let mut records = 0u64;
    let deadline = started + CATCH_UP_WAIT;
    while !ends.is_empty() {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cluster.kafka: the state topic {topic} was not read within {}s",
                CATCH_UP_WAIT.as_secs()
            ));
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            // Compaction may have removed a partition's last records: its position says
            // whether it is read to the end.
            if let Ok(positions) = consumer.position() {
                for element in positions.elements() {
                    if let Offset::Offset(at) = element.offset() {
                        if ends.get(&element.partition()).is_some_and(|end| at >= *end) {
                            ends.remove(&element.partition());
                        }
                    }
                }
            }
            continue;
        };
        let message = result.map_err(|e| format!("cluster.kafka: reading {topic}: {e}"))?;
        records += 1;
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if let Some(Update::Retained(envelope)) = tables.apply(&key, message.payload(), false) {
            if envelope.payload.is_empty() {
                retained.remove(envelope.topic.as_str());
            } else {
                retained.insert(envelope.topic.to_string(), *envelope);
            }
        }
        if let Some(&end) = ends.get(&message.partition()) {
            if message.offset() + 1 >= end {
                ends.remove(&message.partition());
            }
        }
    }
    // Interest this node held in an earlier run: its sessions are gone with it.
    for key in std::mem::take(&mut tables.own_stale) {
        node.send_state(&key, None);
    }
    for client in std::mem::take(&mut tables.own_stale_sessions) {
        node.release(&client);
    }
    let metrics = &node.metrics;
    metrics
        .catch_up_ms
        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    metrics.catch_up_records.store(records, Ordering::Relaxed);
    metrics
        .retained
        .store(tables.retained.len() as u64, Ordering::Relaxed);
    let snapshot = StateSnapshot {
        retained: retained.into_values().collect(),
        interest: tables
            .node_filters
            .keys()
            .map(|(id, filter)| (*id, tables.names[*id].clone(), filter.clone()))
            .collect(),
    };
    let heartbeat_key = format!("n/{}", node.name);
    let heartbeat = || format!("{} {}", node.incarnation, unix_ms());
    node.send_state(&heartbeat_key, Some(heartbeat().as_bytes()));
    node.directory
        .lock()
        .expect("directory")
        .heartbeats
        .insert(node.name.clone(), unix_ms());
    if ready.send(Ok(snapshot)).is_err() {
        return Ok(());
    }
    let mut last_heartbeat = Instant::now();
    let mut last_death_check = Instant::now();
    let mut last_lag = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            node.send_state(&heartbeat_key, Some(heartbeat().as_bytes()));
            last_heartbeat = Instant::now();
        }
        if last_lag.elapsed() >= LAG_EVERY {
            last_lag = Instant::now();
            if let Some(lag) = lag(consumer, topic, &partitions) {
                metrics.state_lag.store(lag, Ordering::Relaxed);
            }
        }
        if last_death_check.elapsed() >= DEATH_CHECK_EVERY {
            last_death_check = Instant::now();
            for will in take_dead_sessions(node) {
                // Wills go through one shard: it publishes them as a client's would be.
                if let Some(link) = links.first() {
                    link.push_update(Update::DeadWill(will), stop);
                }
            }
        }
        metrics
            .members
            .store(tables.members(unix_ms()), Ordering::Relaxed);
        metrics
            .remote_filters
            .store(tables.node_filters.len() as u64, Ordering::Relaxed);
        metrics
            .retained
            .store(tables.retained.len() as u64, Ordering::Relaxed);
        let queued: usize = links.iter().map(|link| link.updates_queued()).sum();
        metrics
            .state_updates_queued
            .store(queued as u64, Ordering::Relaxed);
        let sessions = node.directory.lock().expect("directory").owners.len();
        metrics
            .sessions_known
            .store(sessions as u64, Ordering::Relaxed);
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!("cluster: reading {topic}: {error}");
                continue;
            }
        };
        metrics.state_records.fetch_add(1, Ordering::Relaxed);
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if let Some(update) = tables.apply(&key, message.payload(), true) {
            for link in links {
                link.push_update(update.clone(), stop);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Tables {
        Tables {
            own: "a".into(),
            node_ids: HashMap::new(),
            names: Vec::new(),
            interest_keys: HashSet::new(),
            node_filters: HashMap::new(),
            retained: HashSet::new(),
            directory: Default::default(),
            incarnation: 1,
            own_stale: HashSet::new(),
            own_stale_sessions: HashSet::new(),
        }
    }

    fn interest(update: Option<Update>) -> Option<(NodeId, String, bool)> {
        match update {
            Some(Update::Interest {
                node,
                filter,
                added,
                ..
            }) => Some((node, filter, added)),
            _ => None,
        }
    }

    #[test]
    fn a_node_is_interested_from_its_first_shard_to_its_last() {
        let mut t = tables();
        let on = Some(&b"1"[..]);
        assert_eq!(
            interest(t.apply("i/b/0/x/#", on, true)),
            Some((0, "x/#".into(), true))
        );
        // A second shard of b, and the same record again: nothing new.
        assert_eq!(interest(t.apply("i/b/1/x/#", on, true)), None);
        assert_eq!(interest(t.apply("i/b/1/x/#", on, true)), None);
        assert_eq!(interest(t.apply("i/b/0/x/#", None, true)), None);
        assert_eq!(
            interest(t.apply("i/b/1/x/#", None, true)),
            Some((0, "x/#".into(), false))
        );
        // Another node gets the next id.
        assert_eq!(
            interest(t.apply("i/c/0/y", on, true)),
            Some((1, "y".into(), true))
        );
    }

    #[test]
    fn this_nodes_own_records_are_stale_before_catch_up_and_ignored_after() {
        let mut t = tables();
        let on = Some(&b"1"[..]);
        assert!(t.apply("i/a/0/x", on, false).is_none());
        assert!(t.apply("i/a/1/y", on, false).is_none());
        assert!(t.apply("i/a/1/y", None, false).is_none());
        assert_eq!(t.own_stale, HashSet::from(["i/a/0/x".to_string()]));
        assert!(t.apply("i/a/0/z", on, true).is_none());
        assert_eq!(t.own_stale.len(), 1);
    }

    #[test]
    fn members_are_nodes_with_a_recent_heartbeat() {
        let mut t = tables();
        t.apply("n/b", Some(b"7 100000"), true);
        t.apply("n/c", Some(b"8 50000"), true);
        assert_eq!(t.members(105_000), 2);
        t.apply("n/b", None, true);
        assert_eq!(t.members(105_000), 1);
    }
}
