//! The shard side of the bridge without Kafka, a runtime or sleeps: a [`ShardBridge`] built
//! by hand over real librdkafka producers that never connect (bootstrap `127.0.0.1:9`),
//! with batches kept on their lanes (a long linger, large batches) where the tests look at
//! them, and delivery reports made here and applied with [`ShardBridge::apply_report`].
//!
//! `ack = "durable"` needs a [`SpoolLog`], which only `spool::log::open` makes: async, on
//! glommio's io_uring. Those tests run on a one-shard runtime, as `spool::log`'s own do
//! (still no Kafka and no sleeps), with a spool in a temporary directory; a full spool is one
//! attached with `max_bytes = 0`. The spool's flush and read-back tasks are not run: the
//! flush is told by hand ([`ShardBridge::spool_flushed`]).
//!
//! The module also installs a counting global allocator for the library's test binary
//! (counts per thread, so tests running in parallel do not disturb each other) to measure
//! the allocations of the PUBLISH path.
//!
//! [`SpoolLog`]: crate::spool::log::SpoolLog

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;
use crate::config::SpoolWhenFull;
use crate::metrics::RefusedReason;
use crate::protocol::{MqttStr, PublishProperties, QoS, ReasonCode};
use crate::runtime::{cross_thread_wake, WakeEnd};
use crate::spool::log::{self as spool_log, SpoolLog};
use crate::spool::SpoolStats;

use super::mapping::{Mappings, OnRefused};
use super::producer::{self, KafkaProducer, RefusedRecord, Report};
use super::settings::ClusterSettings;
use super::ticket::{Tag, Ticket, Waiter};
use super::{Acknowledgement, Completed, Publication, ShardBridge};

// ---------------------------------------------------------------------------------------
// Counting allocator

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread so far.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct CountingAllocator;

fn count_one() {
    // `try_with`: a thread being torn down may still allocate.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// What `f` returns, and how many allocations this thread made while it ran.
fn allocations_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let value = f();
    let after = ALLOCATIONS.with(Cell::get);
    (value, after - before)
}

// ---------------------------------------------------------------------------------------
// Fixture

/// Two clusters: `main` (index 0) and `spare` (index 1), both unreachable.
const CLUSTERS: &str = "[kafka.clusters.main]\nbootstrap = \"127.0.0.1:9\"\n\
                        [kafka.clusters.spare]\nbootstrap = \"127.0.0.1:9\"\n";
const MAIN: usize = 0;
const SPARE: usize = 1;

/// Batches stay on their lane: up to 100,000 records or 1 s, far beyond any test.
const KEEP_BATCHES: &str = "[batching]\nmax_messages = 100000\nlinger_us = 1000000\n";

struct Fixture {
    bridge: ShardBridge,
    /// The shard's end of the producers' wake-ups, kept open while they live.
    _wake_end: WakeEnd,
}

/// A bridge over `mappings` (TOML `[[kafka.mapping]]` tables) and `batching`.
fn bridge_with(mappings: &str, batching: &str) -> Fixture {
    let text = format!("{CLUSTERS}{batching}{mappings}");
    let config = Config::from_toml(&text, "state_tests.toml").expect(&text);
    let mappings = Mappings::new(&config.kafka).expect("mappings compile");
    let (wake, wake_end) = cross_thread_wake().expect("a socket pair");
    let producers = mappings
        .cluster_names()
        .iter()
        .map(|name| {
            KafkaProducer::create(
                format!("test-{name}"),
                producer::client_config("127.0.0.1:9", &BTreeMap::new()),
                wake.try_clone().expect("a wake-up"),
            )
            .expect("librdkafka takes the configuration")
        })
        .collect();
    let settings = Arc::new(ClusterSettings::new(&config));
    Fixture {
        bridge: ShardBridge::new(mappings, producers, config.batching.clone(), settings),
        _wake_end: wake_end,
    }
}

fn bridge(mappings: &str) -> Fixture {
    bridge_with(mappings, KEEP_BATCHES)
}

/// A mapping of `filter` to Kafka topic `topic` on `main`, with `extra` TOML lines.
fn mapping(filter: &str, topic: &str, extra: &str) -> String {
    format!(
        "[[kafka.mapping]]\nmqtt = \"{filter}\"\ncluster = \"main\"\ntopic = \"{topic}\"\n{extra}\n"
    )
}

