//! A shard's side of the Kafka pipeline: match mappings, append records to the per-cluster
//! batch, hand full (or lingered) batches to the cluster's producer, and turn delivery
//! reports into PUBACK/PUBREC once every record of a message is safe.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::error::RDKafkaErrorCode;
use std::sync::Arc;

use tracing::{info, warn};

use crate::broker::connection::Connection;
use crate::broker::message::Message;
use crate::config::{BatchingConfig, ClusterConfig, SpoolWhenFull};
use crate::metrics::{new_latency_histogram, ClusterSnapshot, LATENCY_US_MAX};
use crate::protocol::{MqttStr, QoS, ReasonCode};

use bytes::Bytes;

use super::mapping::{AckMode, HeaderField, HeaderSet, Mappings, OnRefused};
use super::producer::{
    is_purged, is_refused_for_good, Batch, KafkaProducer, Record, RefusedRecord, Report, Sent,
};
use super::settings::ClusterSettings;
use super::template::{sanitize_kafka_topic, RenderContext};
use crate::spool::log::{Segment, SpoolLog};
use crate::spool::record::SpoolRecord;

/// A PUBLISH waiting for Kafka before its acknowledgement.
pub struct PendingAck {
    pub connection: Rc<Connection>,
    pub client_id: MqttStr,
    /// The PUBLISH's topic, for the headers of a dead letter.
    pub topic: MqttStr,
    pub packet_id: u16,
    pub qos: QoS,
    /// Records not yet reported.
    remaining: u32,
    /// The first failure, if any record failed for good.
    pub error: Option<RDKafkaErrorCode>,
    pub published_at: Instant,
}

/// An acknowledgement that is due.
pub struct Completed {
    pub ack: PendingAck,
    pub latency_us: u64,
}

/// What happened to a message on its way to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// No mapping matched, or none asks to wait: acknowledge now.
    AckNow,
    /// Acknowledge when ticket `n` completes.
    Deferred(u64),
}

/// Counters of one mapping (index = mapping index).
#[derive(Debug, Default, Clone, Copy)]
pub struct MappingCounters {
    pub matched: u64,
    pub produced: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub dropped_ring_full: u64,
    /// Records Kafka refused for good, by [`RefusedReason`] and by what became of them
    /// ([`OnRefused::ALL`] order: reason code, dead letter, dropped).
    pub refused: [[u64; OnRefused::ALL.len()]; RefusedReason::ALL.len()],
    /// Dead-letter records Kafka acknowledged.
    pub dead_lettered: u64,
}

/// Why Kafka refused a record for good, as the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    TooLarge,
    InvalidTopic,
    NotAuthorized,
    PolicyViolation,
    InvalidRecord,
}

impl RefusedReason {
    pub const ALL: [RefusedReason; 5] = [
        RefusedReason::TooLarge,
        RefusedReason::InvalidTopic,
        RefusedReason::NotAuthorized,
        RefusedReason::PolicyViolation,
        RefusedReason::InvalidRecord,
    ];

    /// The reason of a code that [`is_refused_for_good`].
    pub fn of(code: RDKafkaErrorCode) -> RefusedReason {
        match code {
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge => RefusedReason::TooLarge,
            RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::UnknownTopic => {
                RefusedReason::InvalidTopic
            }
            RDKafkaErrorCode::TopicAuthorizationFailed => RefusedReason::NotAuthorized,
            RDKafkaErrorCode::PolicyViolation => RefusedReason::PolicyViolation,
            _ => RefusedReason::InvalidRecord,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::TooLarge => "too_large",
            RefusedReason::InvalidTopic => "invalid_topic",
            RefusedReason::NotAuthorized => "not_authorized",
            RefusedReason::PolicyViolation => "policy_violation",
            RefusedReason::InvalidRecord => "invalid_record",
        }
    }
}

/// The payload below which a dead letter the dead-letter topic refuses as too large is not
/// cut further (its headers, not its payload, are then too large).
const DEAD_LETTER_PAYLOAD_MIN: usize = 1024;

/// A dead letter refused as too large, with half its payload; the header
/// `dead_letter_payload_bytes` keeps the full size. None when the payload is already at
/// [`DEAD_LETTER_PAYLOAD_MIN`] or less.
fn shorter_letter(letter: RefusedRecord, ticket: u64, mapping: u32) -> Option<Record> {
    if letter.payload.len() <= DEAD_LETTER_PAYLOAD_MIN {
        return None;
    }
    let mut letter = resend(letter, ticket, mapping, true);
    let full = letter.payload.len();
    if !(letter.headers.iter()).any(|(name, _)| *name == "dead_letter_payload_bytes") {
        letter
            .headers
            .push(("dead_letter_payload_bytes", Bytes::from(full.to_string())));
    }
    letter
        .payload
        .truncate((full / 2).max(DEAD_LETTER_PAYLOAD_MIN));
    Some(letter)
}

