//! `ferrymq-loadgen commands`: Kafka → MQTT, the direction of `[[kafka.source]]`. The
//! devices are command receivers; the loadgen produces their commands to Kafka and proves
//! that each one reached its device.
//!
//! A run, in order:
//! 1. Kafka: the topic is created if missing (`--kafka-partitions`), and a producer made.
//! 2. Devices: `-c` of them connect at `-i` per second on the engine's shards, each with
//!    the plain client id of device `--id-start + k`, a persistent session (MQTT 5: clean
//!    start at the first connect, Session Expiry `--session-expiry`; 3.1.1: clean session
//!    0) and one subscription at `-q` to its own topic (`-t`, `%c` filled in).
//! 3. Readiness: one probe record to each partition, keyed by a connected device's client
//!    id, until every partition's probe reached a device (resent each second, for at most
//!    `--kafka-warmup-timeout`): the broker's source is assigned every partition and
//!    delivers from before the first command, whatever its `start`.
//! 4. Commands: `--total-rate` per second over all devices, in turn (device k gets its
//!    sequence numbers 0, 1, 2, ...), for `--duration` seconds or `--commands` each. A
//!    record's key is the device's client id, its payload the loadgen's payload header
//!    (device number, sequence number, produce time in µs) and filler to `-s` bytes. A
//!    command counts once Kafka acknowledged it (its delivery report); the send →
//!    delivery report latency is "Kafka produce→ack".
//!    Meanwhile `--offline-fraction` of the devices (chosen and spread over the run by a
//!    hash of their number) go offline once, by DISCONNECT or, with `--offline-drop`, by
//!    closing the connection, and reconnect `--offline-secs` later with clean start 0: the
//!    report counts the reconnects that found their session (and those that did not).
//!    A PUBLISH arriving after a device's DISCONNECT is neither acknowledged nor counted:
//!    the broker owes it again once the session resumes.
//! 5. Drain: until every acknowledged command arrived and every device is back, or
//!    `--drain-secs` after the end of production, the last device's return and the last
//!    command that arrived, whichever comes last.
//! 6. Devices leave (MQTT 5: DISCONNECT with Session Expiry 0, so no session outlives the
//!    run); the verdict per device: lost (acknowledged by Kafka, never received), duplicated,
//!    out of order (a first arrival after a higher sequence number), latency from the
//!    produce call to the device's receipt, for devices that stayed online and for those
//!    that went offline (whose commands waited in their sessions) apart.
//! 7. `--bare-consumer`: one rdkafka consumer on one thread reads the run's records
//!    again (from the offsets before the first command to those after the last), for
//!    librdkafka's own CPU per record beside the broker's (`--broker-pid`).
//!
//! Commands carry their produce time, so that commands of an earlier run (redelivered by
//! a session, or read by a source that starts at `earliest`) are told apart: counted as
//! stale, not as this run's.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use ferrymq::protocol::{Protocol, QoS};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::engine::{self, Control, ShardOutput};
use crate::kafka_config::KafkaConfig;
use crate::preflight;
use crate::report::{
    dump, latency_histogram, record_latency, undump, ConnectionFigures, DeviceIssue, Latency,
    LatencySummary, Totals, DEVICE_ISSUES_LISTED_MAX, PROBE_PARTITION_WORDS,
};
use crate::run::stop_on_signals;
use crate::scenario::{
    now_us, CommandDevices, KafkaVerify, PayloadHeader, QosMix, Scenario, Template,
    PAYLOAD_HEADER_BYTES, PROBE_DEVICE,
};
use crate::verify::{self, DeviceRecord, SeqSet};

/// Kafka → MQTT: devices subscribe to their own command topics in persistent sessions
/// while the loadgen produces their commands to Kafka, and every command Kafka
/// acknowledged must reach its device: lost, duplicated and out of order per device,
/// Kafka produce → device latency p50/p99/p99.9, throughput, with devices going offline
/// and back during the run (--offline-fraction).
///
/// The broker must already run with a [[kafka.source]] that reads --kafka-topic and whose
/// mqtt template gives the topic -t gives the device, the record key being the device's
/// client id: with the defaults,
///
///   [[kafka.source]]
///   name = "commands"
///   topics = ["device-commands"]
///   mqtt = "devices/{key}/commands"
///   qos = 1
///
/// (its qos at least -q; start = "latest" or "earliest": before the first command the
/// loadgen waits, at most --kafka-warmup-timeout, until the broker delivered a probe
/// record from every partition, and it tells an earlier run's commands apart by their
/// produce time). The topic is created if missing, with --kafka-partitions partitions.
///
/// One process holds at most about 19,900 devices under an open-files limit of 20,000;
/// for more, run several `commands` processes with disjoint --id-start ranges.
///
/// Exit status: 0 when every command Kafka acknowledged reached its device (at -q 0,
/// losses are reported, not failed), 1 when one is missing or reached another device, 2
/// for bad flags or a failed preflight, 3 for other errors (Kafka unreachable, the broker
/// not delivering the probe records).
#[derive(Parser, Debug)]
#[command(
    name = "ferrymq-loadgen commands",
    bin_name = "ferrymq-loadgen commands",
    verbatim_doc_comment,
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true
)]
struct Args {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Broker host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// Several brokers or listeners, e.g. 127.0.0.1:1883,127.0.0.1:1884; devices go round
    /// them. Replaces -h and -p.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Devices (command receivers), connected at once.
    #[arg(short = 'c', long = "count", default_value_t = 1000)]
    devices: u32,
    /// New connections per second.
    #[arg(short = 'i', long = "rate", default_value_t = 1000)]
    connect_rate: u32,
    /// Commands per second produced to Kafka over all devices, each device in turn (0: as
    /// fast as the producer takes them).
    #[arg(long, default_value_t = 1000.0)]
    total_rate: f64,
    /// Seconds of producing commands [default: 30 unless --commands is given].
    #[arg(long = "duration")]
    duration_secs: Option<u64>,
    /// Commands per device, then producing stops (instead of --duration).
    #[arg(long)]
    commands: Option<u32>,
    /// Each device's command topic: %c is its client id (the record key), %i its number.
    /// Must hold %c, and be what the source's mqtt template makes of the key.
    #[arg(short = 't', long, default_value = "devices/%c/commands")]
    topic: String,
    /// Command payload size in bytes (at least 24: device, sequence number, produce time).
    #[arg(short = 's', long = "size", default_value_t = 64)]
    payload_size_bytes: usize,
    /// QoS of the devices' subscriptions (0: losses are reported, not failed; what
    /// offline devices miss then is expected).
    #[arg(short = 'q', long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// MQTT version: 3 (3.1), 4 (3.1.1) or 5. 3.1/3.1.1 sessions (clean session 0) have no
    /// expiry: they stay on the broker after the run.
    #[arg(short = 'V', long = "mqtt-version", default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=5))]
    mqtt_version: u8,
    /// Session Expiry Interval in seconds (MQTT 5); must outlast --offline-secs.
    #[arg(long = "session-expiry", default_value_t = 300)]
    session_expiry_secs: u32,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 300)]
    keep_alive_secs: u16,
    /// First device number; several processes share one population with disjoint ranges.
    #[arg(long, default_value_t = 0)]
    id_start: u64,
    /// Client id prefix; the device number follows it.
    #[arg(long, default_value = "ferrymq-loadgen-")]
    id_prefix: String,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    password: Option<String>,
    /// Share of the devices (0 to 1) that go offline once while commands are produced, at
    /// moments spread over the run, and reconnect to their session --offline-secs later.
    #[arg(long, default_value_t = 0.0)]
    offline_fraction: f64,
    /// Seconds an offline device stays away.
    #[arg(long, default_value_t = 5)]
    offline_secs: u64,
    /// Offline devices close their connection without DISCONNECT (a device losing its
    /// network) instead of disconnecting.
    #[arg(long)]
    offline_drop: bool,
    /// Seconds to wait for the commands still on their way after producing, after the
    /// last device's return and after the last command that arrived: what is missing then
    /// is lost.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
    /// Kafka bootstrap servers [default: $FERRYMQ_KAFKA_BOOTSTRAP, else 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    kafka_bootstrap: Option<String>,
    /// The Kafka topic the broker's [[kafka.source]] reads: the commands go there.
    #[arg(long, value_name = "TOPIC")]
    kafka_topic: String,
    /// Partitions of --kafka-topic when the loadgen creates it (when it does not exist).
    #[arg(long, value_name = "N", default_value_t = 8)]
    kafka_partitions: i32,
    /// A librdkafka property for each of the loadgen's Kafka clients (the producer, the
    /// admin client, the bare consumer), e.g. security.protocol=SASL_SSL or
    /// compression.type=zstd; repeatable, set after the loadgen's own (so it wins). A value
    /// ${env:NAME} is that environment variable, ${file:PATH} that file's content; values
    /// of secret keys are never printed.
    #[arg(long, value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
    /// Seconds to wait for the broker to deliver a probe record from every partition
    /// before the first command.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    kafka_warmup_timeout: u64,
    /// The broker's pid: its CPU time (utime + stime from /proc, all its threads) from the
    /// first command to the last delivery, per delivered command.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// After the run, read the run's records again with one bare rdkafka consumer on one
    /// thread: records/s and this process's CPU per record, beside the broker's.
    #[arg(long)]
    bare_consumer: bool,
    /// Write the report as JSON to this file (counts, rates, latency summaries in µs and
    /// the histograms behind them).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write per-device figures (produced, acknowledged by Kafka, received, lost,
    /// duplicated, out of order) as CSV to this file.
    #[arg(long)]
    per_device: Option<PathBuf>,
    /// Source addresses to spread connections over, e.g. 127.0.0.1-127.0.0.100.
    #[arg(long)]
    source_ips: Option<String>,
    /// CPUs to run one shard each on, e.g. 0,1 or 0-3. [default: every CPU allowed]
    #[arg(long)]
    cores: Option<String>,
    /// Seconds to wait for a connection and its CONNACK.
    #[arg(long, default_value_t = 10)]
    connect_timeout_secs: u64,
}

