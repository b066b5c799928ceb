//! `ferrymq-loadgen`: simulated device fleets for ferrymq, and proof of where every
//! message went.
//!
//! - `main.rs`: flags (emqtt-bench's names where they fit) → a checked [`Scenario`];
//! - [`scenario`]: the scenario, topic templates, QoS mix, the payload header;
//! - [`preflight`]: open files and ephemeral ports checked before a run;
//! - [`engine`]: one shard per CPU driving its devices; [`device`]: one device's state
//!   machine over the broker's codec;
//! - [`verify`]: the Kafka consumer and the subscription check;
//! - [`kafka_config`]: `--kafka-config KEY=VALUE`, librdkafka properties for every Kafka
//!   client (a secured Kafka: TLS, SASL);
//! - [`probe`]: Kafka warmed up before the clock starts, and its own produce latency
//!   measured during the run;
//! - [`report`]: counters, progress line, latency histograms, the report and its JSON;
//! - [`run`]: one process's run; [`procs`]: `--procs`, several processes merged;
//! - [`kafka_bench`]: `ferrymq-loadgen kafka-bench`, the MQTT → Kafka benchmark
//!   (`scripts/bench-kafka`): these devices against ferrymq binaries and the bare
//!   librdkafka client;
//! - [`commands`]: `ferrymq-loadgen commands`, Kafka → MQTT: devices in persistent
//!   sessions subscribed to their own command topics, commands produced to Kafka for a
//!   `[[kafka.source]]`, each one checked at its device (lost, duplicated, out of order,
//!   produce → device latency), with devices going offline and back.
//!
//! Traffic shapes: publishers only (fan-in to Kafka), `--subscribers N` (fan-out: each
//! subscriber gets every message of the process's publishers) and `--one-to-one` (each
//! publisher has its own subscriber on its own topic, so every message goes to exactly one
//! subscriber). Subscribers connect and subscribe before any publisher connects.
//!
//! Besides messages, the report measures connections: TCP connect → CONNACK latency per
//! connection (`latency.connect`) and the connect rate over the connect phase
//! (`connections.connects_per_sec`); with `--verify-kafka`, the rate at which messages
//! reached Kafka (`kafka.received_per_sec`) and, beside publish→ack, Kafka's own produce
//! latency on the same cluster (`latency.kafka_probe`).

mod commands;
mod device;
mod engine;
mod kafka_bench;
mod kafka_config;
mod net;
mod preflight;
mod probe;
mod procs;
mod report;
mod run;
mod scenario;
mod tls;
mod verify;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferrymq::protocol::{Protocol, QoS};

use crate::kafka_config::KafkaConfig;
use crate::scenario::{KafkaVerify, QosMix, Scenario, Template, PAYLOAD_HEADER_BYTES};

#[global_allocator]
static GLOBAL: report::CountingAllocator = report::CountingAllocator;

