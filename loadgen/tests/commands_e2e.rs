//! `ferrymq-loadgen commands` end to end: the real `ferrymq` broker (two shards) with a
//! `[[kafka.source]]` on the real Kafka at `$FERRYMQ_KAFKA_BOOTSTRAP` (default
//! 127.0.0.1:9092, started by `scripts/kafka start`), devices in persistent sessions
//! subscribed to their own command topics, commands produced to Kafka, some devices going
//! offline and back. The JSON report must show every command Kafka acknowledged at its
//! device; and a source that delivers at QoS 0 must make the run fail, since the offline
//! devices' commands are then lost.

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
    /// A broker whose source reads `kafka_topic` into `cmd/{key}`, delivered at `qos`.
    fn start(kafka_topic: &str, qos: u8) -> Broker {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("loadgen-commands-e2e"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("ferrymq.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[kafka.clusters.main]
bootstrap = "{}"

[[kafka.source]]
name = "{kafka_topic}"
topics = ["{kafka_topic}"]
mqtt = "cmd/{{key}}"
qos = {qos}
start = "earliest"
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
        std::thread::sleep(Duration::from_millis(200));
        Broker { child, port, dir }
    }

    /// Runs `ferrymq-loadgen commands` with `args` plus the broker, Kafka and JSON flags;
    /// its exit code and report.
    fn commands(&self, kafka_topic: &str, args: &[&str]) -> (i32, serde_json::Value) {
        let json = self.dir.join(format!("report-{}.json", unique("run")));
        let started = Instant::now();
        let output = Command::new(loadgen())
            .arg("commands")
            .args(["-p", &self.port.to_string(), "-t", "cmd/%c"])
            .args([
                "--kafka-bootstrap",
                &bootstrap(),
                "--kafka-topic",
                kafka_topic,
            ])
            .args(["--kafka-partitions", "3", "--drain-secs", "20"])
            .arg("--broker-pid")
            .arg(self.child.id().to_string())
            .arg("--json")
            .arg(&json)
            .args(args)
            .output()
            .expect("run ferrymq-loadgen commands");
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run took {:?}",
            started.elapsed()
        );
        let report = std::fs::read_to_string(&json).expect("the loadgen wrote --json");
        (
            output.status.code().unwrap_or(-1),
            serde_json::from_str(&report).expect("JSON report"),
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 200 devices, 1000 commands/s for 4 s, a quarter of them offline for a second (MQTT 5
/// DISCONNECT; then MQTT 3.1.1, the connection dropped): every command Kafka acknowledged
/// reaches its device once and in order, every offline device finds its session again, and
/// the bare consumer reads the run's records back.
#[test]
fn every_command_reaches_its_device_through_offline_spells() {
    let topic = unique("lg-commands");
    let broker = Broker::start(&topic, 1);
    let (code, report) = broker.commands(
        &topic,
        &[
            "-c",
            "200",
            "--total-rate",
            "1000",
            "--duration",
            "4",
            "--offline-fraction",
            "0.25",
            "--offline-secs",
            "1",
            "--bare-consumer",
        ],
    );
    assert_eq!(code, 0, "{report}");
    let acknowledged = figure(&report, "kafka.acknowledged");
    assert!(acknowledged >= 3_500, "{report}");
    assert_eq!(figure(&report, "commands.expected"), acknowledged);
    assert_eq!(figure(&report, "commands.received"), acknowledged);
    assert_eq!(figure(&report, "commands.lost"), 0);
    assert_eq!(figure(&report, "commands.duplicated"), 0);
    assert_eq!(figure(&report, "commands.out_of_order"), 0);
    assert_eq!(figure(&report, "commands.misrouted"), 0);
    assert_eq!(report["commands"]["all_arrived"], true);
    let went = figure(&report, "devices.went_offline");
    assert!(went > 20, "{report}");
    assert_eq!(figure(&report, "devices.offline_planned"), went);
    assert_eq!(figure(&report, "devices.sessions_resumed"), went);
    assert_eq!(figure(&report, "devices.sessions_lost"), 0);
    assert_eq!(
        figure(&report, "latency.delivery.count")
            + figure(&report, "latency.delivery_offline.count"),
        acknowledged
    );
    assert!(figure(&report, "latency.delivery_offline.max_us") >= 500_000);
    assert!(figure(&report, "bare_consumer.records") >= acknowledged);
    assert!(rate(&report, "broker.cpu_secs") > 0.0);

    // MQTT 3.1.1 (clean session 0), offline devices dropping their connection.
    let (code, report) = broker.commands(
        &topic,
        &[
            "-c",
            "100",
            "-V",
            "4",
            "--id-prefix",
            &unique("v4-"),
            "--commands",
            "20",
            "--total-rate",
            "500",
            "--offline-fraction",
            "0.3",
            "--offline-secs",
            "1",
            "--offline-drop",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(figure(&report, "commands.expected"), 2_000);
    assert_eq!(figure(&report, "commands.received"), 2_000);
    assert_eq!(figure(&report, "commands.lost"), 0);
    let went = figure(&report, "devices.went_offline");
    assert!(went > 10, "{report}");
    assert_eq!(figure(&report, "devices.sessions_resumed"), went);
}

/// A source delivering at QoS 0: what offline devices miss is gone, and a QoS 1 run says
/// so (exit status 1, commands lost); at -q 0 the loss is reported but not failed.
#[test]
fn commands_lost_by_a_qos_0_source_fail_the_run() {
    let topic = unique("lg-commands-q0");
    let broker = Broker::start(&topic, 0);
    let args = [
        "-c",
        "100",
        "--total-rate",
        "500",
        "--duration",
        "4",
        "--offline-fraction",
        "0.3",
        "--offline-secs",
        "1",
        "--drain-secs",
        "2",
    ];
    let (code, report) = broker.commands(&topic, &args);
    assert_eq!(code, 1, "{report}");
    assert!(figure(&report, "commands.lost") > 0, "{report}");
    assert!(figure(&report, "commands.devices_with_loss") > 0);
    assert_eq!(report["commands"]["all_arrived"], false);
    let mut best_effort = args.to_vec();
    best_effort.extend(["-q", "0"]);
    let (code, report) = broker.commands(&topic, &best_effort);
    assert_eq!(code, 0, "{report}");
    assert!(figure(&report, "commands.lost") > 0, "{report}");
    assert_eq!(report["commands"]["best_effort"], true);
}