/// Default production length without --duration or --commands.
const DURATION_DEFAULT_SECS: u64 = 30;
/// Probe records still missing are sent again this often.
const PROBE_RESEND: Duration = Duration::from_secs(1);
/// How long the end of production waits for Kafka's delivery reports.
const FLUSH_WAIT: Duration = Duration::from_secs(60);
/// The bare consumer gives up after this long without reaching the end offsets.
const BARE_CONSUMER_WAIT: Duration = Duration::from_secs(120);
/// Commands one device may get in a run: sequence numbers beyond are not tracked.
const COMMANDS_PER_DEVICE_MAX: u64 = 1 << 28;

/// Everything a run needs, checked.
struct Plan {
    scenario: Arc<Scenario>,
    kafka: KafkaVerify,
    topic: String,
    partitions: i32,
    /// Commands per second; 0: unthrottled.
    rate: f64,
    duration: Option<Duration>,
    commands_per_device: Option<u32>,
    drain: Duration,
    warmup_timeout: Duration,
    broker_pid: Option<u32>,
    bare_consumer: bool,
    json: Option<PathBuf>,
    per_device: Option<PathBuf>,
}

fn parse_ip_range(spec: &str) -> Result<Vec<IpAddr>, String> {
    let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
    let parse = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|e| format!("--source-ips: {s:?}: {e}"))
    };
    let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
    if first > last {
        return Err(format!(
            "--source-ips: {spec:?}: the first address comes after the last"
        ));
    }
    Ok((first..=last)
        .map(|ip| IpAddr::V4(Ipv4Addr::from(ip)))
        .collect())
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

impl Plan {
    fn of(args: &Args) -> Result<Plan, String> {
        if args.devices == 0 {
            return Err("--count: must be at least 1 device".into());
        }
        if args.connect_rate == 0 {
            return Err("--rate: must be at least 1 connection per second".into());
        }
        if args.total_rate.is_nan() || args.total_rate < 0.0 {
            return Err("--total-rate: must be 0 (unthrottled) or above".into());
        }
        if args.commands == Some(0) {
            return Err("--commands: must be at least 1".into());
        }
        if args.duration_secs == Some(0) {
            return Err("--duration: must be at least 1 second".into());
        }
        if args.duration_secs.is_some() && args.commands.is_some() {
            return Err("--duration and --commands: give one of them".into());
        }
        if args.payload_size_bytes < PAYLOAD_HEADER_BYTES {
            return Err(format!(
                "--size: at least {PAYLOAD_HEADER_BYTES} bytes are needed for device, sequence \
                 number and produce time"
            ));
        }
        if !args.topic.contains("%c") {
            return Err(format!(
                "--topic: {:?} must hold %c: the record key is the device's client id, and \
                 the source's mqtt template must put it ({{key}}) into the device's topic",
                args.topic
            ));
        }
        if !(0.0..=1.0).contains(&args.offline_fraction) {
            return Err("--offline-fraction: must be within 0 and 1".into());
        }
        let offline = args.offline_fraction > 0.0;
        if offline && args.offline_secs == 0 {
            return Err("--offline-secs: must be at least 1 with --offline-fraction".into());
        }
        if args.mqtt_version == 5 && u64::from(args.session_expiry_secs) <= args.offline_secs {
            return Err(format!(
                "--session-expiry: {} s would end the sessions of devices offline for {} s \
                 (--offline-secs); give more",
                args.session_expiry_secs, args.offline_secs
            ));
        }
        if args.password.is_some() && args.username.is_none() && args.mqtt_version < 5 {
            return Err("--password: MQTT 3.1/3.1.1 need a --username with it".into());
        }
        if args.kafka_topic.is_empty() {
            return Err("--kafka-topic: must not be empty".into());
        }
        if !(1..=(PROBE_PARTITION_WORDS * 64) as i32).contains(&args.kafka_partitions) {
            return Err(format!(
                "--kafka-partitions: 1 to {}",
                PROBE_PARTITION_WORDS * 64
            ));
        }
        if args.bare_consumer && args.kafka_config.iter().any(|c| c.starts_with("group.id=")) {
            return Err("--kafka-config group.id: the loadgen picks its own".into());
        }
        let bootstrap = args.kafka_bootstrap.clone().unwrap_or_else(|| {
            std::env::var("FERRYMQ_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
        });
        if bootstrap.trim().is_empty() {
            return Err("--kafka-bootstrap: must name at least one HOST:PORT".into());
        }
        let config = KafkaConfig::parse(&args.kafka_config, "--kafka-bootstrap")?;
        config.check()?;
        let duration = match (args.duration_secs, args.commands) {
            (Some(secs), _) => Some(Duration::from_secs(secs)),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(DURATION_DEFAULT_SECS)),
        };
        // How long producing lasts, as far as it is known: the span offline devices leave
        // within, so that they are back before it ends where they can be.
        let production = match (duration, args.commands) {
            (Some(duration), _) => duration,
            (None, Some(n)) if args.total_rate > 0.0 => {
                Duration::from_secs_f64(f64::from(n) * f64::from(args.devices) / args.total_rate)
            }
            _ => Duration::ZERO,
        };
        let per_device = match (duration, args.commands) {
            (_, Some(n)) => u64::from(n),
            (Some(d), None) if args.total_rate > 0.0 => {
                (d.as_secs_f64() * args.total_rate / f64::from(args.devices)).ceil() as u64
            }
            _ => 0,
        };
        if per_device >= COMMANDS_PER_DEVICE_MAX {
            return Err(format!(
                "{per_device} commands per device: at most {COMMANDS_PER_DEVICE_MAX}"
            ));
        }
        let away = Duration::from_secs(args.offline_secs);
        let offline_window = if production > away {
            production - away
        } else {
            production / 2
        };
        let targets = if args.targets.is_empty() {
            vec![resolve(&format!("{}:{}", args.host, args.port))?]
        } else {
            args.targets
                .iter()
                .map(|t| resolve(t))
                .collect::<Result<_, _>>()?
        };
        let cores = match &args.cores {
            Some(list) => {
                ferrymq::config::parse_cpu_list(list).map_err(|e| format!("--cores: {e}"))?
            }
            None => ferrymq::runtime::affinity_cpus().map_err(|e| format!("CPU affinity: {e}"))?,
        };
        let sub_qos = QoS::from_bits(args.qos).map_err(|e| format!("--qos: {e}"))?;
        let protocol = match args.mqtt_version {
            3 => Protocol::V3_1,
            4 => Protocol::V3_1_1,
            _ => Protocol::V5,
        };
        let template = Template::parse(&args.topic);
        let scenario = Scenario {
            targets,
            source_ips: match &args.source_ips {
                Some(spec) => parse_ip_range(spec)?,
                None => Vec::new(),
            },
            cores,
            devices: 0,
            subscribers: args.devices,
            one_to_one: false,
            connect_rate: args.connect_rate,
            connect_timeout: Duration::from_secs(args.connect_timeout_secs.max(1)),
            publish_interval: Duration::ZERO,
            sub_topic: template.wildcard_filter(),
            topic: template,
            sub_qos,
            payload_size_bytes: args.payload_size_bytes,
            qos_mix: QosMix::only(QoS::AtLeastOnce),
            inflight_max: 1,
            protocol,
            keep_alive_secs: args.keep_alive_secs,
            clean_start: false,
            session_expiry_secs: protocol.is_v5().then_some(args.session_expiry_secs),
            username: args.username.clone(),
            password: args.password.clone(),
            id_start: args.id_start,
            id_prefix: args.id_prefix.clone(),
            duration: None,
            messages_per_device: Some(0),
            churn_total: None,
            drain: Duration::from_secs(args.drain_secs.max(1)),
            verify: None,
            json: None,
            per_device_csv: None,
            broker_pids: Vec::new(),
            child: false,
            tls: None,
            commands: Some(CommandDevices {
                since_us: now_us(),
                offline_fraction: args.offline_fraction,
                offline: away,
                offline_drop: args.offline_drop,
                offline_window,
            }),
            exact_schedule: false,
        };
        Ok(Plan {
            scenario: Arc::new(scenario),
            kafka: KafkaVerify {
                bootstrap,
                config,
                topics: vec![args.kafka_topic.clone()],
                timeout: FLUSH_WAIT,
                create_partitions: Some(args.kafka_partitions),
                warmup_timeout: Duration::from_secs(args.kafka_warmup_timeout),
                probe_topic: String::new(),
            },
            topic: args.kafka_topic.clone(),
            partitions: args.kafka_partitions,
            rate: args.total_rate,
            duration,
            commands_per_device: args.commands,
            drain: Duration::from_secs(args.drain_secs),
            warmup_timeout: Duration::from_secs(args.kafka_warmup_timeout.max(1)),
            broker_pid: args.broker_pid,
            bare_consumer: args.bare_consumer,
            json: args.json.clone(),
            per_device: args.per_device.clone(),
        })
    }