/// The parts of a PUBLISH a [`Publication`] borrows.
struct Message {
    topic: MqttStr,
    publisher: MqttStr,
    payload: Bytes,
    properties: PublishProperties,
    qos: QoS,
}

impl Message {
    fn new(topic: &'static str, qos: QoS) -> Message {
        Message {
            topic: MqttStr::from_static(topic),
            publisher: MqttStr::from_static("device-1"),
            payload: Bytes::from_static(b"21.5"),
            properties: PublishProperties::default(),
            qos,
        }
    }

    fn publication(&self) -> Publication<'_> {
        Publication {
            topic: &self.topic,
            publisher: &self.publisher,
            username: None,
            payload: &self.payload,
            qos: self.qos,
            retain: false,
            properties: &self.properties,
        }
    }
}

impl ShardBridge {
    /// Admits and submits `message` as the broker does (a QoS 1/2 PUBLISH wants its
    /// acknowledgement).
    fn publish(&mut self, message: &Message, now: Instant) -> Option<Ticket> {
        let admission = self.admit(&message.topic, message.qos, true);
        let wants_ack = message.qos != QoS::AtMostOnce;
        self.submit(&admission, &message.publication(), wants_ack, now)
    }

    /// The tags of the records waiting in `cluster`'s batch, in order.
    fn batch_tags(&self, cluster: usize) -> Vec<Tag> {
        self.lanes[cluster].batch.iter().map(|r| r.tag).collect()
    }

    /// Applies one report and returns what became due.
    fn report(&mut self, cluster: usize, report: Report, now: Instant) -> Vec<Completed> {
        let mut completed = Vec::new();
        self.apply_report(cluster, report, now, &mut completed);
        completed
    }
}

fn publish_tag(ticket: Ticket, mapping: u16) -> Tag {
    Tag {
        waiter: Waiter::Publish(ticket),
        mapping,
        dead_letter: false,
    }
}

fn ok(tag: Tag) -> Report {
    Report {
        tag,
        result: Ok(()),
        refused: None,
    }
}

fn failed(tag: Tag, code: RDKafkaErrorCode) -> Report {
    Report {
        tag,
        result: Err(code),
        refused: None,
    }
}

/// A record as librdkafka gives it back in the report of a refused delivery.
fn given_back(topic: &str) -> Box<RefusedRecord> {
    Box::new(RefusedRecord {
        topic: topic.to_string(),
        key: b"sensors/t1".to_vec(),
        payload: Bytes::from_static(b"21.5"),
        headers: vec![
            ("mqtt_topic".to_string(), Bytes::from_static(b"sensors/t1")),
            ("client_id".to_string(), Bytes::from_static(b"device-1")),
        ],
    })
}

fn done(ticket: Ticket, outcome: Acknowledgement) -> Vec<Completed> {
    vec![Completed { ticket, outcome }]
}

// ---------------------------------------------------------------------------------------
// admit

#[test]
fn admit_walks_the_trie_once_per_publish_and_nothing_else_walks_it() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", ""));
    let b = &mut f.bridge;
    let now = Instant::now();
    assert_eq!(b.trie_walks(), 0);
    let message = Message::new("sensors/t1", QoS::AtLeastOnce);
    for publish in 1..=3u64 {
        let admission = b.admit(&message.topic, message.qos, true);
        assert_eq!(b.trie_walks(), publish, "one walk per admit");
        assert!(admission.to_kafka());
        assert!(!b.is_backlogged_for(&admission));
        assert!(!b.is_backlogged());
        let ticket = b.submit(&admission, &message.publication(), true, now);
        assert!(ticket.is_some());
        assert_eq!(
            b.trie_walks(),
            publish,
            "wait checks and submit do not walk"
        );
    }
    // Reports do not walk either.
    let completed = b.report(MAIN, ok(publish_tag(Ticket::FIRST, 0)), now);
    assert_eq!(completed, done(Ticket::FIRST, Acknowledgement::Stored));
    assert_eq!(b.trie_walks(), 3);
}

#[test]
fn admit_without_mappings_does_not_walk() {
    let mut f = bridge("");
    let admission = f.bridge.admit("sensors/t1", QoS::AtLeastOnce, true);
    assert!(!admission.to_kafka());
    assert!(admission.to_subscribers());
    assert!(!admission.refused_for_full_spool());
    assert_eq!(f.bridge.trie_walks(), 0);
}

