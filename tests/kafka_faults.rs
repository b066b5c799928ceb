//! Kafka faults, injected with librdkafka's mock cluster (`rdkafka::mocking::MockCluster`):
//! mock Kafka brokers on real loopback ports inside this test process, which the real
//! `ferrymq` binary (two shards) produces to. The tests beside these, against a real Apache
//! Kafka, prove the happy path; these prove the `ack = "kafka"` guarantee when Kafka
//! misbehaves: a QoS 1 PUBLISH is acknowledged with success only once Kafka has the record,
//! and a record Kafka refuses for good is answered with an error reason code (5.0) or a
//! closed connection (3.1.1), never with a success.
//!
//! MQTT is spoken with ferrymq's own codec over raw sockets: the encoders build packets and
//! `Decoder::client` reads the answers, so every PUBACK's reason code is seen as sent.
//! What Kafka holds is read back with an rdkafka `BaseConsumer` from the mock cluster.
//! Duplicates are allowed (QoS 1 and librdkafka retries are at least once) and reported.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::raw::{Next, RawClient};
use common::Broker;
use ferrymq::bridge::failure_reason;
use ferrymq::protocol::{Packet, Protocol, QoS, ReasonCode};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The Kafka topic every test's mapping writes to (each test has its own mock cluster).
const KAFKA_TOPIC: &str = "faults";
/// MQTT topics under this prefix are mapped to `KAFKA_TOPIC` with `ack = "kafka"`.
const MAPPED: &str = "kafka";
/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(15);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);

