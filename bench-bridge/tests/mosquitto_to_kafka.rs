//! The real bridge binary between a real Mosquitto (started here on a free port, from
//! /usr/sbin/mosquitto or `mosquitto` on PATH) and the shared local Kafka
//! (`$FERRYMQ_KAFKA_BOOTSTRAP`, default 127.0.0.1:9092, which this test never stops):
//! 200 QoS 1 messages on several MQTT topics must all reach one Kafka topic with key = MQTT
//! topic and value = the payload byte for byte, and SIGTERM must print the final counters.
//! Nothing is skipped: without mosquitto or Kafka the test fails and says why.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const MESSAGES: usize = 200;
const DEVICES: usize = 7;
const PARTITIONS: i32 = 3;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(60);

fn bootstrap() -> String {
    std::env::var("FERRYMQ_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// `prefix-PID-NANOS`: a Kafka topic, MQTT topic level and client id no other run uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_binary() -> PathBuf {
    let fixed = PathBuf::from("/usr/sbin/mosquitto");
    if fixed.is_file() {
        return fixed;
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("mosquitto"))
            .find(|candidate| candidate.is_file())
    }) {
        return found;
    }
    panic!(
        "mosquitto is not installed (neither /usr/sbin/mosquitto nor `mosquitto` on PATH): \
         this test needs a real Mosquitto broker; install it (Debian: apt-get install mosquitto)"
    );
}

/// A child process killed (SIGKILL) and reaped when dropped, unless already waited for.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_mosquitto() -> (Proc, u16) {
    let binary = mosquitto_binary();
    let port = free_port();
    let child = Command::new(&binary)
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let mut proc = Proc {
        name: "mosquitto",
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = proc.child.try_wait().unwrap() {
            panic!("mosquitto -p {port} exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, port)
}

fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("create Kafka admin client");
    let new_topic = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics([&new_topic], &options))
        .unwrap_or_else(|e| {
            panic!(
                "creating Kafka topic {topic} on {}: {e} (is Kafka running?)",
                bootstrap()
            )
        });
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating Kafka topic {name}: {code}"));
    }
}

/// The records of `topic` (all partitions, from the beginning) until `expected` arrived or
/// the timeout passed, as (key, payload).
fn read_topic(topic: &str, expected: usize) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("bench-bridge-test-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("create Kafka consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign partitions");
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    let mut records = Vec::new();
    while records.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => records.push((
                message.key().map(<[u8]>::to_vec),
                message.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(error)) => eprintln!("consumer: {error}"),
            None => {}
        }
    }
    // Anything beyond `expected` (duplicates) shows up too.
    while let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
        records.push((
            message.key().map(<[u8]>::to_vec),
            message.payload().unwrap_or_default().to_vec(),
        ));
    }
    records
}

/// Lines of a child's stream, echoed to the test's stderr for diagnostics.
fn lines_of(stream: impl Read + Send + 'static, echo: bool) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[bridge] {line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &Receiver<String>, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(_) => panic!("the bridge did not print {needle:?} within {timeout:?}"),
        }
    }
}

/// The payload of message `i`: text for device and sequence plus bytes that are not UTF-8,
/// so that any re-encoding would show.
fn payload(device: usize, seq: usize) -> Vec<u8> {
    let mut payload = format!("device={device};seq={seq};").into_bytes();
    payload.extend_from_slice(&[0x00, 0xff, 0xfe, (seq % 256) as u8]);
    payload
}

/// Publishes every (topic, payload) at QoS 1 and waits for all the PUBACKs.
fn publish_all(port: u16, messages: &[(String, Vec<u8>)]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = MqttOptions::new(unique("bench-bridge-test-pub"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, messages.len() + 1);
        for (topic, payload) in messages {
            client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .expect("queue publish");
        }
        let acked = tokio::time::timeout(Duration::from_secs(30), async {
            let mut acked = 0;
            while acked < messages.len() {
                let event = eventloop.poll().await.expect("publisher connection");
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    acked += 1;
                }
            }
        })
        .await;
        assert!(acked.is_ok(), "mosquitto did not PUBACK every message");
        client.try_disconnect().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
    });
}

