//! Records Kafka refuses for good, end to end: a real Apache Kafka topic whose
//! `max.message.bytes` is 1,024 refuses a 4 KiB record (MESSAGE_SIZE_TOO_LARGE), published by
//! `mosquitto_pub` (MQTT 3.1.1, persistent session, QoS 1) through the real `ferrymq` binary.
//! Each `on_refused` of a mapping is checked:
//! - `dead_letter`: the record reaches the dead-letter topic with its key, payload and headers
//!   plus the ones naming the error, the target topic and cluster, the MQTT topic and client
//!   id; the device gets its PUBACK, and its next message reaches the target topic;
//! - `reason_code` (default): the 3.1.1 device gets its PUBACK (it has no way to hear of the
//!   refusal; disconnecting it would make it publish the same message again, for ever);
//! - `drop`: PUBACK, nothing in Kafka.
//!
//! Each is counted in `ferrymq_kafka_mapping_refused_total{reason, action}`.
//!
//! Needs the shared Kafka on `127.0.0.1:9092` (`$FERRYMQ_KAFKA_BOOTSTRAP`). Every wait is
//! bounded.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{self, Record};
use common::metrics::http_get;
use common::{free_port, mosquitto_pub, pubacks_in, Broker};

/// Longest reading one topic back may take.
const READ: Duration = Duration::from_secs(30);
/// Largest record the target topic takes.
const TOPIC_MAX_BYTES: &str = "1024";

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| std::str::from_utf8(v).expect("UTF-8 header"))
}

/// The value of the first metrics line that contains every one of `parts`, once the broker's
/// once-a-second snapshot shows at least `at_least` (or what it shows after 10 s).
fn counted(metrics_port: u16, parts: &[&str], at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = http_get(metrics_port, "/metrics");
        let value = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find(|line| parts.iter().all(|part| line.contains(part)))
            .and_then(|line| line.rsplit_once(' '))
            .and_then(|(_, value)| value.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if value >= at_least || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A 3.1.1 persistent-session QoS 1 publish of `payload` (from a file, so any bytes) as
/// `client_id`; returns how many PUBACKs came and mosquitto_pub's output.
fn publish_v311(port: u16, client_id: &str, topic: &str, payload: &[u8]) -> (usize, String) {
    let file = tempfile_with(payload);
    let (status, output) = mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv311",
            "-c",
            "-i",
            client_id,
            "-q",
            "1",
            "-d",
            "-t",
            topic,
            "-f",
            file.path_str(),
        ],
        &[],
    );
    assert!(status.success(), "mosquitto_pub failed: {output}");
    (pubacks_in(&output), output)
}

fn tempfile_with(bytes: &[u8]) -> kafka::ConfigFile {
    let file = kafka::write_config("");
    std::fs::write(file.path_str(), bytes).expect("write payload file");
    file
}

