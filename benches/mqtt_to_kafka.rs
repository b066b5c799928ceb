//! End-to-end benchmark: MQTT clients → ferrymq → a real Kafka, against the bare librdkafka
//! client producing the same records.
//!
//! `cargo bench --bench mqtt_to_kafka -- [OPTIONS]` (or `scripts/bench-kafka [OPTIONS]`):
//!
//!   --messages N        messages per throughput phase (default 200,000; 50,000 with --quick)
//!   --connections N     MQTT connections (8)       --window N   QoS 1 in flight per conn (64)
//!   --runs N            runs; figures are medians (3)
//!   --cores LIST, --batch-max-messages N, --batch-max-bytes N, --batch-linger-us US,
//!   --ring-capacity-batches N                      passed to ferrymq
//!   --latency-rate R    offered msg/s of the latency phase (default: half the QoS 1 rate)
//!   --fixed-rate R      also measure latency and broker CPU at R msg/s
//!   --ack kafka|none    the mapping's ack mode (default kafka; none for comparison)
//!   --quick             fewer messages          --write   update BENCHMARKS.md
//!   --json FILE         also write every run's figures as JSON (scripts/bench reads it)
//!   --sweep             batching settings table for tuning.md (QoS 1 and latency only)
//!   --bootstrap HOST:PORT  Kafka (default $FERRYMQ_KAFKA_BOOTSTRAP, else 127.0.0.1:9092)
//!   --kafka-config KEY=VALUE  a librdkafka property (repeatable) for every Kafka client:
//!                       the broker's (its cluster's `config` table), the bench's topic admin
//!                       and read-back, the bare client; e.g. security.protocol=SASL_SSL,
//!                       sasl.mechanism=SCRAM-SHA-512, sasl.username=NAME,
//!                       sasl.password=${file:PATH}, ssl.ca.location=PATH,
//!                       compression.type=zstd. ${env:NAME} is an environment variable,
//!                       ${file:PATH} a file's content without its final newline; values of
//!                       keys holding password/secret/token and values read so are never
//!                       printed. Not bootstrap.servers (that is --bootstrap). Checked by
//!                       librdkafka before anything starts (exit 2 if refused)
//!
//! Each run starts the release `ferrymq` binary (cargo builds it for benches:
//! `CARGO_BIN_EXE_ferrymq`) with a generated config: one cluster on `--bootstrap` with the
//! `--kafka-config` properties as its `config`, one mapping `bench/#` → a Kafka topic
//! unique to the run (created with one partition before the broker starts, deleted after),
//! `key = "{client_id}"`, default headers, `ack = "kafka"`; `--metrics` on a free port and
//! `--sys-interval-secs 0`. Clients are written on ferrymq's own codec over blocking std
//! `TcpStream`s, one thread per connection, MQTT 3.1.1, each pipelining up to `--window`
//! unacknowledged QoS 1 PUBLISHes; client ids are picked so that connections spread evenly
//! over the shards. Payloads are 150 bytes: sequence number, send time (ns since the Unix
//! epoch, both big-endian u64), padding. After a warm-up of 4,000 QoS 1 messages a run
//! measures, in this order:
//!
//! - QoS 1: messages/s fully PUBACKed (the PUBACK waits for Kafka), and the broker's CPU
//!   (utime + stime of the whole process, librdkafka threads included, from /proc) per record;
//! - latency: PUBLISH → PUBACK p50/p99/p99.9 at half the run's QoS 1 rate, paced per
//!   connection (ppoll, not socket timeouts, which round up to jiffies), measured from each
//!   message's scheduled send time (no coordinated omission);
//! - QoS 0: messages/s reaching Kafka, timed by the topic's high watermark (polled every
//!   5 ms), checked against `ferrymq_kafka_mapping_acknowledged_total` from /metrics (whose
//!   shard snapshots are taken once a second, so its own time is a coarse lower bound);
//! - bare client, after the broker stopped: one thread with an rdkafka `ThreadedProducer`
//!   configured by `ferrymq::bridge::producer::client_config`, sending the same records
//!   (topic, key, payload size, headers) and waiting for every delivery report; records/s and
//!   process CPU (`getrusage(RUSAGE_SELF)`, librdkafka's threads included) per record; then
//!   produce → delivery-report latency at the MQTT latency phase's rate.
//!
//! Everything (broker, Kafka, clients) shares the machine: on a small one, the clients' CPU
//! is part of what limits the broker. `FERRYMQ_BENCH_DEBUG=1` prints the broker's own
//! publish → Kafka acknowledgement quantiles after each run.

// The loadgen's `--kafka-config` parser, shared source (it needs only std and rdkafka). Its
// unit tests run in the loadgen and the bench bridge: without a test harness here
// (harness = false) they are compiled but not run, and their helpers would be dead code.
#[cfg_attr(test, allow(dead_code))]
#[path = "../loadgen/src/kafka_config.rs"]
mod kafka_config;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use ferrymq::bridge::producer::client_config;
use ferrymq::broker::shard::shard_for;
use ferrymq::protocol::{
    Connect, Decoder, Disconnect, Encode, MqttStr, Packet, Protocol, Publish, QoS, ReasonCode,
};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;

use kafka_config::KafkaConfig;

const PAYLOAD_BYTES: usize = 150;
const PROTOCOL: Protocol = Protocol::V3_1_1;
/// QoS 1 messages sent before measuring: producers fetch metadata and producer ids.
const WARMUP_MESSAGES: usize = 4_000;
/// A QoS 1 connection with messages in flight and nothing to read for this long: a stall.
const STALL: Duration = Duration::from_secs(30);
/// How long to wait for Kafka or the metrics to catch up before calling a phase failed.
const CATCH_UP: Duration = Duration::from_secs(60);
const LATENCY_US_MAX: u64 = 60_000_000;
/// The fixed offered rate of `--sweep`, msg/s: one every setting sustains here.
const SWEEP_FIXED_RATE: f64 = 20_000.0;

