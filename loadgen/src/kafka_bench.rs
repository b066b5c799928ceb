//! `ferrymq-loadgen kafka-bench` (`scripts/bench-kafka`): MQTT devices → ferrymq → a real
//! Kafka, against the bare librdkafka client producing the same records; optionally several
//! broker binaries side by side (`--broker-bin`, repeated) and several mapping ack modes
//! (`--ack kafka,durable`).
//!
//! Each run starts a `ferrymq` binary (default: the one next to this executable; release
//! for figures that mean something) with a generated config: one cluster on `--bootstrap`
//! with the `--kafka-config` properties as its `config`, one mapping `bench/#` → a Kafka
//! topic unique to the run (created with one partition before the broker starts, deleted
//! after), `key = "{client_id}"`, default headers, `ack` as `--ack` says (`durable`: a
//! `[spool]` in a fresh directory, deleted after); `--metrics` on a free port and
//! `--sys-interval-secs 0`. The MQTT clients are the loadgen's own devices and shards
//! (`engine`, `device`: ferrymq's codec, MQTT 3.1.1, each connection pipelining up to
//! `--window` unacknowledged QoS 1 PUBLISHes) on an exact schedule
//! ([`Scenario::exact_schedule`]): microsecond timers, paced sends measured from their
//! scheduled time (no coordinated omission). Client ids are picked so that connections
//! spread evenly over the broker's shards. Payloads are 150 bytes (the loadgen's payload
//! header: device, sequence number, send time). After a warm-up of 4,000 QoS 1 messages a
//! run measures, in this order:
//!
//! - QoS 1: messages/s fully PUBACKed (first PUBLISH to last PUBACK; with `ack = "kafka"`
//!   the PUBACK waits for Kafka), and the broker's CPU (utime + stime of the whole process,
//!   librdkafka threads included, from /proc) per record;
//! - latency: PUBLISH → PUBACK p50/p99/p99.9 at half the run's QoS 1 rate (or
//!   `--latency-rate`), paced per connection, from each message's scheduled send time;
//! - `--fixed-rate R`: latency and broker CPU at R msg/s;
//! - QoS 0: messages/s reaching Kafka, timed by the topic's high watermark (polled every
//!   5 ms), checked against `ferrymq_kafka_mapping_acknowledged_total` from /metrics (whose
//!   shard snapshots are taken once a second, so its own time is a coarse lower bound);
//! - bare client, after the broker stopped: one thread with an rdkafka `ThreadedProducer`
//!   configured by `ferrymq::bridge::producer::client_config`, sending the same records
//!   (topic, key, payload size, headers) and waiting for every delivery report; records/s
//!   and process CPU (`getrusage(RUSAGE_SELF)`, librdkafka's threads included) per record;
//!   then produce → delivery-report latency at the MQTT latency phase's rate.
//!
//! With several `--broker-bin` or `--ack` values, each ack mode gets `--runs` rounds; a
//! round runs every binary once, in an order that alternates from round to round (A B, B A,
//! ...), so that drift on a shared machine spreads over both; the table gives each
//! binary's medians and their ratio to the first binary's.
//!
//! Everything (broker, Kafka, clients) shares the machine: on a small one, the clients'
//! CPU is part of what limits the broker. `FERRYMQ_BENCH_DEBUG=1` prints the broker's own
//! publish → Kafka acknowledgement quantiles after each run.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use ferrymq::bridge::producer::client_config;
use ferrymq::broker::shard::shard_for;
use ferrymq::protocol::{Protocol, QoS};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;

use crate::device::Failure;
use crate::engine::{self, Control};
use crate::kafka_config::KafkaConfig;
use crate::report::{latency_histogram, record_latency, Latency};
use crate::scenario::{now_us, KafkaVerify, PayloadHeader, QosMix, Scenario, Template};
use crate::verify;

const PAYLOAD_BYTES: usize = 150;
const PROTOCOL: Protocol = Protocol::V3_1_1;
/// QoS 1 messages sent before measuring: producers fetch metadata and producer ids.
const WARMUP_MESSAGES: usize = 4_000;
/// A QoS 1 message without its PUBACK for this long: the broker stalls.
const STALL: Duration = Duration::from_secs(30);
/// How long to wait for Kafka or the metrics to catch up before calling a phase failed.
const CATCH_UP: Duration = Duration::from_secs(60);
/// The fixed offered rate of `--sweep`, msg/s: one every setting sustains here.
const SWEEP_FIXED_RATE: f64 = 20_000.0;
/// Where `--write` puts the MQTT to Kafka section (the script runs from the repository).
const BENCHMARKS_MD: &str = "BENCHMARKS.md";