/// A record librdkafka gave back, as a record to send again: header names map back to the
/// static names records carry.
fn resend(record: RefusedRecord, ticket: u64, mapping: u32, dead_letter: bool) -> Record {
    Record {
        topic: record.topic,
        key: record.key,
        payload: record.payload,
        headers: (record.headers.iter())
            .map(|(name, value)| (static_header_name(name), value.clone()))
            .collect(),
        ticket,
        mapping,
        dead_letter,
    }
}

/// The most payload a dead-letter record carries: librdkafka's default `message.max.bytes`
/// less room for the key and headers. A longer payload is cut, and the header
/// `dead_letter_payload_bytes` gives its full size.
const DEAD_LETTER_PAYLOAD_MAX: usize = 900_000;

struct ClusterLane {
    producer: KafkaProducer,
    /// The settings `producer` was made with.
    applied: ClusterConfig,
    batch: Batch,
    batch_bytes: usize,
    /// Records librdkafka had no room for (its queue holds `queue.buffering.max.messages`),
    /// in order; publishers of QoS 1/2 wait while they are here.
    held: Option<Batch>,
    /// When the current batch got its first record.
    batch_started: Option<Instant>,
    /// How long a batch of this lane waits for more records now: see [`LingerGauge`].
    linger: LingerGauge,
    latency_us: Histogram<u64>,
}

/// Records per batch the adaptive linger aims at: enough that the per-batch costs (a shard
/// timer, a Produce request, a delivery-report wake-up) are
/// shared, few enough that a batch leaves within about a millisecond under load.
const LINGER_TARGET_RECORDS: f64 = 16.0;
/// The shortest adaptive linger: what a lane gets under load.
const LINGER_FLOOR: Duration = Duration::from_millis(1);
/// How often a lane's record rate is measured.
const LINGER_RATE_WINDOW: Duration = Duration::from_millis(100);

/// The linger of one lane, set from its record rate: the time it takes to gather
/// [`LINGER_TARGET_RECORDS`], between [`LINGER_FLOOR`] (or `linger_us` if that is lower)
/// and `linger_us`. At device rates (a record now and then) batches wait up to
/// `linger_us`, so their fixed costs are shared by several records; under load, or when
/// publishers pipeline (who are held to their in-flight windows and so need short
/// lingers), the linger falls to the floor.
struct LingerGauge {
    current: Duration,
    floor: Duration,
    ceiling: Duration,
    window_started: Instant,
    window_records: u64,
}

impl LingerGauge {
    fn new(linger_us: u64, now: Instant) -> LingerGauge {
        let ceiling = Duration::from_micros(linger_us);
        LingerGauge {
            current: ceiling,
            floor: LINGER_FLOOR.min(ceiling),
            ceiling,
            window_started: now,
            window_records: 0,
        }
    }

    /// Counts one record; at the end of a window, sets the linger from the window's rate.
    fn record(&mut self, now: Instant) {
        self.window_records += 1;
        let elapsed = now.saturating_duration_since(self.window_started);
        if elapsed >= LINGER_RATE_WINDOW {
            let per_second = self.window_records as f64 / elapsed.as_secs_f64();
            let gather = Duration::from_secs_f64(LINGER_TARGET_RECORDS / per_second);
            self.current = gather.clamp(self.floor, self.ceiling);
            self.window_started = now;
            self.window_records = 0;
        }
    }
}

impl ClusterLane {
    /// Hands `batch` to librdkafka in order; holds what its full queue did not take.
    fn push(&mut self, mut batch: Batch) {
        let taken = batch
            .iter()
            .position(|record| self.producer.send(record) == Sent::QueueFull)
            .unwrap_or(batch.len());
        if taken < batch.len() {
            batch.drain(..taken);
            self.held = Some(batch);
        }
        if self.producer.has_fatal_error() {
            self.replace_producer();
        }
    }

    fn replace_producer(&mut self) {
        warn!("kafka producer had a fatal error: replacing it; what it held is reported failed");
        if let Err(error) = self.producer.replace() {
            warn!(%error, "kafka producer: replacing it failed; trying again with the next batch");
        }
    }
}