#[derive(Clone, Debug)]
struct Options {
    messages: usize,
    connections: usize,
    window: usize,
    runs: usize,
    cores: Option<String>,
    batch_max_messages: Option<usize>,
    batch_max_bytes: Option<usize>,
    batch_linger_us: Option<u64>,
    ring_capacity_batches: Option<usize>,
    /// Offered rate of the latency phase; default half the run's QoS 1 rate.
    latency_rate: Option<f64>,
    /// Also measure latency and broker CPU at this rate (default 20,000 msg/s in a sweep).
    fixed_rate: Option<f64>,
    /// The mapping's `ack`: "kafka" (default) or "none" (PUBACK at once, for comparison).
    ack: String,
    write: bool,
    quick: bool,
    sweep: bool,
    json: Option<PathBuf>,
    /// Kafka's bootstrap servers, for the broker and the bench's own clients.
    bootstrap: String,
    /// `--kafka-config`: set on every Kafka client, the broker's included.
    kafka_config: KafkaConfig,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut o = Options {
            messages: 0,
            connections: 8,
            window: 64,
            runs: 3,
            cores: None,
            batch_max_messages: None,
            batch_max_bytes: None,
            batch_linger_us: None,
            ring_capacity_batches: None,
            latency_rate: None,
            fixed_rate: None,
            ack: "kafka".into(),
            write: false,
            quick: false,
            sweep: false,
            json: None,
            bootstrap: std::env::var("FERRYMQ_KAFKA_BOOTSTRAP")
                .unwrap_or_else(|_| "127.0.0.1:9092".into()),
            kafka_config: KafkaConfig::default(),
        };
        let mut kafka_config = Vec::new();
        let mut args = std::env::args().skip(1);
        fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
            let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{flag}: not a valid value: {v}"))
        }
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes --bench to every bench target.
                "--bench" => {}
                "--messages" => o.messages = value(&arg, args.next())?,
                "--connections" => o.connections = value(&arg, args.next())?,
                "--window" => o.window = value(&arg, args.next())?,
                "--runs" => o.runs = value(&arg, args.next())?,
                "--cores" => o.cores = Some(value(&arg, args.next())?),
                "--batch-max-messages" => o.batch_max_messages = Some(value(&arg, args.next())?),
                "--batch-max-bytes" => o.batch_max_bytes = Some(value(&arg, args.next())?),
                "--batch-linger-us" => o.batch_linger_us = Some(value(&arg, args.next())?),
                "--ring-capacity-batches" => {
                    o.ring_capacity_batches = Some(value(&arg, args.next())?)
                }
                "--latency-rate" => o.latency_rate = Some(value(&arg, args.next())?),
                "--ack" => o.ack = value(&arg, args.next())?,
                "--fixed-rate" => o.fixed_rate = Some(value(&arg, args.next())?),
                "--write" => o.write = true,
                "--quick" => o.quick = true,
                "--sweep" => o.sweep = true,
                "--json" => o.json = Some(value(&arg, args.next())?),
                "--bootstrap" => o.bootstrap = value(&arg, args.next())?,
                "--kafka-config" => kafka_config.push(value(&arg, args.next())?),
                "-h" | "--help" => {
                    let text = include_str!("mqtt_to_kafka.rs");
                    for line in text.lines().take_while(|l| l.starts_with("//!")) {
                        let line = line.trim_start_matches("//!");
                        println!("{}", line.strip_prefix(' ').unwrap_or(line));
                    }
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other} (see --help)")),
            }
        }
        if o.messages == 0 {
            o.messages = if o.quick { 50_000 } else { 200_000 };
        }
        if o.connections == 0 || o.window == 0 || o.runs == 0 {
            return Err("--connections, --window and --runs must be at least 1".into());
        }
        if o.window >= 65_535 {
            return Err("--window must be below 65535 (packet identifiers)".into());
        }
        if o.bootstrap.trim().is_empty() {
            return Err("--bootstrap: must name at least one HOST:PORT".into());
        }
        o.kafka_config = KafkaConfig::parse(&kafka_config, "--bootstrap")?;
        o.kafka_config.check()?;
        Ok(o)
    }

    /// The batching flags passed to ferrymq.
    fn batching_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                args.push(flag.to_string());
                args.push(v);
            }
        };
        push(
            "--batch-max-messages",
            self.batch_max_messages.map(|v| v.to_string()),
        );
        push(
            "--batch-max-bytes",
            self.batch_max_bytes.map(|v| v.to_string()),
        );
        push(
            "--batch-linger-us",
            self.batch_linger_us.map(|v| v.to_string()),
        );
        push(
            "--ring-capacity-batches",
            self.ring_capacity_batches.map(|v| v.to_string()),
        );
        push("--cores", self.cores.clone());
        args
    }

    /// Shards the broker runs: one per core given, else one per CPU this process may use.
    fn shards(&self) -> usize {
        match &self.cores {
            Some(list) => list
                .split(',')
                .map(|part| match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b): (usize, usize) =
                            (a.trim().parse().unwrap_or(0), b.trim().parse().unwrap_or(0));
                        b.saturating_sub(a) + 1
                    }
                    None => 1,
                })
                .sum(),
            None => thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------
// Kafka housekeeping

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures_lite::future::block_on(future)
}

struct Kafka {
    admin: AdminClient<DefaultClientContext>,
    /// For high-watermark queries only.
    probe: BaseProducer,
}

impl Kafka {
    fn connect(options: &Options) -> Kafka {
        let (bootstrap, kafka_config) = (&options.bootstrap, &options.kafka_config);
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        kafka_config.apply(&mut config);
        let create_error = |what: &str, e: KafkaError| {
            format!(
                "create Kafka {what}: {}",
                kafka_config.redact(&e.to_string())
            )
        };
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .unwrap_or_else(|e| panic!("{}", create_error("admin client", e)));
        let probe: BaseProducer = config
            .create()
            .unwrap_or_else(|e| panic!("{}", create_error("probe client", e)));
        if let Err(e) = probe.client().fetch_metadata(None, Duration::from_secs(10)) {
            panic!(
                "Kafka at {bootstrap} does not answer ({e}). Run `scripts/kafka start`, or give \
                 --bootstrap (or set FERRYMQ_KAFKA_BOOTSTRAP){}.",
                if kafka_config.is_empty() {
                    String::new()
                } else {
                    format!(" and check --kafka-config {}", kafka_config.describe())
                }
            );
        }
        Kafka { admin, probe }
    }