/// MQTT → Kafka end-to-end benchmark: MQTT devices → ferrymq → Kafka against the bare
/// librdkafka client producing the same records (QoS 1 and QoS 0 throughput, PUBLISH →
/// PUBACK latency at half the QoS 1 rate, broker CPU per record); medians of --runs runs.
/// With several --broker-bin or --ack values: interleaved rounds, medians and ratios.
/// Needs Kafka on --bootstrap. See loadgen/src/kafka_bench.rs for what each phase does.
#[derive(Parser, Debug)]
#[command(
    name = "ferrymq-loadgen kafka-bench",
    bin_name = "ferrymq-loadgen kafka-bench",
    disable_version_flag = true
)]
struct Args {
    /// Messages per throughput phase [default: 200,000; 50,000 with --quick].
    #[arg(long)]
    messages: Option<usize>,
    /// MQTT connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// QoS 1 PUBLISHes in flight per connection.
    #[arg(long, default_value_t = 64)]
    window: u16,
    /// Runs (rounds, with several binaries); figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Passed to ferrymq (its shards' CPUs).
    #[arg(long)]
    cores: Option<String>,
    /// Passed to ferrymq.
    #[arg(long, value_name = "N")]
    batch_max_messages: Option<usize>,
    /// Passed to ferrymq.
    #[arg(long, value_name = "N")]
    batch_max_bytes: Option<usize>,
    /// Passed to ferrymq.
    #[arg(long, value_name = "US")]
    batch_linger_us: Option<u64>,
    /// Passed to ferrymq.
    #[arg(long, value_name = "N")]
    ring_capacity_batches: Option<usize>,
    /// Offered msg/s of the latency phase [default: half the run's QoS 1 rate].
    #[arg(long, value_name = "R")]
    latency_rate: Option<f64>,
    /// Also measure latency and broker CPU at R msg/s [--sweep: 20,000].
    #[arg(long, value_name = "R")]
    fixed_rate: Option<f64>,
    /// The mapping's ack mode: kafka (PUBACK once Kafka acknowledged), durable (once in the
    /// broker's spool), none (at once, for comparison). Several (kafka,durable or repeated):
    /// each is measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "kafka", value_parser = ["kafka", "durable", "none"])]
    ack: Vec<String>,
    /// A ferrymq binary to measure, as PATH or LABEL=PATH; repeat it to compare binaries
    /// side by side (interleaved rounds; ratios against the first) [default: the ferrymq
    /// next to this executable].
    #[arg(long, value_name = "[LABEL=]PATH")]
    broker_bin: Vec<String>,
    /// Parent directory of the durable spools (a fresh one per run, deleted after)
    /// [default: the temporary directory].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Fewer messages (50,000 per phase).
    #[arg(long)]
    quick: bool,
    /// Update the MQTT to Kafka section of BENCHMARKS.md (in the current directory).
    #[arg(long)]
    write: bool,
    /// Also write every run's figures as JSON (scripts/bench reads it).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Batching settings table for tuning.md (QoS 1 and latency only).
    #[arg(long)]
    sweep: bool,
    /// Kafka [default: $FERRYMQ_KAFKA_BOOTSTRAP, else 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// A librdkafka property (repeatable) for every Kafka client: the broker's (its
    /// cluster's `config` table), the bench's topic admin and read-back, the bare client;
    /// e.g. security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512,
    /// sasl.username=NAME, sasl.password=${file:PATH}, ssl.ca.location=PATH,
    /// compression.type=zstd. ${env:NAME} is an environment variable, ${file:PATH} a
    /// file's content without its final newline; values of keys holding
    /// password/secret/token and values read so are never printed. Not bootstrap.servers
    /// (that is --bootstrap). Checked by librdkafka before anything starts (exit 2 if
    /// refused).
    #[arg(long, value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
}

/// A broker binary to measure.
#[derive(Clone, Debug)]
struct BrokerBin {
    label: String,
    path: PathBuf,
}

#[derive(Clone, Debug)]
struct Options {
    messages: usize,
    connections: usize,
    window: u16,
    runs: usize,
    cores: Option<String>,
    batch_max_messages: Option<usize>,
    batch_max_bytes: Option<usize>,
    batch_linger_us: Option<u64>,
    ring_capacity_batches: Option<usize>,
    latency_rate: Option<f64>,
    fixed_rate: Option<f64>,
    /// The mapping's `ack` of this run.
    ack: String,
    acks: Vec<String>,
    /// The binary of this run.
    broker: BrokerBin,
    brokers: Vec<BrokerBin>,
    spool_dir: PathBuf,
    write: bool,
    sweep: bool,
    json: Option<PathBuf>,
    /// Kafka's bootstrap servers and `--kafka-config`, for the broker and the bench's own
    /// clients (the loadgen's verification settings carry both).
    kafka: KafkaVerify,
    /// The loadgen's shards: every CPU this process may use.
    client_cores: Vec<usize>,
}