type Mock = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster of `brokers` brokers with `KAFKA_TOPIC` (one partition, replicated on
/// every broker) led by broker 1.
fn mock_cluster(brokers: i32) -> Mock {
    let mock = MockCluster::new(brokers).expect("mock cluster");
    mock.create_topic(KAFKA_TOPIC, 1, brokers)
        .expect("create topic");
    mock.partition_leader(KAFKA_TOPIC, 0, Some(1))
        .expect("set leader");
    mock
}

/// Writes a configuration mapping `kafka/#` to `KAFKA_TOPIC` on `bootstrap` and starts a
/// broker with it. The reconnect backoff is capped at 1 s (librdkafka's default cap is 10 s)
/// so that the tests see a returning broker quickly; `extra` adds librdkafka properties
/// (`, "name" = value` each); everything else is ferrymq's default.
fn start_broker(name: &str, bootstrap: &str, extra: &str) -> Broker {
    let config = format!(
        "[kafka.clusters.mock]\n\
         bootstrap = \"{bootstrap}\"\n\
         config = {{ \"reconnect.backoff.max.ms\" = 1000{extra} }}\n\
         \n\
         [[kafka.mapping]]\n\
         mqtt = \"{MAPPED}/#\"\n\
         topic = \"{KAFKA_TOPIC}\"\n\
         ack = \"kafka\"\n"
    );
    let path: PathBuf = [
        env!("CARGO_TARGET_TMPDIR"),
        &format!("kafka-faults-{}-{name}.toml", std::process::id()),
    ]
    .iter()
    .collect();
    std::fs::write(&path, config).expect("write config");
    Broker::start_with(&["--config", path.to_str().unwrap()])
}

/// A clean-start client `id` without keep alive, accepted.
fn connect(broker: &Broker, protocol: Protocol, id: &str) -> RawClient {
    RawClient::connected_to(broker.addr(), protocol, id, WAIT)
}

impl RawClient {
    /// The PUBACK of `packet_id` within `wait`, or None. Any other packet fails the test.
    fn puback(&mut self, packet_id: u16, wait: Duration) -> Option<ReasonCode> {
        match self.recv_within(wait) {
            Next::Packet(Packet::PubAck(puback)) => {
                assert_eq!(puback.packet_id, packet_id, "PUBACK for another PUBLISH");
                Some(puback.reason_code)
            }
            Next::Nothing => None,
            other => panic!("expected the PUBACK of {packet_id}, got {other:?}"),
        }
    }
}

/// A 5.0 publisher on its own thread: `count` QoS 1 messages to `topic`, one every `pace`,
/// payloads `{tag}-{i}`. `acked` counts PUBACKs as they come, so that the test thread can
/// inject faults mid-stream. Returns each message's PUBACK reason code (None: none came
/// within `WAIT` after the last one sent).
fn publish_stream(
    broker: &Broker,
    id: &str,
    tag: &str,
    count: u16,
    pace: Duration,
    acked: Arc<AtomicUsize>,
) -> thread::JoinHandle<Vec<Option<ReasonCode>>> {
    let mut mqtt = connect(broker, Protocol::V5, id);
    let topic = format!("{MAPPED}/{id}");
    let tag = tag.to_string();
    thread::spawn(move || {
        let mut codes = vec![None; usize::from(count)];
        let mut next = 0u16;
        let mut next_send = Instant::now();
        let mut last_progress = Instant::now();
        while acked.load(Ordering::Relaxed) < usize::from(count) {
            if next < count && Instant::now() >= next_send {
                mqtt.publish(&topic, QoS::AtLeastOnce, next + 1, format!("{tag}-{next}"));
                next += 1;
                next_send += pace;
                last_progress = Instant::now();
            }
            let wait = if next < count {
                next_send.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(50)
            };
            match mqtt.recv_within(wait.max(Duration::from_millis(1))) {
                Next::Packet(Packet::PubAck(puback)) => {
                    let slot = &mut codes[usize::from(puback.packet_id - 1)];
                    assert!(slot.is_none(), "two PUBACKs for {}", puback.packet_id);
                    *slot = Some(puback.reason_code);
                    acked.fetch_add(1, Ordering::Relaxed);
                    last_progress = Instant::now();
                }
                Next::Packet(other) => panic!("unexpected packet {other:?}"),
                Next::Closed => panic!("ferrymq closed the publisher's connection"),
                Next::Nothing => {
                    if last_progress.elapsed() > WAIT {
                        break;
                    }
                }
            }
        }
        codes
    })
}

/// Every record of `KAFKA_TOPIC` partition 0 in the mock cluster, as payload strings,
/// duplicates included.
fn kafka_payloads(mock: &Mock) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "kafka-faults-verify")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(KAFKA_TOPIC, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(KAFKA_TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).expect("assign");
    let mut payloads = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut position = 0;
    while position < high {
        assert!(
            Instant::now() < deadline,
            "read {position} of {high} records back from the mock cluster"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                position = message.offset() + 1;
                let payload = message.payload().unwrap_or_default();
                payloads.push(String::from_utf8_lossy(payload).into_owned());
            }
            Some(Err(e)) => panic!("consuming from the mock cluster: {e}"),
            None => {}
        }
    }
    payloads
}

/// Checks that every `{tag}-{i}` for i < `count` is in Kafka; returns the duplicates.
fn assert_all_in_kafka(mock: &Mock, tag: &str, count: u16) -> usize {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for payload in kafka_payloads(mock) {
        *seen.entry(payload).or_default() += 1;
    }
    let missing: Vec<String> = (0..count)
        .map(|i| format!("{tag}-{i}"))
        .filter(|p| !seen.contains_key(p))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {count} acknowledged messages are not in Kafka: {missing:?}",
        missing.len()
    );
    let duplicates = seen
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("{tag}-")))
        .map(|(_, n)| n - 1)
        .sum();
    eprintln!("{tag}: all {count} records in Kafka, {duplicates} duplicate(s)");
    duplicates
}