    fn devices(&self) -> u64 {
        u64::from(self.scenario.subscribers)
    }

    fn describe(&self, partitions: usize) -> String {
        let s = &self.scenario;
        let commands = s.commands.as_ref().expect("a commands scenario");
        let mut text = format!(
            "{} devices, commands {} to Kafka topic {} ({partitions} partitions) → {}, QoS {}, \
             {} B",
            s.subscribers,
            match self.rate {
                r if r > 0.0 => format!("at {r:.0}/s"),
                _ => "unthrottled".to_string(),
            },
            self.topic,
            render_template(&s.topic),
            s.sub_qos as u8,
            s.payload_size_bytes
        );
        match (self.duration, self.commands_per_device) {
            (_, Some(n)) => text.push_str(&format!(", {n} per device")),
            (Some(d), None) => text.push_str(&format!(", {} s", d.as_secs())),
            _ => {}
        }
        if commands.offline_fraction > 0.0 {
            text.push_str(&format!(
                ", {}% offline for {} s ({})",
                commands.offline_fraction * 100.0,
                commands.offline.as_secs(),
                if commands.offline_drop {
                    "connection dropped"
                } else {
                    "DISCONNECT"
                }
            ));
        }
        text.push_str(&format!(
            ", MQTT {}, {} shard(s)",
            s.protocol.level(),
            s.cores.len()
        ));
        if !self.kafka.config.is_empty() {
            text.push_str(&format!(", Kafka: {}", self.kafka.config.describe()));
        }
        text
    }
}

/// The topic template as given (`devices/%c/commands`).
fn render_template(template: &Template) -> String {
    template
        .render(u64::MAX, "\u{0}")
        .replace(&format!("\u{0}{}", u64::MAX), "%c")
        .replace(&u64::MAX.to_string(), "%i")
}

// ---------------------------------------------------------------------------------------
// The producer

/// What Kafka said of the commands.
struct CommandsContext {
    acknowledged: AtomicU64,
    failed: AtomicU64,
    /// (device, sequence number) of each command Kafka refused: not expected anywhere.
    refused: Mutex<Vec<(u64, u32)>>,
    last_error: Mutex<Option<String>>,
    /// Send → delivery report.
    latency: Mutex<Latency>,
    /// The last delivery report of a command (µs since the epoch).
    last_ack_us: AtomicU64,
}

impl ClientContext for CommandsContext {}

impl ProducerContext for CommandsContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let (message, error) = match result {
            Ok(message) => (message, None),
            Err((error, message)) => (message, Some(error)),
        };
        let Some(header) = message.payload().and_then(PayloadHeader::decode) else {
            return;
        };
        if header.device == PROBE_DEVICE {
            return;
        }
        match error {
            None => {
                let now = now_us();
                record_latency(
                    &mut self.latency.lock().expect("latency lock"),
                    now.saturating_sub(header.sent_us),
                );
                self.last_ack_us.fetch_max(now, Ordering::Relaxed);
                self.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Some(error) => self.refuse(header.device, header.seq as u32, error.to_string()),
        }
    }
}

impl CommandsContext {
    fn new() -> CommandsContext {
        CommandsContext {
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            refused: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            latency: Mutex::new(latency_histogram()),
            last_ack_us: AtomicU64::new(0),
        }
    }