pub struct ShardBridge {
    pub mappings: Mappings,
    lanes: Vec<ClusterLane>,
    batching: BatchingConfig,
    pending: HashMap<u64, PendingAck>,
    next_ticket: u64,
    pub counters: Vec<MappingCounters>,
    /// QoS 0 records dropped because their producer was full (records held).
    pub dropped_qos0_ring_full: u64,
    render: Vec<u8>,
    /// The durable log of this shard, when a mapping has `ack = "durable"`.
    spool: Option<Rc<RefCell<SpoolLog>>>,
    spool_max_bytes: u64,
    spool_when_full: SpoolWhenFull,
    /// Spooled records not yet flushed: sequence number, the ticket each counts towards
    /// (0: none), and when it was appended (for the append latency).
    spool_waiting: VecDeque<(u64, u64, Instant)>,
    /// Records read back from the spool that found their producer full; sent first next
    /// time.
    spool_backlog: VecDeque<(usize, Record)>,
    /// Spooled records whose cluster no longer exists in the configuration.
    pub spool_dropped_unknown_cluster: u64,
    /// Segment files Kafka has every record of, for the spool task to delete.
    pub spool_done_segments: Vec<Segment>,
    /// Since the last [`ShardBridge::take_timer_wanted`], a batch opened and waits, or one
    /// found its producer full and is held: either needs the linger timer.
    timer_wanted: bool,
    /// The clusters' settings in force, which SIGHUP may replace.
    settings: Arc<ClusterSettings>,
    settings_seen: u64,
}

/// Tickets of spooled records carry this bit; the rest is the record's seq in the spool.
const SPOOL_TICKET: u64 = 1 << 47;

impl ShardBridge {
    pub fn new(
        mappings: Mappings,
        producers: Vec<KafkaProducer>,
        batching: BatchingConfig,
        settings: Arc<ClusterSettings>,
    ) -> ShardBridge {
        let counters = vec![MappingCounters::default(); mappings.len()];
        ShardBridge {
            mappings,
            lanes: producers
                .into_iter()
                .enumerate()
                .map(|(cluster, producer)| ClusterLane {
                    producer,
                    applied: settings.cluster(cluster),
                    batch: Vec::new(),
                    batch_bytes: 0,
                    held: None,
                    batch_started: None,
                    linger: LingerGauge::new(batching.linger_us, Instant::now()),
                    latency_us: new_latency_histogram(),
                })
                .collect(),
            batching,
            pending: HashMap::new(),
            next_ticket: 1,
            counters,
            dropped_qos0_ring_full: 0,
            render: Vec::new(),
            spool: None,
            spool_max_bytes: u64::MAX,
            spool_when_full: SpoolWhenFull::Hold,
            spool_waiting: VecDeque::new(),
            spool_backlog: VecDeque::new(),
            spool_dropped_unknown_cluster: 0,
            spool_done_segments: Vec::new(),
            timer_wanted: false,
            settings_seen: settings.generation(),
            settings,
        }
    }