fn assert_all_success(codes: &[Option<ReasonCode>]) {
    let missing = codes.iter().filter(|c| c.is_none()).count();
    assert_eq!(missing, 0, "{missing} PUBLISHes got no PUBACK");
    let failed: Vec<_> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != Some(ReasonCode::Success))
        .collect();
    assert!(failed.is_empty(), "PUBACKs with errors: {failed:?}");
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Fault 1: The partition leader's broker goes down mid-stream and comes back: the PUBACKs stop
/// while it is down (nothing is acknowledged that Kafka does not have), every message is
/// acknowledged with success once it is back, and every record is in Kafka.
#[test]
fn leader_broker_down_then_up_loses_nothing() {
    if !in_child("leader_broker_down_then_up_loses_nothing") {
        return;
    }
    let mock = mock_cluster(3);
    let broker = start_broker("broker-down", &mock.bootstrap_servers(), "");
    let acked = Arc::new(AtomicUsize::new(0));
    let publisher = publish_stream(
        &broker,
        "down-pub",
        "down",
        200,
        Duration::from_millis(5),
        acked.clone(),
    );
    wait_for("50 PUBACKs before the fault", || {
        acked.load(Ordering::Relaxed) >= 50
    });
    mock.broker_down(1).unwrap();
    // PUBACKs of records Kafka took before the connection dropped may still be on their way.
    thread::sleep(Duration::from_millis(300));
    let during = acked.load(Ordering::Relaxed);
    thread::sleep(QUIET);
    assert_eq!(
        acked.load(Ordering::Relaxed),
        during,
        "PUBACKs went on while the partition leader was down"
    );
    assert!(during < 200, "the stream ended before the fault");
    eprintln!("down: {during} of 200 acknowledged when the leader went down, none while down");
    mock.broker_up(1).unwrap();
    let codes = publisher.join().unwrap();
    assert_all_success(&codes);
    assert_all_in_kafka(&mock, "down", 200);
    drop(broker);
}

/// Broker CPUs busy while two 5.0 publishers (one per shard) each send `count` QoS 1
/// messages, one every `pace`, and get every PUBACK.
fn broker_cpus_for_stream(broker: &Broker, tag: &str, count: u16, pace: Duration) -> f64 {
    let before = broker.cpu_seconds();
    let started = Instant::now();
    let publishers: Vec<_> = (0..2)
        .map(|shard| {
            let id = common::id_on(shard, &format!("{tag}-pub"));
            publish_stream(
                broker,
                &id,
                &format!("{tag}{shard}"),
                count,
                pace,
                Arc::default(),
            )
        })
        .collect();
    for publisher in publishers {
        assert_all_success(&publisher.join().unwrap());
    }
    (broker.cpu_seconds() - before) / started.elapsed().as_secs_f64()
}

/// Fault 1b: a slow Kafka (every response 400 ms late, with transient Produce errors to
/// retry, as a loaded or failing-over cluster answers) must not make the broker burn CPU
/// while it waits (issue 12: a busy loop in librdkafka's broker threads was once seen
/// with a stalling Kafka). The same stream costs at most a little more than with a prompt
/// Kafka, and every message is acknowledged with success.
#[test]
fn slow_kafka_costs_the_broker_no_busy_loop() {
    const COUNT: u16 = 1500;
    const PACE: Duration = Duration::from_millis(2);
    let mock = mock_cluster(1);
    let broker = start_broker("slow", &mock.bootstrap_servers(), "");
    let prompt = broker_cpus_for_stream(&broker, "prompt", COUNT, PACE);
    mock.broker_round_trip_time(1, Duration::from_millis(400))
        .expect("set the mock broker's round trip time");
    let errors: Vec<RDKafkaRespErr> = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ]
    .iter()
    .cycle()
    .take(30)
    .copied()
    .collect();
    mock.request_errors(RDKafkaApiKey::Produce, &errors);
    let slow = broker_cpus_for_stream(&broker, "slow", COUNT, PACE);
    eprintln!(
        "broker CPUs: {prompt:.3} with a prompt Kafka, {slow:.3} with every response 400 ms late"
    );
    assert!(
        slow <= prompt + 0.25,
        "broker CPUs {slow:.3} with a slow Kafka, {prompt:.3} with a prompt one"
    );
    drop(broker);
}