    fn create_topic(&self, topic: &str) {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        let results = block_on(self.admin.create_topics([&new], &options))
            .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        for result in results {
            if let Err((name, code)) = result {
                panic!("create topic {name}: {code}");
            }
        }
        // Wait until the partition has a leader. Asked with a metadata request of its own:
        // librdkafka's cache may hold "unknown topic" for a while if asked too early.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let led = self
                .probe
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .is_ok_and(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == topic
                            && t.error().is_none()
                            && t.partitions().first().is_some_and(|p| p.leader() >= 0)
                    })
                });
            if led && self.high_watermark(topic).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "topic {topic} has no leader");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn delete_topics(&self, topics: &[&str]) {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        if let Err(e) = block_on(self.admin.delete_topics(topics, &options)) {
            eprintln!("warning: could not delete topics {topics:?}: {e}");
        }
    }

    /// Records in partition 0 (the topic's only one).
    fn high_watermark(&self, topic: &str) -> Option<i64> {
        self.probe
            .client()
            .fetch_watermarks(topic, 0, Duration::from_secs(5))
            .ok()
            .map(|(_, high)| high)
    }
}

// ---------------------------------------------------------------------------------------
// The broker process

struct Broker {
    child: Child,
    port: u16,
    metrics_port: u16,
    config_path: PathBuf,
}

impl Broker {
    fn start(options: &Options, topic: &str) -> Broker {
        let port = free_port();
        let metrics_port = free_port();
        let properties: BTreeMap<String, String> = options
            .kafka_config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let table: Vec<String> = properties
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_string(k), toml_string(v)))
            .collect();
        let config = format!(
            "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n\
             [kafka.clusters.bench]\nbootstrap = {}\nconfig = {{ {} }}\n\n\
             [[kafka.mapping]]\nmqtt = \"bench/#\"\ncluster = \"bench\"\ntopic = \"{topic}\"\n\
             key = \"{{client_id}}\"\nack = \"{}\"\n",
            toml_string(&options.bootstrap),
            table.join(", "),
            options.ack
        );
        // The broker must read back exactly what was given (never printed: it may hold
        // secrets).
        let read_back = ferrymq::config::Config::from_toml(&config, "generated")
            .ok()
            .and_then(|c| c.kafka.clusters.get("bench").map(|c| c.config.clone()));
        assert!(
            read_back.as_ref() == Some(&properties),
            "the generated broker config does not hold --kafka-config as given"
        );
        let config_path = std::env::temp_dir().join(format!("ferrymq-bench-{}.toml", unique()));
        // Owner only: it may hold --kafka-config secrets.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config_path)
            .and_then(|mut file| file.write_all(config.as_bytes()))
            .expect("write the broker config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .arg("--config")
            .arg(&config_path)
            .arg("--metrics")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--sys-interval-secs")
            .arg("0")
            .args(options.batching_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferrymq");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            first.contains("listening"),
            "ferrymq did not start: {first:?}"
        );
        thread::spawn(move || for _ in lines {});
        let broker = Broker {
            child,
            port,
            metrics_port,
            config_path,
        };
        // Ready: the MQTT port answers and every Kafka cluster answered a metadata request.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http_get(metrics_port, "/readyz").is_ok_and(|r| r.starts_with("ready"))
                && TcpStream::connect(("127.0.0.1", port)).is_ok();
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "ferrymq not ready after 30 s");
            thread::sleep(Duration::from_millis(50));
        }
        // Every shard binds the port; give the last one a moment.
        thread::sleep(Duration::from_millis(100));
        broker
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime of the whole process (all threads, librdkafka's included), in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat of ferrymq");
        // Fields after the command name, which is in parentheses and may hold spaces: the
        // 3rd field (state) comes first, utime is the 14th and stime the 15th.
        let after = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / clock_ticks_per_sec()
    }

    fn counters(&self) -> io::Result<Counters> {
        Counters::parse(&http_get(self.metrics_port, "/metrics")?)
    }

    fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: ferrymq did not stop on SIGTERM within 10 s; killing it");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// `text` as a TOML basic string, quotes included.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_string()),
        None => Err(io::Error::other("no HTTP body")),
    }
}

/// The bench mapping's counters from /metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    acknowledged: u64,
    failed: u64,
    dropped: u64,
}

