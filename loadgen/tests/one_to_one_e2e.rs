//! `--one-to-one` and the connection figures end to end, against Mosquitto
//! (`$FERRYMQ_MOSQUITTO`, default /usr/sbin/mosquitto, on a free port): each publisher
//! has its own subscriber on its own topic, and the JSON report must show every
//! acknowledged message at its one subscriber, none lost or misrouted, and one connect
//! latency per connection with a connect rate. Also with `--procs 2`, and the flags that
//! do not go with `--one-to-one` refused.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let binary =
            std::env::var("FERRYMQ_MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into());
        let port = free_port();
        let child = Command::new(&binary)
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {binary} (install the mosquitto package, as .ci/run does): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = std::env::temp_dir().join(unique("loadgen-o2o"));
        std::fs::create_dir_all(&dir).unwrap();
        Mosquitto { child, port, dir }
    }

    /// Runs the loadgen against this broker with `args` and `--json`; returns its exit
    /// code, the report and what it printed.
    fn run_loadgen(&self, args: &[&str]) -> (i32, serde_json::Value, String) {
        let json = self.dir.join("report.json");
        let _ = std::fs::remove_file(&json);
        let output = Command::new(loadgen())
            .args(["-p", &self.port.to_string(), "--json"])
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
        let report = std::fs::read_to_string(&json).expect("the loadgen wrote --json");
        (
            output.status.code().unwrap_or(-1),
            serde_json::from_str(&report).expect("JSON report"),
            printed,
        )
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks what every one-to-one run must show for `pairs` pairs of `messages` QoS 1
/// messages each.
fn assert_one_to_one(report: &serde_json::Value, pairs: u64, messages: u64) {
    let total = pairs * messages;
    assert_eq!(figure(report, "devices.publishers"), pairs);
    assert_eq!(figure(report, "devices.subscribers"), pairs);
    assert_eq!(figure(report, "messages.sent"), total);
    assert_eq!(figure(report, "messages.acknowledged"), total);
    assert_eq!(report["subscriptions"]["one_to_one"], true);
    assert_eq!(figure(report, "subscriptions.subscribers"), pairs);
    assert_eq!(figure(report, "subscriptions.expected"), total);
    assert_eq!(figure(report, "subscriptions.received"), total);
    assert_eq!(figure(report, "subscriptions.lost"), 0);
    assert_eq!(figure(report, "subscriptions.misrouted"), 0);
    assert_eq!(figure(report, "subscriptions.duplicated"), 0);
    assert_eq!(figure(report, "subscriptions.out_of_order"), 0);
    assert_eq!(figure(report, "latency.subscriber.count"), total);
    // One connect latency per connection: publishers and subscribers.
    assert_eq!(figure(report, "connections.connects"), 2 * pairs);
    assert_eq!(figure(report, "connections.connect_errors"), 0);
    assert_eq!(figure(report, "latency.connect.count"), 2 * pairs);
    let connect_max = figure(report, "latency.connect.max_us");
    assert!(
        connect_max > 0 && figure(report, "latency.connect.p50_us") <= connect_max,
        "{report}"
    );
    // The rate is over the connect phase, which is within the run.
    let phase = rate(report, "connections.connect_phase_secs");
    assert!(
        phase > 0.0 && phase <= rate(report, "elapsed_secs"),
        "{report}"
    );
    let per_sec = rate(report, "connections.connects_per_sec");
    assert!(
        (per_sec - (2 * pairs) as f64 / phase).abs() < 1e-6 * per_sec.max(1.0),
        "{report}"
    );
    assert!(
        figure(report, "connections.first_connect_unix_us")
            < figure(report, "connections.last_connack_unix_us")
    );
}

/// 50 pairs, 20 QoS 1 messages each: 1,000 messages, each at its one subscriber.
#[test]
fn fifty_pairs_deliver_each_message_to_its_one_subscriber() {
    let broker = Mosquitto::start();
    let name = unique("lgo2o");
    let topic = format!("{name}/%i/up");
    let (code, report, printed) = broker.run_loadgen(&[
        "-t",
        &topic,
        "-c",
        "50",
        "--one-to-one",
        "--messages",
        "20",
        "-I",
        "20",
        "-q",
        "1",
        "--sub-qos",
        "1",
        "-i",
        "1000",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_one_to_one(&report, 50, 20);
    assert!(rate(&report, "connections.connects_per_sec") > 0.0);
    assert!(printed.contains("connect→CONNACK"), "{printed}");
    assert!(printed.contains("one-to-one subscribers"), "{printed}");
}

/// Two processes, each pairing its own devices (51 split 26 + 25, a %c topic): the
/// merged report adds them up and spans one connect phase over both.
#[test]
fn one_to_one_over_two_processes() {
    let broker = Mosquitto::start();
    let name = unique("lgo2o-procs");
    let topic = format!("{name}/%c");
    let (code, report, _) = broker.run_loadgen(&[
        "-t",
        &topic,
        "-c",
        "51",
        "--one-to-one",
        "--messages",
        "10",
        "-I",
        "20",
        "-q",
        "1",
        "--procs",
        "2",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(figure(&report, "procs"), 2);
    assert_eq!(figure(&report, "devices.distinct_ids"), 51);
    assert_one_to_one(&report, 51, 10);
}

#[test]
fn one_to_one_refuses_churn_subscribers_and_shared_topics() {
    for extra in [
        &["--churn"][..],
        &["--churn-total", "100"][..],
        &["--subscribers", "2"][..],
        &["-t", "one/topic/for/all"][..],
    ] {
        let output = Command::new(loadgen())
            .args(["-p", "1", "-c", "10", "--one-to-one"])
            .args(extra)
            .output()
            .expect("run ferrymq-loadgen");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("--one-to-one: not with") || stderr.contains("%i or %c"),
            "{extra:?}: {stderr}"
        );
    }
}
