//! The Kafka pipeline end to end: MQTT clients nobody here wrote (`mosquitto_pub`, rumqttc)
//! publish to the real `ferrymq` binary (two shards), whose `[[kafka.mapping]]`s write to real
//! Apache Kafka brokers; an rdkafka consumer then reads back every record of each topic and
//! the tests assert exactly which records arrived: payload bytes, rendered key, headers,
//! Kafka topic, partition and order.
//!
//! Requirements checked (DESIGN.md, "Delivery guarantee per mapping", and the mapping
//! section of the configuration):
//! - every matched message becomes one record per mapping, with the configured key template,
//!   headers and (sanitized) topic template;
//! - ordering per (client, mapping) is kept, QoS 0 is best effort;
//! - a message matched by several mappings goes to each; `mqtt_subscribers = false` makes a
//!   mapping a Kafka-only sink;
//! - each mapping writes to its own cluster;
//! - `ack = "kafka"`: the PUBACK waits until Kafka acknowledged every record, so a Kafka
//!   outage holds the PUBACK back and loses nothing; `ack = "none"` acknowledges at once;
//! - a bad librdkafka property (or an unknown cluster) is a config error: exit 2, one line.
//!
//! Needs the shared Kafka on `127.0.0.1:9092` (`$FERRYMQ_KAFKA_BOOTSTRAP`); two tests start
//! Kafka instances of their own with `scripts/kafka --name pipeline2` / `--name outage` and
//! stop them at the end. Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use common::kafka::{self, ExtraKafka, Record};
use common::rumqttc::options4;
use common::{id_on, mosquitto_pub, pubacks_in, Broker};
use rumqttc::{Client, ConnectionError, Event, Packet, QoS};

/// Longest any one client step may take.
const STEP: Duration = Duration::from_secs(20);
/// Longest reading one topic back may take.
const READ: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers

/// The broker with `config` as its file (the harness adds `--listen` and `--cores`).
fn start_broker(config: &str) -> (Broker, kafka::ConfigFile) {
    let file = kafka::write_config(config);
    let broker = Broker::start_with(&["--config", file.path_str()]);
    (broker, file)
}

/// A 3.1.1 rumqttc client whose event loop runs on a thread; events are taken (and PUBACK
/// arrival times kept) as the test waits for them.
struct Mqtt {
    client: Client,
    events: Receiver<(Instant, Result<Event, ConnectionError>)>,
    /// Arrival time of each PUBACK, in order.
    pubacks: Vec<Instant>,
    publishes: Vec<rumqttc::Publish>,
    subacks: usize,
    closed: Option<String>,
}

impl Mqtt {
    fn connect(broker: &Broker, id: &str) -> Mqtt {
        let (client, mut connection) = Client::new(options4(broker.port, id), 2048);
        let (tx, events) = channel();
        thread::spawn(move || {
            for event in connection.iter() {
                let stop = event.is_err();
                if tx.send((Instant::now(), event)).is_err() || stop {
                    break;
                }
            }
        });
        match events.recv_timeout(STEP) {
            Ok((_, Ok(Event::Incoming(Packet::ConnAck(ack)))))
                if ack.code == rumqttc::ConnectReturnCode::Success => {}
            other => panic!("{id}: expected an accepting CONNACK, got {other:?}"),
        }
        Mqtt {
            client,
            events,
            pubacks: Vec::new(),
            publishes: Vec::new(),
            subacks: 0,
            closed: None,
        }
    }