impl Counters {
    fn parse(text: &str) -> io::Result<Counters> {
        let mut counters = Counters::default();
        let mut seen = false;
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let field = if name.starts_with("ferrymq_kafka_mapping_acknowledged_total{") {
                seen = true;
                &mut counters.acknowledged
            } else if name.starts_with("ferrymq_kafka_mapping_failed_total{") {
                &mut counters.failed
            } else if name.starts_with("ferrymq_kafka_mapping_dropped_ring_full_total{") {
                &mut counters.dropped
            } else {
                continue;
            };
            *field += value.trim().parse::<u64>().unwrap_or(0);
        }
        if seen {
            Ok(counters)
        } else {
            Err(io::Error::other(
                "no ferrymq_kafka_mapping_acknowledged_total",
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// MQTT clients

/// What one connection does in a phase.
#[derive(Clone)]
struct Plan {
    client_id: String,
    qos: QoS,
    count: usize,
    window: usize,
    /// Paced sending: (interval between this connection's messages, offset of its first).
    pace: Option<(Duration, Duration)>,
    /// Sequence number of the connection's first message.
    first_seq: u64,
}

struct ConnResult {
    acked: u64,
    refused: u64,
    latency_us: Histogram<u64>,
    end: Instant,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds")
}

/// Client ids for `n` connections, spread evenly over the broker's shards (ferrymq places a
/// session on `shard_for(client_id)`), so that both shards get the same load.
fn client_ids(phase: &str, n: usize, shards: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut candidate = 0usize;
    for i in 0..n {
        let want = i % shards;
        loop {
            let id = format!("bench-{phase}-{candidate}");
            candidate += 1;
            if shard_for(id.as_bytes(), shards) == want {
                ids.push(id);
                break;
            }
        }
    }
    ids
}

fn connect(port: u16, client_id: &str) -> io::Result<(TcpStream, Decoder, BytesMut)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = BytesMut::new();
    Connect::new(PROTOCOL, client_id, 0).encode(PROTOCOL, &mut buf);
    stream.write_all(&buf)?;
    let mut decoder = Decoder::client(PROTOCOL, u32::MAX);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("connection closed before CONNACK"));
        }
        rbuf.extend_from_slice(&chunk[..n]);
        match decoder.decode(&mut rbuf) {
            Ok(Some(Packet::ConnAck(ack))) if ack.reason_code == ReasonCode::Success => {
                return Ok((stream, decoder, rbuf))
            }
            Ok(Some(other)) => return Err(io::Error::other(format!("refused: {other:?}"))),
            Ok(None) => continue,
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// Runs one connection's plan after `start` opens; returns when every message is sent (QoS 0)
/// or acknowledged (QoS 1).
fn drive(port: u16, plan: Plan, start: Arc<Barrier>) -> io::Result<ConnResult> {
    let (mut stream, mut decoder, mut rbuf) = connect(port, &plan.client_id)?;
    let topic = MqttStr::from(format!("bench/{}", plan.client_id));
    let padding = [b'x'; PAYLOAD_BYTES - 16];
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut payload = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    // Per packet identifier: the instant its latency counts from.
    let mut started: Vec<Option<Instant>> = vec![None; 65_536];
    let mut latency_us = new_histogram();
    let mut next_id: u16 = 0;
    let (mut sent, mut acked, mut refused, mut inflight) = (0usize, 0u64, 0u64, 0usize);
    let qos0 = plan.qos == QoS::AtMostOnce;
    // QoS 0 writes this many messages per write().
    let burst = plan.window.max(64);
    stream.set_read_timeout(Some(STALL))?;
    start.wait();
    let epoch = Instant::now();
    let due = |i: usize| -> Option<Instant> {
        plan.pace.map(|(interval, offset)| {
            epoch + offset + Duration::from_nanos((interval.as_nanos() as u64) * i as u64)
        })
    };
    loop {
        let now = Instant::now();
        let mut batch = 0;
        while sent < plan.count && (qos0 || inflight < plan.window) && batch < burst {
            let scheduled = due(sent);
            if scheduled.is_some_and(|d| d > now) {
                break;
            }
            let wall_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            payload.put_u64(plan.first_seq + sent as u64);
            payload.put_u64(wall_ns);
            payload.put_slice(&padding);
            let mut publish = Publish::new(topic.clone(), plan.qos, payload.split().freeze());
            if !qos0 {
                next_id = next_id.checked_add(1).unwrap_or(1);
                while started[usize::from(next_id)].is_some() {
                    next_id = next_id.checked_add(1).unwrap_or(1);
                }
                publish.packet_id = next_id;
                started[usize::from(next_id)] = Some(scheduled.unwrap_or(now));
                inflight += 1;
            }
            publish.encode(PROTOCOL, &mut wbuf);
            sent += 1;
            batch += 1;
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf)?;
            wbuf.clear();
        }
        if qos0 {
            if sent == plan.count {
                break;
            }
            continue;
        }
        if acked as usize == plan.count {
            break;
        }
        // Sleep until an ack comes or the next message is due. ppoll, not SO_RCVTIMEO:
        // socket timeouts round up to whole jiffies (4 ms at HZ=250), which would show as
        // latency, while ppoll sleeps on a high-resolution timer.
        if let Some(d) = due(sent).filter(|_| sent < plan.count && inflight < plan.window) {
            let wait = d.saturating_duration_since(Instant::now());
            if wait.is_zero() || !wait_readable(&stream, wait)? {
                continue;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::other(format!(
                    "{}: broker closed the connection ({acked} of {} acknowledged)",
                    plan.client_id, plan.count
                )))
            }
            Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::other(format!(
                    "{}: no PUBACK for {STALL:?} with {inflight} in flight ({acked} of {} \
                     acknowledged): the broker stalls",
                    plan.client_id, plan.count
                )));
            }
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        loop {
            match decoder.decode(&mut rbuf) {
                Ok(Some(Packet::PubAck(ack))) => {
                    let Some(t) = started[usize::from(ack.packet_id)].take() else {
                        return Err(io::Error::other(format!(
                            "PUBACK for unknown packet id {}",
                            ack.packet_id
                        )));
                    };
                    let us = now.saturating_duration_since(t).as_micros() as u64;
                    let _ = latency_us.record(us.clamp(1, LATENCY_US_MAX));
                    if ack.reason_code != ReasonCode::Success {
                        refused += 1;
                    }
                    inflight -= 1;
                    acked += 1;
                }
                Ok(Some(other)) => {
                    return Err(io::Error::other(format!("unexpected packet {other:?}")))
                }
                Ok(None) => break,
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }
    let end = Instant::now();
    Disconnect::new(ReasonCode::Success).encode(PROTOCOL, &mut wbuf);
    let _ = stream.write_all(&wbuf);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(ConnResult {
        acked,
        refused,
        latency_us,
        end,
    })
}

/// Whether `stream` has bytes to read within `timeout` (high-resolution sleep).
fn wait_readable(stream: &TcpStream, timeout: Duration) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
    match n {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

struct PhaseResult {
    start: Instant,
    end: Instant,
    acked: u64,
    refused: u64,
    latency_us: Histogram<u64>,
}

/// Runs one phase over `connections` connections: `count` messages in all.
#[allow(clippy::too_many_arguments)]
fn phase(
    broker: &Broker,
    options: &Options,
    name: &str,
    qos: QoS,
    count: usize,
    rate: Option<f64>,
    first_seq: u64,
    on_start: impl FnOnce(),
) -> PhaseResult {
    let n = options.connections;
    let ids = client_ids(name, n, options.shards());
    let start = Arc::new(Barrier::new(n + 1));
    let mut threads = Vec::with_capacity(n);
    let per_conn_interval = rate.map(|r| Duration::from_secs_f64(n as f64 / r));
    for (i, client_id) in ids.into_iter().enumerate() {
        let share = count / n + usize::from(i < count % n);
        let plan = Plan {
            client_id,
            qos,
            count: share,
            window: options.window,
            pace: per_conn_interval.map(|iv| (iv, iv.mul_f64(i as f64 / n as f64))),
            first_seq: first_seq + (i * (count / n + 1)) as u64,
        };
        let start = start.clone();
        let port = broker.port;
        threads.push(
            thread::Builder::new()
                .name(format!("mqtt-{i}"))
                .spawn(move || drive(port, plan, start))
                .expect("spawn client thread"),
        );
    }
    on_start();
    start.wait();
    let begin = Instant::now();
    let mut result = PhaseResult {
        start: begin,
        end: begin,
        acked: 0,
        refused: 0,
        latency_us: new_histogram(),
    };
    for thread in threads {
        match thread.join().expect("client thread panicked") {
            Ok(conn) => {
                result.acked += conn.acked;
                result.refused += conn.refused;
                result.end = result.end.max(conn.end);
                let _ = result.latency_us.add(&conn.latency_us);
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    result
}

// ---------------------------------------------------------------------------------------
// Process CPU

fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

// ---------------------------------------------------------------------------------------
// The bare librdkafka client

struct BareContext {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Latency origin: a record's opaque is its scheduled send time in ns after this.
    epoch: Instant,
    /// Produce → delivery report, µs, while `recording`.
    latency_us: Mutex<Histogram<u64>>,
    recording: AtomicBool,
}

impl ClientContext for BareContext {}

impl ProducerContext for BareContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, scheduled_ns: usize) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
        if self.recording.load(Ordering::Relaxed) {
            let now_ns = self.epoch.elapsed().as_nanos() as u64;
            let us = now_ns.saturating_sub(scheduled_ns as u64) / 1000;
            let _ = self
                .latency_us
                .lock()
                .expect("latency histogram")
                .record(us.clamp(1, LATENCY_US_MAX));
        }
    }
}

struct BareResult {
    rate: f64,
    /// Whole process (RUSAGE_SELF), librdkafka threads included, seconds per record.
    process_cpu: f64,
    /// The sending thread alone (RUSAGE_THREAD), seconds per record.
    thread_cpu: f64,
    /// Paced at the MQTT latency phase's rate: scheduled send → delivery report, µs.
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

/// Produces `count` records as ferrymq would for the bench's QoS 1 messages: same client
/// configuration, topic, keys (client ids), 150-byte payloads, the three default headers, and
/// the same send loop (QueueFull → poll 10 ms and retry). Then `latency_count` records paced
/// at `latency_rate`, timing each from its scheduled send to its delivery report.
fn bare_client(
    topic: &str,
    count: usize,
    latency_rate: f64,
    latency_count: usize,
    options: &Options,
) -> BareResult {
    let properties: BTreeMap<String, String> = options
        .kafka_config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = client_config(&options.bootstrap, &properties);
    let producer: ThreadedProducer<BareContext> = config
        .create_with_context(BareContext {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            epoch: Instant::now(),
            latency_us: Mutex::new(new_histogram()),
            recording: AtomicBool::new(false),
        })
        .unwrap_or_else(|e| {
            panic!(
                "create the bare producer: {}",
                options.kafka_config.redact(&e.to_string())
            )
        });
    let epoch = producer.context().epoch;
    let ids = client_ids("q1", options.connections, options.shards());
    let mqtt_topics: Vec<String> = ids.iter().map(|id| format!("bench/{id}")).collect();
    let padding = [b'x'; PAYLOAD_BYTES - 16];
    let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
    let mut seq = 0usize;
    let mut produce = |scheduled: Instant| {
        let c = seq % ids.len();
        payload.clear();
        payload.extend_from_slice(&(seq as u64).to_be_bytes());
        seq += 1;
        let wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        payload.extend_from_slice(&wall_ns.to_be_bytes());
        payload.extend_from_slice(&padding);
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "mqtt_topic",
                value: Some(mqtt_topics[c].as_bytes()),
            })
            .insert(Header {
                key: "client_id",
                value: Some(ids[c].as_bytes()),
            })
            .insert(Header {
                key: "qos",
                value: Some(b"1".as_slice()),
            });
        let opaque = scheduled.saturating_duration_since(epoch).as_nanos() as usize;
        let mut record = BaseRecord::with_opaque_to(topic, opaque)
            .payload(&payload[..])
            .key(ids[c].as_bytes())
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("bare producer: {e}"),
            }
        }
    };
    let wait_for = |total: u64| {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let c = producer.context();
            let done = c.delivered.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
            if done >= total {
                break;
            }
            assert!(Instant::now() < deadline, "bare producer: reports missing");
            thread::sleep(Duration::from_micros(500));
        }
    };
    for _ in 0..WARMUP_MESSAGES {
        produce(Instant::now());
    }
    wait_for(WARMUP_MESSAGES as u64);
    let (process0, thread0) = (
        rusage_secs(libc::RUSAGE_SELF),
        rusage_secs(libc::RUSAGE_THREAD),
    );
    let begin = Instant::now();
    for _ in 0..count {
        produce(Instant::now());
    }
    let mut total = (WARMUP_MESSAGES + count) as u64;
    wait_for(total);
    let elapsed = begin.elapsed().as_secs_f64();
    let (process1, thread1) = (
        rusage_secs(libc::RUSAGE_SELF),
        rusage_secs(libc::RUSAGE_THREAD),
    );

    producer.context().recording.store(true, Ordering::Relaxed);
    let interval = Duration::from_secs_f64(1.0 / latency_rate);
    let begin = Instant::now();
    for i in 0..latency_count {
        let due = begin + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        produce(due);
    }
    total += latency_count as u64;
    wait_for(total);
    let failed = producer.context().failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "bare producer: {failed} records failed");
    let latency = producer
        .context()
        .latency_us
        .lock()
        .expect("latency histogram")
        .clone();
    BareResult {
        rate: count as f64 / elapsed,
        process_cpu: (process1 - process0) / count as f64,
        thread_cpu: (thread1 - thread0) / count as f64,
        p50_us: latency.value_at_quantile(0.5) as f64,
        p99_us: latency.value_at_quantile(0.99) as f64,
        p999_us: latency.value_at_quantile(0.999) as f64,
    }
}