    fn refuse(&self, device: u64, seq: u32, error: String) {
        self.refused
            .lock()
            .expect("refused lock")
            .push((device, seq));
        *self.last_error.lock().expect("error lock") = Some(error);
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

type CommandProducer = ThreadedProducer<CommandsContext>;

fn create_producer(kafka: &KafkaVerify) -> Result<CommandProducer, String> {
    let mut config = ClientConfig::new();
    config
        .set("client.id", "ferrymq-loadgen-commands")
        // Asking for a topic's metadata must not create it.
        .set("allow.auto.create.topics", "false")
        // Neither duplicates nor reordering from the producer's own retries: whatever
        // the devices see twice or late, the broker did.
        .set("enable.idempotence", "true")
        // Latency counts from the produce call: batches wait 1 ms at most.
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "60000");
    verify::client_config(kafka, config)
        .create_with_context(CommandsContext::new())
        .map_err(|e| verify::client_error(kafka, "--kafka-bootstrap: create the producer", e))
}

/// Hands one record to the producer, waiting while its queue is full; `false` when
/// librdkafka refused it outright.
fn send(
    producer: &CommandProducer,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: &[u8],
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Commands produced in turn: command `i` goes to device `i % n` with sequence number
/// `i / n`, so that device `k` of `n` got `commands_of(total, k, n)` of `total`.
fn commands_of(total: u64, k: u64, n: u64) -> u64 {
    total / n + u64::from(k < total % n)
}

/// The producing loop (its own thread): paced at `rate` (0: as fast as the producer
/// takes them) until `duration` passed, every device got `per_device`, or `stop`.
/// `handed` counts the commands handed to the producer.
fn produce_commands(
    producer: &CommandProducer,
    plan: &Plan,
    stop: &AtomicBool,
    handed: &AtomicU64,
) -> u64 {
    let n = plan.devices();
    let total_max = plan
        .commands_per_device
        .map_or(u64::MAX, |per| u64::from(per) * n);
    let scenario = &plan.scenario;
    let started = Instant::now();
    let mut key = String::with_capacity(64);
    let mut payload = BytesMut::with_capacity(scenario.payload_size_bytes);
    let mut i = 0u64;
    loop {
        if stop.load(Ordering::Relaxed)
            || i >= total_max
            || plan.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let due = if plan.rate > 0.0 {
            (started.elapsed().as_secs_f64() * plan.rate) as u64
        } else {
            i + 1024
        }
        .min(total_max);
        if i >= due {
            // Until the next one is due, in steps short enough to see the flags.
            let next_at = Duration::from_secs_f64((i + 1) as f64 / plan.rate);
            let wait = next_at.saturating_sub(started.elapsed());
            std::thread::sleep(wait.clamp(Duration::from_micros(100), Duration::from_millis(10)));
            continue;
        }
        for i in i..due.min(i + 4096) {
            let (k, seq) = (i % n, i / n);
            let number = scenario.id_start + k;
            key.clear();
            key.push_str(&scenario.id_prefix);
            key.push_str(&number.to_string());
            payload.clear();
            PayloadHeader {
                device: number,
                seq,
                sent_us: now_us(),
            }
            .encode(scenario.payload_size_bytes, &mut payload);
            if let Err(error) = send(producer, &plan.topic, None, key.as_bytes(), &payload) {
                producer
                    .context()
                    .refuse(number, seq as u32, error.to_string());
            }
        }
        i = due.min(i + 4096);
        handed.store(i, Ordering::Relaxed);
    }
    handed.store(i, Ordering::Relaxed);
    i
}

// ---------------------------------------------------------------------------------------
// Kafka side: topic, readiness probe, offsets, the bare consumer

fn metadata_error(error: String) -> String {
    error.replace("--verify-kafka", "--kafka-bootstrap")
}

/// Creates the topic if missing; its partitions.
fn topic_partitions(producer: &CommandProducer, plan: &Plan) -> Result<Vec<i32>, String> {
    let client = producer.client();
    let topics = [plan.topic.as_str()];
    verify::create_missing(
        client,
        &plan.kafka,
        &topics,
        plan.partitions,
        false,
        "--kafka-topic",
    )
    .map_err(metadata_error)?;
    let partitions = verify::partitions(client, &plan.topic)
        .map_err(metadata_error)?
        .ok_or_else(|| {
            format!(
                "--kafka-topic {}: no leader for every partition",
                plan.topic
            )
        })?;
    if partitions
        .iter()
        .any(|&p| p as usize >= PROBE_PARTITION_WORDS * 64)
    {
        return Err(format!(
            "--kafka-topic {}: {} partitions; the loadgen probes at most {}",
            plan.topic,
            partitions.len(),
            PROBE_PARTITION_WORDS * 64
        ));
    }
    Ok(partitions)
}

/// Partitions whose probe reached a device of any shard.
fn probed(control: &Control, partitions: &[i32]) -> Vec<i32> {
    partitions
        .iter()
        .copied()
        .filter(|&p| control.counters.iter().any(|c| c.probe_seen(p as u64)))
        .collect()
}

/// Each partition's high watermark.
fn end_offsets(consumer: &BaseConsumer, topic: &str, partitions: &[i32]) -> Vec<(i32, i64)> {
    partitions
        .iter()
        .map(|&p| {
            let high = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_or(-1, |(_, high)| high);
            (p, high)
        })
        .collect()
}

fn offsets_consumer(kafka: &KafkaVerify, name: &str) -> Result<BaseConsumer, String> {
    let mut config = ClientConfig::new();
    config
        .set(
            "group.id",
            format!("ferrymq-loadgen-{name}-{}-{}", std::process::id(), now_us()),
        )
        .set("client.id", format!("ferrymq-loadgen-{name}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false");
    verify::client_config(kafka, config)
        .create()
        .map_err(|e| verify::client_error(kafka, "--kafka-bootstrap: create a consumer", e))
}

/// The bare consumer's figures.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BareConsumerFigures {
    pub records: u64,
    pub secs: f64,
    pub records_per_sec: f64,
    /// This process's CPU (utime + stime, librdkafka's threads included) while reading.
    pub cpu_secs: f64,
    pub cpu_us_per_record: f64,
    /// The polling thread alone.
    pub thread_cpu_us_per_record: f64,
    /// It stopped before reaching the end offsets.
    pub timed_out: bool,
}

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

/// Reads each partition from `from` to `to` (exclusive) with one consumer polled by this
/// thread, decoding each payload's header as the broker reads each record.
fn bare_consume(
    kafka: &KafkaVerify,
    topic: &str,
    from: &[(i32, i64)],
    to: &[(i32, i64)],
) -> Result<BareConsumerFigures, String> {
    let consumer = offsets_consumer(kafka, "bare-consumer")?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for (&(partition, start), &(_, end)) in from.iter().zip(to) {
        if start < 0 || end <= start {
            continue;
        }
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(|e| format!("--bare-consumer: {e}"))?;
        remaining.insert(partition, end);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("--bare-consumer: assign: {e}"))?;
    let (process0, thread0) = (
        rusage_secs(libc::RUSAGE_SELF),
        rusage_secs(libc::RUSAGE_THREAD),
    );
    let started = Instant::now();
    let mut records = 0u64;
    let mut checksum = 0u64;
    while !remaining.is_empty() && started.elapsed() < BARE_CONSUMER_WAIT {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = result else { continue };
        records += 1;
        if let Some(header) = message.payload().and_then(PayloadHeader::decode) {
            checksum = checksum.wrapping_add(header.seq ^ header.device);
        }
        checksum = checksum.wrapping_add(message.key().map_or(0, |k| k.len() as u64));
        let partition = message.partition();
        if remaining
            .get(&partition)
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            remaining.remove(&partition);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (process1, thread1) = (
        rusage_secs(libc::RUSAGE_SELF),
        rusage_secs(libc::RUSAGE_THREAD),
    );
    std::hint::black_box(checksum);
    let per = |cpu: f64| {
        if records > 0 {
            cpu * 1e6 / records as f64
        } else {
            0.0
        }
    };
    Ok(BareConsumerFigures {
        records,
        secs,
        records_per_sec: records as f64 / secs.max(1e-6),
        cpu_secs: process1 - process0,
        cpu_us_per_record: per(process1 - process0),
        thread_cpu_us_per_record: per(thread1 - thread0),
        timed_out: !remaining.is_empty(),
    })
}

/// A process's CPU time (utime + stime, all threads) in seconds, from /proc/PID/stat.
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses): state is field 3,
    // utime field 14, stime field 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / ticks)
}

// ---------------------------------------------------------------------------------------
// The report

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandDeviceFigures {
    pub devices: u64,
    /// Devices whose first SUBACK came before the first command.
    pub subscribed_before_commands: u64,
    pub connected_max: i64,
    /// Devices planned to go offline once (`--offline-fraction`).
    pub offline_planned: u64,
    /// Those that did (the run may end before the last leaves).
    pub went_offline: u64,
    pub offline_secs: u64,
    /// They dropped the connection instead of sending DISCONNECT.
    pub offline_drop: bool,
    /// Reconnects that found their session (CONNACK session present).
    pub sessions_resumed: u64,
    /// Reconnects whose session was gone (each device then subscribed again).
    pub sessions_lost: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandKafkaFigures {
    pub topic: String,
    pub partitions: u64,
    /// Commands handed to the producer.
    pub produced: u64,
    /// Commands Kafka acknowledged: the ones every device must receive.
    pub acknowledged: u64,
    /// Commands Kafka refused (not expected anywhere).
    pub failed: u64,
    /// Commands without a delivery report after waiting (expected, since they may be in).
    pub unanswered: u64,
    /// Acknowledged commands over the production time.
    pub produced_per_sec: f64,
    pub production_secs: f64,
    /// Until the broker delivered a probe record from every partition.
    pub probe_secs: f64,
    /// The first command's produce (µs since the Unix epoch).
    pub first_produce_unix_us: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandFigures {
    pub qos: u8,
    /// Acknowledged by Kafka: what the devices had to receive.
    pub expected: u64,
    /// Distinct commands received.
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// First arrivals after a higher sequence number of the same device.
    pub out_of_order: u64,
    /// Commands that reached a device they were not for (each fails the run).
    pub misrouted: u64,
    /// Commands of an earlier run (sent before this one started), skipped.
    pub stale: u64,
    /// Sequence numbers never produced.
    pub unexpected: u64,
    /// PUBLISHes after a device's DISCONNECT: not acknowledged, owed again.
    pub after_disconnect: u64,
    pub devices_with_loss: u64,
    /// Distinct commands received over the time from the first produce to the last
    /// first receipt.
    pub delivered_per_sec: f64,
    pub last_delivery_unix_us: u64,
    /// From the end of production until the last command arrived (or the wait ended).
    pub drain_secs: f64,
    /// Every expected command arrived before the wait ended.
    pub all_arrived: bool,
    /// Subscribed at QoS 0: losses are reported, not failed.
    pub best_effort: bool,
}

/// The broker's CPU while delivering.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerCpuFigures {
    pub pid: u32,
    /// utime + stime of all its threads, from the first command to the last delivery.
    pub cpu_secs: f64,
    pub window_secs: f64,
    pub cpu_us_per_command: f64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandLatencies {
    pub connect: LatencySummary,
    /// Kafka produce call → device receipt, devices that stayed online.
    pub delivery: LatencySummary,
    /// The same for devices that went offline (their commands waited in the session).
    pub delivery_offline: LatencySummary,
    /// Produce call → Kafka's delivery report.
    pub kafka_produce: LatencySummary,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandHistograms {
    pub connect: Vec<[u64; 2]>,
    pub delivery: Vec<[u64; 2]>,
    pub delivery_offline: Vec<[u64; 2]>,
    pub kafka_produce: Vec<[u64; 2]>,
}

/// The report of a `commands` run; `--json` writes it as is.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandsReport {
    pub scenario: String,
    pub elapsed_secs: f64,
    pub devices: CommandDeviceFigures,
    pub connections: ConnectionFigures,
    pub kafka: CommandKafkaFigures,
    pub commands: CommandFigures,
    pub broker: Option<BrokerCpuFigures>,
    pub bare_consumer: Option<BareConsumerFigures>,
    pub latency: CommandLatencies,
    pub devices_with_issues: Vec<DeviceIssue>,
    pub histograms: CommandHistograms,
}

impl CommandsReport {
    /// Every command Kafka acknowledged reached its device (or QoS 0), and none reached
    /// another device.
    pub fn passed(&self) -> bool {
        let c = &self.commands;
        (c.lost == 0 || c.best_effort) && c.misrouted == 0
    }

    fn summarize_latencies(&mut self) {
        let h = &self.histograms;
        self.latency = CommandLatencies {
            connect: LatencySummary::of(&undump(&h.connect)),
            delivery: LatencySummary::of(&undump(&h.delivery)),
            delivery_offline: LatencySummary::of(&undump(&h.delivery_offline)),
            kafka_produce: LatencySummary::of(&undump(&h.kafka_produce)),
        };
    }

    /// The report as the table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "== ferrymq-loadgen commands report: {} ({:.1} s)",
            self.scenario, self.elapsed_secs
        ));
        let d = &self.devices;
        let mut devices = format!(
            "devices      {} command receivers, {} subscribed before the first command; \
             connected max {}",
            d.devices, d.subscribed_before_commands, d.connected_max
        );
        if d.offline_planned > 0 {
            devices.push_str(&format!(
                "; {} of {} planned went offline for {} s ({}): {} sessions resumed, {} \
                 SESSIONS LOST",
                d.went_offline,
                d.offline_planned,
                d.offline_secs,
                if d.offline_drop {
                    "connection dropped"
                } else {
                    "DISCONNECT"
                },
                d.sessions_resumed,
                d.sessions_lost
            ));
        } else if d.sessions_resumed + d.sessions_lost > 0 {
            devices.push_str(&format!(
                "; reconnects: {} sessions resumed, {} SESSIONS LOST",
                d.sessions_resumed, d.sessions_lost
            ));
        }
        line(devices);
        let c = &self.connections;
        let errors = if c.errors.is_empty() {
            "none".to_string()
        } else {
            c.errors
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line(format!(
            "connections  {} connects, reconnects included ({:.0}/s over the first connect \
             phase of {:.2} s), {} connect errors; errors: {errors}",
            c.connects, c.connects_per_sec, c.connect_phase_secs, c.connect_errors
        ));
        let k = &self.kafka;
        line(format!(
            "kafka        produced {} to {} ({} partitions), acknowledged {} ({:.0}/s over {:.1} \
             s), failed {}, unanswered {}; every partition read by the broker after {:.1} s",
            k.produced,
            k.topic,
            k.partitions,
            k.acknowledged,
            k.produced_per_sec,
            k.production_secs,
            k.failed,
            k.unanswered,
            k.probe_secs
        ));
        let m = &self.commands;
        line(format!(
            "commands     expected {}, received {} ({:.0}/s from first produce to last \
             delivery), LOST {}, duplicated {}, out of order {}, MISROUTED {}; stale {}, \
             unexpected {}, after DISCONNECT {}{}",
            m.expected,
            m.received,
            m.delivered_per_sec,
            m.lost,
            m.duplicated,
            m.out_of_order,
            m.misrouted,
            m.stale,
            m.unexpected,
            m.after_disconnect,
            if m.all_arrived {
                format!("; all in {:.1} s after the last produce", m.drain_secs)
            } else {
                format!(
                    "; NOT ALL ARRIVED within {:.1} s after the last produce",
                    m.drain_secs
                )
            }
        ));
        if let Some(b) = &self.broker {
            line(format!(
                "broker       CPU {:.2} s over {:.1} s (pid {}): {:.2} µs per delivered command",
                b.cpu_secs, b.window_secs, b.pid, b.cpu_us_per_command
            ));
        }
        if let Some(b) = &self.bare_consumer {
            line(format!(
                "bare consumer {} records in {:.2} s ({:.0}/s){}, CPU {:.2} s: {:.2} µs per \
                 record ({:.2} µs on the polling thread)",
                b.records,
                b.secs,
                b.records_per_sec,
                if b.timed_out { ", TIMED OUT" } else { "" },
                b.cpu_secs,
                b.cpu_us_per_record,
                b.thread_cpu_us_per_record
            ));
        }
        line(format!(
            "latency ms   {:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "", "p50", "p90", "p99", "p99.9", "max", "count"
        ));
        for (label, summary) in [
            ("connect→CONNACK", &self.latency.connect),
            ("Kafka produce→device", &self.latency.delivery),
            (
                "Kafka produce→device (offline)",
                &self.latency.delivery_offline,
            ),
            ("Kafka produce→ack", &self.latency.kafka_produce),
        ] {
            if summary.count == 0 {
                continue;
            }
            let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
            line(format!(
                "             {label:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
                ms(summary.p50_us),
                ms(summary.p90_us),
                ms(summary.p99_us),
                ms(summary.p999_us),
                ms(summary.max_us),
                summary.count
            ));
        }
        if !self.devices_with_issues.is_empty() {
            line(format!(
                "devices with lost, duplicated or out-of-order commands (first {}):",
                self.devices_with_issues.len()
            ));
            for issue in self.devices_with_issues.iter().take(10) {
                line(format!(
                    "  device {}: produced {}, acknowledged {}, received {}, lost {}, \
                     duplicated {}, out of order {}",
                    issue.device,
                    issue.sent,
                    issue.acknowledged,
                    issue.received,
                    issue.lost,
                    issue.duplicated,
                    issue.out_of_order
                ));
            }
        }
        line(format!(
            "result       {}",
            if self.commands.misrouted > 0 {
                "FAIL: commands reached devices they were not for (see MISROUTED above)"
            } else if self.passed() && self.commands.lost > 0 {
                "PASS (QoS 0: commands may be lost; see LOST above)"
            } else if self.passed() {
                "PASS: every command Kafka acknowledged reached its device"
            } else {
                "FAIL: commands Kafka acknowledged are missing (see LOST above)"
            }
        ));
        out
    }
}

/// What the devices received against what Kafka acknowledged, per device.
struct Tally {
    figures: CommandFigures,
    issues: Vec<DeviceIssue>,
    per_device: Vec<DeviceIssue>,
}

/// `handed`: commands handed to the producer (in turn over the `n` devices from
/// `id_start`); `refused`: those Kafka refused; `seen`: what each device received.
fn tally(
    id_start: u64,
    n: u64,
    handed: u64,
    refused: &[(u64, u32)],
    seen: &HashMap<u64, SeqSet>,
    per_device: bool,
) -> Tally {
    let mix = QosMix::only(QoS::AtLeastOnce);
    let mut refused_of: HashMap<u64, Vec<u32>> = HashMap::new();
    for &(device, seq) in refused {
        refused_of.entry(device).or_default().push(seq);
    }
    let mut tally = Tally {
        figures: CommandFigures::default(),
        issues: Vec::new(),
        per_device: Vec::new(),
    };
    for k in 0..n {
        let number = id_start + k;
        let produced = commands_of(handed, k, n) as u32;
        let unacked = refused_of.remove(&number).unwrap_or_default();
        let record = DeviceRecord {
            number,
            sent: produced,
            sent_qos0: 0,
            acked: produced.saturating_sub(unacked.len() as u32),
            unacked,
        };
        let set = seen.get(&number);
        let lost = record.lost_in(set, &mix);
        let (received, duplicated, out_of_order, unexpected) = set.map_or((0, 0, 0, 0), |s| {
            let beyond = (produced..s.high()).filter(|&seq| s.contains(seq)).count();
            (
                u64::from(s.received),
                u64::from(s.duplicated),
                u64::from(s.out_of_order),
                beyond as u64,
            )
        });
        let f = &mut tally.figures;
        f.expected += u64::from(record.acked);
        f.received += received;
        f.lost += lost;
        f.duplicated += duplicated;
        f.out_of_order += out_of_order;
        f.unexpected += unexpected;
        if lost > 0 {
            f.devices_with_loss += 1;
        }
        let row = DeviceIssue {
            device: number,
            sent: u64::from(produced),
            acknowledged: u64::from(record.acked),
            received,
            lost,
            duplicated,
            out_of_order,
        };
        if (lost > 0 || duplicated > 0 || out_of_order > 0)
            && tally.issues.len() < DEVICE_ISSUES_LISTED_MAX
        {
            tally.issues.push(row.clone());
        }
        if per_device {
            tally.per_device.push(row);
        }
    }
    tally
}

fn write_per_device(path: &Path, rows: &[DeviceIssue]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "device,produced,acknowledged,received,lost,duplicated,out_of_order"
    )?;
    for row in rows {
        writeln!(
            out,
            "{},{},{},{},{},{},{}",
            row.device,
            row.sent,
            row.acknowledged,
            row.received,
            row.lost,
            row.duplicated,
            row.out_of_order
        )?;
    }
    out.flush()
}