#[test]
fn every_message_reaches_kafka_with_topic_key_and_unchanged_payload() {
    let (_mosquitto, port) = start_mosquitto();
    let run = unique("bench-bridge");
    let kafka_topic = run.clone();
    create_topic(&kafka_topic);

    let mut bridge = Proc {
        name: "ferrymq-bench-bridge",
        child: Command::new(env!("CARGO_BIN_EXE_ferrymq-bench-bridge"))
            .args(["--mqtt", &format!("127.0.0.1:{port}")])
            .args(["--filter", &format!("bench/{run}/#")])
            .args(["--qos", "1"])
            .args(["--client-id", &run])
            .args(["--kafka", &bootstrap()])
            .args(["--topic", &kafka_topic])
            .args(["-X", "linger.ms=10"])
            .args(["--stats-interval-secs", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrymq-bench-bridge"),
    };
    let stdout = lines_of(bridge.child.stdout.take().unwrap(), false);
    let stderr = lines_of(bridge.child.stderr.take().unwrap(), true);
    wait_for_line(&stderr, "subscribed to", Duration::from_secs(15));

    let messages: Vec<(String, Vec<u8>)> = (0..MESSAGES)
        .map(|seq| {
            let device = seq % DEVICES;
            (
                format!("bench/{run}/dev{device}/data"),
                payload(device, seq),
            )
        })
        .collect();
    publish_all(port, &messages);

    let records = read_topic(&kafka_topic, MESSAGES);
    let mut expected: HashMap<(Vec<u8>, Vec<u8>), usize> = HashMap::new();
    for (topic, payload) in &messages {
        *expected
            .entry((topic.as_bytes().to_vec(), payload.clone()))
            .or_default() += 1;
    }
    let mut unexpected = Vec::new();
    for (key, value) in &records {
        let key = key.clone().unwrap_or_default();
        match expected.get_mut(&(key.clone(), value.clone())) {
            Some(count) if *count > 0 => *count -= 1,
            _ => unexpected.push((String::from_utf8_lossy(&key).into_owned(), value.clone())),
        }
    }
    let missing = expected.values().sum::<usize>();
    assert_eq!(
        (missing, unexpected.len(), records.len()),
        (0, 0, MESSAGES),
        "Kafka topic {kafka_topic}: {} records, {missing} expected ones missing, unexpected or \
         duplicated: {unexpected:?}",
        records.len()
    );

    // SIGTERM: flush, final counters as one JSON line on stdout, exit 0.
    let pid = bridge.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM {pid} failed");
    let status = bridge.wait_timeout(Duration::from_secs(15));
    assert!(status.success(), "bridge exited with {status}");
    let out: Vec<String> = stdout.try_iter().collect();
    assert_eq!(out.len(), 1, "stdout should be one JSON line: {out:?}");
    let counters: serde_json::Value =
        serde_json::from_str(&out[0]).unwrap_or_else(|e| panic!("{:?}: {e}", out[0]));
    assert_eq!(
        counters,
        serde_json::json!({
            "received": MESSAGES,
            "delivered": MESSAGES,
            "dropped_queue_full": 0,
            "delivery_failed": 0,
            "undelivered_at_exit": 0,
        })
    );
    // Counter lines went to stderr while it ran, the last one with the final counts.
    let err: Vec<String> = stderr.try_iter().collect();
    let last_stats = err
        .iter()
        .rfind(|line| line.contains("received="))
        .unwrap_or_else(|| panic!("no counter line on stderr: {err:?}"));
    assert!(
        last_stats.contains(&format!(
            "received={MESSAGES} delivered={MESSAGES} dropped_queue_full=0 delivery_failed=0"
        )),
        "{last_stats}"
    );
}

#[test]
fn help_describes_the_bridge_and_its_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_ferrymq-bench-bridge"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--mqtt",
        "--filter",
        "--qos",
        "--client-id",
        "--kafka",
        "--topic",
        "-X",
        "--stats-interval-secs",
        "acknowledged",
        "before",
        "Kafka has them",
        "in memory only",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }

    let missing_topic = Command::new(env!("CARGO_BIN_EXE_ferrymq-bench-bridge"))
        .output()
        .expect("run without --topic");
    assert_eq!(missing_topic.status.code(), Some(2), "--topic is required");
}