    /// Makes new producers for the clusters whose settings a reload (SIGHUP) changed; what
    /// the old ones held is sent again through the new ones.
    pub fn follow_settings(&mut self) {
        let generation = self.settings.generation();
        if generation == self.settings_seen {
            return;
        }
        self.settings_seen = generation;
        for (cluster, lane) in self.lanes.iter_mut().enumerate() {
            let now = self.settings.cluster(cluster);
            if now == lane.applied {
                continue;
            }
            let name = &self.mappings.cluster_names()[cluster];
            match lane
                .producer
                .reconfigure(self.settings.producer_config(cluster))
            {
                Ok(()) => {
                    info!(cluster = %name, "kafka.clusters.{name}: new settings in force");
                    lane.applied = now;
                }
                Err(error) => warn!(
                    cluster = %name,
                    error = %self.settings.scrub(&error),
                    "kafka.clusters.{name}: new settings refused by librdkafka, the old stay: {}",
                    self.settings.scrub(&error)
                ),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.len() == 0
    }

    /// Whether a message on `topic` goes to MQTT subscribers too, and whether any mapping
    /// takes it.
    pub fn plan(&mut self, topic: &str) -> (bool, bool) {
        if self.is_empty() {
            return (true, false);
        }
        let mut any = false;
        let mut forward = true;
        self.mappings.for_each_match(topic, |mapping| {
            any = true;
            forward &= mapping.mqtt_subscribers;
        });
        (forward, any)
    }

    /// Some cluster's producer is full (records are held): QoS 1/2 publishers wait before
    /// submitting more.
    pub fn is_backlogged(&self) -> bool {
        self.lanes.iter().any(|lane| lane.held.is_some()) || self.spool_is_full()
    }

    /// Whether a QoS 1/2 PUBLISH on `topic` must wait before it is submitted: a mapping it
    /// matches writes to a cluster whose producer is full, or is `durable` while the spool
    /// is full. A `durable` record goes to the spool, not the producer: a producer filled
    /// by the spool's own replay (Kafka away) must not hold durable publishers back while
    /// the spool has room.
    pub fn is_backlogged_for(&mut self, topic: &str) -> bool {
        let spool_full = self.spool_is_full();
        let lanes = &self.lanes;
        let mut backlogged = false;
        self.mappings.for_each_match(topic, |mapping| {
            backlogged |= if mapping.ack == AckMode::Durable {
                spool_full
            } else {
                lanes[mapping.cluster_index].held.is_some()
            };
        });
        backlogged
    }

    /// Whether a QoS 1/2 PUBLISH on `topic` is to be refused rather than held: it matches
    /// a `durable` mapping while the spool is full and `spool.when_full = "refuse"`.
    pub fn refuses_for_full_spool(&mut self, topic: &str) -> bool {
        if self.spool_when_full != SpoolWhenFull::Refuse || !self.spool_is_full() {
            return false;
        }
        let mut durable = false;
        self.mappings.for_each_match(topic, |mapping| {
            durable |= mapping.ack == AckMode::Durable;
        });
        durable
    }

    /// The spool holds `spool.max_bytes`: durable publishers wait (Kafka away for long).
    pub fn spool_is_full(&self) -> bool {
        self.spool
            .as_ref()
            .is_some_and(|spool| spool.borrow().bytes() >= self.spool_max_bytes)
    }

    pub fn spool(&self) -> Option<&Rc<RefCell<SpoolLog>>> {
        self.spool.as_ref()
    }

    /// Gives the bridge its durable log.
    pub fn attach_spool(
        &mut self,
        spool: Rc<RefCell<SpoolLog>>,
        max_bytes: u64,
        when_full: SpoolWhenFull,
    ) {
        self.spool = Some(spool);
        self.spool_max_bytes = max_bytes;
        self.spool_when_full = when_full;
    }

    pub fn has_durable_mappings(&self) -> bool {
        self.mappings
            .as_slice()
            .iter()
            .any(|m| m.ack == AckMode::Durable)
    }

    fn spool_append(&mut self, cluster: usize, record: Record, now: Instant) {
        let spool = self.spool.as_ref().expect("durable mappings have a spool");
        let headers = record
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        let spooled = SpoolRecord {
            seq: 0,
            mapping: record.mapping as u16,
            cluster: self.mappings.cluster_names()[cluster].clone(),
            topic: record.topic,
            key: record.key,
            headers,
            payload: record.payload,
        };
        let seq = spool.borrow_mut().append(spooled, now);
        self.counters[record.mapping as usize].produced += 1;
        self.spool_waiting.push_back((seq, record.ticket, now));
    }

    /// The spool's flush made every record up to `last_seq` durable: their waits end, and
    /// each one's append latency goes to `stats`.
    pub fn spool_flushed(
        &mut self,
        last_seq: u64,
        now: Instant,
        stats: &crate::spool::SpoolStats,
    ) -> Vec<Completed> {
        let mut completed = Vec::new();
        while let Some(&(seq, ticket, appended_at)) = self.spool_waiting.front() {
            if seq > last_seq {
                break;
            }
            self.spool_waiting.pop_front();
            stats.record_append(now.saturating_duration_since(appended_at));
            if ticket != 0 {
                self.count_down(ticket, Ok(()), now, &mut completed, None);
            }
        }
        completed
    }

    /// Hands records read back from the spool to their producers; keeps what does not fit.
    /// Returns `false` when a producer is full (stop reading).
    pub fn feed_spooled(&mut self, records: Vec<(u64, SpoolRecord)>, now: Instant) -> bool {
        for (seq, spooled) in records {
            let Some(cluster) = self
                .mappings
                .cluster_names()
                .iter()
                .position(|name| *name == spooled.cluster)
            else {
                // The cluster left the configuration: nowhere to send it.
                self.spool_dropped_unknown_cluster += 1;
                self.spool_acked(seq);
                continue;
            };
            let record = Record {
                topic: spooled.topic,
                key: spooled.key,
                payload: spooled.payload,
                headers: spooled
                    .headers
                    .into_iter()
                    .map(|(name, value)| (static_header_name(&name), value))
                    .collect(),
                ticket: SPOOL_TICKET | seq,
                // Counted under its mapping when that still exists.
                mapping: if usize::from(spooled.mapping) < self.counters.len() {
                    u32::from(spooled.mapping)
                } else {
                    u32::MAX
                },
                dead_letter: false,
            };
            self.spool_backlog.push_back((cluster, record));
        }
        self.drain_spool_backlog(now)
    }

    /// Sends backlogged spool records while their producers take them. Returns `false`
    /// while a producer is full and records are held (the caller wakes the linger loop,
    /// which retries them, and reads no more): the last batch of a replay can be held.
    pub fn drain_spool_backlog(&mut self, now: Instant) -> bool {
        while let Some((cluster, _)) = self.spool_backlog.front() {
            let cluster = *cluster;
            if self.lanes[cluster].held.is_some() {
                return false;
            }
            let (_, record) = self.spool_backlog.pop_front().expect("front exists");
            self.append(cluster, record, now);
        }
        for cluster in 0..self.lanes.len() {
            self.flush(cluster);
        }
        self.lanes.iter().all(|lane| lane.held.is_none())
    }

    fn spool_acked(&mut self, seq: u64) {
        if let Some(spool) = &self.spool {
            let done = spool.borrow_mut().acked(seq);
            self.spool_done_segments.extend(done);
        }
    }

    /// Appends the records of `message` to their batches. `ack` is the PUBLISH to
    /// acknowledge (QoS 1/2), if any.
    pub fn submit(
        &mut self,
        message: &Message,
        username: Option<&str>,
        ack: Option<(Rc<Connection>, u16)>,
        now: Instant,
    ) -> Submitted {
        let qos = message.qos;
        let ticket = self.next_ticket;
        let mut waiting_records = 0u32;
        let mut new_records: Vec<(usize, Record, AckMode)> = Vec::new();
        let context = RenderContext {
            topic: &message.topic,
            client_id: &message.publisher,
            username,
            user_properties: &message.properties.user_properties,
        };
        let render = &mut self.render;
        let counters = &mut self.counters;
        let wait_for_kafka = ack.is_some();
        self.mappings.for_each_match(&message.topic, |mapping| {
            counters[mapping.index].matched += 1;
            render.clear();
            mapping.topic.render(&context, render);
            sanitize_kafka_topic(render);
            let topic = String::from_utf8_lossy(render).into_owned();
            render.clear();
            mapping.key.render(&context, render);
            let key = render.clone();
            // `kafka` waits for Kafka; `durable` waits for the spool's flush (QoS 0 too is
            // spooled, but nobody waits).
            let waits = wait_for_kafka && mapping.ack != AckMode::None;
            if waits {
                waiting_records += 1;
            }
            let record = Record {
                topic,
                key,
                payload: message.payload.clone(),
                headers: record_headers(mapping.headers, message, username),
                ticket: if waits { ticket } else { 0 },
                mapping: mapping.index as u32,
                dead_letter: false,
            };
            new_records.push((mapping.cluster_index, record, mapping.ack));
        });
        for (cluster, record, ack_mode) in new_records {
            let index = record.mapping as usize;
            if ack_mode == AckMode::Durable {
                if qos == QoS::AtMostOnce && self.spool_is_full() {
                    // Best effort: a full spool drops QoS 0 (QoS 1/2 publishers wait), so
                    // the spool stays within `max_bytes`. Counted.
                    self.dropped_qos0_ring_full += 1;
                    self.counters[index].dropped_ring_full += 1;
                    continue;
                }
                self.spool_append(cluster, record, now);
                continue;
            }
            if qos == QoS::AtMostOnce && self.lanes[cluster].held.is_some() {
                // Best effort: a full producer drops QoS 0, counted.
                self.dropped_qos0_ring_full += 1;
                self.counters[index].dropped_ring_full += 1;
                continue;
            }
            self.counters[index].produced += 1;
            self.append(cluster, record, now);
        }
        if waiting_records == 0 {
            return Submitted::AckNow;
        }
        let (connection, packet_id) = ack.expect("waiting records imply an ack");
        self.next_ticket += 1;
        self.pending.insert(
            ticket,
            PendingAck {
                connection,
                client_id: message.publisher.clone(),
                topic: message.topic.clone(),
                packet_id,
                qos,
                remaining: waiting_records,
                error: None,
                published_at: now,
            },
        );
        Submitted::Deferred(ticket)
    }

    /// Adds `record` to its cluster's batch, which leaves when full, or when the lane's
    /// linger ([`LingerGauge`]) has passed since its first record (the linger loop).
    fn append(&mut self, cluster: usize, record: Record, now: Instant) {
        let lane = &mut self.lanes[cluster];
        lane.batch_bytes += record.size_bytes();
        lane.batch.push(record);
        lane.linger.record(now);
        let opened = lane.batch_started.is_none();
        lane.batch_started.get_or_insert(now);
        if lane.batch.len() >= self.batching.max_messages
            || lane.batch_bytes >= self.batching.max_bytes
            || self.batching.linger_us == 0
        {
            self.flush(cluster);
        } else if opened {
            self.timer_wanted = true;
        }
    }

    /// Whether, since the last call, a batch opened and waits or a batch is held: the linger
    /// timer must run (it sleeps otherwise).
    pub fn take_timer_wanted(&mut self) -> bool {
        std::mem::take(&mut self.timer_wanted)
    }

    /// Hands the cluster's batch to its producer. What a full producer does not take is
    /// held (one batch at most: publishers wait meanwhile) and retried by
    /// [`ShardBridge::retry_held`].
    fn flush(&mut self, cluster: usize) {
        let lane = &mut self.lanes[cluster];
        if lane.held.is_some() || lane.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut lane.batch);
        lane.batch_bytes = 0;
        lane.batch_started = None;
        lane.push(batch);
        if lane.held.is_some() {
            self.timer_wanted = true;
        }
    }

    /// Flushes batches as old as their lane's linger and retries held ones. Returns when
    /// the timer is next needed: when the oldest open batch's linger ends, or one linger
    /// from now while a batch is held; `None` when no batch is open or held.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for cluster in 0..self.lanes.len() {
            self.retry_held(cluster);
            let linger = self.lanes[cluster].linger.current;
            if self.lanes[cluster]
                .batch_started
                .is_some_and(|t| now.duration_since(t) >= linger)
            {
                self.flush(cluster);
            }
            let lane = &self.lanes[cluster];
            let due = if lane.held.is_some() {
                Some(now + linger)
            } else {
                lane.batch_started.map(|t| t + linger)
            };
            next = match (next, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    /// Hands every open and held batch to its producer and gives the producers up, for a
    /// stopping shard to flush.
    pub fn take_producers(&mut self) -> Vec<KafkaProducer> {
        for cluster in 0..self.lanes.len() {
            self.retry_held(cluster);
            self.flush(cluster);
        }
        self.lanes.drain(..).map(|lane| lane.producer).collect()
    }

    fn retry_held(&mut self, cluster: usize) {
        let lane = &mut self.lanes[cluster];
        if let Some(batch) = lane.held.take() {
            lane.push(batch);
        }
    }

    /// Serves the producers' delivery reports; returns the acknowledgements now due.
    pub fn drain_reports(&mut self, now: Instant) -> Vec<Completed> {
        let mut reports = Vec::new();
        for (cluster, lane) in self.lanes.iter_mut().enumerate() {
            lane.producer.serve_reports();
            if lane.producer.has_fatal_error() {
                lane.replace_producer();
            }
            while let Some(report) = lane.producer.pop_report() {
                reports.push((cluster, report));
            }
        }
        let mut completed = Vec::new();
        for (cluster, report) in reports {
            self.apply_report(cluster, report, now, &mut completed);
        }
        completed
    }

    /// Counts one delivery report and moves its acknowledgement on. A record Kafka refused
    /// for good goes the way its mapping's `on_refused` says.
    fn apply_report(
        &mut self,
        cluster: usize,
        report: Report,
        now: Instant,
        completed: &mut Vec<Completed>,
    ) {
        let Report {
            ticket,
            mapping,
            dead_letter,
            mut result,
            refused,
        } = report;
        let refused = match (result, refused) {
            (Err(code), Some(record)) if is_purged(code) => {
                // Handed over by a producer replaced with new settings: send it again.
                let record = resend(*record, ticket, mapping, dead_letter);
                self.append(cluster, record, now);
                return;
            }
            (_, refused) => refused,
        };
        if let Some(c) = self.counters.get_mut(mapping as usize) {
            match (result, dead_letter) {
                (Ok(()), false) => c.acknowledged += 1,
                (Ok(()), true) => c.dead_lettered += 1,
                (Err(_), _) => c.failed += 1,
            }
        }
        if let Err(code) = result {
            if !dead_letter && is_refused_for_good(code) {
                match self.refused(cluster, ticket, mapping, code, refused, now) {
                    // The acknowledgement now waits for the dead letter's own report.
                    None => return,
                    Some(outcome) => result = outcome,
                }
            } else if dead_letter && RefusedReason::of(code) == RefusedReason::TooLarge {
                // The dead-letter topic takes less than the letter: cut its payload in half
                // and send it again, down to `DEAD_LETTER_PAYLOAD_MIN`.
                if let Some(letter) = refused.and_then(|r| shorter_letter(*r, ticket, mapping)) {
                    self.append(cluster, letter, now);
                    return;
                }
            }
        }
        if ticket & SPOOL_TICKET != 0 {
            // From the spool: Kafka has it (or refused it for good; then it is counted as
            // failed, the device was acknowledged long ago).
            self.spool_acked(ticket & !SPOOL_TICKET);
            return;
        }
        if ticket == 0 {
            return;
        }
        let latency = &mut self.lanes[cluster].latency_us;
        count_down_in(
            &mut self.pending,
            ticket,
            result,
            now,
            completed,
            Some(latency),
        );
    }

    /// Kafka refused a record of `mapping` for good (`code`), bound for `cluster`. Returns
    /// the result its acknowledgement counts with, or None when a dead letter now carries
    /// the ticket.
    fn refused(
        &mut self,
        cluster: usize,
        ticket: u64,
        mapping: u32,
        code: RDKafkaErrorCode,
        record: Option<Box<RefusedRecord>>,
        now: Instant,
    ) -> Option<Result<(), RDKafkaErrorCode>> {
        let Some(m) = self.mappings.as_slice().get(mapping as usize) else {
            // A spooled record of a mapping no longer configured.
            return Some(Err(code));
        };
        let (on_refused, dead_letter) = (m.on_refused, m.dead_letter.clone());
        let reason = RefusedReason::of(code) as usize;
        let action = match (on_refused, dead_letter, record) {
            (OnRefused::DeadLetter, Some(destination), Some(record)) => {
                let letter = self.dead_letter_record(
                    cluster,
                    ticket,
                    mapping,
                    code,
                    *record,
                    destination.topic,
                );
                self.append(destination.cluster_index, letter, now);
                self.counters[mapping as usize].refused[reason][OnRefused::DeadLetter.index()] += 1;
                return None;
            }
            (OnRefused::Drop, _, _) => OnRefused::Drop,
            // A dead letter needs the record; librdkafka gives it back with every report,
            // so this is only a safety net.
            _ => OnRefused::ReasonCode,
        };
        self.counters[mapping as usize].refused[reason][action.index()] += 1;
        Some(match action {
            OnRefused::Drop => Ok(()),
            _ => Err(code),
        })
    }

    /// The dead letter of a record Kafka refused: the same key, payload (cut to
    /// [`DEAD_LETTER_PAYLOAD_MAX`]) and headers, plus headers saying where it was going,
    /// why it was refused and, when known, its MQTT topic and client id.
    fn dead_letter_record(
        &self,
        cluster: usize,
        ticket: u64,
        mapping: u32,
        code: RDKafkaErrorCode,
        record: RefusedRecord,
        topic: String,
    ) -> Record {
        let mut letter = resend(record, ticket, mapping, true);
        let target = std::mem::replace(&mut letter.topic, topic);
        let headers = &mut letter.headers;
        if let Some(ack) = self.pending.get(&ticket) {
            for (name, value) in [("mqtt_topic", &ack.topic), ("client_id", &ack.client_id)] {
                if !headers.iter().any(|(n, _)| *n == name) {
                    headers.push((name, value.as_bytes().clone()));
                }
            }
        }
        headers.push((
            "dead_letter_error",
            Bytes::from(format!("{code:?}: {code}")),
        ));
        headers.push(("dead_letter_topic", Bytes::from(target)));
        headers.push((
            "dead_letter_cluster",
            Bytes::from(self.mappings.cluster_names()[cluster].clone()),
        ));
        if letter.payload.len() > DEAD_LETTER_PAYLOAD_MAX {
            headers.push((
                "dead_letter_payload_bytes",
                Bytes::from(letter.payload.len().to_string()),
            ));
            letter.payload.truncate(DEAD_LETTER_PAYLOAD_MAX);
        }
        letter
    }

    fn count_down(
        &mut self,
        ticket: u64,
        result: Result<(), RDKafkaErrorCode>,
        now: Instant,
        completed: &mut Vec<Completed>,
        latency: Option<&mut Histogram<u64>>,
    ) {
        count_down_in(&mut self.pending, ticket, result, now, completed, latency);
    }

    /// Whether the PUBLISH `packet_id` of this connection is still waiting for Kafka (a
    /// resent QoS 2 PUBLISH must then not be acknowledged yet).
    pub fn is_pending(&self, connection_id: u64, packet_id: u16) -> bool {
        self.pending
            .values()
            .any(|p| p.connection.id == connection_id && p.packet_id == packet_id)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Counters and gauges for the metrics board.
    pub fn snapshot(&self) -> (Vec<MappingCounters>, Vec<ClusterSnapshot>) {
        let clusters = self
            .lanes
            .iter()
            .map(|lane| ClusterSnapshot {
                records_in_ring: lane.batch.len() as u64
                    + lane.held.as_ref().map_or(0, |b| b.len() as u64),
                records_in_librdkafka: lane.producer.in_flight(),
                latency_us: lane.latency_us.clone(),
            })
            .collect();
        (self.counters.clone(), clusters)
    }
}

/// One record of ticket `ticket` is done; the acknowledgement is due when all are.
fn count_down_in(
    pending: &mut HashMap<u64, PendingAck>,
    ticket: u64,
    result: Result<(), RDKafkaErrorCode>,
    now: Instant,
    completed: &mut Vec<Completed>,
    latency: Option<&mut Histogram<u64>>,
) {
    let Some(ack) = pending.get_mut(&ticket) else {
        return;
    };
    ack.remaining -= 1;
    if let Err(code) = result {
        ack.error.get_or_insert(code);
    }
    if ack.remaining == 0 {
        let ack = pending.remove(&ticket).expect("present");
        let latency_us = now.duration_since(ack.published_at).as_micros() as u64;
        if let Some(histogram) = latency {
            let _ = histogram.record(latency_us.clamp(1, LATENCY_US_MAX));
        }
        completed.push(Completed { ack, latency_us });
    }
}

/// Header names are static strings in records; those read back from the spool are mapped
/// onto the same names.
fn static_header_name(name: &str) -> &'static str {
    const NAMES: [&str; 13] = [
        "mqtt_topic",
        "client_id",
        "username",
        "qos",
        "retain",
        "user_property",
        "content_type",
        "response_topic",
        "correlation_data",
        "dead_letter_error",
        "dead_letter_topic",
        "dead_letter_cluster",
        "dead_letter_payload_bytes",
    ];
    NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("payload_format")
}

/// The Kafka record headers a mapping asks for. Values are slices of the message (or
/// static strings): nothing is copied until librdkafka copies.
fn record_headers(
    fields: HeaderSet,
    message: &Message,
    username: Option<&str>,
) -> Vec<(&'static str, Bytes)> {
    let mut headers = Vec::new();
    if fields.is_empty() {
        return headers;
    }
    let properties = &message.properties;
    for field in fields.iter() {
        match field {
            HeaderField::MqttTopic => {
                headers.push(("mqtt_topic", message.topic.as_bytes().clone()))
            }
            HeaderField::ClientId => {
                headers.push(("client_id", message.publisher.as_bytes().clone()))
            }
            HeaderField::Username => {
                if let Some(username) = username {
                    headers.push(("username", Bytes::copy_from_slice(username.as_bytes())));
                }
            }
            HeaderField::Qos => {
                headers.push(("qos", Bytes::from_static(QOS_TEXT[message.qos as usize])))
            }
            HeaderField::Retain => headers.push((
                "retain",
                Bytes::from_static(if message.retain { b"1" } else { b"0" }),
            )),
            HeaderField::UserProperties => {
                // Header names must be 'static here; user property names are not, so they go
                // in one header each as "name=value" under "user_property".
                for property in &properties.user_properties {
                    let mut value =
                        Vec::with_capacity(property.name.len() + 1 + property.value.len());
                    value.extend_from_slice(property.name.as_bytes());
                    value.push(b'=');
                    value.extend_from_slice(property.value.as_bytes());
                    headers.push(("user_property", Bytes::from(value)));
                }
            }
            HeaderField::ContentType => {
                if let Some(content_type) = &properties.content_type {
                    headers.push(("content_type", content_type.as_bytes().clone()));
                }
            }
            HeaderField::ResponseTopic => {
                if let Some(topic) = &properties.response_topic {
                    headers.push(("response_topic", topic.as_bytes().clone()));
                }
            }
            HeaderField::CorrelationData => {
                if let Some(data) = &properties.correlation_data {
                    headers.push(("correlation_data", data.clone()));
                }
            }
            HeaderField::PayloadFormat => {
                if let Some(format) = properties.payload_format_indicator {
                    headers.push((
                        "payload_format",
                        Bytes::from_static(if format == 1 { b"utf-8" } else { b"bytes" }),
                    ));
                }
            }
        }
    }
    headers
}

const QOS_TEXT: [&[u8]; 3] = [b"0", b"1", b"2"];

/// The reason code for a PUBACK/PUBREC after Kafka refused a record for good
/// (3.4.2.1: 0x80 unless a closer one applies).
pub fn failure_reason(code: RDKafkaErrorCode) -> ReasonCode {
    match code {
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => ReasonCode::NotAuthorized,
        RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::UnknownTopic => {
            ReasonCode::TopicNameInvalid
        }
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::PolicyViolation => {
            ReasonCode::ImplementationSpecificError
        }
        RDKafkaErrorCode::QueueFull => ReasonCode::QuotaExceeded,
        _ => ReasonCode::UnspecifiedError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `gauge` records at `per_second` for a little more than one rate window.
    fn feed(gauge: &mut LingerGauge, start: Instant, per_second: u64) -> Instant {
        let gap = Duration::from_nanos(1_000_000_000 / per_second);
        let mut now = start;
        while now.duration_since(start) <= LINGER_RATE_WINDOW {
            now += gap;
            gauge.record(now);
        }
        now
    }

    #[test]
    fn linger_is_the_time_to_gather_sixteen_records_within_its_bounds() {
        let start = Instant::now();
        let mut gauge = LingerGauge::new(5000, start);
        assert_eq!(
            gauge.current,
            Duration::from_millis(5),
            "starts at the ceiling"
        );
        // Devices: 1,500 records/s take 10.7 ms to gather 16: the ceiling.
        let now = feed(&mut gauge, start, 1_500);
        assert_eq!(gauge.current, Duration::from_millis(5));
        // 8,000 records/s: 2 ms.
        let now = feed(&mut gauge, now, 8_000);
        let ms = gauge.current.as_secs_f64() * 1e3;
        assert!((1.9..2.1).contains(&ms), "{ms} ms");
        // Under load: the 1 ms floor.
        feed(&mut gauge, now, 100_000);
        assert_eq!(gauge.current, LINGER_FLOOR);
    }

    #[test]
    fn a_linger_below_the_floor_is_kept_as_it_is() {
        let start = Instant::now();
        let mut gauge = LingerGauge::new(200, start);
        feed(&mut gauge, start, 1_000);
        assert_eq!(gauge.current, Duration::from_micros(200));
        feed(&mut gauge, start + Duration::from_secs(1), 1_000_000);
        assert_eq!(gauge.current, Duration::from_micros(200));
    }
}