#[test]
fn a_topic_no_mapping_matches_goes_to_subscribers_only() {
    let mut f = bridge(&mapping(
        "sensors/#",
        "telemetry",
        "mqtt_subscribers = false",
    ));
    let b = &mut f.bridge;
    let admission = b.admit("alerts/fire", QoS::AtLeastOnce, true);
    assert_eq!(b.trie_walks(), 1, "looked, found nothing");
    assert!(!admission.to_kafka());
    assert!(admission.to_subscribers());
    let message = Message::new("alerts/fire", QoS::AtLeastOnce);
    assert_eq!(
        b.submit(&admission, &message.publication(), true, Instant::now()),
        None
    );
    assert!(b.lanes[MAIN].batch.is_empty());
    assert_eq!(b.pending_count(), 0);
}

#[test]
fn a_sink_mapping_keeps_the_message_from_subscribers() {
    let mappings = [
        mapping("sensors/#", "telemetry", ""),
        mapping("sensors/+/raw", "raw", "mqtt_subscribers = false"),
    ]
    .concat();
    let mut f = bridge(&mappings);
    let b = &mut f.bridge;
    let raw = b.admit("sensors/t1/raw", QoS::AtMostOnce, false);
    assert!(raw.to_kafka());
    assert!(
        !raw.to_subscribers(),
        "one sink among the matches is enough"
    );
    let cooked = b.admit("sensors/t1", QoS::AtMostOnce, false);
    assert!(cooked.to_kafka());
    assert!(cooked.to_subscribers());
    assert_eq!(b.trie_walks(), 2);
}

#[test]
fn two_matching_mappings_make_two_records_in_file_order() {
    // The narrower filter first in the file: records follow file order, not the trie's.
    let mappings = [
        mapping("sensors/t1", "exact", ""),
        mapping("sensors/#", "all.{1}", ""),
    ]
    .concat();
    let mut f = bridge(&mappings);
    let b = &mut f.bridge;
    let message = Message::new("sensors/t1", QoS::AtMostOnce);
    assert_eq!(
        b.publish(&message, Instant::now()),
        None,
        "QoS 0 waits for nothing"
    );
    let batch = &b.lanes[MAIN].batch;
    let topics: Vec<&str> = batch.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["exact", "all.sensors"]);
    let mappings: Vec<u16> = batch.iter().map(|r| r.tag.mapping).collect();
    assert_eq!(mappings, [0, 1]);
    // The key defaults to the MQTT topic; the default headers are topic, client id, QoS.
    assert_eq!(batch[0].key, b"sensors/t1");
    let headers: Vec<(&str, &[u8])> = batch[0]
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_ref()))
        .collect();
    assert_eq!(
        headers,
        [
            ("mqtt_topic", &b"sensors/t1"[..]),
            ("client_id", b"device-1"),
            ("qos", b"0"),
        ]
    );
    assert_eq!(batch[0].tag.waiter, Waiter::Nobody);
    let (counters, _) = b.snapshot();
    assert_eq!((counters[0].matched, counters[0].produced), (1, 1));
    assert_eq!((counters[1].matched, counters[1].produced), (1, 1));
}

#[test]
fn nothing_is_refused_for_a_full_spool_without_a_spool() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", "ack = \"durable\""));
    let b = &mut f.bridge;
    assert!(b.has_durable_mappings());
    assert!(!b.spool_is_full());
    let admission = b.admit("sensors/t1", QoS::AtLeastOnce, true);
    assert!(admission.to_kafka());
    assert!(!admission.refused_for_full_spool());
    assert!(!b.is_backlogged_for(&admission));
}

// ---------------------------------------------------------------------------------------
// ack = "durable": a spool on a one-shard runtime

