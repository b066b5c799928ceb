//! Kafka helpers for integration tests: unique names, temporary config files, a consumer
//! that reads every record of a topic within a deadline, topic creation, and extra Kafka
//! instances run by `scripts/kafka` (started for a test, stopped when dropped).
//!
//! The shared Kafka is the one on `$FERRYMQ_KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`),
//! started by CI before the tests; nothing here stops it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// The shared Kafka every test may use.
pub fn bootstrap() -> String {
    std::env::var("FERRYMQ_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A name no other test (in this process or another) uses: `prefix-PID-NANOS-N`. Valid as a
/// Kafka topic, an MQTT topic level and a client id when `prefix` is.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// A configuration file in the temporary directory, removed when dropped.
pub struct ConfigFile {
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn write_config(text: &str) -> ConfigFile {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("ferrymq-test")));
    std::fs::write(&path, text).expect("write config file");
    ConfigFile { path }
}

/// One record as a consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// In record order; a header without a value has an empty one.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("UTF-8 payload")
    }
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("ferrymq-test-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Reading must not create the topic the broker is expected to create.
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("create consumer")
}

/// The partitions of `topic` once it exists with a leader for each, or None.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Option<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(3))
        .ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    if found.error().is_some()
        || found.partitions().is_empty()
        || found.partitions().iter().any(|p| p.leader() < 0)
    {
        return None;
    }
    Some(found.partitions().iter().map(|p| p.id()).collect())
}

/// Whether `topic` exists on the cluster at `bootstrap` (without creating it).
pub fn topic_exists(bootstrap: &str, topic: &str) -> bool {
    partitions(&consumer(bootstrap), topic).is_some()
}