/// Simulates MQTT devices publishing through ferrymq and checks where every message went:
/// with --verify-kafka it reads the mapped Kafka topic and reports, per device, what was
/// sent, acknowledged, received, lost, duplicated and out of order, with latencies; with
/// --subscribers or --one-to-one, what subscribing devices received. It also reports the
/// connect rate and TCP connect → CONNACK latency (TLS handshake included with --tls).
/// Exit status: 0 when no acknowledged message is missing (nor, one-to-one, delivered
/// to the wrong subscriber), 1 when one is, 2 for bad flags or a failed preflight, 3 for
/// other errors. `ferrymq-loadgen kafka-bench --help`: the MQTT → Kafka benchmark;
/// `ferrymq-loadgen commands --help`: Kafka → MQTT, commands to devices.
#[derive(Parser, Debug)]
#[command(
    name = "ferrymq-loadgen",
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true
)]
struct Args {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Broker host (emqtt-bench's -h).
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// Several brokers or listeners, e.g. 127.0.0.1:1883,127.0.0.1:1884; devices go round
    /// them. Replaces -h and -p.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Number of simulated devices connected at once (publishing; churn slots with --churn).
    #[arg(short = 'c', long = "count", default_value_t = 1000)]
    devices: u32,
    /// New connections per second.
    #[arg(short = 'i', long = "rate", default_value_t = 1000)]
    connect_rate: u32,
    /// Milliseconds between two publishes of one device.
    #[arg(short = 'I', long = "interval-ms", default_value_t = 1000)]
    publish_interval_ms: u64,
    /// Messages per second over all devices; sets the interval per device (replaces -I).
    #[arg(long)]
    total_rate: Option<f64>,
    /// Topic template: %i is the device number, %c the client id.
    #[arg(short = 't', long, default_value = "devices/%i/telemetry")]
    topic: String,
    /// Payload size in bytes (at least 24: device id, sequence number and send time).
    #[arg(short = 's', long = "size", default_value_t = 64)]
    payload_size_bytes: usize,
    /// QoS of the publishes.
    #[arg(short = 'q', long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Per-message QoS shares in percent, e.g. 0:20,1:80 (replaces -q).
    #[arg(long)]
    qos_mix: Option<String>,
    /// QoS 1/2 messages a device may have awaiting their ack.
    #[arg(long, default_value_t = 8)]
    inflight: u16,
    /// MQTT version: 3 (3.1), 4 (3.1.1) or 5.
    #[arg(short = 'V', long = "mqtt-version", default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=5))]
    mqtt_version: u8,
    /// First device number; several processes share one population with disjoint ranges.
    #[arg(long, default_value_t = 0)]
    id_start: u64,
    /// Client id prefix; the device number follows it.
    #[arg(long, default_value = "ferrymq-loadgen-")]
    id_prefix: String,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 300)]
    keep_alive_secs: u16,
    /// Clean Start (5.0) / Clean Session (3.1.1).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    clean_start: bool,
    /// Session Expiry Interval in seconds sent in 5.0 CONNECTs.
    #[arg(long = "session-expiry")]
    session_expiry_secs: Option<u32>,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    password: Option<String>,
    /// Run length in seconds, counted from the first connect; default 30 unless --messages
    /// is given (0: until interrupted).
    #[arg(long = "duration")]
    duration_secs: Option<u64>,
    /// Messages each device publishes, then it disconnects.
    #[arg(long)]
    messages: Option<u32>,
    /// Churn: each of the -c slots connects a device, publishes --messages (default 1)
    /// messages, disconnects, and takes the next device id, until --churn-total ids ran.
    #[arg(long)]
    churn: bool,
    /// Distinct device ids a churn run goes through (default 10 x -c); implies --churn.
    #[arg(long)]
    churn_total: Option<u64>,
    /// Subscribing devices (fan-out), in each process: each subscribes to --sub-topic and
    /// must receive every acknowledged message of this process's publishers.
    #[arg(long, default_value_t = 0)]
    subscribers: u32,
    /// One-to-one: each publishing device gets a subscribing device of its own that
    /// subscribes to exactly that device's topic (the -t template filled in for it), so
    /// that -c publishers and -c subscribers run and each message goes to exactly one
    /// subscriber, which must receive every acknowledged message of its publisher and
    /// nothing else. Subscribers are subscribed before publishers connect. Not with
    /// --churn, --subscribers or --sub-topic; -t must hold %i or %c.
    #[arg(long)]
    one_to_one: bool,
    /// Filter of the subscribing devices; default: the topic template with %i and %c
    /// levels as +.
    #[arg(long)]
    sub_topic: Option<String>,
    /// QoS of the subscriptions (0: subscriber losses are reported, not failed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    sub_qos: u8,
    /// Source addresses to spread connections over, e.g. 127.0.0.1-127.0.0.100.
    #[arg(long)]
    source_ips: Option<String>,
    /// CPUs to run one shard each on, e.g. 0,1 or 0-3. [default: every CPU allowed]
    #[arg(long)]
    cores: Option<String>,
    /// Processes to spread devices over (each with its share of the devices, its own id
    /// range and its share of --cores), for more connections than one process may open;
    /// results are merged.
    #[arg(long, default_value_t = 1)]
    procs: u32,
    /// Seconds to wait for a connection and its CONNACK.
    #[arg(long, default_value_t = 10)]
    connect_timeout_secs: u64,
    /// After the run, seconds publishers wait for outstanding acks (also the ack timeout).
    #[arg(long, default_value_t = 15)]
    drain_secs: u64,
    /// Kafka bootstrap servers to verify delivery against. The report then also gives the
    /// rate at which messages reached Kafka (kafka.received_per_sec): messages found over
    /// the time from the earliest send of one of them to the last one's arrival, which is
    /// the record's LogAppendTime where the topic uses it (see --kafka-create-topics), else
    /// the moment the consumer read it.
    #[arg(long, value_name = "BOOTSTRAP")]
    verify_kafka: Option<String>,
    /// With --verify-kafka, a librdkafka property for each of the loadgen's Kafka clients
    /// (the consumer, the probe producer and the admin client that creates topics), e.g.
    /// security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512, sasl.username=NAME,
    /// sasl.password=${env:KAFKA_PASSWORD}, ssl.ca.location=ca.pem,
    /// ssl.certificate.location=client.pem, ssl.key.location=client.key or
    /// compression.type=zstd. Repeatable; set after the loadgen's own settings, so it wins
    /// over them; not bootstrap.servers (that is --verify-kafka). A value written
    /// ${env:NAME} is that environment variable, ${file:PATH} that file's content without
    /// its final newline. Checked by librdkafka before the run (exit 2 if refused); values
    /// of keys holding password, secret or token, and values read from ${env:}/${file:},
    /// are never printed.
    #[arg(long, value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
    /// Kafka topic(s) the broker maps the messages to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    kafka_topic: Vec<String>,
    /// Create the --kafka-topic topics that do not exist yet, with this many partitions and
    /// LogAppendTime timestamps (publish→Kafka is then measured to Kafka's append time
    /// instead of the moment the consumer reads the record).
    #[arg(long, value_name = "PARTITIONS")]
    kafka_create_topics: Option<i32>,
    /// Seconds after the run to wait for acknowledged messages to appear in Kafka.
    #[arg(long, default_value_t = 60)]
    verify_timeout_secs: u64,
    /// With --verify-kafka, warm Kafka up before the clock starts (after
    /// --kafka-create-topics, before the topics' end offsets are captured and the first
    /// device connects): rounds of small probe records, one to each partition of the
    /// --kafka-topic topics that exist and one to --kafka-probe-topic, until the slowest
    /// record of a round is acknowledged within 50 ms of its send three rounds in a row, or
    /// until this many seconds have passed (then a warning says how slow Kafka still was
    /// and the run goes on). One line tells how long it took. The verification reads from
    /// after the probe records, so it never counts them. 0: no warm-up.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    kafka_warmup_timeout: u64,
    /// With --verify-kafka, the topic (created with 1 partition if missing) that gets one
    /// small record every 100 ms during the run, from a producer of its own. Their send →
    /// ack latency is reported as "Kafka produce (probe)" beside publish→ack (JSON:
    /// latency.kafka_probe, kafka_probe): Kafka's own append latency on the same cluster at
    /// the same time, which tells whether slow acks waited for Kafka or for the broker.
    /// With --procs the parent process sends them, until the last process has verified.
    #[arg(long, value_name = "TOPIC", default_value = probe::PROBE_TOPIC_DEFAULT)]
    kafka_probe_topic: String,
    /// Write the final report as JSON to this file: counts, rates (e.g.
    /// connections.connects_per_sec, kafka.received_per_sec) and latency summaries in µs
    /// (latency.connect, .puback, .subscriber, .kafka, .kafka_probe), with the histograms
    /// behind them.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write per-device figures (sent, acknowledged, received in Kafka, lost, duplicated,
    /// out of order) as CSV to this file (with --verify-kafka).
    #[arg(long)]
    per_device: Option<PathBuf>,
    /// The broker's pid (several, comma-separated, for several brokers), to report its
    /// memory per connection: VmRSS at the start and at the most connections.
    #[arg(long, value_delimiter = ',')]
    broker_pid: Vec<u32>,
    /// MQTT over TLS (1.2 or 1.3, rustls): every device makes a full TLS handshake (no
    /// session resumption) and holds a TLS connection, which costs a few KiB more per
    /// connected device than plain TCP (see the report's memory figures). Needs --cafile,
    /// or --insecure.
    #[arg(long)]
    tls: bool,
    /// PEM file of the CA certificate(s) that verify the broker's certificate (--tls).
    #[arg(long, value_name = "PATH")]
    cafile: Option<String>,
    /// With --tls and no --cafile: accept any broker certificate, unverified (the
    /// connection is encrypted but the broker is not authenticated: for tests only).
    #[arg(long)]
    insecure: bool,
    /// PEM client certificate (chain) for mutual TLS; needs --key.
    #[arg(long, value_name = "PATH")]
    cert: Option<String>,
    /// PEM private key of --cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH")]
    key: Option<String>,
    /// Name the broker's certificate must hold (DNS name or IP address) [default: the host
    /// of -h, or of the first --targets].
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Internal: run as one of --procs' children.
    #[arg(long, hide = true)]
    child: bool,
}