/// Runs `test` on a one-shard glommio runtime with a spool opened in a directory of its
/// own (the spool needs io_uring).
fn with_spool<F, Fut>(name: &'static str, test: F)
where
    F: Fn(Rc<RefCell<SpoolLog>>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let dir =
        std::env::temp_dir().join(format!("ferrymq-state-tests-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cpu = crate::runtime::affinity_cpus().unwrap()[0];
    let shard_dir = dir.clone();
    crate::runtime::run_shards::<(), _, _>(&[cpu], 1, move |_env| {
        let (test, dir) = (test.clone(), shard_dir.clone());
        async move {
            let (log, cuts) = spool_log::open(&dir, &[], 1 << 20).await.expect("a spool");
            assert!(cuts.is_empty());
            test(Rc::new(RefCell::new(log))).await
        }
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_spool_refuses_only_v5_qos1_and_2_durable_publishes_when_told_to() {
    with_spool("refuse", |spool| async move {
        let mappings = [
            mapping("sensors/#", "telemetry", "ack = \"durable\""),
            mapping("alerts/#", "alerts", ""),
        ]
        .concat();
        let mut f = bridge(&mappings);
        let b = &mut f.bridge;
        // Full: it holds `max_bytes` (0) already.
        b.attach_spool(spool.clone(), 0, SpoolWhenFull::Refuse);
        assert!(b.spool_is_full());
        assert!(b.is_backlogged());
        let refused = |b: &mut ShardBridge, topic: &str, qos: QoS, v5: bool| {
            b.admit(topic, qos, v5).refused_for_full_spool()
        };
        assert!(refused(b, "sensors/t1", QoS::AtLeastOnce, true));
        assert!(refused(b, "sensors/t1", QoS::ExactlyOnce, true));
        assert!(
            !refused(b, "sensors/t1", QoS::AtLeastOnce, false),
            "3.1.1 waits"
        );
        assert!(
            !refused(b, "sensors/t1", QoS::AtMostOnce, true),
            "QoS 0 is dropped"
        );
        assert!(
            !refused(b, "alerts/fire", QoS::AtLeastOnce, true),
            "not durable"
        );
        assert_eq!(b.trie_walks(), 5);
        // Publishers of durable messages wait; others only for their own producer.
        let durable = b.admit("sensors/t1", QoS::AtLeastOnce, false);
        assert!(b.is_backlogged_for(&durable));
        let kafka = b.admit("alerts/fire", QoS::AtLeastOnce, false);
        assert!(!b.is_backlogged_for(&kafka));
        // QoS 0 to a full spool is dropped and counted.
        let message = Message::new("sensors/t1", QoS::AtMostOnce);
        assert_eq!(b.publish(&message, Instant::now()), None);
        assert_eq!(b.dropped_qos0_ring_full, 1);
        assert_eq!(b.snapshot().0[0].dropped_ring_full, 1);
        assert_eq!(spool.borrow().bytes(), 0, "nothing appended");

        // `hold` never refuses: 5.0 publishers wait as 3.1.1 ones do.
        b.attach_spool(spool, 0, SpoolWhenFull::Hold);
        assert!(!refused(b, "sensors/t1", QoS::AtLeastOnce, true));
    });
}

#[test]
fn a_durable_publish_is_acknowledged_when_the_spool_flush_holds_it() {
    with_spool("flush", |spool| async move {
        let mut f = bridge(&mapping("sensors/#", "telemetry", "ack = \"durable\""));
        let b = &mut f.bridge;
        b.attach_spool(spool.clone(), u64::MAX, SpoolWhenFull::Refuse);
        let now = Instant::now();
        let admission = b.admit("sensors/t1", QoS::AtLeastOnce, true);
        assert!(!admission.refused_for_full_spool(), "room in the spool");
        let ticket = b.publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now);
        assert_eq!(ticket, Some(Ticket::FIRST));
        // A QoS 0 record is spooled too, with nobody waiting.
        assert_eq!(
            b.publish(&Message::new("sensors/t2", QoS::AtMostOnce), now),
            None
        );
        assert!(b.lanes[MAIN].batch.is_empty(), "to the spool, not the lane");
        assert!(spool.borrow().bytes() > 0);
        let waiting: Vec<(u64, Option<Ticket>)> = b
            .spool_waiting
            .iter()
            .map(|&(seq, t, _)| (seq, t))
            .collect();
        assert_eq!(waiting, [(0, Some(Ticket::FIRST)), (1, None)]);
        assert_eq!(b.snapshot().0[0].produced, 2);

        let stats = SpoolStats::default();
        let completed = b.spool_flushed(1, now, &stats);
        assert_eq!(completed, done(Ticket::FIRST, Acknowledgement::Stored));
        assert!(b.spool_waiting.is_empty());
        assert_eq!(b.pending_count(), 0);
        assert_eq!(stats.append_latency_us.borrow().len(), 2);
    });
}

// ---------------------------------------------------------------------------------------
// submit and tickets

#[test]
fn a_qos1_publish_to_a_kafka_mapping_waits_on_a_ticket_in_the_lane() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", ""));
    let b = &mut f.bridge;
    let now = Instant::now();
    let first = b.publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now);
    assert_eq!(first, Some(Ticket::FIRST));
    let second = b.publish(&Message::new("sensors/t2", QoS::ExactlyOnce), now);
    assert_eq!(second, Some(Ticket::FIRST.next()));
    assert_eq!(
        b.batch_tags(MAIN),
        [
            publish_tag(Ticket::FIRST, 0),
            publish_tag(Ticket::FIRST.next(), 0)
        ]
    );
    assert!(b.batch_tags(SPARE).is_empty());
    assert_eq!(b.pending_count(), 2);
    assert!(
        b.take_timer_wanted(),
        "the open batch needs the linger timer"
    );
    assert!(!b.take_timer_wanted(), "asked once");

    // The reports come back in any order; each completes its own ticket.
    let completed = b.report(MAIN, ok(publish_tag(Ticket::FIRST.next(), 0)), now);
    assert_eq!(
        completed,
        done(Ticket::FIRST.next(), Acknowledgement::Stored)
    );
    let completed = b.report(MAIN, ok(publish_tag(Ticket::FIRST, 0)), now);
    assert_eq!(completed, done(Ticket::FIRST, Acknowledgement::Stored));
    assert_eq!(b.pending_count(), 0);
    let (counters, _) = b.snapshot();
    assert_eq!(counters[0].acknowledged, 2);
    assert_eq!(counters[0].failed, 0);

    // A report for a ticket no longer waiting (a duplicate) completes nothing.
    assert!(b
        .report(MAIN, ok(publish_tag(Ticket::FIRST, 0)), now)
        .is_empty());
}

#[test]
fn a_ticket_of_two_mappings_completes_after_both_reports() {
    let mappings = [
        mapping("sensors/#", "telemetry", ""),
        "[[kafka.mapping]]\nmqtt = \"sensors/+\"\ncluster = \"spare\"\ntopic = \"copy\"\n"
            .to_string(),
    ]
    .concat();
    let mut f = bridge(&mappings);
    let b = &mut f.bridge;
    let now = Instant::now();
    let ticket = b
        .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
        .expect("waits for Kafka");
    assert_eq!(b.batch_tags(MAIN), [publish_tag(ticket, 0)]);
    assert_eq!(b.batch_tags(SPARE), [publish_tag(ticket, 1)]);

    assert!(b.report(SPARE, ok(publish_tag(ticket, 1)), now).is_empty());
    assert_eq!(b.pending_count(), 1, "one record still out");
    let completed = b.report(MAIN, ok(publish_tag(ticket, 0)), now);
    assert_eq!(completed, done(ticket, Acknowledgement::Stored));
    assert_eq!(b.pending_count(), 0);
    // The latency is recorded on the lane of the last report.
    let (_, clusters) = b.snapshot();
    assert_eq!(clusters[MAIN].latency_us.len(), 1);
    assert_eq!(clusters[SPARE].latency_us.len(), 0);
}

#[test]
fn qos0_and_ack_none_wait_for_nothing() {
    let mappings = [
        mapping("sensors/#", "telemetry", ""),
        mapping("fire/#", "fire", "ack = \"none\""),
    ]
    .concat();
    let mut f = bridge(&mappings);
    let b = &mut f.bridge;
    let now = Instant::now();
    assert_eq!(
        b.publish(&Message::new("sensors/t1", QoS::AtMostOnce), now),
        None
    );
    assert_eq!(
        b.publish(&Message::new("fire/1", QoS::AtLeastOnce), now),
        None
    );
    assert_eq!(
        b.publish(&Message::new("fire/2", QoS::ExactlyOnce), now),
        None
    );
    let nobody = |mapping| Tag {
        waiter: Waiter::Nobody,
        mapping,
        dead_letter: false,
    };
    assert_eq!(b.batch_tags(MAIN), [nobody(0), nobody(1), nobody(1)]);
    assert_eq!(b.pending_count(), 0);
    // Their reports only count.
    assert!(b.report(MAIN, ok(nobody(1)), now).is_empty());
    let (counters, _) = b.snapshot();
    assert_eq!(counters[1].acknowledged, 1);
    // The next ticket is still the first: none was taken.
    let ticket = b.publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now);
    assert_eq!(ticket, Some(Ticket::FIRST));
}

#[test]
fn a_full_batch_leaves_the_lane_for_librdkafka() {
    let batching = "[batching]\nmax_messages = 2\nlinger_us = 1000000\n";
    let mut f = bridge_with(&mapping("sensors/#", "telemetry", ""), batching);
    let b = &mut f.bridge;
    let now = Instant::now();
    b.publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now);
    assert_eq!(b.lanes[MAIN].batch.len(), 1);
    b.publish(&Message::new("sensors/t2", QoS::AtLeastOnce), now);
    // Two records: the batch went to the producer, which queues them (nothing connects).
    assert!(b.lanes[MAIN].batch.is_empty());
    assert!(b.lanes[MAIN].held.is_none());
    let (_, clusters) = b.snapshot();
    assert_eq!(clusters[MAIN].records_in_ring, 0);
    assert!(clusters[MAIN].records_in_librdkafka >= 2);
    assert_eq!(b.pending_count(), 2, "still waiting for their reports");
}

// ---------------------------------------------------------------------------------------
// Reports: refused for good, failed

#[test]
fn refused_for_good_with_a_reason_code() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", ""));
    let b = &mut f.bridge;
    let now = Instant::now();
    let ticket = b
        .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
        .unwrap();
    let report = Report {
        refused: Some(given_back("telemetry")),
        ..failed(
            publish_tag(ticket, 0),
            RDKafkaErrorCode::MessageSizeTooLarge,
        )
    };
    let completed = b.report(MAIN, report, now);
    assert_eq!(
        completed,
        done(
            ticket,
            Acknowledgement::Refused(ReasonCode::ImplementationSpecificError)
        )
    );
    let (counters, _) = b.snapshot();
    let too_large = &counters[0].refused[RefusedReason::TooLarge as usize];
    assert_eq!(too_large[OnRefused::ReasonCode.index()], 1);
    assert_eq!(too_large[OnRefused::DeadLetter.index()], 0);
    assert_eq!(too_large[OnRefused::Drop.index()], 0);
    assert_eq!(counters[0].failed, 1);
    assert_eq!(counters[0].acknowledged, 0);
    assert_eq!(b.batch_tags(MAIN).len(), 1, "nothing sent again");
}