/// Every record of `topic`, sorted by (partition, offset): waits (until `timeout`) for the
/// topic to exist and for at least `expected` records, then reads on to each partition's
/// high watermark, so records beyond `expected` are returned too. On timeout it returns
/// what it has; the caller's assertion says what is missing.
pub fn read_topic(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let consumer = consumer(bootstrap);
    let partitions = loop {
        if let Some(partitions) = partitions(&consumer, topic) {
            break partitions;
        }
        if Instant::now() >= deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let mut next: HashMap<i32, i64> = partitions.iter().map(|&p| (p, 0)).collect();
    let mut records = Vec::new();
    let caught_up = |next: &HashMap<i32, i64>| {
        next.iter().all(|(&partition, &next)| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(3))
                .is_ok_and(|(_, high)| next >= high)
        })
    };
    loop {
        if records.len() >= expected && caught_up(&next) {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                next.insert(message.partition(), message.offset() + 1);
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            // Transient (a leader moving, a partition not ready yet): keep reading.
            Some(Err(error)) => eprintln!("read_topic {topic}: {error}"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Creates `topic` with `partitions` partitions (replication 1), waiting until it is usable.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topic_with(bootstrap, topic, partitions, &[]);
}

/// [`create_topic`] with topic configs (`("max.message.bytes", "1024")`, say).
pub fn create_topic_with(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("create admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (name, value) in configs {
        new_topic = new_topic.set(name, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_lite::future::block_on(admin.create_topics([&new_topic], &options))
        .expect("create_topics");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let reader = consumer(bootstrap);
    while self::partitions(&reader, topic).map(|p| p.len()) != Some(partitions as usize) {
        assert!(Instant::now() < deadline, "topic {topic} not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A record to produce: to `partition` (or by key), with headers.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Produces `records` to `topic` in order (idempotent: no duplicates, each partition in
/// the order given) and waits until Kafka has them all.
pub fn produce(bootstrap: &str, topic: &str, records: &[Outgoing]) {
    use rdkafka::message::OwnedHeaders;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("create producer");
    for outgoing in records {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &outgoing.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .payload(&outgoing.payload[..])
            .headers(headers);
        if let Some(key) = &outgoing.key {
            record = record.key(&key[..]);
        }
        if let Some(partition) = outgoing.partition {
            record = record.partition(partition);
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, back)) => {
                    assert!(
                        error.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "produce to {topic}: {error}"
                    );
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flush to {topic}: {e}"));
}

/// The offsets group `group` committed for the partitions of `topic` (partition → next
/// offset to read); partitions without a commit are left out.
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer");
    let ids = partitions(&reader, topic).unwrap_or_else(|| panic!("topic {topic} not found"));
    let mut list = TopicPartitionList::new();
    for id in ids {
        list.add_partition(topic, id);
    }
    let found = reader
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.partition(), offset)),
            _ => None,
        })
        .collect()
}

fn script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
}

/// How many times a Kafka start that failed on a port taken is tried again, each time on
/// new ports.
pub const START_RETRIES: usize = 3;

/// Whether a failed `scripts/kafka` start failed because a port was taken: the script
/// found one in use, or Kafka wrote "Address already in use" (in the lines the script
/// shows or in the log it names: "see PATH").
pub fn port_taken(output: &Output) -> bool {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let in_log = |log: &str| {
        std::fs::read_to_string(log).is_ok_and(|log| log.contains("Address already in use"))
    };
    text.contains("Address already in use")
        || text.contains("is in use")
        || text.contains("something else is listening")
        || text
            .split("see ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .any(|log| in_log(log.trim_end_matches(['.', ';', ')'])))
}

/// Starts a Kafka of its own with `start(PORT)` (a `scripts/kafka` start on PORT and the
/// `ports - 1` ports after it), PORT from [`super::free_ports`]; a start that fails because
/// a port was taken (by a program of another test run) is tried again on new ports, up to
/// [`START_RETRIES`] times. Returns the port and the output of the last start, which the
/// caller checks.
pub fn start_on_free_ports(
    ports: u32,
    what: &str,
    mut start: impl FnMut(u16) -> Output,
) -> (u16, Output) {
    let mut retries = 0;
    loop {
        let port = super::free_ports(ports);
        let output = start(port);
        if output.status.success() || retries == START_RETRIES || !port_taken(&output) {
            return (port, output);
        }
        retries += 1;
        eprintln!(
            "{what} on port {port}: a port was taken; try {} of {START_RETRIES} on new ports\n{}{}",
            retries,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A Kafka instance of its own run by `scripts/kafka --name NAME`, beside the shared one.
/// Stopped when dropped, so a failing test does not leave it running.
pub struct ExtraKafka {
    pub name: String,
    pub port: u16,
}

impl ExtraKafka {
    /// Starts instance `name` on free ports (its port and the controller's, the next one),
    /// stopping a leftover of an earlier run first; on new ports if one was taken.
    pub fn start(name: &str) -> ExtraKafka {
        ExtraKafka::start_with(name, 2, &["start"])
    }

    /// Starts instance `name` with `--secure`: besides PLAINTEXT on its port, SSL on +2,
    /// SASL_SSL (SCRAM, PLAIN) on +3 and mTLS on +4, certificates made by the script.
    pub fn start_secure(name: &str) -> ExtraKafka {
        ExtraKafka::start_with(name, 5, &["restart", "--secure"])
    }

    fn start_with(name: &str, ports: u32, args: &[&str]) -> ExtraKafka {
        let mut kafka = ExtraKafka {
            name: name.to_string(),
            port: 0,
        };
        let (port, output) = start_on_free_ports(ports, &format!("Kafka {name}"), |port| {
            kafka.port = port;
            kafka.run("stop");
            kafka.output(args)
        });
        kafka.port = port;
        kafka.check(args, output);
        kafka
    }

    /// What `scripts/kafka env` prints for this (secure) instance: FERRYMQ_KAFKA_SSL_BOOTSTRAP,
    /// FERRYMQ_KAFKA_CA, FERRYMQ_KAFKA_SCRAM_PASSWORD, ...
    pub fn env(&self) -> HashMap<String, String> {
        let output = Command::new(script())
            .args([
                "env",
                "--name",
                &self.name,
                "--port",
                &self.port.to_string(),
            ])
            .output()
            .expect("run scripts/kafka env");
        assert!(output.status.success(), "scripts/kafka env: {output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process of this instance: the one listening on its port.
    pub fn pid(&self) -> u32 {
        let wanted = format!("127.0.0.1:{}", self.port);
        let output = Command::new("ss")
            .args(["-Hltnp", &format!("sport = :{}", self.port)])
            .output()
            .expect("run ss (iproute2)");
        let text = String::from_utf8_lossy(&output.stdout);
        text.split("pid=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no process listens on {wanted}: {text}"))
    }

    /// `scripts/kafka CMD --name NAME --port PORT`; fails the test if the script does.
    pub fn run(&self, cmd: &str) {
        self.run_with(&[cmd]);
    }

    /// `scripts/kafka ARGS... --name NAME --port PORT`; fails the test if the script does.
    pub fn run_with(&self, args: &[&str]) {
        let started = Instant::now();
        let output = self.output(args);
        self.check(args, output);
        eprintln!(
            "scripts/kafka {} --name {} --port {}: {:.1?}",
            args.join(" "),
            self.name,
            self.port,
            started.elapsed()
        );
    }

    /// `scripts/kafka ARGS... --name NAME --port PORT`: its output.
    fn output(&self, args: &[&str]) -> Output {
        Command::new(script())
            .args(args)
            .args(["--name", &self.name, "--port", &self.port.to_string()])
            .output()
            .expect("run scripts/kafka")
    }

    /// Fails the test unless `output` (of `scripts/kafka ARGS...`) says it succeeded.
    fn check(&self, args: &[&str], output: Output) {
        assert!(
            output.status.success(),
            "scripts/kafka {} --name {}: {}\n{}{}",
            args.join(" "),
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for ExtraKafka {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", "--name", &self.name])
            .output();
    }
}
