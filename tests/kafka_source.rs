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
    let mut mosquitto = Command::new("mosquitto_sub")
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