#[test]
fn refused_for_good_by_topic_and_authorization_give_their_reason_codes() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", ""));
    let b = &mut f.bridge;
    let now = Instant::now();
    for (code, reason, counted) in [
        (
            RDKafkaErrorCode::UnknownTopic,
            ReasonCode::TopicNameInvalid,
            RefusedReason::InvalidTopic,
        ),
        (
            RDKafkaErrorCode::TopicAuthorizationFailed,
            ReasonCode::NotAuthorized,
            RefusedReason::NotAuthorized,
        ),
    ] {
        let ticket = b
            .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
            .unwrap();
        let completed = b.report(MAIN, failed(publish_tag(ticket, 0), code), now);
        assert_eq!(completed, done(ticket, Acknowledgement::Refused(reason)));
        let (counters, _) = b.snapshot();
        assert_eq!(
            counters[0].refused[counted as usize][OnRefused::ReasonCode.index()],
            1,
            "{code:?}"
        );
    }
}

#[test]
fn refused_for_good_and_dropped_is_acknowledged_as_stored() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", "on_refused = \"drop\""));
    let b = &mut f.bridge;
    let now = Instant::now();
    let ticket = b
        .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
        .unwrap();
    let report = failed(
        publish_tag(ticket, 0),
        RDKafkaErrorCode::MessageSizeTooLarge,
    );
    let completed = b.report(MAIN, report, now);
    assert_eq!(completed, done(ticket, Acknowledgement::Stored));
    let (counters, _) = b.snapshot();
    let too_large = &counters[0].refused[RefusedReason::TooLarge as usize];
    assert_eq!(too_large[OnRefused::Drop.index()], 1);
    assert_eq!(too_large[OnRefused::ReasonCode.index()], 0);
    assert_eq!(counters[0].failed, 1);
}