/// Fault 2: Transient Produce errors are retried by librdkafka: every PUBACK is a success and
/// every record is in Kafka.
#[test]
fn transient_produce_errors_are_retried() {
    let mock = mock_cluster(3);
    let broker = start_broker("transient", &mock.bootstrap_servers(), "");
    let acked = Arc::new(AtomicUsize::new(0));
    let transient = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ];
    let errors: Vec<RDKafkaRespErr> = transient.iter().cycle().take(9).copied().collect();
    // Some before the first Produce request, more mid-stream.
    mock.request_errors(RDKafkaApiKey::Produce, &errors[..3]);
    let publisher = publish_stream(
        &broker,
        "transient-pub",
        "transient",
        200,
        Duration::from_millis(2),
        acked.clone(),
    );
    wait_for("50 PUBACKs", || acked.load(Ordering::Relaxed) >= 50);
    mock.request_errors(RDKafkaApiKey::Produce, &errors[3..]);
    let codes = publisher.join().unwrap();
    assert_all_success(&codes);
    assert_all_in_kafka(&mock, "transient", 200);
    drop(broker);
}

/// Fault 3: The partition leader moves between brokers mid-stream: no message is lost.
#[test]
fn leader_change_mid_stream_loses_nothing() {
    let mock = mock_cluster(3);
    let broker = start_broker("leader-change", &mock.bootstrap_servers(), "");
    let acked = Arc::new(AtomicUsize::new(0));
    let publisher = publish_stream(
        &broker,
        "leader-pub",
        "leader",
        300,
        Duration::from_millis(3),
        acked.clone(),
    );
    for (after, leader) in [(50, 2), (120, 3), (200, 1)] {
        wait_for("PUBACKs before moving the leader", || {
            acked.load(Ordering::Relaxed) >= after
        });
        mock.partition_leader(KAFKA_TOPIC, 0, Some(leader)).unwrap();
    }
    let codes = publisher.join().unwrap();
    assert_all_success(&codes);
    assert_all_in_kafka(&mock, "leader", 300);
    drop(broker);
}

/// Fault 4: A Produce error librdkafka treats as permanent (MESSAGE_SIZE_TOO_LARGE: by default
/// "permanent, not persisted"; the idempotent producer bumps its epoch and goes on): a 5.0
/// publisher gets a PUBACK with `failure_reason`'s code (Implementation specific error,
/// 0x83); a 3.1.1 publisher, which has no way to hear of it, gets its PUBACK (the record is
/// counted as refused, not sent again for ever); the next message of each goes through.
#[test]
fn permanent_produce_error_fails_the_publish() {
    let mock = mock_cluster(1);
    let broker = start_broker("permanent", &mock.bootstrap_servers(), "");
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
    let expected = failure_reason(RDKafkaErrorCode::from(refused));
    assert_eq!(expected, ReasonCode::ImplementationSpecificError);

    // Warm up: the producer has its producer id and the partition's leader.
    let mut v5 = connect(&broker, Protocol::V5, "perm-v5");
    let topic = format!("{MAPPED}/perm");
    v5.publish(&topic, QoS::AtLeastOnce, 1, "perm-0");
    assert_eq!(v5.puback(1, WAIT), Some(ReasonCode::Success));

    mock.request_errors(RDKafkaApiKey::Produce, &[refused]);
    v5.publish(&topic, QoS::AtLeastOnce, 2, "perm-refused-v5");
    assert_eq!(
        v5.puback(2, WAIT),
        Some(expected),
        "5.0: PUBACK reason for a refused record"
    );
    // The producer is still usable.
    v5.publish(&topic, QoS::AtLeastOnce, 3, "perm-1");
    assert_eq!(v5.puback(3, WAIT), Some(ReasonCode::Success));

    let mut v3 = connect(&broker, Protocol::V3_1_1, "perm-v3");
    v3.publish(&topic, QoS::AtLeastOnce, 1, "perm-2");
    assert_eq!(v3.puback(1, WAIT), Some(ReasonCode::Success));
    mock.request_errors(RDKafkaApiKey::Produce, &[refused]);
    v3.publish(&topic, QoS::AtLeastOnce, 2, "perm-refused-v3");
    assert_eq!(
        v3.puback(2, WAIT),
        Some(ReasonCode::Success),
        "3.1.1: a record refused for good is acknowledged (and counted), not retried for ever"
    );
    v3.publish(&topic, QoS::AtLeastOnce, 3, "perm-3");
    assert_eq!(v3.puback(3, WAIT), Some(ReasonCode::Success));

    let payloads = kafka_payloads(&mock);
    for ok in ["perm-0", "perm-1", "perm-2", "perm-3"] {
        assert!(
            payloads.iter().any(|p| p == ok),
            "{ok} not in Kafka: {payloads:?}"
        );
    }
    for refused in ["perm-refused-v5", "perm-refused-v3"] {
        assert!(
            !payloads.iter().any(|p| p == refused),
            "{refused} is in Kafka although Kafka refused it"
        );
    }
    drop(broker);
}

