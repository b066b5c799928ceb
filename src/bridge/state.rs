//! A shard's Kafka state, plain data on the shard's thread: the mappings, one lane per
//! cluster, the acknowledgements waiting for Kafka or the spool, and the counters. The
//! driver ([`super::Bridge`]) runs the tasks around it; everything here is synchronous and
//! testable without a runtime.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use rdkafka::error::RDKafkaErrorCode;
use tracing::{info, warn};

use crate::config::{BatchingConfig, SpoolWhenFull};
use crate::metrics::{new_latency_histogram, ClusterSnapshot, MappingCounters, LATENCY_US_MAX};
use crate::protocol::{MqttStr, QoS};
use crate::spool::log::{Segment, SpoolLog};

use super::lane::{ClusterLane, LingerGauge};
use super::mapping::{AckMode, Mappings};
use super::producer::{KafkaProducer, Record};
use super::records::record_headers;
use super::settings::ClusterSettings;
use super::template::{sanitize_kafka_topic, RenderContext};
use super::ticket::{Tag, Ticket, Waiter};
use super::{Acknowledgement, Admission, Completed, Publication};

/// A PUBLISH waiting for Kafka (or the spool) before its acknowledgement.
pub(super) struct PendingAck {
    pub(super) client_id: MqttStr,
    /// The PUBLISH's topic, for the headers of a dead letter.
    pub(super) topic: MqttStr,
    /// Records not yet reported.
    remaining: u32,
    /// The first failure, if any record failed for good.
    error: Option<RDKafkaErrorCode>,
    published_at: Instant,
}