// ---------------------------------------------------------------------------------------
// The run

/// Prints a progress line each second.
struct Progress {
    started: Instant,
    last: Instant,
    previous: Totals,
    previous_handed: u64,
    connected_max: i64,
}

impl Progress {
    fn tick(&mut self, phase: &str, control: &Control, handed: u64) {
        let totals = Totals::of(&control.counters);
        self.connected_max = self.connected_max.max(totals.connected);
        let secs = self.last.elapsed().as_secs_f64();
        if secs < 1.0 {
            return;
        }
        let rate = |now: u64, before: u64| (now.saturating_sub(before) as f64 / secs).round();
        println!(
            "[{:>4}s] {phase:<10} | connected {:>7} | offline {:>5} | produced/s {:>7} | \
             delivered/s {:>7} | backlog {:>8} | errors {}",
            self.started.elapsed().as_secs(),
            totals.connected,
            totals.offline,
            rate(handed, self.previous_handed),
            rate(totals.commands_received, self.previous.commands_received),
            handed.saturating_sub(totals.commands_received),
            totals.errors + totals.connect_errors,
        );
        let _ = std::io::stdout().flush();
        self.previous = totals;
        self.previous_handed = handed;
        self.last = Instant::now();
    }
}

/// The engine on its thread, stopped (devices leaving) when dropped early.
struct Engine {
    control: Arc<Control>,
    thread: Option<std::thread::JoinHandle<std::io::Result<Vec<ShardOutput>>>>,
}

