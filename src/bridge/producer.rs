//! One Kafka producer per (shard, cluster), on a thread of its own: it drains the shard's
//! ring of batches into librdkafka and sends delivery reports back through another ring.
//! The thread is started from the unpinned main thread, so librdkafka's own threads do not
//! land on a shard's core.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use bytes::Bytes;
use crossbeam::queue::ArrayQueue;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::runtime::CrossThreadWake;

/// One Kafka record on its way, built on the shard.
#[derive(Debug)]
pub struct Record {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Bytes,
    pub headers: Vec<(&'static str, Bytes)>,
    /// The acknowledgement this record counts towards; 0 when nobody waits for it.
    pub ticket: u64,
    /// Index of the mapping that made it, for per-mapping counters.
    pub mapping: u32,
}

impl Record {
    /// Bytes this record adds to a batch, for `batching.max_bytes`.
    pub fn size_bytes(&self) -> usize {
        self.topic.len()
            + self.key.len()
            + self.payload.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

pub type Batch = Vec<Record>;

/// The outcome of one record with a ticket (or of any failed record, for the counters).
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub ticket: u64,
    pub mapping: u32,
    pub result: Result<(), RDKafkaErrorCode>,
}

/// What a shard and its producer thread for one cluster share: two bounded lock-free rings
/// and a few gauges.
pub struct Lane {
    /// Batches from the shard to the producer thread.
    pub batches: ArrayQueue<Batch>,
    /// Delivery reports from librdkafka's callback back to the shard.
    pub reports: ArrayQueue<Report>,
    /// Records in `batches` now (gauge).
    pub records_in_ring: AtomicUsize,
    /// Messages in librdkafka's queue, as of the producer thread's last look (gauge).
    pub records_in_librdkafka: AtomicI64,
    /// Set while the producer thread sleeps waiting for batches.
    pub sender_sleeping: AtomicBool,
    pub stop: AtomicBool,
}

impl Lane {
    pub fn new(ring_capacity_batches: usize, reports_capacity: usize) -> Lane {
        Lane {
            batches: ArrayQueue::new(ring_capacity_batches),
            reports: ArrayQueue::new(reports_capacity),
            records_in_ring: AtomicUsize::new(0),
            records_in_librdkafka: AtomicI64::new(0),
            sender_sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }
}

/// The producer thread of a lane, as the shard sees it.
pub struct ProducerHandle {
    pub lane: Arc<Lane>,
    pub thread: Thread,
    pub join: Option<JoinHandle<()>>,
}

impl ProducerHandle {
    /// Called by the shard after it pushed a batch.
    pub fn notify(&self) {
        // SeqCst here and where the producer thread sets the flag: with Release/Acquire
        // the flag's store may pass the thread's emptiness check (store-load reordering),
        // both sides miss each other, and the batch waits out IDLE_PARK_MS.
        if self.lane.sender_sleeping.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
    }
}

/// How long the producer thread sleeps when its ring is empty, at most; a push wakes it.
const IDLE_PARK_MS: u64 = 100;
/// How long to wait for librdkafka's queue to make room before trying again.
const QUEUE_FULL_POLL_MS: u64 = 10;
/// How long a stopping producer may take to deliver what it holds.
const STOP_FLUSH_SECS: u64 = 5;
/// Pause before trying again when re-creating a producer after a fatal error failed.
const RECREATE_PAUSE_MS: u64 = 1000;

struct DeliveryContext {
    lane: Arc<Lane>,
    /// Shared by the producers a lane has over time (see [`spawn_producer`]).
    wake: Arc<CrossThreadWake>,
}

impl ClientContext for DeliveryContext {}

/// The delivery opaque: the ticket in the high bits, the mapping index in the low 16.
fn opaque(ticket: u64, mapping: u32) -> usize {
    ((ticket << 16) | u64::from(mapping & 0xFFFF)) as usize
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (ticket, mapping) = ((opaque as u64) >> 16, (opaque & 0xFFFF) as u32);
        let result = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error_code(error)),
        };
        push_report(
            &self.lane,
            &self.wake,
            Report {
                ticket,
                mapping,
                result,
            },
        );
    }
}

fn error_code(error: &KafkaError) -> RDKafkaErrorCode {
    error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)
}

/// Reports are never dropped: if the shard is behind, wait for it to make room.
fn push_report(lane: &Lane, wake: &CrossThreadWake, mut report: Report) {
    loop {
        match lane.reports.push(report) {
            Ok(()) => break,
            Err(back) => {
                report = back;
                wake.wake();
                thread::yield_now();
            }
        }
    }
    wake.wake();
}

