//! Kafka → MQTT (`[[kafka.source]]`) against the real Kafka of `scripts/kafka` and MQTT
//! clients nobody here wrote (rumqttc, mosquitto_sub): records reach subscribers exactly
//! (topic template, payload bytes, user properties, QoS, retain, order per partition);
//! offsets are committed only once records are delivered; a broker killed mid-stream
//! loses nothing; a full session pauses its partition; two brokers in one group split the
//! partitions.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::kafka::{self, Outgoing};
use common::metrics::http_get;
use common::ports::free_port;
use common::rumqttc::{connect5_with, options5, qos5, v5};
use rumqttc::v5::mqttbytes::v5::{Filter, Publish};

/// Longest wait for records to arrive through Kafka and the broker.
const ARRIVE: Duration = Duration::from_secs(20);

/// `[kafka.clusters.main]` and one source reading `topic`, with `extra` lines in it.
fn source_config(topic: &str, mqtt: &str, extra: &str) -> String {
    format!(
        "[kafka.clusters.main]\nbootstrap = \"{}\"\n\n[[kafka.source]]\nname = \"{topic}\"\n\
         topics = [\"{topic}\"]\nmqtt = \"{mqtt}\"\nstart = \"earliest\"\n{extra}\n",
        kafka::bootstrap()
    )
}

fn record(key: &str, payload: &str, headers: &[(&str, &str)]) -> Outgoing {
    Outgoing {
        partition: None,
        key: Some(key.as_bytes().to_vec()),
        payload: payload.as_bytes().to_vec(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }
}

/// A 5.0 subscriber with `filter` at `qos`; a persistent session when `expiry_secs` > 0.
fn subscriber5(port: u16, id: &str, filter: &str, qos: u8, expiry_secs: u32) -> v5::Mqtt {
    let mut options = options5(port, id);
    if expiry_secs > 0 {
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(expiry_secs));
    }
    let mut client = connect5_with(options);
    client
        .client
        .subscribe_many([Filter::new(filter, qos5(qos))])
        .unwrap();
    client.wait_suback();
    client
}