#[test]
fn refused_for_good_goes_to_the_dead_letter_topic_and_completes_with_its_report() {
    let dead_letter = "on_refused = \"dead_letter\"\ndead_letter_topic = \"refused\"\n\
                       dead_letter_cluster = \"spare\"";
    let mut f = bridge(&mapping("sensors/#", "telemetry", dead_letter));
    let b = &mut f.bridge;
    let now = Instant::now();
    let ticket = b
        .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
        .unwrap();
    let report = Report {
        refused: Some(given_back("telemetry")),
        ..failed(
            publish_tag(ticket, 0),
            RDKafkaErrorCode::MessageSizeTooLarge,
        )
    };
    assert!(
        b.report(MAIN, report, now).is_empty(),
        "the acknowledgement now waits for the dead letter"
    );
    assert_eq!(b.pending_count(), 1);

    let letter_tag = Tag {
        dead_letter: true,
        ..publish_tag(ticket, 0)
    };
    assert_eq!(b.batch_tags(SPARE), [letter_tag]);
    let letter = &b.lanes[SPARE].batch[0];
    assert_eq!(letter.topic, "refused");
    assert_eq!(letter.key, b"sensors/t1");
    assert_eq!(letter.payload, Bytes::from_static(b"21.5"));
    let headers: Vec<(&str, &[u8])> = letter
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_ref()))
        .collect();
    assert_eq!(
        headers,
        [
            ("mqtt_topic", &b"sensors/t1"[..]),
            ("client_id", b"device-1"),
            (
                "dead_letter_error",
                format!(
                    "{:?}: {}",
                    RDKafkaErrorCode::MessageSizeTooLarge,
                    RDKafkaErrorCode::MessageSizeTooLarge
                )
                .as_bytes()
            ),
            ("dead_letter_topic", b"telemetry"),
            ("dead_letter_cluster", b"main"),
        ]
    );
    let (counters, _) = b.snapshot();
    let too_large = &counters[0].refused[RefusedReason::TooLarge as usize];
    assert_eq!(too_large[OnRefused::DeadLetter.index()], 1);
    assert_eq!(too_large[OnRefused::ReasonCode.index()], 0);
    assert_eq!(counters[0].dead_lettered, 0);

    let completed = b.report(SPARE, ok(letter_tag), now);
    assert_eq!(completed, done(ticket, Acknowledgement::Stored));
    assert_eq!(b.pending_count(), 0);
    let (counters, _) = b.snapshot();
    assert_eq!(counters[0].dead_lettered, 1);
    assert_eq!(counters[0].acknowledged, 0);
    assert_eq!(counters[0].failed, 1, "the refused record itself");
}