/// The librdkafka configuration of a cluster: our defaults, then the user's properties.
pub fn client_config(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // Records of one client and mapping reach their partition in publish order, once.
        .set("enable.idempotence", "true")
        // Kafka away: records wait in librdkafka (bounded by its queue, then by our ring)
        // instead of failing after the default five minutes.
        .set("message.timeout.ms", "0")
        // We batch per shard already; a short linger keeps PUBACK latency low.
        .set("linger.ms", "1");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// Starts the producer thread of one (shard, cluster). Fails if librdkafka refuses the
/// configuration, with its message.
///
/// A fatal error (the idempotent producer lost track of its sequence, say) makes a
/// librdkafka producer unusable for good: every later record would fail. The thread then
/// lets the old producer report what it held (failures, so the devices publish again) and
/// goes on with a new one.
pub fn spawn_producer(
    name: String,
    config: ClientConfig,
    lane: Arc<Lane>,
    wake: CrossThreadWake,
) -> Result<ProducerHandle, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let thread_lane = lane.clone();
    let join = thread::Builder::new()
        .name(name)
        .spawn(move || {
            let wake = Arc::new(wake);
            let mut ready = Some(ready_tx);
            loop {
                let context = DeliveryContext {
                    lane: thread_lane.clone(),
                    wake: wake.clone(),
                };
                let producer: ThreadedProducer<DeliveryContext> =
                    match config.create_with_context(context) {
                        Ok(producer) => producer,
                        Err(error) => match ready.take() {
                            Some(ready) => {
                                let _ = ready.send(Err(error.to_string()));
                                return;
                            }
                            None if thread_lane.stop.load(Ordering::Acquire) => return,
                            None => {
                                thread::sleep(Duration::from_millis(RECREATE_PAUSE_MS));
                                continue;
                            }
                        },
                    };
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                if !run_sender(&producer, &thread_lane) {
                    return;
                }
                // Fatal: deliver the reports of what is in flight; dropping the producer
                // fails the rest, each with a report.
                let _ = producer.flush(Duration::from_secs(STOP_FLUSH_SECS));
            }
        })
        .map_err(|e| e.to_string())?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ProducerHandle {
            thread: join.thread().clone(),
            lane,
            join: Some(join),
        }),
        Ok(Err(message)) => Err(message),
        Err(_) => Err("producer thread ended before creating its producer".into()),
    }
}

/// Feeds `producer` until the lane stops (false) or the producer has a fatal error (true).
fn run_sender(producer: &ThreadedProducer<DeliveryContext>, lane: &Lane) -> bool {
    loop {
        while let Some(batch) = lane.batches.pop() {
            lane.records_in_ring
                .fetch_sub(batch.len(), Ordering::Relaxed);
            for record in batch {
                send(producer, lane, record);
            }
            lane.records_in_librdkafka
                .store(i64::from(producer.in_flight_count()), Ordering::Relaxed);
            if producer.client().fatal_error().is_some() {
                return true;
            }
        }
        if lane.stop.load(Ordering::Acquire) {
            let _ = producer.flush(Duration::from_secs(STOP_FLUSH_SECS));
            return false;
        }
        if producer.client().fatal_error().is_some() {
            return true;
        }
        lane.sender_sleeping.store(true, Ordering::SeqCst);
        if lane.batches.is_empty() && !lane.stop.load(Ordering::Acquire) {
            thread::park_timeout(Duration::from_millis(IDLE_PARK_MS));
        }
        lane.sender_sleeping.store(false, Ordering::Release);
        lane.records_in_librdkafka
            .store(i64::from(producer.in_flight_count()), Ordering::Relaxed);
    }
}

fn send(producer: &ThreadedProducer<DeliveryContext>, lane: &Lane, record: Record) {
    let Record {
        topic,
        key,
        payload,
        headers,
        ticket,
        mapping,
    } = record;
    let mut owned_headers = None;
    if !headers.is_empty() {
        let mut built = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in &headers {
            built = built.insert(Header {
                key: name,
                value: Some(value.as_ref()),
            });
        }
        owned_headers = Some(built);
    }
    let mut base =
        BaseRecord::with_opaque_to(&topic, opaque(ticket, mapping)).payload(payload.as_ref());
    if !key.is_empty() {
        base = base.key(&key[..]);
    }
    if let Some(headers) = owned_headers {
        base = base.headers(headers);
    }
    loop {
        match producer.send(base) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                // librdkafka holds as much as it may: wait for deliveries, keep the order.
                base = back;
                producer.poll(Duration::from_millis(QUEUE_FULL_POLL_MS));
                if lane.stop.load(Ordering::Acquire) {
                    return;
                }
            }
            Err((error, _)) => {
                // Refused at once (message too large, bad topic name...): a permanent failure.
                let code = error_code(&error);
                let report = Report {
                    ticket,
                    mapping,
                    result: Err(code),
                };
                push_report(lane, &producer.context().wake, report);
                return;
            }
        }
    }
}