// ---------------------------------------------------------------------------------------
// One run

#[derive(Default, Clone, Copy)]
struct RunResult {
    qos1_rate: f64,
    qos1_broker_cpu: f64,
    qos1_client_cpu: f64,
    qos0_rate: f64,
    qos0_rate_metrics: f64,
    qos0_broker_cpu: f64,
    qos0_dropped: f64,
    latency_rate: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    bare_rate: f64,
    bare_process_cpu: f64,
    bare_thread_cpu: f64,
    bare_p50_us: f64,
    bare_p99_us: f64,
    bare_p999_us: f64,
    latency_client_cpu: f64,
    latency_broker_cpu: f64,
    fixed_p50_us: f64,
    fixed_p99_us: f64,
    fixed_broker_cpu: f64,
}

/// Waits until /metrics shows `acknowledged + failed + dropped >= total`.
fn wait_for_counters(broker: &Broker, total: u64) -> (Counters, Instant) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        if let Ok(c) = broker.counters() {
            if c.acknowledged + c.failed + c.dropped >= total {
                return (c, Instant::now());
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not reach {total} records within {CATCH_UP:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn run_once(options: &Options, kafka: &Kafka, full: bool) -> RunResult {
    let run_id = unique();
    let topic = format!("ferrymq-bench-{run_id}");
    let bare_topic = format!("ferrymq-bench-bare-{run_id}");
    kafka.create_topic(&topic);
    let mut r = RunResult::default();
    let broker = Broker::start(options, &topic);
    let n = options.messages;

    // Warm-up: metadata, producer ids, connections to Kafka, allocator.
    let warm = phase(
        &broker,
        options,
        "warm",
        QoS::AtLeastOnce,
        WARMUP_MESSAGES,
        None,
        0,
        || {},
    );
    assert_eq!(warm.refused, 0, "warm-up: refused PUBACKs");
    let mut expected = WARMUP_MESSAGES as u64;
    let mut seq = expected;

    // QoS 1 throughput.
    let mut cpu0 = 0.0;
    let mut client0 = 0.0;
    let q1 = phase(
        &broker,
        options,
        "q1",
        QoS::AtLeastOnce,
        n,
        None,
        seq,
        || {
            cpu0 = broker.cpu_secs();
            client0 = rusage_secs(libc::RUSAGE_SELF);
        },
    );
    let cpu1 = broker.cpu_secs();
    let client1 = rusage_secs(libc::RUSAGE_SELF);
    assert_eq!(q1.acked, n as u64, "QoS 1: PUBACKs missing");
    assert_eq!(q1.refused, 0, "QoS 1: PUBACKs with an error reason");
    r.qos1_rate = n as f64 / (q1.end - q1.start).as_secs_f64();
    r.qos1_broker_cpu = (cpu1 - cpu0) / n as f64;
    r.qos1_client_cpu = (client1 - client0) / n as f64;
    expected += n as u64;
    seq += n as u64;
    let (counters, _) = wait_for_counters(&broker, expected);
    assert_eq!(
        (counters.failed, counters.dropped),
        (0, 0),
        "QoS 1: failed or dropped records"
    );

    // Latency at half the QoS 1 rate.
    let rate = options.latency_rate.unwrap_or(r.qos1_rate / 2.0);
    // As long as the QoS 1 run took, and at least two seconds.
    let count = ((n as f64 * rate / r.qos1_rate).max(rate * 2.0) as usize).max(options.connections);
    let mut client0 = 0.0;
    let mut cpu0 = 0.0;
    let lat = phase(
        &broker,
        options,
        "lat",
        QoS::AtLeastOnce,
        count,
        Some(rate),
        seq,
        || {
            client0 = rusage_secs(libc::RUSAGE_SELF);
            cpu0 = broker.cpu_secs();
        },
    );
    r.latency_client_cpu = (rusage_secs(libc::RUSAGE_SELF) - client0) / count as f64;
    r.latency_broker_cpu = (broker.cpu_secs() - cpu0) / count as f64;
    assert_eq!(lat.acked, count as u64, "latency: PUBACKs missing");
    r.latency_rate = count as f64 / (lat.end - lat.start).as_secs_f64();
    r.p50_us = lat.latency_us.value_at_quantile(0.5) as f64;
    r.p99_us = lat.latency_us.value_at_quantile(0.99) as f64;
    r.p999_us = lat.latency_us.value_at_quantile(0.999) as f64;
    expected += count as u64;
    seq += count as u64;
    let _ = wait_for_counters(&broker, expected);

    // Latency and broker CPU at a fixed rate, the same for every setting of a sweep.
    if let Some(rate) = options.fixed_rate {
        let count = ((rate * 2.0) as usize).max(options.connections);
        let mut cpu0 = 0.0;
        let fixed = phase(
            &broker,
            options,
            "fix",
            QoS::AtLeastOnce,
            count,
            Some(rate),
            seq,
            || cpu0 = broker.cpu_secs(),
        );
        r.fixed_broker_cpu = (broker.cpu_secs() - cpu0) / count as f64;
        assert_eq!(fixed.acked, count as u64, "fixed rate: PUBACKs missing");
        r.fixed_p50_us = fixed.latency_us.value_at_quantile(0.5) as f64;
        r.fixed_p99_us = fixed.latency_us.value_at_quantile(0.99) as f64;
        expected += count as u64;
        seq += count as u64;
        let _ = wait_for_counters(&broker, expected);
    }
    // QoS 0 throughput, to Kafka's high watermark.
    if full {
        let hw0 = kafka.high_watermark(&topic).expect("high watermark");
        assert_eq!(hw0, expected as i64, "records in Kafka before QoS 0");
        let mut cpu0 = 0.0;
        let q0 = phase(
            &broker,
            options,
            "q0",
            QoS::AtMostOnce,
            n,
            None,
            seq,
            || {
                cpu0 = broker.cpu_secs();
            },
        );
        let target = hw0 + n as i64;
        let deadline = Instant::now() + CATCH_UP;
        let mut reached_hw = None;
        let mut reached_metrics = None;
        let mut last_metrics_poll = Instant::now() - Duration::from_secs(1);
        let mut dropped = 0;
        while reached_hw.is_none() || reached_metrics.is_none() {
            let now = Instant::now();
            if reached_hw.is_none() && kafka.high_watermark(&topic).is_some_and(|h| h >= target) {
                reached_hw = Some((now, broker.cpu_secs()));
            }
            if reached_metrics.is_none() && now - last_metrics_poll >= Duration::from_millis(20) {
                last_metrics_poll = now;
                if let Ok(c) = broker.counters() {
                    dropped = c.dropped;
                    if c.acknowledged + c.failed + c.dropped >= expected + n as u64 {
                        reached_metrics = Some(now);
                        if c.dropped > 0 && reached_hw.is_none() {
                            // Dropped QoS 0 never reach Kafka: stop at the metrics.
                            reached_hw = Some((now, broker.cpu_secs()));
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "QoS 0: Kafka did not receive {n} records within {CATCH_UP:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
        let (hw_at, cpu1) = reached_hw.expect("reached");
        let received = n as u64 - dropped;
        r.qos0_rate = received as f64 / (hw_at - q0.start).as_secs_f64();
        r.qos0_rate_metrics =
            received as f64 / (reached_metrics.expect("reached") - q0.start).as_secs_f64();
        r.qos0_broker_cpu = (cpu1 - cpu0) / received as f64;
        r.qos0_dropped = dropped as f64;
    }

    if std::env::var_os("FERRYMQ_BENCH_DEBUG").is_some() {
        // The broker's own publish → Kafka-ack histogram (all phases so far).
        thread::sleep(Duration::from_millis(1100));
        for line in http_get(broker.metrics_port, "/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("ferrymq_kafka_delivery_latency_seconds"))
        {
            eprintln!("  broker: {line}");
        }
    }
    broker.stop();

    if full {
        kafka.create_topic(&bare_topic);
        let bare = bare_client(&bare_topic, n, r.latency_rate, count, options);
        r.bare_rate = bare.rate;
        r.bare_p50_us = bare.p50_us;
        r.bare_p99_us = bare.p99_us;
        r.bare_p999_us = bare.p999_us;
        r.bare_process_cpu = bare.process_cpu;
        r.bare_thread_cpu = bare.thread_cpu;
        kafka.delete_topics(&[&topic, &bare_topic]);
    } else {
        kafka.delete_topics(&[&topic]);
    }
    r
}

// ---------------------------------------------------------------------------------------
// Reporting

/// Every run's figures as a JSON array of objects (CPU in seconds per record, latency in µs).
fn runs_json(runs: &[RunResult]) -> String {
    let objects: Vec<String> = runs
        .iter()
        .map(|r| {
            let fields = [
                ("qos1_rate", r.qos1_rate),
                ("qos1_broker_cpu_secs_per_record", r.qos1_broker_cpu),
                ("qos0_rate", r.qos0_rate),
                ("qos0_broker_cpu_secs_per_record", r.qos0_broker_cpu),
                ("latency_rate", r.latency_rate),
                ("p50_us", r.p50_us),
                ("p99_us", r.p99_us),
                ("bare_rate", r.bare_rate),
                ("bare_process_cpu_secs_per_record", r.bare_process_cpu),
                ("bare_thread_cpu_secs_per_record", r.bare_thread_cpu),
                ("bare_p99_us", r.bare_p99_us),
            ];
            let body: Vec<String> = fields
                .iter()
                .map(|(name, value)| format!("\"{name}\": {value:e}"))
                .collect();
            format!("{{{}}}", body.join(", "))
        })
        .collect();
    format!("[{}]\n", objects.join(",\n"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn thousands(v: f64) -> String {
    let v = v.round() as i64;
    let s = v.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn cpu_us(v: f64) -> String {
    format!("{:.2} µs", v * 1e6)
}

fn table(runs: &[RunResult]) -> String {
    type Row = (&'static str, fn(&RunResult) -> f64, fn(f64) -> String);
    let rows: [Row; 19] = [
        (
            "QoS 1 msg/s, PUBACK after Kafka acked",
            |r| r.qos1_rate,
            thousands,
        ),
        (
            "QoS 0 msg/s reaching Kafka (high watermark)",
            |r| r.qos0_rate,
            thousands,
        ),
        (
            "QoS 0 msg/s by `acknowledged_total` (1 s snapshots: a lower bound)",
            |r| r.qos0_rate_metrics,
            thousands,
        ),
        ("QoS 0 dropped (ring full)", |r| r.qos0_dropped, thousands),
        (
            "latency run: offered msg/s (half the QoS 1 rate)",
            |r| r.latency_rate,
            thousands,
        ),
        ("PUBLISH → PUBACK p50", |r| r.p50_us, us),
        ("PUBLISH → PUBACK p99", |r| r.p99_us, us),
        ("PUBLISH → PUBACK p99.9", |r| r.p999_us, us),
        (
            "broker CPU per record, QoS 1 (whole process)",
            |r| r.qos1_broker_cpu,
            cpu_us,
        ),
        (
            "broker CPU per record, paced latency run (whole process)",
            |r| r.latency_broker_cpu,
            cpu_us,
        ),
        (
            "broker CPU per record, QoS 0 (whole process)",
            |r| r.qos0_broker_cpu,
            cpu_us,
        ),
        (
            "bench clients' CPU per QoS 1 message, throughput run (for scale)",
            |r| r.qos1_client_cpu,
            cpu_us,
        ),
        (
            "bench clients' CPU per message, paced latency run",
            |r| r.latency_client_cpu,
            cpu_us,
        ),
        ("bare librdkafka records/s", |r| r.bare_rate, thousands),
        (
            "bare CPU per record (whole process)",
            |r| r.bare_process_cpu,
            cpu_us,
        ),
        (
            "bare CPU per record (sending thread only)",
            |r| r.bare_thread_cpu,
            cpu_us,
        ),
        (
            "bare produce → delivery report p50, same offered rate",
            |r| r.bare_p50_us,
            us,
        ),
        ("bare p99", |r| r.bare_p99_us, us),
        ("bare p99.9", |r| r.bare_p999_us, us),
    ];
    let mut out = String::from("| measure | median | runs |\n|---|---:|---|\n");
    for (name, get, fmt) in rows {
        let values: Vec<f64> = runs.iter().map(get).collect();
        let all: Vec<String> = values.iter().map(|&v| fmt(v)).collect();
        out += &format!(
            "| {name} | {} | {} |\n",
            fmt(median(values)),
            all.join(" / ")
        );
    }
    if runs.iter().any(|r| r.fixed_p99_us > 0.0) {
        let fixed: [Row; 3] = [
            ("fixed rate: PUBLISH → PUBACK p50", |r| r.fixed_p50_us, us),
            ("fixed rate: PUBLISH → PUBACK p99", |r| r.fixed_p99_us, us),
            (
                "fixed rate: broker CPU per record",
                |r| r.fixed_broker_cpu,
                cpu_us,
            ),
        ];
        for (name, get, fmt) in fixed {
            let values: Vec<f64> = runs.iter().map(get).collect();
            let all: Vec<String> = values.iter().map(|&v| fmt(v)).collect();
            out += &format!(
                "| {name} | {} | {} |\n",
                fmt(median(values)),
                all.join(" / ")
            );
        }
    }
    let broker = median(runs.iter().map(|r| r.qos1_broker_cpu).collect());
    let bare = median(runs.iter().map(|r| r.bare_process_cpu).collect());
    out += &format!(
        "| **broker ÷ bare CPU per record** (QoS 1, whole processes) | **{:.2}** | |\n",
        broker / bare
    );
    out
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn header(options: &Options) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty =
        if command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        };
    let batching = options.batching_args();
    let kafka = format!(
        "4.3.1 (scripts/kafka, same host, at {}{})",
        options.bootstrap,
        if options.kafka_config.is_empty() {
            String::new()
        } else {
            format!(", --kafka-config {}", options.kafka_config.describe())
        }
    );
    format!(
        "Measured {} at commit {commit}{dirty} on {cpu}, {cpus} cores shared by the broker \
         ({} shards), Kafka {} and the bench clients; Linux {}. {} runs of {} messages \
         ({} connections, window {}), broker flags: {}.",
        command_output("date", &["-u", "+%Y-%m-%d"]),
        options.shards(),
        kafka,
        command_output("uname", &["-r"]),
        options.runs,
        thousands(options.messages as f64),
        options.connections,
        options.window,
        if batching.is_empty() {
            "defaults".to_string()
        } else {
            batching.join(" ")
        }
    )
}

/// The text above the markers of BENCHMARKS.md's section, written when the section is new.
const KAFKA_SECTION_INTRO: &str = "\
`scripts/bench-kafka --write` (`cargo bench --bench mqtt_to_kafka -- --write`, about a minute;
`benches/mqtt_to_kafka.rs`). The release broker with one mapping `bench/#` → a fresh
one-partition topic (`ack = \"kafka\"`, key `{client_id}`, default headers) on the local Kafka;
8 MQTT 3.1.1 connections written on ferrymq's codec, each pipelining up to 64 QoS 1 PUBLISHes
of 150 bytes. QoS 1 time runs until the last PUBACK (sent after Kafka acknowledged); QoS 0 time
until Kafka's high watermark holds every message. Latency is measured from each message's
scheduled send time, at half the run's QoS 1 rate. \"Bare\" is one thread with an rdkafka
`ThreadedProducer` on ferrymq's librdkafka settings (`client_config`) producing the same
records, keys and headers. CPU is user + system time of the whole process (shards, producer
threads and librdkafka's threads; for bare, the bench process while only it runs) per record;
Kafka's own CPU is in neither. Broker, Kafka and clients share the machine's cores. Medians of
the runs, each run's figure after it.

On this 2-core machine the paced latency run is not \"half load\": a paced single message costs
the broker about four times the CPU of a pipelined one (each one wakes a sleeping shard), so
broker, Kafka and clients together run near the cores' limit and the PUBACK tail is mostly
waiting for a CPU. The broker's own publish → Kafka acknowledgement p50 stays near 3 ms there
(`FERRYMQ_BENCH_DEBUG=1`); tuning.md has latency at a fixed 20,000 msg/s.";

fn write_benchmarks(section: &str) -> io::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path)?;
    let (begin, end) = ("<!-- kafka:begin -->", "<!-- kafka:end -->");
    let block = format!("{begin}\n{section}{end}");
    let new = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!(
            "{}\n\n## MQTT to Kafka\n\n{KAFKA_SECTION_INTRO}\n\n{block}\n",
            text.trim_end()
        ),
    };
    std::fs::write(&path, new)
}

// ---------------------------------------------------------------------------------------

fn sweep(options: &Options, kafka: &Kafka) {
    let settings: [(usize, u64); 7] = [
        (1, 1000),
        (64, 1000),
        (512, 1000),
        (4096, 1000),
        (512, 0),
        (512, 200),
        (512, 5000),
    ];
    let mut out = String::from(
        "| `--batch-max-messages` | `--batch-linger-us` | QoS 1 msg/s | broker CPU/record | half rate: msg/s | p50 | p99 | fixed rate: p50 | p99 | broker CPU/record |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (max_messages, linger) in settings {
        let o = Options {
            batch_max_messages: Some(max_messages),
            batch_linger_us: Some(linger),
            fixed_rate: Some(options.fixed_rate.unwrap_or(SWEEP_FIXED_RATE)),
            ..options.clone()
        };
        let runs: Vec<RunResult> = (0..o.runs)
            .map(|i| {
                let r = run_once(&o, kafka, false);
                eprintln!(
                    "  max_messages {max_messages} linger {linger} run {}: {} msg/s {}/rec, \
                     p99 {} at {} msg/s, p99 {} at {} msg/s {}/rec",
                    i + 1,
                    thousands(r.qos1_rate),
                    cpu_us(r.qos1_broker_cpu),
                    us(r.p99_us),
                    thousands(r.latency_rate),
                    us(r.fixed_p99_us),
                    thousands(o.fixed_rate.unwrap_or(0.0)),
                    cpu_us(r.fixed_broker_cpu),
                );
                r
            })
            .collect();
        let m = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
        out += &format!(
            "| {max_messages} | {linger} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            thousands(m(|r| r.qos1_rate)),
            cpu_us(m(|r| r.qos1_broker_cpu)),
            thousands(m(|r| r.latency_rate)),
            us(m(|r| r.p50_us)),
            us(m(|r| r.p99_us)),
            us(m(|r| r.fixed_p50_us)),
            us(m(|r| r.fixed_p99_us)),
            cpu_us(m(|r| r.fixed_broker_cpu)),
        );
    }
    println!("\n{}\n\n{out}", header(options));
}

fn main() {
    let options = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mqtt_to_kafka: {e}");
            std::process::exit(2);
        }
    };
    let kafka = Kafka::connect(&options);
    if options.sweep {
        sweep(&options, &kafka);
        return;
    }
    let started = Instant::now();
    let mut runs = Vec::new();
    for i in 0..options.runs {
        let r = run_once(&options, &kafka, true);
        eprintln!(
            "run {}: QoS 1 {} msg/s, QoS 0 {} msg/s, p99 {} at {} msg/s, broker {}/rec, bare {} rec/s {}/rec",
            i + 1,
            thousands(r.qos1_rate),
            thousands(r.qos0_rate),
            us(r.p99_us),
            thousands(r.latency_rate),
            cpu_us(r.qos1_broker_cpu),
            thousands(r.bare_rate),
            cpu_us(r.bare_process_cpu),
        );
        runs.push(r);
    }
    if let Some(path) = &options.json {
        if let Err(e) = std::fs::write(path, runs_json(&runs)) {
            eprintln!("mqtt_to_kafka: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    let section = format!("{}\n\n{}", header(&options), table(&runs));
    println!("\n{section}");
    eprintln!("({:.0} s)", started.elapsed().as_secs_f64());
    if options.write {
        match write_benchmarks(&section) {
            Ok(()) => println!("BENCHMARKS.md updated"),
            Err(e) => {
                eprintln!("mqtt_to_kafka: cannot update BENCHMARKS.md: {e}");
                std::process::exit(1);
            }
        }
    }
}
