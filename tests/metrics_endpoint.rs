//! `--metrics ADDR`: Prometheus counters per mapping and cluster, `/healthz`, and `/readyz`
//! saying whether Kafka answers. Uses the real Kafka of `scripts/kafka` for the "up" case
//! and a closed port for the "down" case.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
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
    check_exposition(&body);
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

/// Checks Prometheus text format 0.0.4 as far as ferrymq uses it: one `# TYPE` per family,
/// before its samples, and each family's samples in one group; every value a number.
/// Summary samples may add `_count` or `_sum` to the family's name.
fn check_exposition(body: &str) {
    let mut kinds: HashMap<&str, &str> = HashMap::new();
    let mut current: Option<&str> = None;
    let mut finished: Vec<&str> = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
            assert!(kinds.insert(name, kind).is_none(), "second TYPE for {name}");
            finished.extend(current.replace(name));
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.trim().is_empty(),
            "{line:?}"
        );
        let end = line.find(['{', ' ']).expect("a name");
        let name = &line[..end];
        let family = kinds
            .keys()
            .copied()
            .find(|family| {
                name == *family
                    || (kinds[family] == "summary"
                        && [format!("{family}_count"), format!("{family}_sum")]
                            .contains(&name.to_string()))
            })
            .unwrap_or_else(|| panic!("{name} has no TYPE before it"));
        assert_eq!(Some(family), current, "{name} outside its group");
        assert!(!finished.contains(&family), "{name}: second group");
        let value = line.rsplit(' ').next().unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{value:?} is not a number: {line}"));
    }
}

/// The value of the sample `series` (name and labels as written), if there is one.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