pub struct ShardBridge {
    pub(super) mappings: Mappings,
    pub(super) lanes: Vec<ClusterLane>,
    batching: BatchingConfig,
    pub(super) pending: HashMap<Ticket, PendingAck>,
    next_ticket: Ticket,
    pub(super) counters: Vec<MappingCounters>,
    /// QoS 0 records dropped because their producer was full (records held).
    pub(super) dropped_qos0_ring_full: u64,
    render: Vec<u8>,
    /// The durable log of this shard, when a mapping has `ack = "durable"`.
    pub(super) spool: Option<Rc<RefCell<SpoolLog>>>,
    pub(super) spool_max_bytes: u64,
    pub(super) spool_when_full: SpoolWhenFull,
    /// Spooled records not yet flushed: sequence number, the ticket each counts towards,
    /// and when it was appended (for the append latency).
    pub(super) spool_waiting: VecDeque<(u64, Option<Ticket>, Instant)>,
    /// Records read back from the spool that found their producer full; sent first next
    /// time.
    pub(super) spool_backlog: VecDeque<(usize, Record)>,
    /// Spooled records whose cluster no longer exists in the configuration.
    pub(super) spool_dropped_unknown_cluster: u64,
    /// Segment files Kafka has every record of, for the spool task to delete.
    pub(super) spool_done_segments: Vec<Segment>,
    /// Since the last [`ShardBridge::take_timer_wanted`], a batch opened and waits, or one
    /// found its producer full and is held: either needs the linger timer.
    timer_wanted: bool,
    /// Walks of the mapping trie so far: one per PUBLISH that the broker admits.
    trie_walks: u64,
    /// The clusters' settings in force, which SIGHUP may replace.
    settings: Arc<ClusterSettings>,
    settings_seen: u64,
}

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
            next_ticket: Ticket::FIRST,
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
            trie_walks: 0,
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

    /// The one question the broker asks about a PUBLISH on `topic`: which mappings take
    /// it, whether subscribers get it too, whether it is refused for a full spool. One
    /// walk of the mapping trie; everything later works from the answer.
    pub fn admit(&mut self, topic: &str, qos: QoS, v5: bool) -> Admission {
        let mut admission = Admission::default();
        if self.mappings.is_empty() {
            return admission;
        }
        self.trie_walks += 1;
        self.mappings.for_each_match(topic, |mapping| {
            admission.matched.push(mapping.index as u16);
            admission.to_subscribers &= mapping.mqtt_subscribers;
            admission.durable |= mapping.ack == AckMode::Durable;
        });
        // `spool.when_full = "refuse"`: a 5.0 publisher of QoS 1/2 hears at once that a
        // durable message was not taken (3.1.1 has no way to say it: it waits instead).
        admission.refused_for_full_spool = admission.durable
            && qos != QoS::AtMostOnce
            && v5
            && self.spool_when_full == SpoolWhenFull::Refuse
            && self.spool_is_full();
        admission
    }

    /// [`ShardBridge::admit`] for a message read from a Kafka source: only the mappings
    /// with `from_sources` take it (never the others: no loops), and it goes to
    /// subscribers whatever they say.
    pub fn admit_from_source(&mut self, topic: &str) -> Admission {
        let mut admission = Admission::default();
        if !self.mappings.as_slice().iter().any(|m| m.from_sources) {
            return admission;
        }
        self.trie_walks += 1;
        self.mappings.for_each_match(topic, |mapping| {
            if mapping.from_sources {
                admission.matched.push(mapping.index as u16);
                admission.durable |= mapping.ack == AckMode::Durable;
            }
        });
        admission
    }

    /// Walks of the mapping trie so far.
    pub fn trie_walks(&self) -> u64 {
        self.trie_walks
    }

    /// Some cluster's producer is full (records are held), or the spool is: QoS 1/2
    /// publishers wait before submitting more.
    pub fn is_backlogged(&self) -> bool {
        self.lanes.iter().any(|lane| lane.held.is_some()) || self.spool_is_full()
    }

    /// Whether the admitted QoS 1/2 PUBLISH must wait before it is submitted: a mapping it
    /// matches writes to a cluster whose producer is full, or is `durable` while the spool
    /// is full. A `durable` record goes to the spool, not the producer: a producer filled
    /// by the spool's own replay (Kafka away) must not hold durable publishers back while
    /// the spool has room.
    pub fn is_backlogged_for(&self, admission: &Admission) -> bool {
        let spool_full = admission.durable && self.spool_is_full();
        let mappings = self.mappings.as_slice();
        admission.matched.iter().any(|index| {
            let mapping = &mappings[usize::from(index)];
            if mapping.ack == AckMode::Durable {
                spool_full
            } else {
                self.lanes[mapping.cluster_index].held.is_some()
            }
        })
    }

    /// The spool holds `spool.max_bytes`: durable publishers wait (Kafka away for long).
    pub fn spool_is_full(&self) -> bool {
        self.spool
            .as_ref()
            .is_some_and(|spool| spool.borrow().bytes() >= self.spool_max_bytes)
    }

    pub fn has_durable_mappings(&self) -> bool {
        self.mappings
            .as_slice()
            .iter()
            .any(|m| m.ack == AckMode::Durable)
    }

    /// Appends the records of an admitted message to their batches (or the spool).
    /// `wants_ack`: a QoS 1/2 PUBLISH whose acknowledgement may wait. Returns the ticket
    /// its acknowledgement waits for, or None when it is due now.
    pub fn submit(
        &mut self,
        admission: &Admission,
        message: &Publication<'_>,
        wants_ack: bool,
        now: Instant,
    ) -> Option<Ticket> {
        let qos = message.qos;
        let ticket = self.next_ticket;
        let mut waiting_records = 0u32;
        let context = RenderContext {
            topic: message.topic,
            client_id: message.publisher,
            username: message.username,
            user_properties: &message.properties.user_properties,
        };
        for index in admission.matched.iter() {
            let mapping = &self.mappings.as_slice()[usize::from(index)];
            let (cluster, ack_mode) = (mapping.cluster_index, mapping.ack);
            self.counters[mapping.index].matched += 1;
            let render = &mut self.render;
            render.clear();
            mapping.topic.render(&context, render);
            sanitize_kafka_topic(render);
            let topic = String::from_utf8_lossy(render).into_owned();
            render.clear();
            mapping.key.render(&context, render);
            let key = render.clone();
            // `kafka` waits for Kafka; `durable` waits for the spool's flush (QoS 0 too is
            // spooled, but nobody waits).
            let waits = wants_ack && ack_mode != AckMode::None;
            if waits {
                waiting_records += 1;
            }
            let record = Record {
                topic,
                key,
                payload: message.payload.clone(),
                headers: record_headers(mapping.headers, message),
                tag: Tag {
                    waiter: if waits {
                        Waiter::Publish(ticket)
                    } else {
                        Waiter::Nobody
                    },
                    mapping: index,
                    dead_letter: false,
                },
            };
            if ack_mode == AckMode::Durable {
                if qos == QoS::AtMostOnce && self.spool_is_full() {
                    // Best effort: a full spool drops QoS 0 (QoS 1/2 publishers wait), so
                    // the spool stays within `max_bytes`. Counted.
                    self.count_dropped(usize::from(index));
                    continue;
                }
                self.spool_append(cluster, record, now);
                continue;
            }
            if qos == QoS::AtMostOnce && self.lanes[cluster].held.is_some() {
                // Best effort: a full producer drops QoS 0, counted.
                self.count_dropped(usize::from(index));
                continue;
            }
            self.counters[usize::from(index)].produced += 1;
            self.append(cluster, record, now);
        }
        if waiting_records == 0 {
            return None;
        }
        self.next_ticket = ticket.next();
        self.pending.insert(
            ticket,
            PendingAck {
                client_id: message.publisher.clone(),
                topic: message.topic.clone(),
                remaining: waiting_records,
                error: None,
                published_at: now,
            },
        );
        Some(ticket)
    }

    fn count_dropped(&mut self, mapping: usize) {
        self.dropped_qos0_ring_full += 1;
        self.counters[mapping].dropped_ring_full += 1;
    }

    /// Adds `record` to its cluster's batch, which leaves when full, or when the lane's
    /// linger ([`LingerGauge`]) has passed since its first record (the linger loop).
    pub(super) fn append(&mut self, cluster: usize, record: Record, now: Instant) {
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
    /// held (one batch at most: publishers wait meanwhile) and retried by the linger loop.
    pub(super) fn flush(&mut self, cluster: usize) {
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

    /// One record of `ticket` is done; its acknowledgement is due when all are.
    pub(super) fn count_down(
        &mut self,
        ticket: Ticket,
        result: Result<(), RDKafkaErrorCode>,
        now: Instant,
        completed: &mut Vec<Completed>,
        latency: Option<usize>,
    ) {
        let Some(ack) = self.pending.get_mut(&ticket) else {
            return;
        };
        ack.remaining -= 1;
        if let Err(code) = result {
            ack.error.get_or_insert(code);
        }
        if ack.remaining > 0 {
            return;
        }
        let ack = self.pending.remove(&ticket).expect("present");
        let latency_us = now.duration_since(ack.published_at).as_micros() as u64;
        if let Some(cluster) = latency {
            let histogram: &mut Histogram<u64> = &mut self.lanes[cluster].latency_us;
            let _ = histogram.record(latency_us.clamp(1, LATENCY_US_MAX));
        }
        completed.push(Completed {
            ticket,
            outcome: Acknowledgement::of(ack.error),
        });
    }

    /// Acknowledgements waiting for Kafka or the spool.
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