    /// Takes one event before `deadline`; false on timeout or once closed.
    fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok((at, Ok(Event::Incoming(Packet::PubAck(_))))) => self.pubacks.push(at),
            Ok((_, Ok(Event::Incoming(Packet::Publish(publish))))) => self.publishes.push(publish),
            Ok((_, Ok(Event::Incoming(Packet::SubAck(_))))) => self.subacks += 1,
            Ok((_, Ok(_))) => {}
            Ok((_, Err(error))) => {
                self.closed = Some(error.to_string());
                return false;
            }
            Err(_) => return false,
        }
        true
    }

    /// Takes events until `done` holds or `timeout` passes; returns whether `done` holds.
    fn wait_until(&mut self, timeout: Duration, done: impl Fn(&Mqtt) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if !self.pump(deadline) {
                return done(self);
            }
        }
        true
    }

    /// Takes events for `period`, whatever they are.
    fn idle(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while self.pump(deadline) {}
    }

    fn wait_pubacks(&mut self, count: usize, timeout: Duration) {
        let done = self.wait_until(timeout, |m| m.pubacks.len() >= count);
        assert!(
            done,
            "{} of {count} PUBACKs within {timeout:?} (closed: {:?})",
            self.pubacks.len(),
            self.closed
        );
    }

    fn publish(&self, topic: &str, qos: QoS, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, false, payload)
            .expect("queue PUBLISH");
    }

    fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("queue SUBSCRIBE");
        let subacks = self.subacks + 1;
        assert!(self.wait_until(STEP, |m| m.subacks >= subacks), "no SUBACK");
    }

    fn disconnect(mut self) {
        let _ = self.client.disconnect();
        self.wait_until(STEP, |m| m.closed.is_some());
    }
}

/// Header (name, value) pairs from text, for comparisons.
fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

fn payloads(records: &[Record]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.payload.clone()).collect()
}

/// Payloads as text, for messages on topics whose payloads are text.
fn texts(records: &[Record]) -> Vec<&str> {
    records.iter().map(Record::payload_str).collect()
}

/// The records of `topic` on the cluster at `bootstrap`; fails unless exactly `count`.
fn read_exactly(bootstrap: &str, topic: &str, count: usize) -> Vec<Record> {
    let records = kafka::read_topic(bootstrap, topic, count, READ);
    assert_eq!(
        records.len(),
        count,
        "records on {topic} at {bootstrap}: {:?}",
        texts_lossy(&records)
    );
    records
}