/// Default run length without --duration or --messages.
const DURATION_DEFAULT_SECS: u64 = 30;
/// Default churn ids per slot without --churn-total.
const CHURN_IDS_PER_SLOT_DEFAULT: u64 = 10;

fn parse_ip_range(spec: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
    let parse = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|e| format!("--source-ips: {s:?}: {e}"))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if u32::from(first) > u32::from(last) {
        return Err(format!("--source-ips: {first} comes after {last}"));
    }
    Ok((first, last))
}

fn check(args: &Args) -> Result<(), String> {
    if args.payload_size_bytes < PAYLOAD_HEADER_BYTES {
        return Err(format!(
            "--size: at least {PAYLOAD_HEADER_BYTES} bytes are needed for device id, sequence \
             number and send time"
        ));
    }
    if args.connect_rate == 0 {
        return Err("--rate: must be at least 1 connection per second".into());
    }
    if args.devices == 0 {
        return Err("--count: must be at least 1 device".into());
    }
    if let Some(spec) = &args.source_ips {
        parse_ip_range(spec)?;
    }
    if let Some(mix) = &args.qos_mix {
        QosMix::parse(mix)?;
    }
    if args.total_rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--total-rate: must be above 0".into());
    }
    if args.messages == Some(0) {
        return Err("--messages: must be at least 1".into());
    }
    if args.inflight == 0 {
        return Err("--inflight: must be at least 1".into());
    }
    if args.procs == 0 || args.procs > args.devices {
        return Err(format!(
            "--procs: must be between 1 and the {} devices",
            args.devices
        ));
    }
    if args.churn_total == Some(0) {
        return Err("--churn-total: must be at least 1".into());
    }
    if args.password.is_some() && args.username.is_none() && args.mqtt_version < 5 {
        return Err("--password: MQTT 3.1/3.1.1 need a --username with it".into());
    }
    if args.verify_kafka.is_some() && args.kafka_topic.is_empty() {
        return Err("--verify-kafka: name the topic(s) to read with --kafka-topic".into());
    }
    if args.kafka_probe_topic.is_empty() {
        return Err("--kafka-probe-topic: must not be empty".into());
    }
    if args.kafka_create_topics.is_some_and(|n| n < 1) {
        return Err("--kafka-create-topics: at least 1 partition".into());
    }
    if args.per_device.is_some() && args.verify_kafka.is_none() {
        return Err("--per-device: needs --verify-kafka".into());
    }
    if !args.kafka_config.is_empty() && args.verify_kafka.is_none() {
        return Err("--kafka-config: needs --verify-kafka".into());
    }
    if !args.tls {
        for (given, flag) in [
            (args.cafile.is_some(), "--cafile"),
            (args.insecure, "--insecure"),
            (args.cert.is_some(), "--cert"),
            (args.key.is_some(), "--key"),
            (args.tls_server_name.is_some(), "--tls-server-name"),
        ] {
            if given {
                return Err(format!("{flag}: needs --tls"));
            }
        }
    } else {
        if args.cafile.is_none() && !args.insecure {
            return Err(
                "--tls: give --cafile PATH (the PEM CA that signed the broker's \
                        certificate) to verify the broker, or --insecure to skip verification"
                    .into(),
            );
        }
        if args.cert.is_some() != args.key.is_some() {
            return Err("--cert and --key: give both or neither".into());
        }
    }
    if args.one_to_one {
        if args.churn || args.churn_total.is_some() {
            return Err(
                "--one-to-one: not with --churn/--churn-total (each subscriber stays paired \
                 with one publishing device for the whole run)"
                    .into(),
            );
        }
        if args.subscribers > 0 {
            return Err(
                "--one-to-one: not with --subscribers (one-to-one runs one subscriber per \
                 publishing device, -c of them)"
                    .into(),
            );
        }
        if args.sub_topic.is_some() {
            return Err(
                "--one-to-one: not with --sub-topic (each subscriber subscribes to its \
                 publisher's topic)"
                    .into(),
            );
        }
        if !Template::parse(&args.topic).is_per_device() {
            return Err(format!(
                "--one-to-one: the topic template {:?} must hold %i or %c, so that each \
                 publishing device has a topic of its own",
                args.topic
            ));
        }
    }
    Ok(())
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| format!("target {target:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("target {target:?}: no address"))
}