#[test]
fn records_refused_for_good_go_where_on_refused_says_and_never_loop() {
    let bootstrap = kafka::bootstrap();
    let small = kafka::unique("refused-small");
    let dead = kafka::unique("refused-dead");
    kafka::create_topic_with(
        &bootstrap,
        &small,
        1,
        &[("max.message.bytes", TOPIC_MAX_BYTES)],
    );
    kafka::create_topic(&bootstrap, &dead, 1);
    // A dead-letter topic that takes less than the letter: its payload is cut to fit.
    let dead_small = kafka::unique("refused-dead-small");
    kafka::create_topic_with(&bootstrap, &dead_small, 1, &[("max.message.bytes", "2048")]);
    let metrics_port = free_port();
    let config = kafka::write_config(&format!(
        r#"
[kafka.clusters.main]
bootstrap = "{bootstrap}"

[[kafka.mapping]]
mqtt = "dl/#"
topic = "{small}"
key = "{{client_id}}"
on_refused = "dead_letter"
dead_letter_topic = "{dead}"

[[kafka.mapping]]
mqtt = "rc/#"
topic = "{small}"

[[kafka.mapping]]
mqtt = "drop/#"
topic = "{small}"
on_refused = "drop"

[[kafka.mapping]]
mqtt = "dlsmall/#"
topic = "{small}"
on_refused = "dead_letter"
dead_letter_topic = "{dead_small}"
"#
    ));
    let metrics = format!("127.0.0.1:{metrics_port}");
    let broker = Broker::start_with(&["--config", config.path_str(), "--metrics", &metrics]);
    let port: u16 = broker.addr().rsplit_once(':').unwrap().1.parse().unwrap();
    let big: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();

    // dead_letter: PUBACK once the dead letter is in Kafka, with everything a reader needs.
    let (pubacks, output) = publish_v311(port, "dev-dl", "dl/big", &big);
    assert_eq!(pubacks, 1, "PUBACK for the refused record: {output}");
    let letters = kafka::read_topic(&bootstrap, &dead, 1, READ);
    assert_eq!(letters.len(), 1, "dead letters: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.payload, big, "the dead letter keeps the payload");
    assert_eq!(letter.key.as_deref(), Some(&b"dev-dl"[..]));
    let error = header(letter, "dead_letter_error").expect("dead_letter_error header");
    assert!(
        error.starts_with("MessageSizeTooLarge"),
        "dead_letter_error: {error}"
    );
    assert_eq!(header(letter, "dead_letter_topic"), Some(small.as_str()));
    assert_eq!(header(letter, "dead_letter_cluster"), Some("main"));
    assert_eq!(header(letter, "mqtt_topic"), Some("dl/big"));
    assert_eq!(header(letter, "client_id"), Some("dev-dl"));
    assert_eq!(header(letter, "qos"), Some("1"));

    // The dead-letter topic takes at most 2,048 bytes: the letter comes with its payload cut
    // (a prefix) and its full size in a header.
    let (pubacks, output) = publish_v311(port, "dev-dls", "dlsmall/big", &big);
    assert_eq!(
        pubacks, 1,
        "PUBACK once the cut dead letter is in Kafka: {output}"
    );
    let letters = kafka::read_topic(&bootstrap, &dead_small, 1, READ);
    assert_eq!(letters.len(), 1, "cut dead letters: {letters:?}");
    let letter = &letters[0];
    assert!(
        letter.payload.len() < 2048 && big.starts_with(&letter.payload),
        "a prefix that fits: {} bytes",
        letter.payload.len()
    );
    assert_eq!(header(letter, "dead_letter_payload_bytes"), Some("4096"));
    assert_eq!(header(letter, "client_id"), Some("dev-dls"));

    // The device goes on: its next message reaches the target topic.
    let (pubacks, output) = publish_v311(port, "dev-dl", "dl/next", b"next");
    assert_eq!(pubacks, 1, "PUBACK for the next message: {output}");

    // reason_code (default), 3.1.1: acknowledged, not disconnected; nothing in Kafka.
    let (pubacks, output) = publish_v311(port, "dev-rc", "rc/big", &big);
    assert_eq!(pubacks, 1, "3.1.1 PUBACK for a refused record: {output}");
    assert!(
        !output.contains("Connection error") && !output.contains("Error:"),
        "mosquitto_pub saw an error: {output}"
    );
    // drop: acknowledged; nothing in Kafka.
    let (pubacks, output) = publish_v311(port, "dev-drop", "drop/big", &big);
    assert_eq!(pubacks, 1, "PUBACK for a dropped record: {output}");
    let (pubacks, _) = publish_v311(port, "dev-drop", "drop/next", b"after-drop");
    assert_eq!(pubacks, 1);

    let records = kafka::read_topic(&bootstrap, &small, 2, READ);
    let payloads: Vec<&str> = records.iter().map(Record::payload_str).collect();
    assert_eq!(payloads, ["next", "after-drop"], "only the small messages");

    for (mapping, action) in [("0", "dead_letter"), ("1", "reason_code"), ("2", "drop")] {
        let parts = [
            "ferrymq_kafka_mapping_refused_total{",
            &format!("mapping=\"{mapping}\""),
            "reason=\"too_large\"",
            &format!("action=\"{action}\""),
        ];
        assert_eq!(counted(metrics_port, &parts, 1), 1, "{parts:?}");
    }
    assert_eq!(
        counted(
            metrics_port,
            &[
                "ferrymq_kafka_mapping_dead_lettered_total{",
                "mapping=\"0\""
            ],
            1
        ),
        1
    );
    drop(broker);
}

#[test]
fn dead_letter_settings_are_checked_with_one_line_naming_the_key() {
    let cases = [
        (
            "on_refused = \"dead_letter\"",
            "kafka.mapping[0].dead_letter_topic: missing, and needed with on_refused = \"dead_letter\"",
        ),
        (
            "dead_letter_topic = \"dead\"",
            "kafka.mapping[0].dead_letter_topic: used only with on_refused = \"dead_letter\"",
        ),
        (
            "on_refused = \"dead_letter\"\ndead_letter_topic = \"dead\"\ndead_letter_cluster = \"other\"",
            "kafka.mapping[0].dead_letter_cluster: \"other\" is not a cluster (known: main)",
        ),
        (
            "on_refused = \"dead_letter\"\ndead_letter_topic = \"no spaces\"",
            "kafka.mapping[0].dead_letter_topic:",
        ),
        ("on_refused = \"retry\"", "on_refused"),
    ];
    for (extra, expected) in cases {
        let config = kafka::write_config(&format!(
            "[kafka.clusters.main]\nbootstrap = \"127.0.0.1:9\"\n\n[[kafka.mapping]]\n\
             mqtt = \"a/#\"\ntopic = \"a\"\n{extra}\n"
        ));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .args(["--config", config.path_str()])
            .output()
            .expect("run ferrymq");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra}: one line: {stderr}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}