/// Waits until the source has partitions assigned (its consumer joined its group).
fn wait_assigned(metrics_port: u16, partitions: u64) {
    let deadline = Instant::now() + ARRIVE;
    loop {
        let body = http_get(metrics_port, "/metrics");
        let assigned: u64 = body
            .lines()
            .filter(|l| l.starts_with("ferrymq_kafka_source_assigned_partitions{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        if assigned >= partitions {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "source not assigned {partitions} partition(s) within {ARRIVE:?}:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a source's series `name` (labels after the source's own, as written).
fn source_metric(body: &str, name: &str, extra_labels: &str) -> Option<u64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(&format!("ferrymq_kafka_source_{name}{{"))?;
        if !extra_labels.is_empty() && !rest.contains(extra_labels) {
            return None;
        }
        rest.rsplit_once(' ')?
            .1
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}

fn user_properties(publish: &Publish) -> Vec<(String, String)> {
    publish
        .properties
        .as_ref()
        .map(|p| p.user_properties.clone())
        .unwrap_or_default()
}

/// Records of one partition reach a 5.0 subscriber (rumqttc) and a 3.1.1 one
/// (mosquitto_sub) on the topics the template gives, with their payload bytes, headers as
/// user properties, content type, response topic, correlation data, QoS and retain, in
/// offset order; a record whose key cannot be a topic level is counted and goes nowhere.
#[test]
fn records_reach_mqtt_subscribers_exactly() {
    let topic = kafka::unique("source-exact");
    kafka::create_topic(&kafka::bootstrap(), &topic, 1);
    let metrics = free_port();
    let config = source_config(
        &topic,
        "devices/{key}/commands",
        "qos = 1\nuser_properties = [\"trace\", \"origin\"]\ncontent_type_header = \"ct\"\n\
         response_topic_header = \"reply-to\"\ncorrelation_data_header = \"corr\"\n\
         retain_header = \"retain\"\nqos_header = \"qos\"",
    );
    let broker =
        Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    let mut rumqttc = subscriber5(broker.port, "source-exact-5", "devices/+/commands", 2, 0);
    let mosquitto = Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv311",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-v",
        ])
        .args(["-t", "devices/dev-a/commands", "-C", "20", "-W", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    wait_assigned(metrics, 1);
    std::thread::sleep(Duration::from_millis(300)); // mosquitto_sub subscribed

    let mut records = Vec::new();
    for n in 0..40 {
        let device = if n % 2 == 0 { "dev-a" } else { "dev-b" };
        let payload = format!("cmd-{n}-\u{e9}");
        records.push(record(
            device,
            &payload,
            &[
                ("trace", &format!("t{n}")),
                ("origin", "backend"),
                ("ct", "text/plain"),
                ("reply-to", "backend/replies"),
                ("corr", &format!("c{n}")),
                ("ignored", "x"),
            ],
        ));
    }
    // A key with '/' would address another topic: refused, counted, committed.
    records.push(record("dev-a/evil", "nope", &[]));
    // QoS 0 from its header; a retained one from its header.
    records.push(record("dev-c", "qos0", &[("qos", "0")]));
    records.push(record("dev-r", "kept", &[("retain", "true")]));
    kafka::produce(&kafka::bootstrap(), &topic, &records);

    let all = rumqttc.publishes(42);
    // In offset order per topic; a QoS 0 message may pass QoS 1 ones waiting for the
    // client's Receive Maximum (MQTT orders per topic and QoS, 4.6).
    let (got, others): (Vec<&Publish>, Vec<&Publish>) = all.iter().partition(|p| {
        p.topic.starts_with(b"devices/dev-a/") || p.topic.starts_with(b"devices/dev-b/")
    });
    assert_eq!(got.len(), 40);
    let mut order = (0..40)
        .filter(|n| n % 2 == 0)
        .chain((0..40).filter(|n| n % 2 == 1));
    let mut by_device: Vec<&Publish> = got
        .iter()
        .filter(|p| p.topic.starts_with(b"devices/dev-a/"))
        .copied()
        .collect();
    by_device.extend(
        got.iter()
            .filter(|p| p.topic.starts_with(b"devices/dev-b/")),
    );
    for publish in by_device {
        let n = order.next().unwrap();
        let device = if n % 2 == 0 { "dev-a" } else { "dev-b" };
        assert_eq!(
            std::str::from_utf8(&publish.topic).unwrap(),
            format!("devices/{device}/commands")
        );
        assert_eq!(&publish.payload[..], format!("cmd-{n}-\u{e9}").as_bytes());
        assert_eq!(publish.qos, qos5(1));
        assert!(!publish.retain);
        assert_eq!(
            user_properties(publish),
            vec![
                ("trace".to_string(), format!("t{n}")),
                ("origin".to_string(), "backend".to_string())
            ]
        );
        let properties = publish.properties.as_ref().expect("properties");
        assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            properties.response_topic.as_deref(),
            Some("backend/replies")
        );
        assert_eq!(
            properties.correlation_data.as_deref(),
            Some(format!("c{n}").as_bytes())
        );
    }
    let qos0 = others
        .iter()
        .find(|p| p.topic == "devices/dev-c/commands")
        .expect("qos 0 one");
    assert_eq!(&qos0.payload[..], b"qos0");
    assert_eq!(qos0.qos, qos5(0));
    let kept = others
        .iter()
        .find(|p| p.topic == "devices/dev-r/commands")
        .expect("retained one");
    assert_eq!(&kept.payload[..], b"kept");
    // A live subscriber gets a retained message without the flag [MQTT-3.3.1-9].
    assert!(!kept.retain);
    rumqttc.no_publish(Duration::from_millis(500));

    let output = mosquitto.wait_with_output().expect("mosquitto_sub output");
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (0..40)
        .step_by(2)
        .map(|n| format!("devices/dev-a/commands cmd-{n}-\u{e9}"))
        .collect();
    assert_eq!(lines, expected);

    // A new subscriber gets the retained one, flagged [MQTT-3.3.1-6].
    let mut late = subscriber5(broker.port, "source-exact-late", "devices/dev-r/#", 1, 0);
    let retained = late.publish();
    assert_eq!(&retained.payload[..], b"kept");
    assert!(retained.retain);

    let body = http_get(metrics, "/metrics");
    assert_eq!(
        source_metric(&body, "consumed_total", ""),
        Some(43),
        "{body}"
    );
    assert_eq!(
        source_metric(&body, "delivered_total", ""),
        Some(42),
        "{body}"
    );
    assert_eq!(
        source_metric(&body, "dropped_total", "reason=\"topic_value_invalid\""),
        Some(1),
        "{body}"
    );
    // Everything was delivered or settled: all 43 offsets committed.
    let group = format!("ferrymq-source-{topic}");
    let deadline = Instant::now() + ARRIVE;
    while kafka::committed(&kafka::bootstrap(), &group, &topic).get(&0) != Some(&43) {
        assert!(Instant::now() < deadline, "offsets not committed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The lag comes with librdkafka's statistics, every second.
    let deadline = Instant::now() + ARRIVE;
    let body = loop {
        let body = http_get(metrics, "/metrics");
        if source_metric(&body, "lag", "partition=\"0\"") == Some(0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no lag of 0 for partition 0:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        source_metric(&body, "commit_latency_seconds_count", "").unwrap_or(0) > 0,
        "{body}"
    );
    // Readiness covers the sources' cluster.
    assert_eq!(http_get(metrics, "/readyz").trim(), "ready");
    assert_eq!(broker.stop().code(), Some(0));
}

/// A device with a persistent session that is offline when its commands are produced gets
/// them all, in order, when it connects again; their offsets are committed once queued in
/// the session, before the device is back.
#[test]
fn an_offline_persistent_session_gets_its_commands_on_reconnect() {
    let topic = kafka::unique("source-offline");
    kafka::create_topic(&kafka::bootstrap(), &topic, 1);
    let metrics = free_port();
    let config = source_config(&topic, "devices/{key}/commands", "qos = 1");
    let broker =
        Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    let device = subscriber5(
        broker.port,
        "offline-dev",
        "devices/offline-dev/commands",
        1,
        300,
    );
    device.disconnect();
    wait_assigned(metrics, 1);
    let records: Vec<Outgoing> = (0..50)
        .map(|n| record("offline-dev", &format!("command {n}"), &[]))
        .collect();
    kafka::produce(&kafka::bootstrap(), &topic, &records);
    let group = format!("ferrymq-source-{topic}");
    let deadline = Instant::now() + ARRIVE;
    while kafka::committed(&kafka::bootstrap(), &group, &topic).get(&0) != Some(&50) {
        assert!(
            Instant::now() < deadline,
            "offsets not committed while queued"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut options = options5(broker.port, "offline-dev");
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    let mut device = connect5_with(options);
    assert!(device.connack.session_present);
    let got: Vec<String> = device
        .publishes(50)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..50).map(|n| format!("command {n}")).collect();
    assert_eq!(got, expected);
    device.no_publish(Duration::from_millis(300));
    let _ = HashMap::<(), ()>::new();
    assert_eq!(broker.stop().code(), Some(0));
}

/// The payloads a subscriber received, in order, until `count` distinct ones arrived (or
/// `ARRIVE` passed).
fn receive_distinct(client: &mut v5::Mqtt, count: usize, got: &mut Vec<String>, metrics: u16) {
    let deadline = Instant::now() + ARRIVE;
    let mut distinct: std::collections::HashSet<String> = got.iter().cloned().collect();
    while distinct.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(publish) = client.try_publish(left) else {
            let body = http_get(metrics, "/metrics");
            let source: Vec<&str> = body
                .lines()
                .filter(|l| {
                    l.starts_with("ferrymq_kafka_source") || l.starts_with("ferrymq_dropped")
                })
                .collect();
            panic!(
                "{} of {count} distinct records within {ARRIVE:?}; the source:\n{}",
                distinct.len(),
                source.join("\n")
            );
        };
        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
        distinct.insert(payload.clone());
        got.push(payload);
    }
}

/// A session whose queue is full makes the broker refuse the records it should take: the
/// partition is paused and sent back to the first refused one, nothing is committed past
/// it, and once the device drains its queue it gets every record, in order, once.
#[test]
fn a_full_session_pauses_its_partition_and_nothing_is_dropped_at_qos_1() {
    let topic = kafka::unique("source-full");
    kafka::create_topic(&kafka::bootstrap(), &topic, 1);
    let metrics = free_port();
    let config = format!(
        "[broker]\nsession_queue_messages_max = 20\n\n{}",
        source_config(&topic, "devices/{key}/commands", "qos = 1")
    );
    let broker =
        Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    let device = subscriber5(broker.port, "full-dev", "devices/full-dev/commands", 1, 300);
    device.disconnect();
    wait_assigned(metrics, 1);
    let records: Vec<Outgoing> = (0..200)
        .map(|n| record("full-dev", &format!("command {n:03}"), &[]))
        .collect();
    kafka::produce(&kafka::bootstrap(), &topic, &records);
    // The queue holds 20: the 21st is refused, and the partition waits paused.
    let deadline = Instant::now() + ARRIVE;
    loop {
        let body = http_get(metrics, "/metrics");
        let paused = source_metric(&body, "paused_partitions", "");
        let refused = source_metric(&body, "redelivered_total", "").unwrap_or(0);
        if paused == Some(1) && refused > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "partition never paused:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let group = format!("ferrymq-source-{topic}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        kafka::committed(&kafka::bootstrap(), &group, &topic).get(&0),
        Some(&20),
        "committed past what the session could take"
    );
    let mut options = options5(broker.port, "full-dev");
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    let mut device = connect5_with(options);
    let mut got = Vec::new();
    receive_distinct(&mut device, 200, &mut got, metrics);
    let expected: Vec<String> = (0..200).map(|n| format!("command {n:03}")).collect();
    assert_eq!(got, expected, "every record, in order, once");
    device.no_publish(Duration::from_millis(300));
    let deadline = Instant::now() + ARRIVE;
    while kafka::committed(&kafka::bootstrap(), &group, &topic).get(&0) != Some(&200) {
        assert!(
            Instant::now() < deadline,
            "offsets not committed after delivery"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(broker.stop().code(), Some(0));
}

/// kill -9 of the broker while records stream to a connected QoS 1 subscriber: after a
/// restart every record reaches the subscriber at least once, and the duplicates are at
/// most the records that were not committed when the broker died.
#[test]
fn kill9_mid_stream_then_restart_loses_no_record() {
    const RECORDS: usize = 3000;
    let topic = kafka::unique("source-kill9");
    kafka::create_topic(&kafka::bootstrap(), &topic, 2);
    // The restarted broker joins the group 2 s after it starts, once its subscriber is
    // back (records it read before would match no one: unrouted). A dead member holds its
    // partitions until its session times out: 6 s, Kafka's least.
    let config = source_config(
        &topic,
        "devices/{key}/commands",
        "qos = 1\nstart_delay_ms = 2000\nconfig = { \"session.timeout.ms\" = \"6000\" }",
    );
    let metrics = free_port();
    let broker =
        Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    let mut device = subscriber5(broker.port, "kill9-sub", "devices/+/commands", 1, 0);
    wait_assigned(metrics, 2);
    let records: Vec<Outgoing> = (0..RECORDS)
        .map(|n| record(&format!("dev-{}", n % 8), &format!("record {n:05}"), &[]))
        .collect();
    kafka::produce(&kafka::bootstrap(), &topic, &records);
    let mut got = Vec::new();
    receive_distinct(&mut device, RECORDS / 3, &mut got, metrics);
    broker.kill9();
    // What the client took (and acknowledged) before the kill, the test included.
    device.drain(Duration::from_secs(1));
    let mut got: Vec<String> = device.received.iter().map(|(_, p)| p.clone()).collect();
    let group = format!("ferrymq-source-{topic}");
    let committed: i64 = kafka::committed(&kafka::bootstrap(), &group, &topic)
        .values()
        .sum();
    let before = got.len();
    device.disconnect_quietly();
    eprintln!("kill -9 after {before} records received; {committed} committed");

    let metrics = free_port();
    let broker =
        Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    // Subscribed before the source starts (start_delay_ms), so nothing read again goes
    // unrouted.
    let mut device = subscriber5(broker.port, "kill9-sub", "devices/+/commands", 1, 0);
    receive_distinct(&mut device, RECORDS, &mut got, metrics);
    device.drain(Duration::from_millis(500));
    got.extend(
        device
            .received
            .iter()
            .skip(got.len() - before)
            .map(|(_, p)| p.clone()),
    );
    let distinct: std::collections::HashSet<&String> = got.iter().collect();
    let duplicates = got.len() - distinct.len();
    eprintln!(
        "after restart: {} received, {} distinct, {duplicates} duplicates, {} not committed at the kill",
        got.len(),
        distinct.len(),
        RECORDS as i64 - committed
    );
    assert_eq!(distinct.len(), RECORDS, "records lost");
    assert!(
        duplicates as i64 <= RECORDS as i64 - committed,
        "{duplicates} duplicates, more than the {} uncommitted records",
        RECORDS as i64 - committed
    );
    assert_eq!(broker.stop().code(), Some(0));
}

/// Two brokers with the same source share its consumer group: each gets some of the
/// partitions and delivers their records to its own subscribers, every record to exactly
/// one; when one stops, the other takes all the partitions.
#[test]
fn two_brokers_in_one_group_split_the_partitions() {
    let topic = kafka::unique("source-group");
    kafka::create_topic(&kafka::bootstrap(), &topic, 4);
    let config = source_config(&topic, "devices/{key}/commands", "qos = 1");
    let (metrics_a, metrics_b) = (free_port(), free_port());
    let a = Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics_a}")]);
    let b = Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics_b}")]);
    let mut on_a = subscriber5(a.port, "group-sub-a", "devices/+/commands", 1, 0);
    let mut on_b = subscriber5(b.port, "group-sub-b", "devices/+/commands", 1, 0);
    let assigned = |port: u16| {
        source_metric(&http_get(port, "/metrics"), "assigned_partitions", "").unwrap_or(0)
    };
    let deadline = Instant::now() + ARRIVE;
    while !(assigned(metrics_a) >= 1
        && assigned(metrics_b) >= 1
        && assigned(metrics_a) + assigned(metrics_b) == 4)
    {
        assert!(
            Instant::now() < deadline,
            "partitions not split between the two brokers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let records: Vec<Outgoing> = (0..400)
        .map(|n| record(&format!("dev-{}", n % 40), &format!("first {n:03}"), &[]))
        .collect();
    kafka::produce(&kafka::bootstrap(), &topic, &records);
    let deadline = Instant::now() + ARRIVE;
    while on_a.received.len() + on_b.received.len() < 400 {
        assert!(Instant::now() < deadline, "records missing");
        on_a.drain(Duration::from_millis(50));
        on_b.drain(Duration::from_millis(50));
    }
    on_a.drain(Duration::from_millis(300));
    on_b.drain(Duration::from_millis(300));
    let from_a: std::collections::HashSet<String> =
        on_a.received.iter().map(|(_, p)| p.clone()).collect();
    let from_b: std::collections::HashSet<String> =
        on_b.received.iter().map(|(_, p)| p.clone()).collect();
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "one broker delivered nothing"
    );
    assert!(
        from_a.is_disjoint(&from_b),
        "a record reached both brokers' subscribers"
    );
    assert_eq!(from_a.len() + from_b.len(), 400);
    assert_eq!(on_a.received.len() + on_b.received.len(), 400, "duplicates");

    // B leaves the group: A takes its partitions.
    assert_eq!(b.stop().code(), Some(0));
    let deadline = Instant::now() + ARRIVE;
    while assigned(metrics_a) != 4 {
        assert!(Instant::now() < deadline, "A did not take B's partitions");
        std::thread::sleep(Duration::from_millis(100));
    }
    // What A received so far was counted above.
    while on_a.try_publish(Duration::ZERO).is_some() {}
    let records: Vec<Outgoing> = (0..200)
        .map(|n| record(&format!("dev-{}", n % 40), &format!("second {n:03}"), &[]))
        .collect();
    kafka::produce(&kafka::bootstrap(), &topic, &records);
    let mut got = Vec::new();
    receive_distinct(&mut on_a, 200, &mut got, metrics_a);
    assert!(got.iter().all(|p| p.starts_with("second ")));
    assert_eq!(a.stop().code(), Some(0));
}

/// A bad `[[kafka.source]]` stops the start with one line naming the key, exit status 2.
#[test]
fn bad_source_settings_exit_2_with_one_line_naming_the_key() {
    let cluster = "[kafka.clusters.main]\nbootstrap = \"127.0.0.1:9\"\n";
    let cases = [
        ("name = \"a\"\ntopics = [\"t\"]\nmqtt = \"devices/{key\"", "kafka.source[0].mqtt"),
        ("name = \"a\"\ntopics = [\"t\"]\nmqtt = \"devices/+/x\"", "kafka.source[0].mqtt"),
        ("name = \"a\"\ntopics = [\"t\"]\nmqtt = \"d/{nope}\"", "kafka.source[0].mqtt"),
        ("name = \"a\"\ntopics = []\nmqtt = \"d\"", "kafka.source[0].topics"),
        ("name = \"a\"\ntopics = [\"bad topic\"]\nmqtt = \"d\"", "kafka.source[0].topics"),
        ("name = \"a\"\ntopics = [\"t\"]\nmqtt = \"d\"\nqos = 3", "qos"),
        ("name = \"a\"\ntopics = [\"t\"]\nmqtt = \"d\"\ncluster = \"other\"", "kafka.source[0].cluster"),
        ("name = \"a\"\ntopics = [\"t\"]\nmqtt = \"d\"\nstart = \"middle\"", "start"),
        (
            "name = \"a\"\ntopics = [\"t\"]\nmqtt = \"d\"\nconfig = { \"group.id\" = \"x\" }",
            "kafka.source[0].config.\"group.id\"",
        ),
        (
            "name = \"a\"\ntopics = [\"t\"]\nmqtt = \"d\"\n\n[[kafka.source]]\nname = \"a\"\ntopics = [\"t\"]\nmqtt = \"d\"",
            "kafka.source[1].name",
        ),
    ];
    for (source, key) in cases {
        let file = kafka::write_config(&format!(
            "[[listener]]\nbind = \"127.0.0.1:{}\"\n{cluster}\n[[kafka.source]]\n{source}\n",
            free_port()
        ));
        let output = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .args(["--config", file.path_str()])
            .output()
            .expect("run ferrymq");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{source}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{source}: {stderr}");
        assert!(stderr.contains(key), "{source}: expected {key} in {stderr}");
    }
}

/// A record from a source that matches MQTT → Kafka mappings goes to Kafka only through
/// those with `from_sources = true`: the mapping back to the source's own topic (a loop)
/// does not take it, and the record is committed once the copy is in Kafka.
#[test]
fn records_from_kafka_go_back_to_kafka_only_through_from_sources_mappings() {
    let topic = kafka::unique("source-loop");
    let copy = format!("{topic}-copy");
    kafka::create_topic(&kafka::bootstrap(), &topic, 1);
    kafka::create_topic(&kafka::bootstrap(), &copy, 1);
    let metrics = free_port();
    let config = format!(
        "{}\n[[kafka.mapping]]\nmqtt = \"loop/#\"\ntopic = \"{topic}\"\n\n\
         [[kafka.mapping]]\nmqtt = \"loop/#\"\ntopic = \"{copy}\"\nfrom_sources = true\n",
        source_config(&topic, "loop/{key}", "qos = 1")
    );
    let broker =
        Broker::start_with_config(&config, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    wait_assigned(metrics, 1);
    let records: Vec<Outgoing> = (0..20)
        .map(|n| record("dev", &format!("loop {n}"), &[]))
        .collect();
    kafka::produce(&kafka::bootstrap(), &topic, &records);
    let copied = kafka::read_topic(&kafka::bootstrap(), &copy, 20, ARRIVE);
    let payloads: Vec<&str> = copied.iter().map(|r| r.payload_str()).collect();
    let expected: Vec<String> = (0..20).map(|n| format!("loop {n}")).collect();
    assert_eq!(payloads, expected);
    let group = format!("ferrymq-source-{topic}");
    let deadline = Instant::now() + ARRIVE;
    while kafka::committed(&kafka::bootstrap(), &group, &topic).get(&0) != Some(&20) {
        assert!(
            Instant::now() < deadline,
            "offsets not committed once copied"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing came back to the source's topic: still its 20 records.
    std::thread::sleep(Duration::from_secs(1));
    let back = kafka::read_topic(&kafka::bootstrap(), &topic, 21, Duration::from_secs(3));
    assert_eq!(back.len(), 20, "a record went round the loop");
    assert_eq!(broker.stop().code(), Some(0));
}