/// Fault 4a: TOPIC_AUTHORIZATION_FAILED on a Produce: permanent, and librdkafka also marks the
/// topic as errored, so every record for it fails at once (0x87 Not authorized) until a
/// metadata refresh finds the topic usable again (`topic.metadata.refresh.interval.ms`,
/// 5 min by default, 1 s here). No PUBACK is a success meanwhile; afterwards they are.
#[test]
fn topic_authorization_failure_until_metadata_refresh() {
    let mock = mock_cluster(1);
    let broker = start_broker(
        "authz",
        &mock.bootstrap_servers(),
        ", \"topic.metadata.refresh.interval.ms\" = 1000",
    );
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    let expected = failure_reason(RDKafkaErrorCode::from(refused));
    assert_eq!(expected, ReasonCode::NotAuthorized);

    let mut v5 = connect(&broker, Protocol::V5, "authz-v5");
    let topic = format!("{MAPPED}/authz");
    v5.publish(&topic, QoS::AtLeastOnce, 1, "authz-0");
    assert_eq!(v5.puback(1, WAIT), Some(ReasonCode::Success));

    mock.request_errors(RDKafkaApiKey::Produce, &[refused]);
    v5.publish(&topic, QoS::AtLeastOnce, 2, "authz-refused");
    assert_eq!(v5.puback(2, WAIT), Some(expected));
    // Publish again until the topic is usable: refusals are 0x87, the first success ends it.
    let deadline = Instant::now() + WAIT;
    let mut refusals = 0;
    let mut packet_id = 3;
    loop {
        assert!(Instant::now() < deadline, "the topic never became usable");
        v5.publish(&topic, QoS::AtLeastOnce, packet_id, "authz-1");
        match v5.puback(packet_id, WAIT) {
            Some(ReasonCode::Success) => break,
            Some(code) => assert_eq!(code, expected),
            None => panic!("no PUBACK for {packet_id}"),
        }
        refusals += 1;
        packet_id += 1;
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("authz: {refusals} publish(es) refused before the metadata refresh");
    let payloads = kafka_payloads(&mock);
    assert!(payloads.iter().any(|p| p == "authz-0"));
    assert!(payloads.iter().any(|p| p == "authz-1"));
    assert!(!payloads.iter().any(|p| p == "authz-refused"));
    drop(broker);
}

/// Fault 4b: a Produce error fatal to the idempotent producer (OUT_OF_ORDER_SEQUENCE_NUMBER on
/// the head-of-line request: librdkafka can no longer vouch for order or once-ness, raises a
/// fatal error and purges its queue; that producer instance refuses every record from then
/// on). The refused message gets an error PUBACK, no message gets a success PUBACK unless
/// Kafka has it, and the bridge recovers: ferrymq replaces the producer, so publishing again
/// soon succeeds.
#[test]
fn fatal_idempotence_error_fails_then_recovers() {
    let mock = mock_cluster(1);
    let broker = start_broker("fatal", &mock.bootstrap_servers(), "");
    let mut v5 = connect(&broker, Protocol::V5, "fatal-v5");
    let topic = format!("{MAPPED}/fatal");
    v5.publish(&topic, QoS::AtLeastOnce, 1, "fatal-0");
    assert_eq!(v5.puback(1, WAIT), Some(ReasonCode::Success));

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    v5.publish(&topic, QoS::AtLeastOnce, 2, "fatal-refused");
    let refused = v5.puback(2, WAIT);
    assert!(
        refused.is_some_and(ReasonCode::is_error),
        "the refused record was acknowledged: {refused:?}"
    );
    // Publish until a success: errors are allowed while the producer is replaced.
    let deadline = Instant::now() + WAIT;
    let mut outcomes = Vec::new();
    for packet_id in 3u16.. {
        assert!(
            Instant::now() < deadline,
            "no success after the fatal error: {} error PUBACKs, the last {:?}",
            outcomes.len(),
            outcomes.last()
        );
        let payload = format!("fatal-{}", packet_id - 2);
        v5.publish(&topic, QoS::AtLeastOnce, packet_id, &payload);
        let code = v5.puback(packet_id, WAIT).expect("a PUBACK");
        outcomes.push((payload, code));
        if code == ReasonCode::Success {
            break;
        }
        assert!(code.is_error(), "{code:?}");
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("fatal: refused {refused:?}, then {outcomes:?}");
    let payloads = kafka_payloads(&mock);
    let (acked, _) = outcomes.last().unwrap();
    assert!(
        payloads.contains(acked),
        "{acked} acknowledged with success but not in Kafka: {payloads:?}"
    );
    drop(broker);
}

/// Set in the child process a test that takes mock brokers down runs in.
const CHILD_ENV: &str = "FERRYMQ_TEST_MOCK_CHILD";
/// What librdkafka's mock prints before it aborts the process.
const MOCK_LISTENER_ABORT: &str = "Failed to-create mock broker listener";

/// Runs the test `name` in a child process and returns `false` here (the child's result is
/// asserted), or `true` in the child itself, which then runs the test's body.
///
/// Why: setting a mock broker down makes librdkafka close its listener and bind the same
/// port again at once (rdkafka_mock.c, `rd_kafka_mock_broker_cmd`); when that bind fails it
/// asserts, which aborts the whole test binary and every test in it (seen in CI and in 1 of
/// 10 loaded runs). In a child, that abort fails one attempt of one test: a fault of the
/// mock, not of ferrymq, so the attempt is made again (up to 3), and only then.
fn in_child(name: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    for attempt in 1..=3 {
        let output = std::process::Command::new(&exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the test in a child");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() {
            assert!(
                stdout.contains("1 passed"),
                "{name}: the child ran no test: {stdout}"
            );
            eprint!("{stderr}");
            return false;
        }
        if stderr.contains(MOCK_LISTENER_ABORT) && attempt < 3 {
            eprintln!("{name}: librdkafka's mock aborted (attempt {attempt}); again");
            continue;
        }
        panic!("{name} failed in its child process:\n{stdout}\n{stderr}");
    }
    unreachable!("the last attempt returns or panics")
}

/// Fault 5: Kafka is away when the broker starts: MQTT works (unmapped topics flow), a QoS 1
/// PUBLISH to a mapped topic is not acknowledged while Kafka is down, and is once it is up.
#[test]
fn kafka_away_at_startup() {
    if !in_child("kafka_away_at_startup") {
        return;
    }
    let mock = mock_cluster(3);
    mock.broker_down(-1).unwrap();
    let broker = start_broker("away", &mock.bootstrap_servers(), "");

    let mut subscriber = connect(&broker, Protocol::V5, "away-sub");
    subscriber.subscribe(1, "plain/#", QoS::AtLeastOnce);
    let mut publisher = connect(&broker, Protocol::V5, "away-pub");
    publisher.publish("plain/x", QoS::AtLeastOnce, 1, "unmapped");
    assert_eq!(publisher.puback(1, WAIT), Some(ReasonCode::Success));
    match subscriber.recv_within(WAIT) {
        Next::Packet(Packet::Publish(publish)) => {
            assert_eq!(&publish.payload[..], b"unmapped");
        }
        other => panic!("subscriber: expected the PUBLISH, got {other:?}"),
    }

    publisher.publish(&format!("{MAPPED}/x"), QoS::AtLeastOnce, 2, "away-0");
    assert_eq!(
        publisher.puback(2, QUIET),
        None,
        "PUBACK while every Kafka broker is down"
    );
    mock.broker_up(-1).unwrap();
    let up = Instant::now();
    assert_eq!(publisher.puback(2, WAIT), Some(ReasonCode::Success));
    eprintln!("away: PUBACK {:?} after the brokers came up", up.elapsed());
    assert_all_in_kafka(&mock, "away", 1);
    drop(broker);
}