#[test]
fn a_dead_letter_mapping_without_the_record_falls_back_to_a_reason_code() {
    let dead_letter = "on_refused = \"dead_letter\"\ndead_letter_topic = \"refused\"";
    let mut f = bridge(&mapping("sensors/#", "telemetry", dead_letter));
    let b = &mut f.bridge;
    let now = Instant::now();
    let ticket = b
        .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
        .unwrap();
    // No record in the report: nothing to make a dead letter of.
    let report = failed(publish_tag(ticket, 0), RDKafkaErrorCode::PolicyViolation);
    let completed = b.report(MAIN, report, now);
    assert_eq!(
        completed,
        done(
            ticket,
            Acknowledgement::Refused(ReasonCode::ImplementationSpecificError)
        )
    );
    let (counters, _) = b.snapshot();
    let policy = &counters[0].refused[RefusedReason::PolicyViolation as usize];
    assert_eq!(policy[OnRefused::ReasonCode.index()], 1);
    assert_eq!(b.batch_tags(MAIN).len(), 1, "no dead letter made");
}

#[test]
fn a_failure_not_for_good_fails_the_ticket() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", ""));
    let b = &mut f.bridge;
    let now = Instant::now();
    for code in [RDKafkaErrorCode::AllBrokersDown, RDKafkaErrorCode::Fail] {
        assert!(!producer::is_refused_for_good(code));
        let ticket = b
            .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
            .unwrap();
        let completed = b.report(MAIN, failed(publish_tag(ticket, 0), code), now);
        assert_eq!(
            completed,
            done(
                ticket,
                Acknowledgement::Failed(ReasonCode::UnspecifiedError)
            ),
            "{code:?}"
        );
    }
    let (counters, _) = b.snapshot();
    assert_eq!(counters[0].failed, 2);
    assert_eq!(counters[0].refused, [[0; 3]; 5], "not refusals");
}

#[test]
fn one_failed_record_of_two_fails_the_ticket_once_both_are_reported() {
    let mappings = [
        mapping("sensors/#", "telemetry", ""),
        mapping("sensors/+", "copy", ""),
    ]
    .concat();
    let mut f = bridge(&mappings);
    let b = &mut f.bridge;
    let now = Instant::now();
    let ticket = b
        .publish(&Message::new("sensors/t1", QoS::AtLeastOnce), now)
        .unwrap();
    let report = failed(publish_tag(ticket, 0), RDKafkaErrorCode::AllBrokersDown);
    assert!(b.report(MAIN, report, now).is_empty());
    let completed = b.report(MAIN, ok(publish_tag(ticket, 1)), now);
    assert_eq!(
        completed,
        done(
            ticket,
            Acknowledgement::Failed(ReasonCode::UnspecifiedError)
        )
    );
}