fn scenario_of(args: &Args) -> Result<Scenario, String> {
    let targets = if args.targets.is_empty() {
        vec![resolve(&format!("{}:{}", args.host, args.port))?]
    } else {
        args.targets
            .iter()
            .map(|t| resolve(t))
            .collect::<Result<_, _>>()?
    };
    let source_ips = match &args.source_ips {
        Some(spec) => {
            let (first, last) = parse_ip_range(spec)?;
            (u32::from(first)..=u32::from(last))
                .map(|ip| IpAddr::V4(Ipv4Addr::from(ip)))
                .collect()
        }
        None => Vec::new(),
    };
    let cores = match &args.cores {
        Some(list) => ferrymq::config::parse_cpu_list(list).map_err(|e| format!("--cores: {e}"))?,
        None => ferrymq::runtime::affinity_cpus().map_err(|e| format!("CPU affinity: {e}"))?,
    };
    let qos = QoS::from_bits(args.qos).map_err(|e| format!("--qos: {e}"))?;
    let qos_mix = match &args.qos_mix {
        Some(mix) => QosMix::parse(mix)?,
        None => QosMix::only(qos),
    };
    let publish_interval = match args.total_rate {
        Some(rate) => Duration::from_secs_f64(f64::from(args.devices) / rate),
        None => Duration::from_millis(args.publish_interval_ms),
    };
    let churn = args.churn || args.churn_total.is_some();
    let messages_per_device = match (args.messages, churn) {
        (Some(n), _) => Some(n),
        (None, true) => Some(1),
        (None, false) => None,
    };
    let duration_secs = match (args.duration_secs, messages_per_device) {
        (Some(secs), _) => secs,
        (None, Some(_)) => 0,
        (None, None) => DURATION_DEFAULT_SECS,
    };
    let topic = Template::parse(&args.topic);
    let protocol = match args.mqtt_version {
        3 => Protocol::V3_1,
        4 => Protocol::V3_1_1,
        _ => Protocol::V5,
    };
    Ok(Scenario {
        targets,
        source_ips,
        cores,
        devices: args.devices,
        subscribers: if args.one_to_one {
            args.devices
        } else {
            args.subscribers
        },
        one_to_one: args.one_to_one,
        connect_rate: args.connect_rate,
        connect_timeout: Duration::from_secs(args.connect_timeout_secs.max(1)),
        publish_interval,
        sub_topic: args
            .sub_topic
            .clone()
            .unwrap_or_else(|| topic.wildcard_filter()),
        topic,
        sub_qos: QoS::from_bits(args.sub_qos).map_err(|e| format!("--sub-qos: {e}"))?,
        payload_size_bytes: args.payload_size_bytes,
        qos_mix,
        inflight_max: args.inflight,
        protocol,
        keep_alive_secs: args.keep_alive_secs,
        clean_start: args.clean_start,
        session_expiry_secs: args.session_expiry_secs,
        username: args.username.clone(),
        password: args.password.clone(),
        id_start: args.id_start,
        id_prefix: args.id_prefix.clone(),
        duration: (duration_secs > 0).then(|| Duration::from_secs(duration_secs)),
        messages_per_device,
        churn_total: churn.then(|| {
            args.churn_total
                .unwrap_or(u64::from(args.devices) * CHURN_IDS_PER_SLOT_DEFAULT)
        }),
        drain: Duration::from_secs(args.drain_secs.max(1)),
        verify: match &args.verify_kafka {
            Some(bootstrap) => Some(KafkaVerify {
                bootstrap: bootstrap.clone(),
                config: kafka_config_of(args)?,
                topics: args.kafka_topic.clone(),
                timeout: Duration::from_secs(args.verify_timeout_secs),
                create_partitions: args.kafka_create_topics,
                warmup_timeout: Duration::from_secs(args.kafka_warmup_timeout),
                probe_topic: args.kafka_probe_topic.clone(),
            }),
            None => None,
        },
        json: args.json.clone(),
        per_device_csv: args.per_device.clone(),
        broker_pids: args.broker_pid.clone(),
        child: args.child,
        tls: if args.tls {
            Some(tls::TlsClient::new(&tls::TlsOptions {
                cafile: args.cafile.clone(),
                insecure: args.insecure,
                cert: args.cert.clone(),
                key: args.key.clone(),
                server_name: args
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| default_server_name(args)),
            })?)
        } else {
            None
        },
        commands: None,
        exact_schedule: false,
    })
}