fn texts_lossy(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .take(20)
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Exact records: payload, key template, headers, topic template.

/// 200 QoS 1 messages per mapping from one client each: the consumer reads exactly 200
/// records per topic, with the payload bytes sent, the key rendered from the mapping's
/// template (`{prop:site}`, `{client_id}`, `{2}`, default = the MQTT topic), exactly the
/// headers configured (mqtt_topic, client_id, username, qos, retain, one `user_property:
/// name=value` per MQTT 5 user property, content_type, response_topic, correlation_data),
/// and the Kafka topic rendered from `P.{2}` with bytes Kafka refuses replaced by '_'.
#[test]
fn exact_records_with_rendered_keys_headers_and_topics() {
    const N: usize = 200;
    let bootstrap = kafka::bootstrap();
    let p = kafka::unique("pipeline-exact");
    let (broker, _file) = start_broker(&format!(
        r#"
[kafka.clusters.main]
bootstrap = "{bootstrap}"

# Every header but payload_format, the key from a user property, the topic from level 2.
[[kafka.mapping]]
mqtt = "exact/+/v5"
cluster = "main"
topic = "{p}.{{2}}"
key = "{{prop:site}}"
headers = ["mqtt_topic", "client_id", "username", "qos", "retain", "user_properties",
           "content_type", "response_topic", "correlation_data"]

# The only cluster is the default; default headers (mqtt_topic, client_id, qos).
[[kafka.mapping]]
mqtt = "exact/+/v311"
topic = "{p}-v311"
key = "{{client_id}}"

[[kafka.mapping]]
mqtt = "exact/+/level"
topic = "{p}-level"
key = "{{2}}"
headers = []

# Default key: the MQTT topic.
[[kafka.mapping]]
mqtt = "exact/+/default"
topic = "{p}-default"
headers = ["mqtt_topic", "retain"]
"#
    ));

    // MQTT 5 with every property a header can carry; the level "dev ice:é" is not a valid
    // Kafka topic part: ' ', ':' and each byte of 'é' become '_'.
    let v5_id = id_on(0, "exact-v5");
    let v5_topic = "exact/dev ice:\u{e9}/v5";
    let v5_lines: Vec<String> = (0..N)
        .map(|i| format!("v5 #{i:03} h\u{e9}llo\tw{}", "z".repeat(i % 37)))
        .collect();
    let v5_args = [
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-d",
        "-i",
        &v5_id,
        "-u",
        "alice",
        "-t",
        v5_topic,
        "-l",
        "-D",
        "publish",
        "user-property",
        "site",
        "lyon",
        "-D",
        "publish",
        "user-property",
        "line",
        "A=b",
        "-D",
        "publish",
        "user-property",
        "site",
        "paris",
        "-D",
        "publish",
        "content-type",
        "text/plain; charset=utf-8",
        "-D",
        "publish",
        "response-topic",
        "reply/dev ice",
        "-D",
        "publish",
        "correlation-data",
        "corr-42",
    ];
    // MQTT 3.1.1, `{2}` as the key, no headers.
    let level_id = id_on(1, "exact-level");
    let level_lines: Vec<String> = (0..N).map(|i| format!("level {i:03}")).collect();
    // MQTT 5, retained, default key.
    let default_id = id_on(1, "exact-default");
    let default_lines: Vec<String> = (0..N).map(|i| format!("default {i:03}")).collect();

    let port = broker.port;
    let v5 = {
        let args: Vec<String> = v5_args.iter().map(|s| s.to_string()).collect();
        let lines = v5_lines.clone();
        thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mosquitto_pub(port, &args, &lines)
        })
    };
    let level = {
        let (id, lines) = (level_id.clone(), level_lines.clone());
        thread::spawn(move || {
            let args = [
                "-V",
                "mqttv311",
                "-q",
                "1",
                "-d",
                "-i",
                &id,
                "-t",
                "exact/site-42/level",
                "-l",
            ];
            mosquitto_pub(port, &args, &lines)
        })
    };
    let default = {
        let (id, lines) = (default_id.clone(), default_lines.clone());
        thread::spawn(move || {
            let args = [
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-d",
                "-r",
                "-i",
                &id,
                "-t",
                "exact/d9/default",
                "-l",
            ];
            mosquitto_pub(port, &args, &lines)
        })
    };
    // MQTT 3.1.1 from rumqttc: binary payloads (an empty one, 0x00, 0xff) and `{client_id}`.
    let v311_id = id_on(1, "exact-v311");
    let v311_payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            if i == 0 {
                return Vec::new();
            }
            let mut payload = vec![0u8, 0xff, i as u8];
            payload.extend((0..i).map(|j| (j * 7 + i) as u8));
            payload
        })
        .collect();
    let mut v311 = Mqtt::connect(&broker, &v311_id);
    for payload in &v311_payloads {
        v311.publish("exact/d1/v311", QoS::AtLeastOnce, payload.clone());
    }
    v311.wait_pubacks(N, STEP);
    v311.disconnect();
    for (name, handle) in [("v5", v5), ("level", level), ("default", default)] {
        let (status, output) = handle.join().unwrap();
        assert!(status.success(), "mosquitto_pub {name}: {status}\n{output}");
        assert_eq!(pubacks_in(&output), N, "PUBACKs to {name}:\n{output}");
    }

    // {p}.{2}, sanitized.
    let v5_kafka_topic = format!("{p}.dev_ice___");
    let records = read_exactly(&bootstrap, &v5_kafka_topic, N);
    let sent: Vec<Vec<u8>> = v5_lines.iter().map(|l| l.as_bytes().to_vec()).collect();
    assert_eq!(payloads(&records), sent, "payloads in publish order");
    let expected_headers = headers(&[
        ("mqtt_topic", v5_topic),
        ("client_id", &v5_id),
        ("username", "alice"),
        ("qos", "1"),
        ("retain", "0"),
        ("user_property", "site=lyon"),
        ("user_property", "line=A=b"),
        ("user_property", "site=paris"),
        ("content_type", "text/plain; charset=utf-8"),
        ("response_topic", "reply/dev ice"),
        ("correlation_data", "corr-42"),
    ]);
    for record in &records {
        // The first user property named "site".
        assert_eq!(record.key.as_deref(), Some(&b"lyon"[..]));
        assert_eq!(record.headers, expected_headers);
        assert_eq!(record.partition, records[0].partition);
    }

    let records = read_exactly(&bootstrap, &format!("{p}-v311"), N);
    assert_eq!(payloads(&records), v311_payloads, "payload bytes, in order");
    let expected_headers = headers(&[
        ("mqtt_topic", "exact/d1/v311"),
        ("client_id", &v311_id),
        ("qos", "1"),
    ]);
    for record in &records {
        assert_eq!(record.key.as_deref(), Some(v311_id.as_bytes()));
        assert_eq!(record.headers, expected_headers);
    }

    let records = read_exactly(&bootstrap, &format!("{p}-level"), N);
    assert_eq!(texts(&records), level_lines);
    for record in &records {
        assert_eq!(record.key.as_deref(), Some(&b"site-42"[..]));
        assert_eq!(record.headers, Vec::<(String, Vec<u8>)>::new());
    }

    let records = read_exactly(&bootstrap, &format!("{p}-default"), N);
    assert_eq!(texts(&records), default_lines);
    let expected_headers = headers(&[("mqtt_topic", "exact/d9/default"), ("retain", "1")]);
    for record in &records {
        assert_eq!(record.key.as_deref(), Some(&b"exact/d9/default"[..]));
        assert_eq!(record.headers, expected_headers);
    }
    // Nothing was written under the unsanitized name.
    assert!(!kafka::topic_exists(
        &bootstrap,
        &format!("{p}.dev ice:\u{e9}")
    ));
    assert_eq!(broker.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// 2. Order per key.

/// Sequence numbers of the records of `key`, checking they all sit in one partition.
fn sequence_of(records: &[Record], key: &str) -> Vec<u32> {
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
        .collect();
    if let Some(first) = mine.first() {
        assert!(
            mine.iter().all(|r| r.partition == first.partition),
            "records of key {key} in several partitions"
        );
    }
    mine.iter()
        .map(|r| {
            let text = r.payload_str();
            assert!(text.starts_with(key), "{text:?} under key {key}");
            text.rsplit(' ').next().unwrap().parse().expect("sequence")
        })
        .collect()
}

/// "Ordering per (client, mapping) is kept": 500 QoS 1 messages from each of two clients
/// (one per shard), interleaved, into a topic of 4 partitions keyed by client id: each
/// client's records are all in one partition, in sequence order, none missing or doubled.
/// The QoS 0 path too ("QoS0 is always best effort": nothing is lost here, as nothing
/// fails), closed by a QoS 1 fence whose PUBACK means Kafka has everything before it.
#[test]
fn per_key_order_within_the_partition_qos1_and_qos0() {
    const N: u32 = 500;
    let bootstrap = kafka::bootstrap();
    let p = kafka::unique("pipeline-order");
    let (q1_topic, q0_topic) = (format!("{p}-qos1"), format!("{p}-qos0"));
    kafka::create_topic(&bootstrap, &q1_topic, 4);
    kafka::create_topic(&bootstrap, &q0_topic, 4);
    let (broker, _file) = start_broker(&format!(
        r#"
[kafka.clusters.main]
bootstrap = "{bootstrap}"

[[kafka.mapping]]
mqtt = "order/+/q1"
topic = "{q1_topic}"
key = "{{client_id}}"

[[kafka.mapping]]
mqtt = "order/+/q0"
topic = "{q0_topic}"
key = "{{client_id}}"
"#
    ));

    let ids = [id_on(0, "order-a"), id_on(1, "order-b")];
    let mut clients: Vec<Mqtt> = ids.iter().map(|id| Mqtt::connect(&broker, id)).collect();
    for seq in 0..N {
        for (client, id) in clients.iter().zip(&ids) {
            client.publish("order/x/q1", QoS::AtLeastOnce, format!("{id} {seq:05}"));
        }
    }
    for client in &mut clients {
        client.wait_pubacks(N as usize, STEP);
    }
    let records = read_exactly(&bootstrap, &q1_topic, 2 * N as usize);
    for id in &ids {
        assert_eq!(
            sequence_of(&records, id),
            (0..N).collect::<Vec<_>>(),
            "{id}"
        );
    }

    // QoS 0, then the fence (sequence N) at QoS 1.
    let q0_id = &ids[1];
    let q0 = &mut clients[1];
    for seq in 0..N {
        q0.publish("order/x/q0", QoS::AtMostOnce, format!("{q0_id} {seq:05}"));
    }
    q0.publish("order/x/q0", QoS::AtLeastOnce, format!("{q0_id} {N:05}"));
    q0.wait_pubacks(N as usize + 1, STEP);
    let records = kafka::read_topic(&bootstrap, &q0_topic, N as usize + 1, READ);
    let sequence = sequence_of(&records, q0_id);
    assert!(
        sequence.windows(2).all(|w| w[0] < w[1]),
        "QoS 0 records out of order or doubled"
    );
    assert_eq!(sequence, (0..=N).collect::<Vec<_>>(), "QoS 0 records lost");
    for client in clients {
        client.disconnect();
    }
    assert_eq!(broker.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// 3. Several mappings; MQTT subscribers or not.

/// "A message matching several mappings goes to each of them"; `mqtt_subscribers = false`
/// makes a mapping a sink ("the messages go to Kafka only"), also when another matching
/// mapping would forward; by default MQTT subscribers get the message too.
#[test]
fn two_mappings_both_topics_and_sink_mappings_skip_subscribers() {
    let bootstrap = kafka::bootstrap();
    let p = kafka::unique("pipeline-fanout");
    let (broker, _file) = start_broker(&format!(
        r#"
[kafka.clusters.main]
bootstrap = "{bootstrap}"

[[kafka.mapping]]
mqtt = "both/#"
topic = "{p}-a"

[[kafka.mapping]]
mqtt = "both/+"
topic = "{p}-b"
key = "{{client_id}}"

[[kafka.mapping]]
mqtt = "sink/#"
topic = "{p}-sink"
mqtt_subscribers = false

[[kafka.mapping]]
mqtt = "mix/#"
topic = "{p}-mixsink"
mqtt_subscribers = false

[[kafka.mapping]]
mqtt = "mix/+"
topic = "{p}-mixfwd"

[[kafka.mapping]]
mqtt = "fwd/#"
topic = "{p}-fwd"
mqtt_subscribers = true
"#
    ));
    let mut subscriber = Mqtt::connect(&broker, &id_on(0, "fanout-sub"));
    subscriber.subscribe("#");
    let publisher_id = id_on(1, "fanout-pub");
    let mut publisher = Mqtt::connect(&broker, &publisher_id);
    // In this order: a subscriber that got "sink/x" or "mix/x" gets it before "fwd/x".
    for topic in ["sink/x", "mix/x", "both/x", "fwd/x"] {
        publisher.publish(topic, QoS::AtLeastOnce, topic.split('/').next().unwrap());
    }
    publisher.wait_pubacks(4, STEP);
    assert!(
        subscriber.wait_until(STEP, |m| m.publishes.len() >= 2),
        "subscriber got {:?}",
        subscriber.publishes
    );
    subscriber.idle(Duration::from_millis(500));
    let got: Vec<&str> = subscriber
        .publishes
        .iter()
        .map(|p| p.topic.as_str())
        .collect();
    assert_eq!(got, ["both/x", "fwd/x"], "what MQTT subscribers get");

    for (suffix, payload, key) in [
        ("a", "both", "both/x"),
        ("b", "both", publisher_id.as_str()),
        ("sink", "sink", "sink/x"),
        ("mixsink", "mix", "mix/x"),
        ("mixfwd", "mix", "mix/x"),
        ("fwd", "fwd", "fwd/x"),
    ] {
        let records = read_exactly(&bootstrap, &format!("{p}-{suffix}"), 1);
        assert_eq!(records[0].payload_str(), payload, "{suffix}");
        assert_eq!(records[0].key.as_deref(), Some(key.as_bytes()), "{suffix}");
    }
    publisher.disconnect();
    subscriber.disconnect();
    assert_eq!(broker.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// 4. Two clusters.

/// Each mapping writes to its own `cluster`: records land in the cluster named, and only
/// there; a message matched by mappings to both clusters lands in both.
#[test]
fn mappings_write_to_their_own_cluster() {
    const N: usize = 50;
    let main = kafka::bootstrap();
    let second = ExtraKafka::start("pipeline2");
    let p = kafka::unique("pipeline-clusters");
    let (broker, _file) = start_broker(&format!(
        r#"
[kafka.clusters.main]
bootstrap = "{main}"

[kafka.clusters.second]
bootstrap = "{}"

[[kafka.mapping]]
mqtt = "one/#"
cluster = "main"
topic = "{p}-one"

[[kafka.mapping]]
mqtt = "two/#"
cluster = "second"
topic = "{p}-two"

[[kafka.mapping]]
mqtt = "all/#"
cluster = "main"
topic = "{p}-all"

[[kafka.mapping]]
mqtt = "all/#"
cluster = "second"
topic = "{p}-all"
"#,
        second.bootstrap()
    ));
    let mut client = Mqtt::connect(&broker, &id_on(1, "clusters"));
    for i in 0..N {
        for level in ["one", "two", "all"] {
            client.publish(
                &format!("{level}/x"),
                QoS::AtLeastOnce,
                format!("{level} {i:03}"),
            );
        }
    }
    client.wait_pubacks(3 * N, STEP);
    let expected =
        |level: &str| -> Vec<String> { (0..N).map(|i| format!("{level} {i:03}")).collect() };
    let cases = [
        (main.clone(), "one"),
        (main.clone(), "all"),
        (second.bootstrap(), "two"),
        (second.bootstrap(), "all"),
    ];
    for (cluster, level) in cases {
        let records = read_exactly(&cluster, &format!("{p}-{level}"), N);
        assert_eq!(texts(&records), expected(level), "{level} on {cluster}");
    }
    assert!(!kafka::topic_exists(&main, &format!("{p}-two")));
    assert!(!kafka::topic_exists(
        &second.bootstrap(),
        &format!("{p}-one")
    ));
    client.disconnect();
    assert_eq!(broker.stop().code(), Some(0));
    drop(second);
}

// ---------------------------------------------------------------------------------------
// 5. PUBACK waits for Kafka.

/// Sends SIGCONT to a process stopped with SIGSTOP when dropped, so that a failing test does
/// not leave its Kafka stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        common::signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        common::signal(self.0, "CONT");
    }
}

/// Publishers on both shards each send a burst of QoS 1 PUBLISHes every `gap` for `period`
/// (a burst makes Produce requests of several records, as a steady load of many devices
/// does), taking events (PUBACKs) meanwhile; returns the broker's CPU time over that
/// period, in CPUs. Each payload sent is added to `sent`, and each publisher's count to
/// `counts`.
/// PUBLISHes per publisher and burst in [`broker_cpus_while_publishing`].
const BURST: usize = 10;

fn broker_cpus_while_publishing(
    broker: &Broker,
    publishers: &mut [Mqtt],
    counts: &mut [usize],
    sent: &mut Vec<String>,
    label: &str,
    period: Duration,
    gap: Duration,
) -> f64 {
    let cpu_before = broker.cpu_seconds();
    let started = Instant::now();
    while started.elapsed() < period {
        for (publisher, count) in publishers.iter_mut().zip(counts.iter_mut()) {
            for _ in 0..BURST {
                let payload = format!("{label} {:05}", sent.len());
                publisher.publish("stall/x", QoS::AtLeastOnce, payload.clone());
                sent.push(payload);
                *count += 1;
            }
        }
        let each = gap / publishers.len() as u32;
        for publisher in publishers.iter_mut() {
            publisher.idle(each);
        }
    }
    (broker.cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64()
}

/// A Kafka that stops answering while connected (SIGSTOP: a hung broker, or a network stall
/// that keeps the connection up) must cost the broker no more CPU than the same load with
/// Kafka healthy (issue 12, item 3). Nothing is lost: after the stall every PUBACK comes
/// and every record is in Kafka.
#[test]
fn stalled_kafka_costs_the_broker_no_more_cpu_than_healthy_kafka() {
    const PERIOD: Duration = Duration::from_secs(4);
    const GAP: Duration = Duration::from_millis(100);
    let kafka = ExtraKafka::start("stall");
    let bootstrap = kafka.bootstrap();
    let topic = kafka::unique("pipeline-stall");
    let (broker, _file) = start_broker(&format!(
        r#"
[kafka.clusters.stall]
bootstrap = "{bootstrap}"

[[kafka.mapping]]
mqtt = "stall/#"
topic = "{topic}"
ack = "kafka"
"#
    ));
    let mut publishers: Vec<Mqtt> = (0..4)
        .map(|i| Mqtt::connect(&broker, &id_on(i, &format!("stall-{i}"))))
        .collect();
    let mut counts = vec![0; publishers.len()];
    let mut sent = Vec::new();
    for (i, publisher) in publishers.iter_mut().enumerate() {
        let payload = format!("warm {i}");
        publisher.publish("stall/x", QoS::AtLeastOnce, payload.clone());
        publisher.wait_pubacks(1, Duration::from_secs(30));
        sent.push(payload);
        counts[i] += 1;
    }

    let mut measure = |label: &str, publishers: &mut [Mqtt]| {
        broker_cpus_while_publishing(
            &broker,
            publishers,
            &mut counts,
            &mut sent,
            label,
            PERIOD,
            GAP,
        )
    };
    let healthy = measure("healthy", &mut publishers);
    let stopped = Stopped::stop(kafka.pid());
    let stalled = measure("stalled", &mut publishers);
    let acked_in_stall: usize = publishers.iter().map(|p| p.pubacks.len()).sum();
    drop(stopped);
    eprintln!("broker CPUs: {healthy:.3} with Kafka healthy, {stalled:.3} with Kafka stalled");
    assert!(
        stalled <= healthy + 0.25,
        "broker CPUs: {stalled:.3} with Kafka stalled, {healthy:.3} with Kafka healthy"
    );

    // Nothing lost: every PUBACK comes, every message is in Kafka.
    assert!(acked_in_stall < sent.len(), "the stall held no PUBACK back");
    for (publisher, count) in publishers.iter_mut().zip(&counts) {
        publisher.wait_pubacks(*count, Duration::from_secs(60));
    }
    let records = kafka::read_topic(&bootstrap, &topic, sent.len(), READ);
    let mut got: Vec<&str> = texts(&records);
    got.sort();
    got.dedup();
    sent.sort();
    assert_eq!(got, sent, "records in Kafka");
    for publisher in publishers {
        publisher.disconnect();
    }
    assert_eq!(broker.stop().code(), Some(0));
}

/// `ack = "kafka"`: "QoS≥1 PUBACK sent when Kafka acknowledged every matched record";
/// during an outage "the device keeps the message (no ack yet)". With the cluster's Kafka
/// stopped, no PUBACK comes within 3 s; once it is back every PUBACK comes and every record
/// is in Kafka (none lost; duplicates would be allowed and are counted). `ack = "none"`:
/// the PUBACK comes at once, Kafka down or not, and the records follow once it is back.
#[test]
fn puback_waits_for_kafka_through_an_outage() {
    const N: usize = 20;
    let outage = ExtraKafka::start("outage");
    let bootstrap = outage.bootstrap();
    let p = kafka::unique("pipeline-outage");
    let (broker, _file) = start_broker(&format!(
        r#"
[kafka.clusters.outage]
bootstrap = "{bootstrap}"
# Reconnect within a second of Kafka coming back (librdkafka's default backs off to 10 s).
config = {{ "reconnect.backoff.max.ms" = 1000 }}

[[kafka.mapping]]
mqtt = "wait/#"
topic = "{p}-wait"
ack = "kafka"

[[kafka.mapping]]
mqtt = "fast/#"
topic = "{p}-fast"
ack = "none"
"#
    ));
    let mut waiter = Mqtt::connect(&broker, &id_on(0, "outage-wait"));
    let mut fast = Mqtt::connect(&broker, &id_on(1, "outage-fast"));
    // Kafka up: the topics get created and the producer connected.
    waiter.publish("wait/x", QoS::AtLeastOnce, "warm");
    fast.publish("fast/x", QoS::AtLeastOnce, "warm");
    waiter.wait_pubacks(1, Duration::from_secs(30));
    fast.wait_pubacks(1, STEP);
    read_exactly(&bootstrap, &format!("{p}-fast"), 1);

    outage.run("stop");
    let published = Instant::now();
    for i in 0..N {
        waiter.publish("wait/x", QoS::AtLeastOnce, format!("wait {i:02}"));
        fast.publish("fast/x", QoS::AtLeastOnce, format!("fast {i:02}"));
    }
    // ack = "none": at once.
    fast.wait_pubacks(N + 1, Duration::from_secs(2));
    let slowest = fast.pubacks[1..]
        .iter()
        .map(|at| at.duration_since(published))
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "ack = none PUBACK took {slowest:?}"
    );
    // ack = "kafka": nothing while Kafka is away.
    waiter.idle(Duration::from_secs(3).saturating_sub(published.elapsed()));
    assert_eq!(
        waiter.pubacks.len(),
        1,
        "PUBACK with Kafka down after {:?}",
        published.elapsed()
    );

    let restart = Instant::now();
    outage.run("start");
    // scripts/kafka returns once Kafka answers a request; the PUBACKs may come before that.
    waiter.wait_pubacks(N + 1, Duration::from_secs(20));
    let last = waiter.pubacks.last().unwrap().duration_since(restart);
    eprintln!("ack = kafka: all {N} PUBACKs {last:?} after the restart began");

    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let records = kafka::read_topic(&bootstrap, &format!("{p}-wait"), N + 1, READ);
    for record in &records {
        *count.entry(record.payload_str().to_string()).or_default() += 1;
    }
    let duplicates: usize = count.values().map(|n| n - 1).sum();
    eprintln!(
        "ack = kafka: {} records for {} messages, {duplicates} duplicates",
        records.len(),
        N + 1
    );
    let mut wanted: Vec<String> = (0..N).map(|i| format!("wait {i:02}")).collect();
    wanted.push("warm".into());
    wanted.sort();
    assert_eq!(
        count.keys().cloned().collect::<Vec<_>>(),
        wanted,
        "ack = kafka lost records"
    );
    // ack = "none" keeps them in librdkafka while Kafka is away: none lost here either.
    let records = kafka::read_topic(&bootstrap, &format!("{p}-fast"), N + 1, READ);
    let mut got: Vec<&str> = texts(&records);
    got.dedup();
    let mut wanted: Vec<String> = vec!["warm".into()];
    wanted.extend((0..N).map(|i| format!("fast {i:02}")));
    assert_eq!(got, wanted, "ack = none records");

    waiter.disconnect();
    fast.disconnect();
    assert_eq!(broker.stop().code(), Some(0));
    drop(outage);
}

// ---------------------------------------------------------------------------------------
// 6. Configuration errors.

/// How long a refused configuration may take to make the broker exit: it is checked
/// before the shards start (librdkafka properties when the producers are created). It
/// takes about 0.1 s; this is a guard against a broker that starts anyway, with room for
/// a machine so loaded that 5 s were once not enough.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// Runs `ferrymq --config FILE`: returns the exit status and stderr if it exits within
/// [`REFUSED_WITHIN`], or None if it kept running (it was then killed).
fn run_refused(config: &str) -> Option<(ExitStatus, String)> {
    let file = kafka::write_config(config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--cores", "0", "--config", file.path_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrymq");
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = common::wait_within(&mut child, REFUSED_WITHIN);
    let stderr = reader.join().unwrap();
    status.map(|status| (status, stderr))
}

/// "Validated with clear errors": a librdkafka property librdkafka refuses (unknown name or
/// bad value) in `[kafka.clusters.x.config]` makes the broker exit 2 with one line naming
/// `kafka.clusters.x.config`; so does a mapping to a cluster that is not configured.
///
/// `ack = "durable"` was refused (exit 2) while there was no spool; since commit e79af8c it
/// is a working mode with its own tests, so it is no longer checked here.
#[test]
fn config_errors_exit_2_with_one_line_naming_the_key() {
    let bootstrap = kafka::bootstrap();
    let mapping = "[[kafka.mapping]]\nmqtt = \"a/#\"\ntopic = \"a\"\n";
    let cases = [
        (
            format!(
                "[kafka.clusters.x]\nbootstrap = \"{bootstrap}\"\n\
                 config = {{ \"no.such.property\" = \"1\" }}\n{mapping}"
            ),
            "kafka.clusters.x.config",
            "no.such.property",
        ),
        (
            format!(
                "[kafka.clusters.x]\nbootstrap = \"{bootstrap}\"\n\
                 config = {{ \"linger.ms\" = \"soon\" }}\n{mapping}"
            ),
            "kafka.clusters.x.config",
            "linger.ms",
        ),
        (
            format!(
                "[kafka.clusters.x]\nbootstrap = \"{bootstrap}\"\n\
                 [[kafka.mapping]]\nmqtt = \"a/#\"\ncluster = \"y\"\ntopic = \"a\"\n"
            ),
            "kafka.mapping[0].cluster",
            "\"y\"",
        ),
    ];
    for (config, key, detail) in cases {
        let (status, stderr) = run_refused(&config)
            .unwrap_or_else(|| panic!("still running after {REFUSED_WITHIN:?}: {config}"));
        assert_eq!(status.code(), Some(2), "{config}\n{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line for {config}: {stderr:?}");
        assert!(
            lines[0].contains(key) && lines[0].contains(detail),
            "{key} and {detail} in {:?}",
            lines[0]
        );
    }
}
