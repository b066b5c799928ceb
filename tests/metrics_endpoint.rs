//! `--metrics ADDR`: Prometheus counters per mapping and cluster, `/healthz`, and `/readyz`
//! saying whether Kafka answers. Uses the real Kafka of `scripts/kafka` for the "up" case
//! and a closed port for the "down" case.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, Broker};

fn bootstrap() -> String {
    std::env::var("FERRYMQ_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// GET `path`: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Polls `path` until `check` accepts the answer or `timeout` passes.
fn wait_for(
    port: u16,
    path: &str,
    timeout: Duration,
    check: impl Fn(&str, &str) -> bool,
) -> (String, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = get(port, path);
        if check(&status, &body) || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn config_file(name: &str, bootstrap: &str) -> std::path::PathBuf {
    let topic = format!("metrics-test-{}-{name}", std::process::id());
    let path = std::env::temp_dir().join(format!("ferrymq-{topic}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kafka.clusters.{name}]\nbootstrap = \"{bootstrap}\"\n\n[[kafka.mapping]]\nmqtt = \"metered/#\"\ntopic = \"{topic}\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn counts_per_mapping_and_reports_ready_when_kafka_answers() {
    let metrics_port = free_port();
    let config = config_file("main", &bootstrap());
    let broker = Broker::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    for i in 0..3 {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-V",
                "mqttv5",
            ])
            .args(["-q", "1", "-t", &format!("metered/{i}"), "-m", "x"])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "QoS 1 publish is acknowledged once Kafka has it"
        );
    }
    let (status, body) = wait_for(
        metrics_port,
        "/metrics",
        Duration::from_secs(5),
        |_, body| {
            body.contains("ferrymq_kafka_mapping_acknowledged_total{mapping=\"0\",mqtt=\"metered/#\",cluster=\"main\"} 3")
        },
    );
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains("ferrymq_kafka_mapping_acknowledged_total{mapping=\"0\",mqtt=\"metered/#\",cluster=\"main\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("ferrymq_kafka_delivery_latency_seconds_count{cluster=\"main\"} 3"),
        "{body}"
    );
    assert!(body.contains("ferrymq_messages_received 3"), "{body}");
    let (status, _) = wait_for(metrics_port, "/readyz", Duration::from_secs(10), |s, _| {
        s.contains("200")
    });
    assert!(status.contains("200"), "Kafka answers, so ready: {status}");
    assert!(get(metrics_port, "/healthz").0.contains("200"));
    assert!(get(metrics_port, "/nothing").0.contains("404"));
    let _ = std::fs::remove_file(config);
}

#[test]
fn readyz_names_an_unreachable_cluster_while_mqtt_keeps_working() {
    let metrics_port = free_port();
    // Nothing listens here: the cluster is down from the start.
    let dead = format!("127.0.0.1:{}", free_port());
    let config = config_file("dead", &dead);
    let broker = Broker::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let (status, body) = get(metrics_port, "/readyz");
    assert!(status.contains("503"), "{status}");
    assert_eq!(body.trim(), "Kafka unavailable: dead");
    assert!(get(metrics_port, "/metrics")
        .1
        .contains("ferrymq_kafka_up{cluster=\"dead\"} 0"));
    // The MQTT side does not depend on Kafka: an unmapped QoS 1 publish is acknowledged.
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-V",
            "mqttv311",
        ])
        .args(["-q", "1", "-t", "unmapped/topic", "-m", "x"])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_file(config);
}