/// Per-QoS message counts and per-shard busy time; needs no Kafka.
#[test]
fn counts_messages_by_qos_and_shard_busy_time() {
    let metrics_port = free_port();
    let broker = Broker::start_with(&["--metrics", &format!("127.0.0.1:{metrics_port}")]);
    let port = broker.port.to_string();
    let (_, body) = wait_for(
        metrics_port,
        "/metrics",
        Duration::from_secs(5),
        // Every shard leaves its first snapshot a second after it starts: wait for all.
        |_, body| {
            (0..common::shard_count()).all(|shard| {
                sample(
                    body,
                    &format!("ferrymq_shard_busy_seconds_total{{shard=\"{shard}\"}}"),
                )
                .is_some_and(|v| v > 0.0)
            })
        },
    );
    check_exposition(&body);
    for qos in 0..3 {
        for name in ["received", "sent"] {
            let series = format!("ferrymq_messages_{name}_total{{qos=\"{qos}\"}}");
            assert_eq!(sample(&body, &series), Some(0.0), "{series}\n{body}");
        }
    }
    let busy = |body: &str| -> Vec<f64> {
        (0..common::shard_count())
            .map(|shard| {
                let series = format!("ferrymq_shard_busy_seconds_total{{shard=\"{shard}\"}}");
                sample(body, &series).unwrap_or_else(|| panic!("{series}\n{body}"))
            })
            .collect()
    };
    let before = busy(&body);
    assert!(before.iter().all(|&seconds| seconds > 0.0), "{before:?}");

    // One subscriber at QoS 2 gets each message at the QoS it was published with.
    let subscriber = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5"])
        .args(["-t", "byqos/#", "-q", "2", "-C", "4", "-W", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub (Debian mosquitto-clients)");
    wait_for(
        metrics_port,
        "/metrics",
        Duration::from_secs(5),
        |_, body| sample(body, "ferrymq_subscriptions") == Some(1.0),
    );
    for qos in ["0", "1", "2", "1"] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5"])
            .args(["-q", qos, "-t", &format!("byqos/{qos}"), "-m", "x"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let output = subscriber.wait_with_output().unwrap();
    assert!(output.status.success(), "the subscriber got 4 messages");
    let expected = [1.0, 2.0, 1.0];
    let (_, body) = wait_for(
        metrics_port,
        "/metrics",
        Duration::from_secs(5),
        |_, body| {
            (0..3).all(|qos| {
                ["received", "sent"].iter().all(|name| {
                    let series = format!("ferrymq_messages_{name}_total{{qos=\"{qos}\"}}");
                    sample(body, &series) == Some(expected[qos])
                })
            })
        },
    );
    check_exposition(&body);
    for (qos, count) in expected.iter().enumerate() {
        for name in ["received", "sent"] {
            let series = format!("ferrymq_messages_{name}_total{{qos=\"{qos}\"}}");
            assert_eq!(sample(&body, &series), Some(*count), "{series}\n{body}");
        }
    }
    assert_eq!(
        sample(&body, "ferrymq_messages_received"),
        Some(4.0),
        "{body}"
    );
    assert_eq!(sample(&body, "ferrymq_messages_sent"), Some(4.0), "{body}");
    // Busy time is CPU time: it only grows, and the shards did some work meanwhile.
    let after = busy(&body);
    assert!(
        before.iter().zip(&after).all(|(b, a)| a >= b)
            && after.iter().sum::<f64>() > before.iter().sum::<f64>(),
        "{before:?} then {after:?}"
    );
}

/// The sum of `name{shard="N"...}` samples over the shards.
fn sum_over_shards(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| line.starts_with(&format!("{name}{{shard=")) && !line.contains("quantile"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A durable mapping's spool metrics: every acknowledged record was appended (append
/// latency: append → durable, what the PUBACK waited for), flushed, and once Kafka has them
/// none is left unacknowledged in the spool.
#[test]
fn spool_metrics_count_appends_flushes_and_records_kafka_has_not_acknowledged() {
    let metrics_port = free_port();
    let topic = format!("metrics-spool-{}", std::process::id());
    let data_dir = std::env::temp_dir().join(format!("ferrymq-{topic}-data"));
    let _ = std::fs::remove_dir_all(&data_dir);
    let config = std::env::temp_dir().join(format!("ferrymq-{topic}.toml"));
    std::fs::write(
        &config,
        format!(
            "[kafka.clusters.main]\nbootstrap = \"{}\"\n\n[[kafka.mapping]]\nmqtt = \"spooled/#\"\ntopic = \"{topic}\"\nack = \"durable\"\n\n[spool]\ndata_dir = \"{}\"\n",
            bootstrap(),
            data_dir.display()
        ),
    )
    .unwrap();
    let broker = Broker::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    const MESSAGES: usize = 5;
    for i in 0..MESSAGES {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args([
                "-V",
                "mqttv311",
                "-q",
                "1",
                "-t",
                &format!("spooled/{i}"),
                "-m",
                "x",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "QoS 1 publish acknowledged once on disk");
    }
    let done = |body: &str| {
        sum_over_shards(body, "ferrymq_spool_append_latency_seconds_count") >= MESSAGES as f64
            && sum_over_shards(body, "ferrymq_spool_records") == 0.0
    };
    let (_, body) = wait_for(
        metrics_port,
        "/metrics",
        Duration::from_secs(20),
        |_, body| done(body),
    );
    check_exposition(&body);
    assert_eq!(
        sum_over_shards(&body, "ferrymq_spool_append_latency_seconds_count"),
        MESSAGES as f64,
        "one append latency per durable record\n{body}"
    );
    let flushes = sum_over_shards(&body, "ferrymq_spool_flush_latency_seconds_count");
    assert!(
        (1.0..=MESSAGES as f64).contains(&flushes),
        "each record made durable by a flush (group commit may share one): {flushes}\n{body}"
    );
    assert_eq!(
        sum_over_shards(&body, "ferrymq_spool_records"),
        0.0,
        "Kafka acknowledged every spooled record\n{body}"
    );
    assert!(
        sum_over_shards(&body, "ferrymq_spool_bytes") > 0.0,
        "the records are in the spool's segment until it is full\n{body}"
    );
    let p50_of_shard_with_appends = body
        .lines()
        .filter(|line| {
            line.starts_with("ferrymq_spool_append_latency_seconds{")
                && line.contains("quantile=\"0.5\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        p50_of_shard_with_appends > 0.0,
        "append latency is measured\n{body}"
    );
    drop(broker);
    let _ = std::fs::remove_file(config);
    let _ = std::fs::remove_dir_all(data_dir);
}
