//! The loadgen end to end: the real `ferrymq` broker (two shards) with a Kafka mapping
//! (`ack = "kafka"`) on the real Kafka at `$FERRYMQ_KAFKA_BOOTSTRAP` (default
//! 127.0.0.1:9092, started by `scripts/kafka start`), and `ferrymq-loadgen` playing 200
//! devices that publish QoS 1 and then read the topic back. The report's JSON must show
//! every message acknowledged and none lost.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn bootstrap() -> String {
    std::env::var("FERRYMQ_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    fn start(mqtt_filter: &str, kafka_topic: &str) -> Broker {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("loadgen-e2e"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("ferrymq.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[kafka.clusters.main]
bootstrap = "{}"

[[kafka.mapping]]
mqtt = "{mqtt_filter}"
topic = "{kafka_topic}"
key = "{{client_id}}"
ack = "kafka"
"#,
                bootstrap()
            ),
        )
        .unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut child = Command::new(broker_binary())
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cores")
            .arg(if cpus >= 2 { "0,1" } else { "0" })
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferrymq");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            first.contains("listening"),
            "ferrymq did not start: {first:?}"
        );
        std::thread::spawn(move || for _ in lines {});
        // Both shards bind the port; give the second a moment.
        std::thread::sleep(Duration::from_millis(200));
        Broker { child, port, dir }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the loadgen with `args` plus the broker, Kafka and JSON flags; returns its exit
/// code and the report.
fn run_loadgen(
    broker: &Broker,
    topic_template: &str,
    kafka_topic: &str,
    args: &[&str],
) -> (i32, serde_json::Value) {
    let (code, report, _) = run_loadgen_with_output(broker, topic_template, kafka_topic, args);
    (code, report)
}

/// As [`run_loadgen`], with what the loadgen printed (stdout, then stderr) too.
fn run_loadgen_with_output(
    broker: &Broker,
    topic_template: &str,
    kafka_topic: &str,
    args: &[&str],
) -> (i32, serde_json::Value, String) {
    let json = broker.dir.join("report.json");
    let started = Instant::now();
    let output = Command::new(loadgen())
        .args(["-p", &broker.port.to_string(), "-t", topic_template])
        .args(["--verify-kafka", &bootstrap(), "--kafka-topic", kafka_topic])
        .args(["--kafka-create-topics", "2", "--verify-timeout-secs", "60"])
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .expect("run ferrymq-loadgen");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{printed}");
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "the run took {:?}",
        started.elapsed()
    );
    let report = std::fs::read_to_string(&json).expect("the loadgen wrote --json");
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&report).expect("JSON report"),
        printed,
    )
}