// ---------------------------------------------------------------------------------------
// Allocations of the PUBLISH path

#[test]
fn admit_does_not_allocate_for_up_to_four_mappings() {
    let mappings = [
        mapping("a/#", "t", ""),
        mapping("a/+", "t", ""),
        mapping("+/b", "t", ""),
        mapping("#", "t", ""),
        mapping("a/b", "t", ""),
    ]
    .concat();
    let mut f = bridge(&mappings);
    let b = &mut f.bridge;
    // Warm up: the trie's scratch reaches its size.
    for topic in ["a/c", "a/b", "x/b"] {
        b.admit(topic, QoS::AtLeastOnce, true);
    }
    for (topic, matched) in [("x/y", 1), ("x/b", 2), ("a/c", 3), ("a/c/d", 2)] {
        let (admission, allocations) = allocations_of(|| b.admit(topic, QoS::AtLeastOnce, true));
        assert_eq!(admission.matched.len, matched, "{topic}");
        println!("admit {topic} ({matched} mappings): {allocations} allocations");
        assert_eq!(allocations, 0, "{topic}: {matched} mappings");
    }
    // Five matches spill past the inline four: one allocation.
    let (admission, allocations) = allocations_of(|| b.admit("a/b", QoS::AtLeastOnce, true));
    assert_eq!(admission.matched.len, 5);
    println!("admit a/b (5 mappings): {allocations} allocations");
    assert_eq!(allocations, 1);
}

#[test]
fn admit_of_four_matches_does_not_allocate() {
    let mappings = [
        mapping("a/#", "t", ""),
        mapping("a/+", "t", ""),
        mapping("+/b", "t", ""),
        mapping("#", "t", ""),
    ]
    .concat();
    let mut f = bridge(&mappings);
    let b = &mut f.bridge;
    b.admit("a/b", QoS::AtLeastOnce, true);
    let (admission, allocations) = allocations_of(|| b.admit("a/b", QoS::AtLeastOnce, true));
    assert_eq!(admission.matched.len, 4);
    println!("admit a/b (4 mappings): {allocations} allocations");
    assert_eq!(allocations, 0);
}

/// The allocations of one QoS 1 record with no headers, as measured: its Kafka topic
/// (`String`) and its key (`Vec`). Now and then one more, when the batch or the table of
/// pending tickets grows.
const SUBMIT_ALLOCATIONS: u64 = 2;

#[test]
fn submit_of_one_qos1_record_without_headers_allocates_its_topic_and_key() {
    let mut f = bridge(&mapping("sensors/#", "telemetry", "headers = []"));
    let b = &mut f.bridge;
    let now = Instant::now();
    let message = Message::new("sensors/t1", QoS::AtLeastOnce);
    let publication = message.publication();
    // The first submit sizes the render buffer.
    b.publish(&message, now);
    let mut counts = Vec::with_capacity(200);
    for _ in 0..200 {
        let admission = b.admit(&message.topic, message.qos, true);
        let (ticket, allocations) =
            allocations_of(|| b.submit(&admission, &publication, true, now));
        assert!(ticket.is_some());
        counts.push(allocations);
    }
    assert!(b.lanes[MAIN].batch.iter().all(|r| r.headers.is_empty()));
    let steady = counts.iter().filter(|&&n| n == SUBMIT_ALLOCATIONS).count();
    let growing = counts.iter().filter(|&&n| n > SUBMIT_ALLOCATIONS).count();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    println!(
        "submit of one QoS 1 record, no headers: {SUBMIT_ALLOCATIONS} allocations in \
         {steady} of 200 submits; {growing} with more (min {min}, max {max})"
    );
    assert_eq!(*min, SUBMIT_ALLOCATIONS, "{counts:?}");
    assert!(*max <= SUBMIT_ALLOCATIONS + 2, "{counts:?}");
    // Growth is amortized: the batch and the pending table double.
    assert!(
        growing <= 16,
        "{growing} submits allocated more: {counts:?}"
    );
}