/// `--kafka-config`: parsed, references read, each property checked by librdkafka.
fn kafka_config_of(args: &Args) -> Result<KafkaConfig, String> {
    let config = KafkaConfig::parse(&args.kafka_config, "--verify-kafka")?;
    config.check()?;
    Ok(config)
}

/// `--tls-server-name`'s default: the host of -h, or of the first --targets entry.
fn default_server_name(args: &Args) -> String {
    let Some(target) = args.targets.first() else {
        return args.host.clone();
    };
    let host = target
        .rsplit_once(':')
        .map_or(target.as_str(), |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// The connections of the whole run and of its busiest process, for the preflight.
fn demand_of(scenario: &Scenario, procs: u64) -> preflight::Demand {
    let publishers = procs::share(u64::from(scenario.devices), 0, procs);
    // Fan-out: each process has all --subscribers; one-to-one: one per publisher.
    let (busiest, total) = if scenario.one_to_one {
        (2 * publishers, 2 * u64::from(scenario.devices))
    } else {
        (
            publishers + u64::from(scenario.subscribers),
            u64::from(scenario.devices) + u64::from(scenario.subscribers) * procs,
        )
    };
    preflight::Demand {
        connections_per_process: busiest,
        connections_total: total,
        shards: scenario.cores.len() as u64,
        procs,
        source_ips: scenario.source_ips.len().max(1) as u64,
        targets: scenario.targets.len() as u64,
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("kafka-bench") {
        return kafka_bench::main(std::env::args().skip(1));
    }
    if std::env::args().nth(1).as_deref() == Some("commands") {
        return commands::main(std::env::args().skip(1));
    }
    let args = Args::parse();
    if let Err(message) = check(&args) {
        eprintln!("ferrymq-loadgen: {message}");
        return ExitCode::from(2);
    }
    let scenario = match scenario_of(&args) {
        Ok(scenario) => scenario,
        Err(message) => {
            eprintln!("ferrymq-loadgen: {message}");
            return ExitCode::from(2);
        }
    };
    let procs = u64::from(args.procs);
    let limits = match preflight::Limits::read() {
        Ok(limits) => limits,
        Err(error) => {
            eprintln!("ferrymq-loadgen: preflight: {error}");
            return ExitCode::from(2);
        }
    };
    match preflight::check(&demand_of(&scenario, procs), &limits) {
        Ok(raise) => {
            if let Some(fds) = raise.filter(|_| procs == 1) {
                if let Err(error) = preflight::raise_nofile(fds) {
                    eprintln!("ferrymq-loadgen: preflight: raise RLIMIT_NOFILE to {fds}: {error}");
                    return ExitCode::from(2);
                }
            }
        }
        Err(problems) => {
            for problem in problems.lines() {
                eprintln!("ferrymq-loadgen: preflight: {problem}");
            }
            return ExitCode::from(2);
        }
    }
    if !scenario.child {
        println!("scenario: {}", run::describe(&scenario));
    }
    // Before the clock starts, once, in the process that prints the report.
    let probe = match (&scenario.verify, scenario.child) {
        (Some(verify), false) => match probe::KafkaProbe::prepare(verify) {
            Ok(probe) => Some(probe),
            Err(message) => {
                eprintln!("ferrymq-loadgen: {message}");
                return ExitCode::from(3);
            }
        },
        _ => None,
    };
    let result = if procs > 1 {
        procs::run(&scenario, args.total_rate, procs, probe)
    } else {
        run::run(scenario.clone(), probe)
    };
    let report = match result {
        Ok(report) => report,
        Err(message) => {
            eprintln!("ferrymq-loadgen: {message}");
            return ExitCode::from(3);
        }
    };
    if let Some(path) = &scenario.json {
        if let Err(message) = run::write_json(path, &report) {
            eprintln!("ferrymq-loadgen: {message}");
            return ExitCode::from(3);
        }
    }
    if !scenario.child {
        print!("{}", report.table());
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn emqtt_bench_style_flags_parse() {
        let args = Args::try_parse_from([
            "ferrymq-loadgen",
            "-h",
            "10.0.0.1",
            "-c",
            "19000",
            "-i",
            "500",
            "-I",
            "100",
            "-t",
            "d/%i/t",
            "-s",
            "128",
            "-q",
            "2",
            "-V",
            "4",
        ])
        .unwrap();
        assert_eq!(
            (args.devices, args.connect_rate, args.qos, args.mqtt_version),
            (19000, 500, 2, 4)
        );
        assert!(check(&args).is_ok());
        assert!(Args::try_parse_from(["ferrymq-loadgen", "-q", "3"]).is_err());
    }

    #[test]
    fn one_to_one_pairs_every_device_and_refuses_what_does_not_fit() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["ferrymq-loadgen", "-c", "50", "--one-to-one"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap()
        };
        let args = parse(&["--procs", "2"]);
        assert!(check(&args).is_ok());
        let scenario = scenario_of(&args).unwrap();
        assert!(scenario.one_to_one);
        assert_eq!((scenario.devices, scenario.subscribers), (50, 50));
        let demand = demand_of(&scenario, 2);
        assert_eq!(
            (demand.connections_per_process, demand.connections_total),
            (50, 100)
        );
        for (extra, word) in [
            (&["--churn"][..], "--churn"),
            (&["--churn-total", "500"][..], "--churn"),
            (&["--subscribers", "3"][..], "--subscribers"),
            (&["--sub-topic", "d/+"][..], "--sub-topic"),
            (&["-t", "all/the/same"][..], "%i or %c"),
        ] {
            let error = check(&parse(extra)).unwrap_err();
            assert!(
                error.starts_with("--one-to-one") && error.contains(word),
                "{extra:?}: {error}"
            );
        }
        assert!(check(&parse(&["-t", "d/%c/up"])).is_ok());
    }

    #[test]
    fn kafka_config_reaches_the_verification_and_needs_it() {
        let args = Args::try_parse_from([
            "ferrymq-loadgen",
            "--verify-kafka",
            "127.0.0.1:9495",
            "--kafka-topic",
            "t",
            "--kafka-config",
            "security.protocol=SASL_SSL",
            "--kafka-config",
            "sasl.mechanism=SCRAM-SHA-512",
            "--kafka-config=sasl.username=ferrymq",
            "--kafka-config",
            "sasl.password=not-shown",
            "--kafka-config",
            "compression.type=zstd",
        ])
        .unwrap();
        assert!(check(&args).is_ok());
        let scenario = scenario_of(&args).unwrap();
        let verify = scenario.verify.as_ref().unwrap();
        assert_eq!(verify.config.iter().count(), 5);
        let config = verify::client_config(verify, rdkafka::config::ClientConfig::new());
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9495"));
        assert_eq!(config.get("sasl.password"), Some("not-shown"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
        let described = run::describe(&scenario);
        assert!(
            described.contains("security.protocol=SASL_SSL") && !described.contains("not-shown"),
            "{described}"
        );
        assert!(!format!("{scenario:?}").contains("not-shown"));

        let without = Args::try_parse_from(["ferrymq-loadgen", "--kafka-config", "a=b"]).unwrap();
        assert_eq!(
            check(&without).unwrap_err(),
            "--kafka-config: needs --verify-kafka"
        );
        let malformed = Args::try_parse_from([
            "ferrymq-loadgen",
            "--verify-kafka",
            "k:9092",
            "--kafka-topic",
            "t",
            "--kafka-config",
            "linger.ms",
        ])
        .unwrap();
        let error = scenario_of(&malformed).unwrap_err();
        assert!(error.starts_with("--kafka-config "), "{error}");
    }

    #[test]
    fn source_ip_ranges() {
        assert_eq!(
            parse_ip_range("127.0.0.1-127.0.0.100").unwrap(),
            (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 100))
        );
        assert!(parse_ip_range("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_ip_range("localhost").is_err());
    }
}