/// 200 devices, 10 QoS 1 messages each, through `ack = "kafka"`: all 2,000 acknowledged,
/// all 2,000 in Kafka exactly once and in order.
#[test]
fn two_hundred_devices_lose_nothing_on_the_way_to_kafka() {
    let name = unique("lge2e");
    let broker = Broker::start(&format!("{name}/#"), &name);
    let (code, report) = run_loadgen(
        &broker,
        &format!("{name}/%i/telemetry"),
        &name,
        &[
            "-c",
            "200",
            "-i",
            "1000",
            "-I",
            "100",
            "--messages",
            "10",
            "-q",
            "1",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(figure(&report, "messages.sent"), 2_000);
    assert_eq!(
        figure(&report, "messages.acknowledged"),
        figure(&report, "messages.sent")
    );
    assert_eq!(figure(&report, "kafka.lost"), 0);
    assert_eq!(figure(&report, "kafka.received"), 2_000);
    assert_eq!(figure(&report, "kafka.duplicated"), 0);
    assert_eq!(figure(&report, "kafka.out_of_order"), 0);
    assert_eq!(report["kafka"]["timed_out"], false);
    assert_eq!(figure(&report, "devices.distinct_ids"), 200);
    assert_eq!(figure(&report, "latency.puback.count"), 2_000);
    assert!(figure(&report, "latency.kafka.count") >= 2_000);
    assert_eq!(figure(&report, "latency.connect.count"), 200);
    assert!(report["connections"]["connects_per_sec"].as_f64().unwrap() > 0.0);
    // The topic was created with LogAppendTime: the arrival rate runs from the first send
    // to Kafka's append time of the last record.
    assert_eq!(report["kafka"]["latency_to"], "log-append-time");
    let (first, last) = (
        figure(&report, "kafka.first_send_unix_ms"),
        figure(&report, "kafka.last_arrival_unix_ms"),
    );
    assert!(first > 0 && first <= last, "{report}");
    let per_sec = report["kafka"]["received_per_sec"].as_f64().unwrap();
    let expected = 2_000.0 * 1000.0 / (last - first).max(1) as f64;
    assert!((per_sec - expected).abs() < 1e-6 * expected, "{report}");
}

/// Two processes (merged report), a QoS 1/2 mix, a subscriber per process and churn: 300
/// distinct ids through 40 slots, each connecting, publishing 3 messages and leaving.
#[test]
fn churn_over_two_processes_with_subscribers_and_qos2() {
    let name = unique("lge2e-churn");
    let broker = Broker::start(&format!("{name}/#"), &name);
    let (code, report) = run_loadgen(
        &broker,
        &format!("{name}/%i"),
        &name,
        &[
            "-c",
            "40",
            "-i",
            "500",
            "--churn-total",
            "300",
            "--messages",
            "3",
            "-I",
            "10",
            "--qos-mix",
            "1:50,2:50",
            "--subscribers",
            "1",
            "--procs",
            "2",
            "--kafka-warmup-timeout",
            "0",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(figure(&report, "procs"), 2);
    assert_eq!(figure(&report, "devices.distinct_ids"), 300);
    assert_eq!(figure(&report, "messages.sent"), 900);
    assert_eq!(figure(&report, "messages.acknowledged"), 900);
    assert_eq!(figure(&report, "kafka.lost"), 0);
    assert_eq!(figure(&report, "kafka.received"), 900);
    assert_eq!(figure(&report, "subscriptions.subscribers"), 2);
    assert_eq!(figure(&report, "subscriptions.expected"), 900);
    assert_eq!(figure(&report, "subscriptions.lost"), 0);
    // Merged over both processes: one connect latency per connection, one arrival rate.
    assert_eq!(
        figure(&report, "latency.connect.count"),
        figure(&report, "connections.connects")
    );
    assert!(report["kafka"]["received_per_sec"].as_f64().unwrap() > 0.0);
    // The parent process probes Kafka beside its children; no warm-up was asked for.
    assert!(figure(&report, "latency.kafka_probe.count") > 0, "{report}");
    assert_eq!(report["kafka_probe"]["warmup"], "off", "{report}");
}

/// Before the clock starts Kafka is warmed up (one line says how long it took), and during
/// the run a probe record every 100 ms measures Kafka's own produce latency: the report
/// carries it beside publish→ack, and the verification never reads a probe record.
#[test]
fn kafka_is_warmed_up_before_the_clock_and_probed_during_the_run() {
    let name = unique("lge2e-probe");
    let broker = Broker::start(&format!("{name}/#"), &name);
    let probe_topic = format!("{name}-probe");
    let (code, report, printed) = run_loadgen_with_output(
        &broker,
        &format!("{name}/%i"),
        &name,
        &[
            "-c",
            "20",
            "-I",
            "100",
            "--duration",
            "2",
            "--kafka-warmup-timeout",
            "20",
            "--kafka-probe-topic",
            &probe_topic,
        ],
    );
    assert_eq!(code, 0, "{report}");
    let warmup_line = printed
        .lines()
        .find(|l| l.starts_with("kafka warm-up: ") || l.contains("Kafka still slow after"));
    assert!(warmup_line.is_some(), "no warm-up line in:\n{printed}");
    let warmup = report["kafka_probe"]["warmup"].as_str().unwrap_or_default();
    assert!(warmup == "warm" || warmup == "slow", "{report}");
    assert!(
        figure(&report, "kafka_probe.warmup_rounds") >= 1,
        "{report}"
    );
    assert_eq!(report["kafka_probe"]["topic"], probe_topic.as_str());
    // About 20 probes in 2 s (one every 100 ms), each answered.
    let probes = figure(&report, "latency.kafka_probe.count");
    assert!(probes >= 5, "{report}");
    assert_eq!(probes, figure(&report, "kafka_probe.sent"), "{report}");
    assert_eq!(figure(&report, "kafka_probe.failed"), 0);
    assert!(figure(&report, "latency.kafka_probe.p50_us") > 0);
    assert!(!report["histograms"]["kafka_probe"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(printed.contains("Kafka produce (probe)"), "{printed}");
    // The warm-up's records are in the verified topic before the captured offsets.
    assert_eq!(figure(&report, "kafka.foreign"), 0, "{report}");
    assert_eq!(figure(&report, "kafka.unexpected"), 0, "{report}");
    assert_eq!(figure(&report, "kafka.lost"), 0);
    assert_eq!(
        figure(&report, "kafka.received"),
        figure(&report, "messages.sent")
    );
}