impl Options {
    fn of(args: Args) -> Result<Options, String> {
        let messages = args
            .messages
            .unwrap_or(if args.quick { 50_000 } else { 200_000 });
        if messages == 0 || args.connections == 0 || args.window == 0 || args.runs == 0 {
            return Err("--messages, --connections, --window and --runs must be at least 1".into());
        }
        if args.window == u16::MAX {
            return Err("--window must be below 65535 (packet identifiers)".into());
        }
        let bootstrap = args.bootstrap.unwrap_or_else(|| {
            std::env::var("FERRYMQ_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
        });
        if bootstrap.trim().is_empty() {
            return Err("--bootstrap: must name at least one HOST:PORT".into());
        }
        let config = KafkaConfig::parse(&args.kafka_config, "--bootstrap")?;
        config.check()?;
        let brokers = if args.broker_bin.is_empty() {
            let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
            let path = exe.with_file_name("ferrymq");
            if !path.is_file() {
                return Err(format!(
                    "no ferrymq next to {} (cargo build --release -p ferrymq); give \
                     --broker-bin PATH",
                    exe.display()
                ));
            }
            vec![BrokerBin {
                label: "ferrymq".into(),
                path,
            }]
        } else {
            args.broker_bin
                .iter()
                .map(|spec| {
                    let (label, path) = match spec.split_once('=') {
                        Some((label, path)) => (label.to_string(), PathBuf::from(path)),
                        None => (spec.clone(), PathBuf::from(spec)),
                    };
                    if path.is_file() {
                        Ok(BrokerBin { label, path })
                    } else {
                        Err(format!("--broker-bin: no file {}", path.display()))
                    }
                })
                .collect::<Result<_, _>>()?
        };
        let mut acks = args.ack.clone();
        acks.dedup();
        if (args.write || args.sweep) && (brokers.len() > 1 || acks.len() > 1) {
            return Err("--write and --sweep take one --broker-bin and one --ack".into());
        }
        let client_cores =
            ferrymq::runtime::affinity_cpus().map_err(|e| format!("CPU affinity: {e}"))?;
        Ok(Options {
            messages,
            connections: args.connections,
            window: args.window,
            runs: args.runs,
            cores: args.cores,
            batch_max_messages: args.batch_max_messages,
            batch_max_bytes: args.batch_max_bytes,
            batch_linger_us: args.batch_linger_us,
            ring_capacity_batches: args.ring_capacity_batches,
            latency_rate: args.latency_rate,
            fixed_rate: args.fixed_rate,
            ack: acks[0].clone(),
            acks,
            broker: brokers[0].clone(),
            brokers,
            spool_dir: args.spool_dir.unwrap_or_else(std::env::temp_dir),
            write: args.write,
            sweep: args.sweep,
            json: args.json,
            kafka: KafkaVerify {
                bootstrap,
                config,
                topics: Vec::new(),
                timeout: CATCH_UP,
                create_partitions: Some(1),
                warmup_timeout: Duration::ZERO,
                probe_topic: String::new(),
            },
            client_cores,
        })
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
            Some(list) => ferrymq::config::parse_cpu_list(list).map_or(1, |cpus| cpus.len()),
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
    format!("{}-{}", std::process::id(), now_us())
}

// ---------------------------------------------------------------------------------------
// Kafka housekeeping

struct Kafka {
    admin: AdminClient<DefaultClientContext>,
    /// For metadata and high-watermark queries only.
    probe: BaseProducer,
}

impl Kafka {
    fn connect(options: &Options) -> Result<Kafka, String> {
        let kafka = &options.kafka;
        let mut own = ClientConfig::new();
        own.set("allow.auto.create.topics", "false");
        let config = verify::client_config(kafka, own);
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .map_err(|e| verify::client_error(kafka, "Kafka admin client", e))?;
        let probe: BaseProducer = config
            .create()
            .map_err(|e| verify::client_error(kafka, "Kafka probe client", e))?;
        if let Err(e) = probe.client().fetch_metadata(None, Duration::from_secs(10)) {
            return Err(format!(
                "Kafka at {} does not answer ({e}). Run `scripts/kafka start`, or give \
                 --bootstrap (or set FERRYMQ_KAFKA_BOOTSTRAP){}.",
                kafka.bootstrap,
                if kafka.config.is_empty() {
                    String::new()
                } else {
                    format!(" and check --kafka-config {}", kafka.config.describe())
                }
            ));
        }
        Ok(Kafka { admin, probe })
    }

    /// Creates `topic` with one partition and waits until it has a leader and a high
    /// watermark.
    fn create_topic(&self, options: &Options, topic: &str) {
        verify::create_missing(
            self.probe.client(),
            &options.kafka,
            &[topic],
            1,
            false,
            "create topic",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.high_watermark(topic).is_none() {
            assert!(Instant::now() < deadline, "topic {topic} has no leader");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn delete_topics(&self, topics: &[&str]) {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        if let Err(e) = futures_lite::future::block_on(self.admin.delete_topics(topics, &options)) {
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
    spool: Option<PathBuf>,
}

impl Broker {
    fn start(options: &Options, topic: &str) -> Broker {
        let port = free_port();
        let metrics_port = free_port();
        let properties = properties(&options.kafka.config);
        let table: Vec<String> = properties
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_string(k), toml_string(v)))
            .collect();
        let run = unique();
        // A fresh spool per run, only for durable mappings (a binary from before the spool
        // would refuse the table).
        let spool = (options.ack == "durable")
            .then(|| options.spool_dir.join(format!("ferrymq-bench-spool-{run}")));
        let mut config = format!(
            "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n\
             [kafka.clusters.bench]\nbootstrap = {}\nconfig = {{ {} }}\n\n\
             [[kafka.mapping]]\nmqtt = \"bench/#\"\ncluster = \"bench\"\ntopic = \"{topic}\"\n\
             key = \"{{client_id}}\"\nack = \"{}\"\n",
            toml_string(&options.kafka.bootstrap),
            table.join(", "),
            options.ack
        );
        if let Some(dir) = &spool {
            config += &format!(
                "\n[spool]\ndata_dir = {}\n",
                toml_string(&dir.to_string_lossy())
            );
        }
        // The broker must read back exactly what was given (never printed: it may hold
        // secrets).
        let read_back = ferrymq::config::Config::from_toml(&config, "generated")
            .ok()
            .and_then(|c| c.kafka.clusters.get("bench").map(|c| c.config.clone()));
        assert!(
            read_back.as_ref() == Some(&properties),
            "the generated broker config does not hold --kafka-config as given"
        );
        let config_path = std::env::temp_dir().join(format!("ferrymq-bench-{run}.toml"));
        // Owner only: it may hold --kafka-config secrets.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config_path)
            .and_then(|mut file| file.write_all(config.as_bytes()))
            .expect("write the broker config");
        let mut child = Command::new(&options.broker.path)
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
            .unwrap_or_else(|e| panic!("start {}: {e}", options.broker.path.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let broker = Broker {
            child,
            port,
            metrics_port,
            config_path,
            spool,
        };
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            first.contains("listening"),
            "{} did not start: {first:?}",
            options.broker.label
        );
        thread::spawn(move || for _ in lines {});
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

    /// utime + stime of the whole process (all threads, librdkafka's included), in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
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
        // SAFETY: kill has no memory preconditions; the pid is our child's.
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
        if let Some(dir) = &self.spool {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `--kafka-config` as the broker's cluster `config` holds it.
fn properties(config: &KafkaConfig) -> BTreeMap<String, String> {
    config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
// MQTT clients: the loadgen's devices

/// A client id prefix for `n` connections (client ids `PREFIX0 .. PREFIXn-1`, the loadgen's
/// device numbers) that spreads them evenly over the broker's shards: ferrymq places a
/// session on `shard_for(client_id)`, so that every shard gets the same load.
fn id_prefix(phase: &str, n: usize, shards: usize) -> String {
    let spread = |prefix: &str| {
        let mut per_shard = vec![0usize; shards.max(1)];
        for i in 0..n {
            per_shard[shard_for(format!("{prefix}{i}").as_bytes(), shards.max(1))] += 1;
        }
        per_shard.iter().max().unwrap_or(&0) - per_shard.iter().min().unwrap_or(&0)
    };
    let mut best = (usize::MAX, String::new());
    for candidate in 0..10_000 {
        let prefix = format!("bench-{phase}-{candidate}-");
        let uneven = spread(&prefix);
        if uneven < best.0 {
            best = (uneven, prefix);
        }
        if best.0 <= 1 {
            break;
        }
    }
    best.1
}

/// What the devices of one phase did; times in µs since the Unix epoch.
struct PhaseResult {
    first_publish_us: u64,
    last_ack_us: u64,
    sent: u64,
    acked: u64,
    latency_us: Latency,
}

impl PhaseResult {
    /// Acknowledged messages per second, first PUBLISH to last PUBACK.
    fn ack_rate(&self) -> f64 {
        self.acked as f64 / (self.last_ack_us.saturating_sub(self.first_publish_us) as f64 / 1e6)
    }
}

/// Runs one phase on the loadgen's shards: `options.connections` devices, `count`
/// messages in all (rounded up to a multiple of the connections), at `rate` msg/s over
/// all connections or as fast as their windows allow. `on_start` runs when the shards
/// are ready, just before the devices connect.
fn phase(
    broker: &Broker,
    options: &Options,
    name: &str,
    qos: QoS,
    count: usize,
    rate: Option<f64>,
    on_start: impl FnOnce(),
) -> PhaseResult {
    let n = options.connections;
    let per_connection = count.div_ceil(n);
    let scenario = Scenario {
        targets: vec![SocketAddr::from(([127, 0, 0, 1], broker.port))],
        source_ips: Vec::new(),
        cores: options.client_cores.clone(),
        devices: n as u32,
        subscribers: 0,
        one_to_one: false,
        connect_rate: 100_000,
        connect_timeout: Duration::from_secs(10),
        publish_interval: rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(n as f64 / r)),
        topic: Template::parse("bench/%c"),
        sub_topic: String::new(),
        sub_qos: QoS::AtMostOnce,
        payload_size_bytes: PAYLOAD_BYTES,
        qos_mix: QosMix::only(qos),
        inflight_max: options.window,
        protocol: PROTOCOL,
        keep_alive_secs: 0,
        clean_start: true,
        session_expiry_secs: None,
        username: None,
        password: None,
        id_start: 0,
        id_prefix: id_prefix(name, n, options.shards()),
        duration: None,
        messages_per_device: Some(per_connection as u32),
        churn_total: None,
        drain: STALL,
        verify: None,
        json: None,
        per_device_csv: None,
        broker_pids: Vec::new(),
        child: false,
        tls: None,
        commands: None,
        exact_schedule: true,
    };
    let shards = scenario.cores.len();
    let control = Arc::new(Control::new(shards, n));
    let engine = {
        let control = control.clone();
        let scenario = Arc::new(scenario);
        thread::Builder::new()
            .name("loadgen-engine".into())
            .spawn(move || engine::run(scenario, control))
            .expect("start the loadgen's shards")
    };
    while control.shards_ready.load(Ordering::Acquire) < shards && !engine.is_finished() {
        thread::sleep(Duration::from_millis(1));
    }
    on_start();
    control.go.store(true, Ordering::Release);
    let outputs = engine
        .join()
        .expect("a loadgen shard panicked")
        .unwrap_or_else(|e| panic!("{name}: loadgen shards: {e}"));
    let mut result = PhaseResult {
        first_publish_us: u64::MAX,
        last_ack_us: 0,
        sent: 0,
        acked: 0,
        latency_us: latency_histogram(),
    };
    let mut failures = [0u64; Failure::ALL.len()];
    for output in outputs {
        for record in &output.records {
            result.sent += u64::from(record.sent);
            result.acked += u64::from(record.acked);
        }
        let observed = output.observed;
        result.first_publish_us = result.first_publish_us.min(observed.first_publish_us);
        result.last_ack_us = result.last_ack_us.max(observed.last_ack_us);
        result
            .latency_us
            .add(&observed.puback)
            .expect("equal bounds");
        for (total, n) in failures.iter_mut().zip(observed.failures) {
            *total += n;
        }
    }
    let failed: Vec<String> = Failure::ALL
        .iter()
        .zip(failures)
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| format!("{} {n}", f.name()))
        .collect();
    assert!(failed.is_empty(), "{name}: {}", failed.join(", "));
    let expected = (per_connection * n) as u64;
    assert_eq!(result.sent, expected, "{name}: messages not sent");
    if qos != QoS::AtMostOnce {
        assert_eq!(result.acked, expected, "{name}: PUBACKs missing");
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
    latency_us: Mutex<Latency>,
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
            record_latency(&mut self.latency_us.lock().expect("latency histogram"), us);
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
    let config = client_config(&options.kafka.bootstrap, &properties(&options.kafka.config));
    let producer: ThreadedProducer<BareContext> = config
        .create_with_context(BareContext {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            epoch: Instant::now(),
            latency_us: Mutex::new(latency_histogram()),
            recording: AtomicBool::new(false),
        })
        .unwrap_or_else(|e| {
            panic!(
                "create the bare producer: {}",
                options.kafka.config.redact(&e.to_string())
            )
        });
    let epoch = producer.context().epoch;
    let prefix = id_prefix("q1", options.connections, options.shards());
    let ids: Vec<String> = (0..options.connections)
        .map(|i| format!("{prefix}{i}"))
        .collect();
    let mqtt_topics: Vec<String> = ids.iter().map(|id| format!("bench/{id}")).collect();
    let mut payload = BytesMut::with_capacity(PAYLOAD_BYTES);
    let mut seq = 0usize;
    let mut produce = |scheduled: Instant| {
        let c = seq % ids.len();
        payload.clear();
        PayloadHeader {
            device: c as u64,
            seq: seq as u64,
            sent_us: now_us(),
        }
        .encode(PAYLOAD_BYTES, &mut payload);
        seq += 1;
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
fn wait_for_counters(broker: &Broker, total: u64) -> Counters {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        if let Ok(c) = broker.counters() {
            if c.acknowledged + c.failed + c.dropped >= total {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not reach {total} records within {CATCH_UP:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn quantile_us(latency: &Latency, q: f64) -> f64 {
    latency.value_at_quantile(q) as f64
}

fn run_once(options: &Options, kafka: &Kafka, full: bool) -> RunResult {
    let run_id = unique();
    let topic = format!("ferrymq-bench-{run_id}");
    let bare_topic = format!("ferrymq-bench-bare-{run_id}");
    kafka.create_topic(options, &topic);
    let mut r = RunResult::default();
    let broker = Broker::start(options, &topic);

    // Warm-up: metadata, producer ids, connections to Kafka, allocator.
    let warm = phase(
        &broker,
        options,
        "warm",
        QoS::AtLeastOnce,
        WARMUP_MESSAGES,
        None,
        || {},
    );
    let mut expected = warm.sent;

    // QoS 1 throughput.
    let mut cpu0 = 0.0;
    let mut client0 = 0.0;
    let q1 = phase(
        &broker,
        options,
        "q1",
        QoS::AtLeastOnce,
        options.messages,
        None,
        || {
            cpu0 = broker.cpu_secs();
            client0 = rusage_secs(libc::RUSAGE_SELF);
        },
    );
    let cpu1 = broker.cpu_secs();
    let client1 = rusage_secs(libc::RUSAGE_SELF);
    let n = q1.acked;
    r.qos1_rate = q1.ack_rate();
    r.qos1_broker_cpu = (cpu1 - cpu0) / n as f64;
    r.qos1_client_cpu = (client1 - client0) / n as f64;
    expected += n;
    let counters = wait_for_counters(&broker, expected);
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
        || {
            client0 = rusage_secs(libc::RUSAGE_SELF);
            cpu0 = broker.cpu_secs();
        },
    );
    let count = lat.acked;
    r.latency_client_cpu = (rusage_secs(libc::RUSAGE_SELF) - client0) / count as f64;
    r.latency_broker_cpu = (broker.cpu_secs() - cpu0) / count as f64;
    r.latency_rate = lat.ack_rate();
    r.p50_us = quantile_us(&lat.latency_us, 0.5);
    r.p99_us = quantile_us(&lat.latency_us, 0.99);
    r.p999_us = quantile_us(&lat.latency_us, 0.999);
    expected += count;
    wait_for_counters(&broker, expected);

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
            || cpu0 = broker.cpu_secs(),
        );
        r.fixed_broker_cpu = (broker.cpu_secs() - cpu0) / fixed.acked as f64;
        r.fixed_p50_us = quantile_us(&fixed.latency_us, 0.5);
        r.fixed_p99_us = quantile_us(&fixed.latency_us, 0.99);
        expected += fixed.acked;
        wait_for_counters(&broker, expected);
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
            options.messages,
            None,
            || cpu0 = broker.cpu_secs(),
        );
        let n = q0.sent;
        let target = hw0 + n as i64;
        let deadline = Instant::now() + CATCH_UP;
        let mut reached_hw = None;
        let mut reached_metrics = None;
        let mut last_metrics_poll = Instant::now() - Duration::from_secs(1);
        let mut dropped = 0;
        while reached_hw.is_none() || reached_metrics.is_none() {
            let now = Instant::now();
            if reached_hw.is_none() && kafka.high_watermark(&topic).is_some_and(|h| h >= target) {
                reached_hw = Some((now_us(), broker.cpu_secs()));
            }
            if reached_metrics.is_none() && now - last_metrics_poll >= Duration::from_millis(20) {
                last_metrics_poll = now;
                if let Ok(c) = broker.counters() {
                    dropped = c.dropped;
                    if c.acknowledged + c.failed + c.dropped >= expected + n {
                        reached_metrics = Some(now_us());
                        if c.dropped > 0 && reached_hw.is_none() {
                            // Dropped QoS 0 never reach Kafka: stop at the metrics.
                            reached_hw = Some((now_us(), broker.cpu_secs()));
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
        let (hw_at_us, cpu1) = reached_hw.expect("reached");
        let received = n - dropped;
        let secs_since_start = |at_us: u64| at_us.saturating_sub(q0.first_publish_us) as f64 / 1e6;
        r.qos0_rate = received as f64 / secs_since_start(hw_at_us);
        r.qos0_rate_metrics = received as f64 / secs_since_start(reached_metrics.expect("reached"));
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
        kafka.create_topic(options, &bare_topic);
        let bare = bare_client(
            &bare_topic,
            q1.acked as usize,
            r.latency_rate,
            count as usize,
            options,
        );
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

/// Every run's figures as a JSON array of objects (CPU in seconds per record, latency in
/// µs), each with the broker binary's label and the ack mode it ran.
fn runs_json(runs: &[(&BrokerBin, &str, RunResult)]) -> String {
    let objects: Vec<String> = runs
        .iter()
        .map(|(broker, ack, r)| {
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
            let mut body: Vec<String> = vec![
                format!(
                    "\"broker\": {}",
                    serde_json::Value::from(broker.label.as_str())
                ),
                format!("\"ack\": \"{ack}\""),
            ];
            body.extend(
                fields
                    .iter()
                    .map(|(name, value)| format!("\"{name}\": {value:e}")),
            );
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
        if i > 0 && (s.len() - i).is_multiple_of(3) {
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

type Row = (&'static str, fn(&RunResult) -> f64, fn(f64) -> String);

/// The measures of a table: the fixed-rate ones only when measured.
fn rows(fixed: bool) -> Vec<Row> {
    let mut rows: Vec<Row> = vec![
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
    if fixed {
        rows.extend::<[Row; 3]>([
            ("fixed rate: PUBLISH → PUBACK p50", |r| r.fixed_p50_us, us),
            ("fixed rate: PUBLISH → PUBACK p99", |r| r.fixed_p99_us, us),
            (
                "fixed rate: broker CPU per record",
                |r| r.fixed_broker_cpu,
                cpu_us,
            ),
        ]);
    }
    rows
}

fn broker_per_bare(runs: &[RunResult]) -> f64 {
    let broker = median(runs.iter().map(|r| r.qos1_broker_cpu).collect());
    let bare = median(runs.iter().map(|r| r.bare_process_cpu).collect());
    broker / bare
}

fn table(runs: &[RunResult]) -> String {
    let mut out = String::from("| measure | median | runs |\n|---|---:|---|\n");
    for (name, get, fmt) in rows(runs.iter().any(|r| r.fixed_p99_us > 0.0)) {
        let values: Vec<f64> = runs.iter().map(get).collect();
        let all: Vec<String> = values.iter().map(|&v| fmt(v)).collect();
        out += &format!(
            "| {name} | {} | {} |\n",
            fmt(median(values)),
            all.join(" / ")
        );
    }
    out += &format!(
        "| **broker ÷ bare CPU per record** (QoS 1, whole processes) | **{:.2}** | |\n",
        broker_per_bare(runs)
    );
    out
}

/// Binaries side by side: each one's median, each one's ratio to the first binary's, then
/// every run's figure per binary.
fn comparison_table(brokers: &[BrokerBin], runs: &[Vec<RunResult>]) -> String {
    let first = &brokers[0].label;
    let mut out = String::from("| measure |");
    let mut rule = String::from("|---|");
    for b in brokers {
        out += &format!(" {} |", b.label);
        rule += "---:|";
    }
    for b in &brokers[1..] {
        out += &format!(" {} ÷ {first} |", b.label);
        rule += "---:|";
    }
    out += " runs |\n";
    rule += "---|\n";
    out += &rule;
    let fixed = runs.iter().flatten().any(|r| r.fixed_p99_us > 0.0);
    for (name, get, fmt) in rows(fixed) {
        let medians: Vec<f64> = runs
            .iter()
            .map(|runs| median(runs.iter().map(get).collect()))
            .collect();
        out += &format!("| {name} |");
        for &m in &medians {
            out += &format!(" {} |", fmt(m));
        }
        for &m in &medians[1..] {
            out += &format!(" {} |", ratio(m, medians[0]));
        }
        let all: Vec<String> = brokers
            .iter()
            .zip(runs)
            .map(|(b, runs)| {
                let values: Vec<String> = runs.iter().map(|r| fmt(get(r))).collect();
                format!("{}: {}", b.label, values.join(" / "))
            })
            .collect();
        out += &format!(" {} |\n", all.join("; "));
    }
    let per_bare: Vec<f64> = runs.iter().map(|runs| broker_per_bare(runs)).collect();
    out += "| **broker ÷ bare CPU per record** (QoS 1, whole processes) |";
    for v in &per_bare {
        out += &format!(" **{v:.2}** |");
    }
    for v in &per_bare[1..] {
        out += &format!(" {} |", ratio(*v, per_bare[0]));
    }
    out += " |\n";
    out
}

fn ratio(value: f64, base: f64) -> String {
    if base == 0.0 {
        "–".into()
    } else {
        format!("{:.3}", value / base)
    }
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
        options.kafka.bootstrap,
        if options.kafka.config.is_empty() {
            String::new()
        } else {
            format!(", --kafka-config {}", options.kafka.config.describe())
        }
    );
    let brokers = if options.brokers.len() > 1 {
        let list: Vec<String> = options
            .brokers
            .iter()
            .map(|b| format!("{} = {}", b.label, b.path.display()))
            .collect();
        format!(" Binaries (interleaved rounds): {}.", list.join(", "))
    } else {
        String::new()
    };
    format!(
        "Measured {} at commit {commit}{dirty} on {cpu}, {cpus} cores shared by the broker \
         ({} shards), Kafka {} and the bench clients; Linux {}. {} runs of {} messages \
         ({} connections, window {}), mapping ack = \"{}\", broker flags: {}.{brokers}",
        command_output("date", &["-u", "+%Y-%m-%d"]),
        options.shards(),
        kafka,
        command_output("uname", &["-r"]),
        options.runs,
        thousands(options.messages as f64),
        options.connections,
        options.window,
        options.ack,
        if batching.is_empty() {
            "defaults".to_string()
        } else {
            batching.join(" ")
        }
    )
}

/// The text above the markers of BENCHMARKS.md's section, written when the section is new.
const KAFKA_SECTION_INTRO: &str = "\
`scripts/bench-kafka --write` (`ferrymq-loadgen kafka-bench --write`, about a minute;
`loadgen/src/kafka_bench.rs`). The release broker with one mapping `bench/#` → a fresh
one-partition topic (`ack = \"kafka\"`, key `{client_id}`, default headers) on the local Kafka;
8 MQTT 3.1.1 connections of the loadgen (ferrymq's codec), each pipelining up to 64 QoS 1
PUBLISHes of 150 bytes. QoS 1 time runs from the first PUBLISH to the last PUBACK (sent after
Kafka acknowledged); QoS 0 time until Kafka's high watermark holds every message. Latency is
measured from each message's scheduled send time, at half the run's QoS 1 rate. \"Bare\" is
one thread with an rdkafka `ThreadedProducer` on ferrymq's librdkafka settings
(`client_config`) producing the same records, keys and headers. CPU is user + system time of
the whole process (shards, producer threads and librdkafka's threads; for bare, the bench
process while only it runs) per record; Kafka's own CPU is in neither. Broker, Kafka and
clients share the machine's cores. Medians of the runs, each run's figure after it.";

fn write_benchmarks(section: &str) -> io::Result<()> {
    let text = std::fs::read_to_string(BENCHMARKS_MD)?;
    let (begin, end) = ("<!-- kafka:begin -->", "<!-- kafka:end -->");
    let block = format!("{begin}\n{section}{end}");
    let new = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!(
            "{}\n\n## MQTT to Kafka\n\n{KAFKA_SECTION_INTRO}\n\n{block}\n",
            text.trim_end()
        ),
    };
    std::fs::write(BENCHMARKS_MD, new)
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

/// `ferrymq-loadgen kafka-bench ARGS`: `argv` starts with "kafka-bench".
pub fn main(argv: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let options = match Options::of(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kafka-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let kafka = match Kafka::connect(&options) {
        Ok(kafka) => kafka,
        Err(e) => {
            eprintln!("kafka-bench: {e}");
            return ExitCode::from(1);
        }
    };
    if options.sweep {
        sweep(&options, &kafka);
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    // Per ack mode, per binary: the runs.
    let mut results: Vec<Vec<Vec<RunResult>>> =
        vec![vec![Vec::new(); options.brokers.len()]; options.acks.len()];
    let mut all = Vec::new();
    for (a, ack) in options.acks.iter().enumerate() {
        for round in 0..options.runs {
            // A B, B A, A B, ...: neither binary always runs first.
            let mut order: Vec<usize> = (0..options.brokers.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for b in order {
                let o = Options {
                    ack: ack.clone(),
                    broker: options.brokers[b].clone(),
                    ..options.clone()
                };
                let r = run_once(&o, &kafka, true);
                let who = if options.brokers.len() > 1 || options.acks.len() > 1 {
                    format!(" ({}, ack {ack})", o.broker.label)
                } else {
                    String::new()
                };
                eprintln!(
                    "run {}{who}: QoS 1 {} msg/s, QoS 0 {} msg/s, p99 {} at {} msg/s, broker \
                     {}/rec, bare {} rec/s {}/rec",
                    round + 1,
                    thousands(r.qos1_rate),
                    thousands(r.qos0_rate),
                    us(r.p99_us),
                    thousands(r.latency_rate),
                    cpu_us(r.qos1_broker_cpu),
                    thousands(r.bare_rate),
                    cpu_us(r.bare_process_cpu),
                );
                results[a][b].push(r);
                all.push((&options.brokers[b], ack.as_str(), r));
            }
        }
    }
    if let Some(path) = &options.json {
        if let Err(e) = std::fs::write(path, runs_json(&all)) {
            eprintln!("kafka-bench: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let mut section = String::new();
    for (a, ack) in options.acks.iter().enumerate() {
        let o = Options {
            ack: ack.clone(),
            ..options.clone()
        };
        let table = if options.brokers.len() == 1 {
            table(&results[a][0])
        } else {
            comparison_table(&options.brokers, &results[a])
        };
        // The first row says when the PUBACK went out.
        let table = match ack.as_str() {
            "durable" => {
                table.replace("PUBACK after Kafka acked", "PUBACK after the spool's flush")
            }
            "none" => table.replace("PUBACK after Kafka acked", "PUBACK at once (ack none)"),
            _ => table,
        };
        if !section.is_empty() {
            section.push('\n');
        }
        section += &format!("{}\n\n{table}", header(&o));
    }
    println!("\n{section}");
    eprintln!("({:.0} s)", started.elapsed().as_secs_f64());
    if options.write {
        match write_benchmarks(&section) {
            Ok(()) => println!("BENCHMARKS.md updated"),
            Err(e) => {
                eprintln!("kafka-bench: cannot update BENCHMARKS.md: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Options, String> {
        let mut argv = vec!["kafka-bench"];
        argv.extend_from_slice(extra);
        Options::of(Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn flags_parse_as_the_old_bench_took_them() {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.to_str().unwrap();
        let o = parse(&[
            "--quick",
            "--broker-bin",
            bin,
            "--connections",
            "4",
            "--batch-linger-us",
            "200",
            "--cores",
            "0-1",
            "--kafka-config",
            "compression.type=zstd",
            "--bootstrap",
            "k:9092",
        ])
        .unwrap();
        assert_eq!(
            (o.messages, o.connections, o.window, o.runs),
            (50_000, 4, 64, 3)
        );
        assert_eq!(o.acks, ["kafka"]);
        assert_eq!(o.shards(), 2);
        assert_eq!(
            o.batching_args(),
            ["--batch-linger-us", "200", "--cores", "0-1"]
        );
        assert_eq!(o.kafka.bootstrap, "k:9092");
        assert_eq!(o.kafka.config.iter().count(), 1);
    }

    #[test]
    fn several_binaries_and_ack_modes() {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.to_str().unwrap();
        let old = format!("old={bin}");
        let o = parse(&[
            "--broker-bin",
            &old,
            "--broker-bin",
            bin,
            "--ack",
            "kafka,durable",
        ])
        .unwrap();
        assert_eq!(o.brokers.len(), 2);
        assert_eq!(
            (o.brokers[0].label.as_str(), &o.brokers[1].label),
            ("old", &bin.to_string())
        );
        assert_eq!(o.acks, ["kafka", "durable"]);
        let error = parse(&["--broker-bin", &old, "--broker-bin", bin, "--write"]).unwrap_err();
        assert!(error.contains("--write"), "{error}");
        assert!(parse(&["--broker-bin", "/nonexistent/ferrymq"]).is_err());
        assert!(parse(&["--broker-bin", bin, "--ack", "sometimes"]).is_err());
    }

    #[test]
    fn client_ids_spread_over_the_shards() {
        let prefix = id_prefix("q1", 8, 2);
        let on_zero = (0..8)
            .filter(|i| shard_for(format!("{prefix}{i}").as_bytes(), 2) == 0)
            .count();
        assert_eq!(on_zero, 4);
        assert_eq!(id_prefix("q1", 8, 2), prefix, "deterministic");
    }

    #[test]
    fn comparison_table_has_medians_and_ratios() {
        let brokers = [
            BrokerBin {
                label: "old".into(),
                path: "a".into(),
            },
            BrokerBin {
                label: "new".into(),
                path: "b".into(),
            },
        ];
        let run = |rate: f64| RunResult {
            qos1_rate: rate,
            qos1_broker_cpu: 2e-6,
            bare_process_cpu: 1e-6,
            ..Default::default()
        };
        let table = comparison_table(
            &brokers,
            &[
                vec![run(100.0), run(300.0), run(200.0)],
                vec![run(250.0), run(150.0), run(300.0)],
            ],
        );
        assert!(
            table.starts_with("| measure | old | new | new ÷ old | runs |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| QoS 1 msg/s, PUBACK after Kafka acked | 200 | 250 | 1.250 | old: 100 / 300 / 200; new: 250 / 150 / 300 |"
            ),
            "{table}"
        );
        assert!(table.contains("| **2.00** | **2.00** | 1.000 |"), "{table}");
    }
}