impl Engine {
    fn start(scenario: &Arc<Scenario>) -> Result<Engine, String> {
        let shards = scenario.cores.len();
        let control = Arc::new(Control::new(shards, 0));
        let thread = {
            let scenario = scenario.clone();
            let control = control.clone();
            std::thread::Builder::new()
                .name("loadgen-engine".into())
                .spawn(move || engine::run(scenario, control))
                .map_err(|e| format!("start the shards: {e}"))?
        };
        while control.shards_ready.load(Ordering::Acquire) < shards && !thread.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        control.go.store(true, Ordering::Release);
        Ok(Engine {
            control,
            thread: Some(thread),
        })
    }

    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Devices leave; their shards' outputs.
    fn finish(mut self, progress: &mut Progress, handed: u64) -> Result<Vec<ShardOutput>, String> {
        self.control.request_stop();
        while self.running() {
            std::thread::sleep(Duration::from_millis(20));
            progress.tick("leaving", &self.control, handed);
        }
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| "a shard panicked".to_string())?
            .map_err(|e| format!("shards: {e}"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.control.request_stop();
            let _ = thread.join();
        }
    }
}

fn run(plan: Plan) -> Result<CommandsReport, String> {
    let plan = Arc::new(plan);
    let scenario = plan.scenario.clone();
    let n = plan.devices();
    let interrupted = stop_on_signals();
    let producer = Arc::new(create_producer(&plan.kafka)?);
    let partitions = topic_partitions(&producer, &plan)?;
    println!("scenario: {}", plan.describe(partitions.len()));

    let engine = Engine::start(&scenario)?;
    let control = engine.control.clone();
    let mut progress = Progress {
        started: Instant::now(),
        last: Instant::now(),
        previous: Totals::default(),
        previous_handed: 0,
        connected_max: 0,
    };
    // Connect and subscribe: twice the time the connect rate takes, and a minute more.
    let connect_wait =
        Duration::from_secs_f64(60.0 + 2.0 * n as f64 / f64::from(scenario.connect_rate.max(1)));
    let connecting = Instant::now();
    while control.subscribers_ready.load(Ordering::Acquire) < n as usize {
        if !engine.running() {
            let totals = Totals::of(&control.counters);
            return Err(format!(
                "every device gave up before subscribing ({} connect errors, {} other \
                 errors): is the broker at {}?",
                totals.connect_errors,
                totals.errors,
                scenario
                    .targets
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if interrupted.load(Ordering::Relaxed) {
            return Err("interrupted before the devices were subscribed".into());
        }
        if connecting.elapsed() >= connect_wait {
            eprintln!(
                "ferrymq-loadgen commands: only {} of {n} devices subscribed after {:.0} s; \
                 going on (the others' commands will be missing)",
                control.subscribers_ready.load(Ordering::Acquire),
                connect_wait.as_secs_f64()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        progress.tick("connecting", &control, 0);
    }
    let subscribed = control.subscribers_ready.load(Ordering::Acquire) as u64;
    let initial_connects = Totals::of(&control.counters).connects;

    // Readiness: a probe record from every partition reached a device.
    let probing = Instant::now();
    let mut round = 0u64;
    let mut last_round: Option<Instant> = None;
    let mut payload = BytesMut::new();
    loop {
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !probed(&control, &[*p]).contains(p))
            .collect();
        if missing.is_empty() {
            break;
        }
        if interrupted.load(Ordering::Relaxed) || !engine.running() {
            return Err("stopped while probing".into());
        }
        if probing.elapsed() >= plan.warmup_timeout {
            return Err(format!(
                "the broker delivered no probe record from partition(s) {missing:?} of {} \
                 within {} s (--kafka-warmup-timeout): is it running with a [[kafka.source]] \
                 that reads {} with mqtt = a template giving {} for key = client id?",
                plan.topic,
                plan.warmup_timeout.as_secs(),
                plan.topic,
                render_template(&scenario.topic)
            ));
        }
        if last_round.is_none_or(|t| t.elapsed() >= PROBE_RESEND) {
            for &partition in &missing {
                // A different device each round, in case one is not connected.
                let k = (partition as u64 + round * partitions.len() as u64) % n;
                let key = scenario.client_id(scenario.id_start + k);
                payload.clear();
                PayloadHeader {
                    device: PROBE_DEVICE,
                    seq: partition as u64,
                    sent_us: now_us(),
                }
                .encode(PAYLOAD_HEADER_BYTES, &mut payload);
                send(
                    &producer,
                    &plan.topic,
                    Some(partition),
                    key.as_bytes(),
                    &payload,
                )
                .map_err(|e| format!("probe record to {}[{partition}]: {e}", plan.topic))?;
            }
            round += 1;
            last_round = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
        progress.tick("probing", &control, 0);
    }
    let probe_secs = probing.elapsed().as_secs_f64();
    println!(
        "ready: the broker delivered a probe record from each of the {} partitions of {} \
         after {probe_secs:.1} s",
        partitions.len(),
        plan.topic
    );

    let offsets = if plan.bare_consumer {
        let consumer = offsets_consumer(&plan.kafka, "offsets")?;
        Some((end_offsets(&consumer, &plan.topic, &partitions), consumer))
    } else {
        None
    };

    // Commands.
    let broker_cpu_before = plan.broker_pid.and_then(process_cpu_secs);
    let stop = Arc::new(AtomicBool::new(false));
    let handed = Arc::new(AtomicU64::new(0));
    let first_produce_us = now_us();
    control
        .commands_started_us
        .store(first_produce_us, Ordering::Release);
    let production_started = Instant::now();
    let producing = {
        let (producer, plan, stop, handed) =
            (producer.clone(), plan.clone(), stop.clone(), handed.clone());
        std::thread::Builder::new()
            .name("commands-producer".into())
            .spawn(move || produce_commands(&producer, &plan, &stop, &handed))
            .map_err(|e| format!("start the producer thread: {e}"))?
    };
    while !producing.is_finished() {
        if interrupted.load(Ordering::Relaxed) {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
        progress.tick("producing", &control, handed.load(Ordering::Relaxed));
    }
    let handed_total = producing
        .join()
        .map_err(|_| "the producer thread panicked".to_string())?;
    let production_ended = Instant::now();
    let flush_deadline = Instant::now() + FLUSH_WAIT;
    loop {
        let context = producer.context();
        let answered =
            context.acknowledged.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed);
        if answered >= handed_total || Instant::now() >= flush_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        progress.tick("flushing", &control, handed_total);
    }
    let context = producer.context();
    let acknowledged = context.acknowledged.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    let last_ack_us = context.last_ack_us.load(Ordering::Relaxed);
    let production_secs = (last_ack_us.saturating_sub(first_produce_us) as f64 / 1e6).max(
        production_ended
            .duration_since(production_started)
            .as_secs_f64(),
    );
    let expected_min = acknowledged;

    // Drain: every acknowledged command in, every device back.
    let commands = scenario.commands.as_ref().expect("a commands scenario");
    let last_back = if commands.offline_fraction > 0.0 {
        production_started + commands.offline_window + commands.offline
    } else {
        production_started
    };
    // The wait ends --drain-secs after whichever comes last: the end of production, the
    // last device's return, the last command that arrived (a broker still catching up
    // on a backlog is not losing anything).
    let mut drain_deadline = last_back.max(production_ended) + plan.drain;
    let mut received_before = 0;
    let all_arrived = loop {
        let totals = Totals::of(&control.counters);
        if totals.commands_received >= expected_min && totals.offline == 0 {
            break true;
        }
        if totals.commands_received > received_before {
            received_before = totals.commands_received;
            drain_deadline = drain_deadline.max(Instant::now() + plan.drain);
        }
        if Instant::now() >= drain_deadline || interrupted.load(Ordering::Relaxed) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
        progress.tick("draining", &control, handed_total);
    };
    let drained_at = Instant::now();
    let broker_cpu_after = plan.broker_pid.and_then(process_cpu_secs);
    let outputs = engine.finish(&mut progress, handed_total)?;
    let elapsed = progress.started.elapsed();

    // What the devices saw.
    let mut seen: HashMap<u64, SeqSet> = HashMap::new();
    let mut delivery = latency_histogram();
    let mut delivery_offline = latency_histogram();
    let mut connect = latency_histogram();
    let mut failures: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut first_connect_us, mut last_connack_us) = (u64::MAX, 0);
    let mut last_delivery_us = 0;
    let mut figures_devices = CommandDeviceFigures {
        devices: n,
        subscribed_before_commands: subscribed,
        connected_max: progress.connected_max,
        offline_planned: (0..n)
            .filter(|k| commands.leaves_after_us(scenario.id_start + k).is_some())
            .count() as u64,
        offline_secs: commands.offline.as_secs(),
        offline_drop: commands.offline_drop,
        ..Default::default()
    };
    let (mut misrouted, mut stale, mut after_disconnect, mut foreign) = (0, 0, 0, 0);
    for output in outputs {
        let observed = output.observed;
        delivery.add(&observed.subscriber).expect("equal bounds");
        delivery_offline
            .add(&observed.subscriber_offline)
            .expect("equal bounds");
        connect.add(&observed.connect).expect("equal bounds");
        first_connect_us = first_connect_us.min(observed.first_connect_us);
        last_connack_us = last_connack_us.max(observed.last_connack_us);
        last_delivery_us = last_delivery_us.max(observed.last_delivery_us);
        misrouted += observed.sub_misrouted;
        foreign += observed.sub_foreign;
        stale += observed.sub_stale;
        after_disconnect += observed.after_disconnect;
        figures_devices.went_offline += observed.went_offline;
        figures_devices.sessions_resumed += observed.sessions_resumed;
        figures_devices.sessions_lost += observed.sessions_lost;
        for map in observed.sub_seen {
            seen.extend(map);
        }
        for (failure, count) in crate::device::Failure::ALL.iter().zip(observed.failures) {
            if count > 0 {
                *failures.entry(failure.name().to_string()).or_default() += count;
            }
        }
    }
    let totals = Totals::of(&control.counters);
    let refused = context.refused.lock().expect("refused lock").clone();
    let tally = tally(
        scenario.id_start,
        n,
        handed_total,
        &refused,
        &seen,
        plan.per_device.is_some(),
    );
    if let Some(path) = &plan.per_device {
        write_per_device(path, &tally.per_device)
            .map_err(|e| format!("--per-device {}: {e}", path.display()))?;
    }
    let mut figures = tally.figures;
    figures.qos = scenario.sub_qos as u8;
    figures.misrouted = misrouted + foreign;
    figures.stale = stale;
    figures.after_disconnect = after_disconnect;
    figures.best_effort = scenario.sub_qos == QoS::AtMostOnce;
    figures.all_arrived = all_arrived;
    figures.last_delivery_unix_us = last_delivery_us;
    figures.drain_secs = if all_arrived {
        (last_delivery_us.saturating_sub(first_produce_us) as f64 / 1e6
            - production_ended
                .duration_since(production_started)
                .as_secs_f64())
        .max(0.0)
    } else {
        drained_at.duration_since(production_ended).as_secs_f64()
    };
    figures.delivered_per_sec = if last_delivery_us > first_produce_us {
        figures.received as f64 * 1e6 / (last_delivery_us - first_produce_us) as f64
    } else {
        0.0
    };
    let broker = match (plan.broker_pid, broker_cpu_before, broker_cpu_after) {
        (Some(pid), Some(before), Some(after)) => {
            let delivered_at_us = if all_arrived {
                last_delivery_us
            } else {
                now_us()
            };
            Some(BrokerCpuFigures {
                pid,
                cpu_secs: after - before,
                window_secs: delivered_at_us.saturating_sub(first_produce_us) as f64 / 1e6,
                cpu_us_per_command: if figures.received > 0 {
                    (after - before) * 1e6 / figures.received as f64
                } else {
                    0.0
                },
            })
        }
        (Some(pid), _, _) => {
            eprintln!("ferrymq-loadgen commands: --broker-pid {pid}: cannot read /proc/{pid}/stat");
            None
        }
        _ => None,
    };
    let bare_consumer = match offsets {
        Some((from, consumer)) => {
            let to = end_offsets(&consumer, &plan.topic, &partitions);
            drop(consumer);
            println!("bare consumer: reading the run's records again on one thread");
            Some(bare_consume(&plan.kafka, &plan.topic, &from, &to)?)
        }
        None => None,
    };
    let kafka_produce = context.latency.lock().expect("latency lock").clone();
    let mut report = CommandsReport {
        scenario: plan.describe(partitions.len()),
        elapsed_secs: elapsed.as_secs_f64(),
        devices: figures_devices,
        connections: ConnectionFigures {
            connects: totals.connects,
            connect_errors: totals.connect_errors,
            errors: failures,
            first_connect_unix_us: if first_connect_us == u64::MAX {
                0
            } else {
                first_connect_us
            },
            last_connack_unix_us: last_connack_us,
            ..Default::default()
        },
        kafka: CommandKafkaFigures {
            topic: plan.topic.clone(),
            partitions: partitions.len() as u64,
            produced: handed_total,
            acknowledged,
            failed,
            unanswered: handed_total.saturating_sub(acknowledged + failed),
            produced_per_sec: acknowledged as f64 / production_secs.max(1e-6),
            production_secs,
            probe_secs,
            first_produce_unix_us: first_produce_us,
        },
        commands: figures,
        broker,
        bare_consumer,
        latency: CommandLatencies::default(),
        devices_with_issues: tally.issues,
        histograms: CommandHistograms {
            connect: dump(&connect),
            delivery: dump(&delivery),
            delivery_offline: dump(&delivery_offline),
            kafka_produce: dump(&kafka_produce),
        },
    };
    if failed > 0 {
        if let Some(error) = context.last_error.lock().expect("error lock").as_ref() {
            eprintln!("ferrymq-loadgen commands: Kafka refused {failed} commands; last: {error}");
        }
    }
    // The connect rate of the first connects, over their phase (the returns of offline
    // devices come later, and do not stretch it).
    report.connections.compute_rate();
    if report.connections.connect_phase_secs > 0.0 {
        report.connections.connects_per_sec =
            initial_connects as f64 / report.connections.connect_phase_secs;
    }
    report.summarize_latencies();
    Ok(report)
}

/// `ferrymq-loadgen commands ARGS`: `argv` starts with "commands".
pub fn main(argv: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let plan = match Plan::of(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("ferrymq-loadgen commands: {message}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = preflight(&plan.scenario) {
        for line in message.lines() {
            eprintln!("ferrymq-loadgen commands: preflight: {line}");
        }
        return ExitCode::from(2);
    }
    let json = plan.json.clone();
    let report = match run(plan) {
        Ok(report) => report,
        Err(message) => {
            eprintln!("ferrymq-loadgen commands: {message}");
            return ExitCode::from(3);
        }
    };
    if let Some(path) = &json {
        let text = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("ferrymq-loadgen commands: --json {}: {e}", path.display());
            return ExitCode::from(3);
        }
    }
    print!("{}", report.table());
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Open files and ephemeral ports for the devices of this one process; raises the soft
/// open-files limit when needed.
fn preflight(scenario: &Scenario) -> Result<(), String> {
    let limits = preflight::Limits::read().map_err(|e| e.to_string())?;
    let devices = u64::from(scenario.subscribers);
    let demand = preflight::Demand {
        connections_per_process: devices,
        connections_total: devices,
        shards: scenario.cores.len() as u64,
        procs: 1,
        source_ips: scenario.source_ips.len().max(1) as u64,
        targets: scenario.targets.len() as u64,
    };
    let fds = demand.fds_per_process();
    if fds > limits.nofile_hard {
        let room = limits.nofile_hard.saturating_sub(fds - devices).max(1);
        return Err(format!(
            "open files: {devices} devices need {fds} descriptors, but the hard limit \
             (RLIMIT_NOFILE) is {}: one process holds at most {room} devices. Run several \
             `commands` processes with disjoint --id-start ranges (e.g. -c {room} \
             --id-start 0, -c {room} --id-start {room}, ...), or raise the hard limit; see \
             tuning.md, \"Open files\".",
            limits.nofile_hard
        ));
    }
    if let Some(fds) = preflight::check(&demand, &limits)? {
        preflight::raise_nofile(fds).map_err(|e| format!("raise RLIMIT_NOFILE to {fds}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["commands", "--kafka-topic", "t"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn a_plan_makes_command_receivers() {
        let plan = Plan::of(&parse(&[
            "-c",
            "100",
            "--total-rate",
            "500",
            "--duration",
            "20",
            "--offline-fraction",
            "0.1",
            "--offline-secs",
            "4",
            "--id-start",
            "1000",
        ]))
        .unwrap();
        let s = &plan.scenario;
        assert_eq!((s.devices, s.subscribers), (0, 100));
        assert_eq!(s.subscriber_client_id(7), "ferrymq-loadgen-1007");
        assert_eq!(
            s.subscriber_filter(7),
            "devices/ferrymq-loadgen-1007/commands"
        );
        assert!(s.owns_device(1099) && !s.owns_device(1100) && !s.owns_device(999));
        assert_eq!(s.session_expiry_secs, Some(300));
        let commands = s.commands.as_ref().unwrap();
        assert_eq!(commands.offline_window, Duration::from_secs(16));
        let leaving: Vec<u64> = (1000..1100)
            .filter_map(|d| commands.leaves_after_us(d))
            .collect();
        assert!((3..=25).contains(&leaving.len()), "{}", leaving.len());
        assert!(leaving.iter().all(|&us| us < 16_000_000));
        assert_eq!(render_template(&s.topic), "devices/%c/commands");
        assert!(plan
            .describe(8)
            .contains("10% offline for 4 s (DISCONNECT)"));
    }

    #[test]
    fn bad_flags_are_refused() {
        for (extra, word) in [
            (&["-t", "devices/%i/commands"][..], "%c"),
            (&["--offline-fraction", "1.5"][..], "--offline-fraction"),
            (
                &["--offline-fraction", "0.1", "--offline-secs", "400"][..],
                "--session-expiry",
            ),
            (&["--duration", "5", "--commands", "3"][..], "--commands"),
            (&["-s", "10"][..], "--size"),
            (&["--kafka-partitions", "0"][..], "--kafka-partitions"),
            (&["--total-rate=-1"][..], "--total-rate"),
        ] {
            let error = Plan::of(&parse(extra)).err().unwrap_or_default();
            assert!(error.contains(word), "{extra:?}: {error:?}");
        }
        assert!(Plan::of(&parse(&["-V", "4", "--offline-fraction", "0.5"])).is_ok());
    }

    #[test]
    fn commands_go_round_the_devices() {
        assert_eq!(
            (0..3).map(|k| commands_of(10, k, 3)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!(commands_of(0, 0, 3), 0);
    }

    #[test]
    fn the_tally_finds_lost_duplicated_out_of_order_and_unexpected() {
        // 3 devices from 10, 7 commands: 10 gets 0,1,2; 11 gets 0,1; 12 gets 0,1.
        let mut seen: HashMap<u64, SeqSet> = HashMap::new();
        for (device, seqs) in [
            (10, &[0, 2, 1, 1][..]),
            (11, &[0][..]),
            (12, &[0, 1, 5][..]),
        ] {
            let set = seen.entry(device).or_default();
            for &seq in seqs {
                set.record(seq);
            }
        }
        // Kafka refused 11's seq 1: not expected.
        let t = tally(10, 3, 7, &[(11, 1)], &seen, true);
        let f = &t.figures;
        assert_eq!(f.expected, 6);
        assert_eq!((f.lost, f.duplicated, f.out_of_order), (0, 1, 1));
        assert_eq!((f.received, f.unexpected), (3 + 1 + 3, 1));
        assert_eq!(t.per_device.len(), 3);
        assert_eq!(t.issues.len(), 1);
        // Without 12's commands: 2 lost there.
        seen.remove(&12);
        let t = tally(10, 3, 7, &[], &seen, false);
        assert_eq!((t.figures.lost, t.figures.devices_with_loss), (3, 2));
        assert!(t.per_device.is_empty());
    }

    #[test]
    fn the_report_passes_only_without_loss_and_round_trips() {
        let mut report = CommandsReport {
            scenario: "test".into(),
            commands: CommandFigures {
                expected: 10,
                received: 10,
                all_arrived: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut histogram = latency_histogram();
        record_latency(&mut histogram, 1_500);
        report.histograms.delivery = dump(&histogram);
        report.summarize_latencies();
        assert!(report.passed());
        let table = report.table();
        assert!(table.contains("PASS: every command"), "{table}");
        assert!(table.contains("Kafka produce→device"), "{table}");
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(
            serde_json::from_str::<CommandsReport>(&text).unwrap(),
            report
        );
        report.commands.lost = 1;
        assert!(!report.passed());
        report.commands.best_effort = true;
        assert!(report.passed());
        report.commands.misrouted = 1;
        assert!(!report.passed());
        assert!(report.table().contains("FAIL: commands reached devices"));
    }

    #[test]
    fn broker_cpu_is_readable_from_proc() {
        assert!(process_cpu_secs(std::process::id()).is_some());
        assert!(process_cpu_secs(u32::MAX).is_none());
    }
}
