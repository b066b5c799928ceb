//! The broker's configuration: defaults, overridden by a TOML file (`--config FILE`),
//! overridden by command-line flags.
//!
//! [`load`] reads the file, applies the flags and validates the result, so the rest of the
//! broker only ever sees a [`Config`] whose every value is within its bounds. Errors are one
//! line and name the key as it is written in TOML (`broker.packet_size_bytes_max: 5 is below
//! the minimum of 16`), prefixed with `FILE:LINE:COLUMN` when they come from reading the file.
//!
//! Any string value of the file may be `"${env:NAME}"` or `"${file:PATH}"`: the variable's
//! value or the file's content (see [`secrets`]). Errors never show what such a
//! reference gave, nor the value of a key that holds a secret ([`is_secret_key`]).
//!
//! ```toml
//! [[listener]]
//! bind = "0.0.0.0:1883"
//!
//! [broker]
//! cores = "0-3"
//! connections_max = 100000
//!
//! [kafka.clusters.main]
//! bootstrap = "kafka1:9092,kafka2:9092"
//! config = { "compression.type" = "lz4" }
//!
//! [[kafka.mapping]]
//! mqtt = "devices/+/telemetry/#"
//! topic = "telemetry"
//! key = "{client_id}"
//!
//! [batching]
//! linger_us = 2000
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::bridge::template::{validate_kafka_topic, Template};
pub use secrets::{is_secret_key, scrub};
use secrets::{Resolved, Substitutions};
use crate::protocol::topic::{is_shared, validate_topic_filter};
use crate::protocol::{DecodeError, PACKET_SIZE_BYTES_MAX};

pub mod secrets;

/// Port of the default listener: the IANA port for MQTT without TLS.
pub const PORT_DEFAULT: u16 = 1883;

/// Smallest accepted `broker.packet_size_bytes_max`. A 5.0 client may not send a packet larger
/// than the announced Maximum Packet Size, so below this it could not even send a PUBLISH
/// with a short topic and payload, or a SUBSCRIBE with its properties.
pub const PACKET_SIZE_BYTES_MAX_MIN: u32 = 16;

/// Largest accepted `broker.connect_timeout_ms`: a socket that has not sent CONNECT within an
/// hour is not a slow client but a held file descriptor.
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// Largest CPU number in `broker.cores`: `cpu_set_t`, which pins a thread to a CPU, holds
/// CPU_SETSIZE (1024) CPUs.
pub const CORE_ID_MAX: usize = 1023;

/// Smallest accepted `batching.max_bytes`: below it a batch would hold a single small telemetry
/// record, and every record would pay the per-batch cost.
pub const BATCHING_MAX_BYTES_MIN: usize = 1024;

/// Largest accepted `batching.linger_us`: a QoS 1 PUBLISH on an `ack = "kafka"` mapping waits
/// up to this long before its batch leaves, and a device's PUBACK with it.
pub const BATCHING_LINGER_US_MAX: u64 = 1_000_000;

/// librdkafka properties that `kafka.clusters.NAME.bootstrap` sets, refused in `config` so the
/// brokers are named in one place (`metadata.broker.list` is librdkafka's alias).
const BOOTSTRAP_PROPERTIES: [&str; 2] = ["bootstrap.servers", "metadata.broker.list"];

/// A list of CPU numbers. An alias so that clap takes `--cores 0-3,6` as one value parsed
/// by [`parse_cpu_list`] rather than as a list of separate values.
pub type CpuList = Vec<usize>;

/// The whole configuration. Plain data; [`load`] builds and validates it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct Config {
    /// Sockets to accept MQTT connections on; TOML `[[listener]]`.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Limits and announced capabilities; TOML `[broker]`.
    pub broker: BrokerConfig,
    /// Kafka clusters and the MQTT topics forwarded to them; TOML `[kafka]`.
    pub kafka: KafkaConfig,
    /// How records are grouped on their way to Kafka; TOML `[batching]`.
    pub batching: BatchingConfig,
    /// The on-disk log behind `ack = "durable"`; TOML `[spool]`.
    pub spool: SpoolConfig,
    /// Password and ACL files in Mosquitto's formats; TOML `[auth]`.
    pub auth: crate::auth::AuthConfig,
    /// The broker's log on stderr: format and level; TOML `[log]`.
    pub log: LogConfig,
    /// The file's `${env:NAME}` and `${file:PATH}` values and what they gave: kept so that
    /// errors can name the reference and never show the value ([`Config::secret_values`]).
    #[serde(skip)]
    pub substitutions: Substitutions,
}

/// The broker's log, on stderr; TOML `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct LogConfig {
    /// `text`: one line per event, `ferrymq: ` and the message; `json`: one JSON object per
    /// line with `timestamp`, `level`, `message`, the event's fields, `target` and
    /// `threadName`.
    pub format: LogFormat,
    /// Which events are logged: a level (`off`, `error`, `warn`, `info`, `debug`, `trace`) or
    /// a filter in RUST_LOG's syntax, e.g. `info,ferrymq::tls=debug`. `info` logs starts,
    /// stops, reloads and what goes wrong, nothing per message.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        // Keep in step with the `[default: …]` texts on `BrokerArgs`; a test checks them.
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// How log events are written; TOML `log.format`, flag `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human lines, `ferrymq: listening on ...`, as the broker has always written them.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What a durable QoS 1/2 publisher gets while its shard's spool holds `spool.max_bytes`;
/// TOML `spool.when_full`, flag `--spool-when-full`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpoolWhenFull {
    /// Stop reading the publisher until the spool has room: nothing is refused, the device
    /// waits (TCP backpressure).
    #[default]
    Hold,
    /// Answer an MQTT 5.0 publisher's PUBLISH with PUBACK/PUBREC 0x97 Quota exceeded, so it
    /// knows at once and may retry later or elsewhere; 3.1.1 clients, which have no
    /// negative acknowledgement, are held as with `hold`.
    Refuse,
}

/// The per-shard durable log; TOML `[spool]`. Used only by `ack = "durable"` mappings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct SpoolConfig {
    /// Directory of the logs, one subdirectory per shard (`shard-N`).
    pub data_dir: PathBuf,
    /// Longest a record waits for its flush (group commit). 1 ms keeps PUBACK latency low
    /// while many records share one `fdatasync` under load.
    pub sync_us: u64,
    /// A flush starts at once when this many bytes wait. 1 MiB.
    pub sync_bytes: usize,
    /// Bytes on disk per shard before durable publishers are held back (Kafka away for
    /// long). 1 GiB.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started; a segment is deleted
    /// once Kafka has all its records. 64 MiB.
    pub segment_bytes: u64,
    /// Durable QoS 1/2 publishers while the spool is full: held or refused (5.0 only).
    pub when_full: SpoolWhenFull,
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig {
            data_dir: PathBuf::from("ferrymq-data"),
            sync_us: 1000,
            sync_bytes: 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            when_full: SpoolWhenFull::Hold,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            // Loopback only: a broker started without configuration is not open to the network.
            listeners: vec![ListenerConfig::new(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                PORT_DEFAULT,
            )))],
            broker: BrokerConfig::default(),
            kafka: KafkaConfig::default(),
            batching: BatchingConfig::default(),
            spool: SpoolConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            log: LogConfig::default(),
            substitutions: Substitutions::default(),
        }
    }
}

/// One listening socket; TOML `[[listener]]`. With `tls_cert` and `tls_key` it speaks
/// MQTT over TLS (1.2 or 1.3); the key names follow Mosquitto's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a `bind` key")]
pub struct ListenerConfig {
    /// IP address and port, e.g. `0.0.0.0:1883` or `[::]:1883`. Port 0 picks a free port.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub bind: SocketAddr,
    /// PEM file with the server's certificate chain, its own certificate first. With
    /// `tls_key`, makes this a TLS listener.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM file with the CA certificates that client certificates are verified against.
    /// Setting it asks clients for a certificate; one that is given must verify.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls_client_ca`: refuse clients that give no certificate. Default false: a
    /// certificate is verified if given.
    #[serde(default)]
    pub require_certificate: bool,
    /// With `tls_client_ca`: the client certificate's identity (subject Common Name, else
    /// its first DNS or email Subject Alternative Name) becomes the user name, whatever the
    /// CONNECT says; a client without one is refused as with a bad user name (CONNACK 0x86,
    /// or 0x04 in 3.1.1).
    #[serde(default)]
    pub use_identity_as_username: bool,
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn new(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }

    /// Whether connections to it start with a TLS handshake.
    pub fn is_tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Checks that the TLS keys go together; the error starts with the key inside the
    /// listener (`tls_key: ...`). The files themselves are read when the broker starts.
    fn check_tls(&self) -> Result<(), String> {
        let empty =
            |path: &Option<PathBuf>| path.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        for (name, path) in [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_client_ca", &self.tls_client_ca),
        ] {
            if empty(path) {
                return Err(format!("{name}: cannot be empty"));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err("tls_key: missing; tls_cert needs its private key".into())
            }
            (None, Some(_)) => {
                return Err("tls_cert: missing; tls_key needs its certificate".into())
            }
            _ => {}
        }
        if !self.is_tls() && self.tls_client_ca.is_some() {
            return Err("tls_client_ca: needs tls_cert and tls_key (a TLS listener)".into());
        }
        if self.tls_client_ca.is_none() {
            if self.require_certificate {
                return Err(
                    "require_certificate: needs tls_client_ca to verify certificates against"
                        .into(),
                );
            }
            if self.use_identity_as_username {
                return Err(
                    "use_identity_as_username: needs tls_client_ca to verify certificates against"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Limits and capabilities of the broker; TOML `[broker]`. Every field is optional in the file
/// and on the command line; [`BrokerConfig::default`] gives the values not set.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct BrokerConfig {
    /// CPUs to run one shard each on, as a list (`[0, 1]`) or a string (`"0-3,6"`). None (the
    /// default) takes every CPU in the process affinity mask, so `taskset` works as expected.
    #[serde(deserialize_with = "deserialize_cores")]
    pub cores: Option<CpuList>,
    /// Connections open at once, over all listeners and shards; a connection beyond it is
    /// closed at accept. 100,000 keeps a full broker within a few GiB of session state.
    pub connections_max: usize,
    /// Largest packet accepted from a client, fixed header included; larger ones close the
    /// connection. Announced to 5.0 clients as Maximum Packet Size. 1 MiB bounds the memory one
    /// connection can pin while its packet is read, yet fits common telemetry payloads.
    /// Valid from 16 to 268,435,460, the largest packet MQTT can encode.
    pub packet_size_bytes_max: u32,
    /// A socket that has not sent a complete CONNECT this long after accept is closed, so idle
    /// sockets cannot use up `connections_max`. 10 s covers a slow TLS-less handshake.
    pub connect_timeout_ms: u64,
    /// Longest keep alive granted. 0 (the default) accepts the client's value; otherwise a
    /// client asking for more, or for 0 (no keep alive), gets this value, announced to 5.0
    /// clients as Server Keep Alive, so dead connections are found within a bounded time.
    pub keep_alive_secs_max: u16,
    /// Longest session expiry granted; a client asking for more gets this value. 7 days keeps
    /// sessions of devices offline over a weekend while bounding abandoned sessions.
    pub session_expiry_secs_max: u32,
    /// QoS 1 and 2 messages queued for one session, offline or slow; new messages beyond it
    /// are dropped and counted, and a publisher feeding a connected session past half of it
    /// is held back. 1000 bounds an abandoned session's memory.
    pub session_queue_messages_max: usize,
    /// Messages queued for one connected subscriber that reads slower than it is sent to;
    /// QoS 0 beyond it is dropped and QoS 1/2 kept to the session queue. 1000 absorbs bursts.
    pub outgoing_queue_messages_max: usize,
    /// Outgoing QoS 1 and 2 messages awaiting PUBACK or PUBREC per client, capped further by
    /// the client's Receive Maximum. 32 keeps a round trip's worth of messages in flight.
    pub inflight_messages_max: u16,
    /// How many QoS 1 and 2 PUBLISHes a 5.0 client may have unacknowledged, announced as
    /// Receive Maximum; a client sending more is disconnected. 1024 lets a producer stream
    /// while bounding the acks the broker owes. Valid from 1 to 65,535.
    pub receive_maximum: u16,
    /// Topic aliases a 5.0 client may set, announced as Topic Alias Maximum; 0 disables them.
    /// 64 covers a device's topics while bounding the alias table per connection.
    pub topic_alias_maximum: u16,
    /// Whether retained messages are kept, announced as Retain Available; when false a PUBLISH
    /// with the retain flag is refused.
    pub retain_available: bool,
    /// Messages in flight from one shard to another, per ordered pair of shards; a full channel
    /// makes the sender wait. 4096 absorbs a burst of fan-out without unbounded memory.
    pub inter_shard_channel_capacity: usize,
    /// Seconds between publications of the broker's statistics under `$SYS/`; 0 disables them.
    pub sys_interval_secs: u32,
    /// Address of the HTTP endpoint serving Prometheus metrics (`/metrics`) and health
    /// (`/healthz`, `/readyz`); none by default.
    #[serde(deserialize_with = "deserialize_optional_socket_addr")]
    pub metrics_bind: Option<SocketAddr>,
    /// Subscriptions one client may hold; one more gets SUBACK 0x97 Quota exceeded (0x80 in
    /// 3.1.1). 0: no limit. 1000 is far beyond a device's needs and bounds the routing
    /// entries a hostile client can make.
    pub subscriptions_per_client_max: usize,
    /// PUBLISHes per second one client may send; a faster client is not read until it is
    /// back under the rate (its TCP window fills: backpressure, nothing dropped). 0: no
    /// limit (the default: the Kafka rings and spool already push back on floods).
    pub publish_rate_max: u32,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        // Keep in step with the `[default: …]` texts on `BrokerArgs`; a test checks them.
        BrokerConfig {
            cores: None,
            connections_max: 100_000,
            packet_size_bytes_max: 1024 * 1024,
            connect_timeout_ms: 10_000,
            keep_alive_secs_max: 0,
            session_expiry_secs_max: 7 * 24 * 60 * 60,
            session_queue_messages_max: 1000,
            outgoing_queue_messages_max: 1000,
            inflight_messages_max: 32,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            retain_available: true,
            inter_shard_channel_capacity: 4096,
            sys_interval_secs: 10,
            metrics_bind: None,
            subscriptions_per_client_max: 1000,
            publish_rate_max: 0,
        }
    }
}

/// Kafka clusters and the mappings that forward MQTT messages to them; TOML `[kafka]`. Empty by
/// default: without mappings the broker is a plain MQTT broker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct KafkaConfig {
    /// Clusters by name; TOML `[kafka.clusters.NAME]`. Ordered by name, which gives each its
    /// index in [`crate::bridge::mapping::Mappings::cluster_names`].
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// MQTT topic filters and where their messages go, in file order; TOML `[[kafka.mapping]]`.
    #[serde(rename = "mapping")]
    pub mappings: Vec<MappingConfig>,
}

/// One Kafka cluster; TOML `[kafka.clusters.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a `bootstrap` key")]
pub struct ClusterConfig {
    /// Brokers to fetch the cluster's metadata from: `host:port`, comma-separated.
    pub bootstrap: String,
    /// librdkafka properties (`"compression.type" = "lz4"`), passed to the producer as written;
    /// integers and booleans are kept as their TOML text. librdkafka checks names and values
    /// when the producer is created.
    #[serde(default, deserialize_with = "deserialize_properties")]
    pub config: BTreeMap<String, String>,
}

/// One MQTT topic filter forwarded to Kafka; TOML `[[kafka.mapping]]`. A message matching
/// several mappings goes to each of them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `mqtt` and `topic` keys"
)]
pub struct MappingConfig {
    /// The MQTT topic filter of the messages taken, wildcards allowed; not a `$share/` filter.
    pub mqtt: String,
    /// Name of the cluster to send to; may be left out when there is exactly one cluster.
    /// [`KafkaConfig::cluster_of`] resolves it.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Kafka topic, a [`Template`]: `telemetry`, `telemetry.{2}`.
    pub topic: String,
    /// Kafka record key, a [`Template`]; None (the default) keys records by their MQTT topic,
    /// so the messages of one topic stay in order on one partition.
    #[serde(default)]
    pub key: Option<String>,
    /// MQTT fields copied into Kafka record headers.
    #[serde(default = "headers_default")]
    pub headers: Vec<HeaderField>,
    /// When a QoS 1 or 2 PUBLISH matching this mapping is acknowledged to its sender.
    #[serde(default)]
    pub ack: AckMode,
    /// Whether matched messages also go to MQTT subscribers. False makes the mapping a sink:
    /// the messages go to Kafka only.
    #[serde(default = "mqtt_subscribers_default")]
    pub mqtt_subscribers: bool,
    /// What becomes of a record Kafka refuses for good (too large for the topic, an invalid
    /// topic, not authorized): see [`OnRefused`].
    #[serde(default)]
    pub on_refused: OnRefused,
    /// The topic that takes refused records when `on_refused = "dead_letter"`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// The cluster of `dead_letter_topic`; the mapping's own cluster when left out.
    #[serde(default)]
    pub dead_letter_cluster: Option<String>,
}

/// What becomes of a record Kafka refuses for good. Transient errors (a broker down, a
/// leader moving, a timeout) are never "for good": librdkafka retries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRefused {
    /// An MQTT 5 publisher gets a PUBACK/PUBREC with the matching reason code; an MQTT 3.1.1
    /// one, which has no way to hear of a failure, gets its PUBACK and the record is counted
    /// as dropped (disconnecting it would only make it publish the same message again).
    #[default]
    ReasonCode,
    /// The record goes to `dead_letter_topic`, with headers saying where it was going and
    /// why it was refused; the publisher gets its PUBACK once the dead-letter record is in
    /// Kafka.
    DeadLetter,
    /// The record is dropped and counted; the publisher gets a successful PUBACK.
    Drop,
}

impl OnRefused {
    /// Every choice, in the order counters keep them.
    pub const ALL: [OnRefused; 3] = [
        OnRefused::ReasonCode,
        OnRefused::DeadLetter,
        OnRefused::Drop,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnRefused::ReasonCode => "reason_code",
            OnRefused::DeadLetter => "dead_letter",
            OnRefused::Drop => "drop",
        }
    }
}

fn headers_default() -> Vec<HeaderField> {
    vec![
        HeaderField::MqttTopic,
        HeaderField::ClientId,
        HeaderField::Qos,
    ]
}

fn mqtt_subscribers_default() -> bool {
    true
}

/// An MQTT field that a mapping can copy into a Kafka record header; TOML names in snake case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderField {
    MqttTopic,
    ClientId,
    /// Absent when the client gave no user name.
    Username,
    Qos,
    Retain,
    /// One header per MQTT 5 user property, named and valued as the property.
    UserProperties,
    ContentType,
    ResponseTopic,
    CorrelationData,
    PayloadFormat,
}

impl HeaderField {
    /// Every field, in declaration order.
    pub const ALL: [HeaderField; 10] = [
        HeaderField::MqttTopic,
        HeaderField::ClientId,
        HeaderField::Username,
        HeaderField::Qos,
        HeaderField::Retain,
        HeaderField::UserProperties,
        HeaderField::ContentType,
        HeaderField::ResponseTopic,
        HeaderField::CorrelationData,
        HeaderField::PayloadFormat,
    ];

    /// The name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderField::MqttTopic => "mqtt_topic",
            HeaderField::ClientId => "client_id",
            HeaderField::Username => "username",
            HeaderField::Qos => "qos",
            HeaderField::Retain => "retain",
            HeaderField::UserProperties => "user_properties",
            HeaderField::ContentType => "content_type",
            HeaderField::ResponseTopic => "response_topic",
            HeaderField::CorrelationData => "correlation_data",
            HeaderField::PayloadFormat => "payload_format",
        }
    }
}

/// When a QoS 1 or 2 PUBLISH forwarded by a mapping is acknowledged (PUBACK or PUBREC) to its
/// sender; see "Delivery guarantee per mapping" in DESIGN.md. QoS 0 is always best effort.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// At once: a Kafka outage loses what the buffers cannot hold.
    None,
    /// Once Kafka has acknowledged every record the message made; until then the device keeps
    /// the message and resends it after a reconnect.
    #[default]
    Kafka,
    /// Once the record is in the shard's on-disk spool (`[spool]`), which then feeds Kafka.
    Durable,
}

/// How records are grouped on their way from a shard to a cluster's producer; TOML
/// `[batching]`. A batch leaves when it holds `max_messages` or `max_bytes`, or when its
/// linger (at most `linger_us`, shorter under load) has passed since its first record.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct BatchingConfig {
    /// Records per batch. 512 spreads the cost of a hand-off to librdkafka and of a Produce
    /// request over many records.
    pub max_messages: usize,
    /// Bytes of topics, keys, payloads and headers per batch. 1 MiB bounds the memory one
    /// batch pins and is near Kafka's default `message.max.bytes` (1,048,588), the largest
    /// record batch a Kafka broker takes. At least 1 KiB.
    pub max_bytes: usize,
    /// Longest time a batch waits for more records, at most 1 s. Each (shard, cluster) waits
    /// as long as gathering 16 records takes at its current rate, between 1 ms (or this, if
    /// lower) and this: 5 ms at device rates, where it shares the fixed costs of a batch
    /// (wake-ups of the shard and of librdkafka's broker thread, a Produce request) among
    /// several records and halves the broker CPU per PUBLISH; about 1 ms under load or with
    /// pipelining publishers, whose throughput a long wait would cap.
    pub linger_us: u64,
    /// How many batches one shard's producer for a cluster may hold: librdkafka's queue
    /// takes up to this × `max_messages` records (its `queue.buffering.max.messages`, unless
    /// the cluster's `config` sets that). When it is full, records wait on the shard and the
    /// shard's publishers are held back. 256 bounds what a shard queues at 131,072 records
    /// by default while Kafka is slow.
    pub ring_capacity_batches: usize,
}

impl Default for BatchingConfig {
    fn default() -> BatchingConfig {
        // Keep in step with the `[default: …]` texts on `BrokerArgs`; a test checks them.
        BatchingConfig {
            max_messages: 512,
            max_bytes: 1024 * 1024,
            linger_us: 5000,
            ring_capacity_batches: 256,
        }
    }
}

/// Longest group-commit wait: beyond a second, PUBACKs would stall devices.
pub const SPOOL_SYNC_US_MAX: u64 = 1_000_000;
/// Smallest segment: a few direct-I/O blocks.
pub const SPOOL_SEGMENT_BYTES_MIN: u64 = 64 * 1024;

/// Broker flags, flattened into the `ferrymq` command. Each overrides the file's value; a flag
/// not given leaves the file's value (or the default) in place.
#[derive(Args, Clone, Debug, Default)]
pub struct BrokerArgs {
    /// TOML configuration file; flags override its values. A string value may be
    /// "${env:NAME}" or "${file:PATH}" (an environment variable, a file's content). SIGHUP
    /// reads it again for the Kafka clusters' bootstrap and config.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:1883; repeat for several. Replaces the file's
    /// listeners, TLS ones too: TLS listeners are set in the file only, as [[listener]] with
    /// bind, tls_cert, tls_key (PEM files) and optionally tls_client_ca (PEM CA bundle:
    /// verify client certificates), require_certificate = true (refuse clients without
    /// one), use_identity_as_username = true (the certificate's CN is the user name).
    /// [default: 127.0.0.1:1883]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// CPUs to run one shard each on, e.g. 0,1 or 0-3,6. [default: every CPU the process
    /// may run on]
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cores: Option<CpuList>,
    /// Connections open at once, over all listeners. [default: 100000]
    #[arg(long, value_name = "N")]
    pub connections_max: Option<usize>,
    /// Largest packet accepted, announced as Maximum Packet Size (16..=268435460).
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub packet_size_bytes_max: Option<u32>,
    /// Time a new socket has to send CONNECT. [default: 10000]
    #[arg(long, value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Longest keep alive granted; 0 accepts the client's. [default: 0]
    #[arg(long, value_name = "SECS")]
    pub keep_alive_secs_max: Option<u16>,
    /// Longest session expiry granted. [default: 604800]
    #[arg(long, value_name = "SECS")]
    pub session_expiry_secs_max: Option<u32>,
    /// QoS 1/2 messages kept per offline session. [default: 1000]
    #[arg(long, value_name = "N")]
    pub session_queue_messages_max: Option<usize>,
    /// Messages queued per connected subscriber. [default: 1000]
    #[arg(long, value_name = "N")]
    pub outgoing_queue_messages_max: Option<usize>,
    /// Outgoing QoS 1/2 messages awaiting ack per client. [default: 32]
    #[arg(long, value_name = "N")]
    pub inflight_messages_max: Option<u16>,
    /// Receive Maximum announced to 5.0 clients (1..=65535). [default: 1024]
    #[arg(long, value_name = "N")]
    pub receive_maximum: Option<u16>,
    /// Topic Alias Maximum announced to 5.0 clients; 0 disables aliases. [default: 64]
    #[arg(long, value_name = "N")]
    pub topic_alias_maximum: Option<u16>,
    /// Whether retained messages are kept. [default: true]
    #[arg(long, value_name = "BOOL")]
    pub retain_available: Option<bool>,
    /// Messages in flight per ordered pair of shards. [default: 4096]
    #[arg(long, value_name = "N")]
    pub inter_shard_channel_capacity: Option<usize>,
    /// Seconds between $SYS publications; 0 disables them. [default: 10]
    #[arg(long, value_name = "SECS")]
    pub sys_interval_secs: Option<u32>,
    /// Serve Prometheus metrics on http://ADDR/metrics (and /healthz, /readyz); TOML
    /// broker.metrics_bind. [default: none]
    #[arg(long = "metrics", value_name = "ADDR")]
    pub metrics_bind: Option<SocketAddr>,
    /// Subscriptions one client may hold; 0: no limit. [default: 1000]
    #[arg(long, value_name = "N")]
    pub subscriptions_per_client_max: Option<usize>,
    /// PUBLISHes per second one client may send (a faster one is read more slowly); 0: no
    /// limit. [default: 0]
    #[arg(long, value_name = "N")]
    pub publish_rate_max: Option<u32>,
    /// Records per Kafka batch; TOML batching.max_messages. [default: 512]
    #[arg(long = "batch-max-messages", value_name = "N")]
    pub batch_max_messages: Option<usize>,
    /// Bytes per Kafka batch, at least 1024; TOML batching.max_bytes. [default: 1048576]
    #[arg(long = "batch-max-bytes", value_name = "BYTES")]
    pub batch_max_bytes: Option<usize>,
    /// Longest wait for a batch to fill, at most 1000000 (1 ms under load, this at device
    /// rates); TOML batching.linger_us. [default: 5000]
    #[arg(long = "batch-linger-us", value_name = "US")]
    pub batch_linger_us: Option<u64>,
    /// Batches librdkafka may hold per shard and cluster (N × max_messages records); TOML
    /// batching.ring_capacity_batches. [default: 256]
    #[arg(long = "ring-capacity-batches", value_name = "N")]
    pub ring_capacity_batches: Option<usize>,
    /// Directory of the durable spool; TOML spool.data_dir. [default: ferrymq-data]
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Longest wait for a spool flush; TOML spool.sync_us. [default: 1000]
    #[arg(long = "spool-sync-us", value_name = "US")]
    pub spool_sync_us: Option<u64>,
    /// Bytes that start a spool flush at once; TOML spool.sync_bytes. [default: 1048576]
    #[arg(long = "spool-sync-bytes", value_name = "BYTES")]
    pub spool_sync_bytes: Option<usize>,
    /// Spool bytes per shard before durable publishers wait; TOML spool.max_bytes.
    /// [default: 1073741824]
    #[arg(long = "spool-max-bytes", value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// Durable QoS 1/2 publishers while the spool is full: hold (stop reading them) or
    /// refuse (MQTT 5.0 clients get PUBACK/PUBREC 0x97 Quota exceeded; 3.1.1 clients are
    /// held); TOML spool.when_full. [default: hold]
    #[arg(long = "spool-when-full", value_name = "POLICY", value_enum)]
    pub spool_when_full: Option<SpoolWhenFull>,
    /// Password file in mosquitto_passwd's format (make one with `ferrymq passwd`); clients
    /// then need a user name and password. Reloaded on SIGHUP. TOML auth.password_file.
    /// [default: none]
    #[arg(long = "password-file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// ACL file in Mosquitto's acl_file format (user, topic, pattern with %c and %u);
    /// without one every client may publish and subscribe to everything. Reloaded on
    /// SIGHUP. TOML auth.acl_file. [default: none]
    #[arg(long = "acl-file", value_name = "FILE")]
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a user name may connect; TOML auth.allow_anonymous.
    /// [default: false with a password file, true without]
    #[arg(long = "allow-anonymous", value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,
    /// Log format on stderr: text (human lines) or json (one JSON object per line); TOML
    /// log.format. [default: text]
    #[arg(long = "log-format", value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Events logged: off, error, warn, info, debug, trace, or a filter such as
    /// info,ferrymq::tls=debug; TOML log.level. RUST_LOG, when set, replaces the file's
    /// value; this flag replaces both. [default: info]
    #[arg(long = "log-level", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// A configuration error, one line, naming the key as written in TOML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Builds the configuration: defaults, then the file named by `--config`, then the flags, then
/// validation.
pub fn load(args: &BrokerArgs) -> Result<Config, ConfigError> {
    load_with_rust_log(args, None)
}

/// [`load`], with `rust_log` (RUST_LOG's value) between the file and the flags: when set and
/// not blank it replaces the file's `log.level`, and `--log-level` replaces it. A filter that
/// does not parse is an error naming RUST_LOG, unless `--log-level` is given.
pub fn load_with_rust_log(
    args: &BrokerArgs,
    rust_log: Option<&str>,
) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let rust_log = rust_log.map(str::trim).filter(|filter| !filter.is_empty());
    if let (Some(filter), None) = (rust_log, &args.log_level) {
        check_log_filter(filter).map_err(|e| ConfigError(format!("RUST_LOG: {e}")))?;
        config.log.level = filter.to_string();
        config.substitutions.overridden("log.level");
    }
    config.apply(args);
    config.validate()?;
    Ok(config)
}

/// Levels a log filter may name on its own.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a log filter: a level, or comma-separated directives in RUST_LOG's syntax
/// (`info,ferrymq::tls=debug`). A bare word that is not a level is refused: RUST_LOG would
/// take it as a target with every level, and `--log-level verbose` would log nothing.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("empty; give a level such as info".into());
    }
    for directive in filter.split(',').map(str::trim) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && !LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} in {filter:?} is not a level ({}); a target takes one, \
                 as in {directive}=debug",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|e| format!("{filter:?} is not a log filter: {e}"))
}

impl Config {
    /// Reads a TOML file over the defaults, without validating the values.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text over the defaults, without validating the values. `file` names the
    /// text's origin in errors, which read `file:line:column: key: problem`. String values
    /// `"${env:NAME}"` and `"${file:PATH}"` are resolved first; an error resolving one reads
    /// `key: reference: problem`.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, file, &|name| std::env::var_os(name))
    }

    /// [`Config::from_toml`], reading environment variables with `env`.
    pub(crate) fn from_toml_with_env(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let document = toml::de::DeTable::parse(text).map_err(|e| {
            // A syntax error: no value was read, so there is nothing to resolve.
            ConfigError(describe_toml_error(
                text,
                file,
                &e,
                &Resolved::unchanged(text),
                None,
            ))
        })?;
        let resolved =
            secrets::resolve(text, document.get_ref(), env).map_err(ConfigError)?;
        let mut config: Config = toml::from_str(&resolved.text).map_err(|e| {
            ConfigError(describe_toml_error(
                text,
                file,
                &e,
                &resolved,
                Some(document.get_ref()),
            ))
        })?;
        config.substitutions = resolved.substitutions;
        Ok(config)
    }

    /// The values never to show: those the file's references gave and those of secret keys
    /// ([`is_secret_key`]) in the clusters' `config`; longest first, for [`scrub`].
    pub fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self.substitutions.values().map(str::to_string).collect();
        for cluster in self.kafka.clusters.values() {
            for (name, value) in &cluster.config {
                if is_secret_key(name) {
                    values.push(value.clone());
                }
            }
        }
        values.retain(|value| !value.is_empty());
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        values
    }

    /// `value` as it may be shown for `key`, a key path as errors write it
    /// (`kafka.clusters.main.config."sasl.password"`): `***` when the key holds a secret
    /// ([`is_secret_key`]) or its value came from a reference, else `value`. For anything
    /// that prints settings with their values.
    pub fn shown<'v>(&self, key: &str, value: &'v str) -> &'v str {
        if is_secret_key(key) || self.substitutions.of_key(key).is_some() {
            secrets::MASK
        } else {
            value
        }
    }

    /// Overrides the values given on the command line.
    pub fn apply(&mut self, args: &BrokerArgs) {
        if !args.listen.is_empty() {
            self.listeners = args
                .listen
                .iter()
                .map(|&bind| ListenerConfig::new(bind))
                .collect();
        }
        let b = &mut self.broker;
        if let Some(cores) = &args.cores {
            b.cores = Some(cores.clone());
        }
        // Destructured so that a field added to `BrokerArgs` cannot be forgotten here.
        let BrokerArgs {
            config: _,
            listen: _,
            cores: _,
            connections_max,
            packet_size_bytes_max,
            connect_timeout_ms,
            keep_alive_secs_max,
            session_expiry_secs_max,
            session_queue_messages_max,
            outgoing_queue_messages_max,
            inflight_messages_max,
            receive_maximum,
            topic_alias_maximum,
            retain_available,
            inter_shard_channel_capacity,
            sys_interval_secs,
            metrics_bind,
            subscriptions_per_client_max,
            publish_rate_max,
            batch_max_messages,
            batch_max_bytes,
            batch_linger_us,
            ring_capacity_batches,
            ref data_dir,
            spool_sync_us,
            spool_sync_bytes,
            spool_max_bytes,
            spool_when_full,
            ref password_file,
            ref acl_file,
            allow_anonymous,
            log_format,
            ref log_level,
        } = *args;
        fn set<T>(field: &mut T, flag: Option<T>) {
            if let Some(value) = flag {
                *field = value;
            }
        }
        set(&mut b.connections_max, connections_max);
        set(&mut b.packet_size_bytes_max, packet_size_bytes_max);
        set(&mut b.connect_timeout_ms, connect_timeout_ms);
        set(&mut b.keep_alive_secs_max, keep_alive_secs_max);
        set(&mut b.session_expiry_secs_max, session_expiry_secs_max);
        set(
            &mut b.session_queue_messages_max,
            session_queue_messages_max,
        );
        set(
            &mut b.outgoing_queue_messages_max,
            outgoing_queue_messages_max,
        );
        set(&mut b.inflight_messages_max, inflight_messages_max);
        set(&mut b.receive_maximum, receive_maximum);
        set(&mut b.topic_alias_maximum, topic_alias_maximum);
        set(&mut b.retain_available, retain_available);
        set(
            &mut b.inter_shard_channel_capacity,
            inter_shard_channel_capacity,
        );
        set(&mut b.sys_interval_secs, sys_interval_secs);
        set(
            &mut b.subscriptions_per_client_max,
            subscriptions_per_client_max,
        );
        set(&mut b.publish_rate_max, publish_rate_max);
        if metrics_bind.is_some() {
            b.metrics_bind = metrics_bind;
        }
        let g = &mut self.batching;
        set(&mut g.max_messages, batch_max_messages);
        set(&mut g.max_bytes, batch_max_bytes);
        set(&mut g.linger_us, batch_linger_us);
        set(&mut g.ring_capacity_batches, ring_capacity_batches);
        let p = &mut self.spool;
        set(&mut p.data_dir, data_dir.clone());
        set(&mut p.sync_us, spool_sync_us);
        set(&mut p.sync_bytes, spool_sync_bytes);
        set(&mut p.max_bytes, spool_max_bytes);
        set(&mut p.when_full, spool_when_full);
        let a = &mut self.auth;
        if password_file.is_some() {
            a.password_file = password_file.clone();
        }
        if acl_file.is_some() {
            a.acl_file = acl_file.clone();
        }
        if allow_anonymous.is_some() {
            a.allow_anonymous = allow_anonymous;
        }
        set(&mut self.log.format, log_format);
        set(&mut self.log.level, log_level.clone());
        // An error about one of these keys is then about the flag's value, not a reference's.
        let replaced = [
            ("listener", !args.listen.is_empty()),
            ("broker.cores", args.cores.is_some()),
            ("broker.metrics_bind", metrics_bind.is_some()),
            ("spool.data_dir", data_dir.is_some()),
            ("spool.when_full", spool_when_full.is_some()),
            ("auth.password_file", password_file.is_some()),
            ("auth.acl_file", acl_file.is_some()),
            ("log.format", log_format.is_some()),
            ("log.level", log_level.is_some()),
        ];
        for (key, _) in replaced.into_iter().filter(|(_, given)| *given) {
            self.substitutions.overridden(key);
        }
    }

    /// Checks every value against its bounds; the error names the first key out of bounds,
    /// and the reference its value came from, if any (`key: ${env:NAME}: problem`). It shows
    /// none of [`Config::secret_values`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|ConfigError(error)| {
            let error = self.substitutions.annotate(&error);
            ConfigError(scrub(&error, &self.secret_values()))
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError(
                "listener: at least one listener is needed".into(),
            ));
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            // Port 0 asks the kernel for a free port, so two of them do not collide.
            let taken = self.listeners[..i]
                .iter()
                .position(|other| other.bind == listener.bind && listener.bind.port() != 0);
            if let Some(first) = taken {
                return Err(ConfigError(format!(
                    "listener[{i}].bind: {} is already bound by listener[{first}]",
                    listener.bind
                )));
            }
            listener
                .check_tls()
                .map_err(|e| ConfigError(format!("listener[{i}].{e}")))?;
        }

        let b = &self.broker;
        if let Some(cores) = &b.cores {
            check_cpu_list(cores).map_err(|e| ConfigError(format!("broker.cores: {e}")))?;
        }
        at_least("broker.connections_max", b.connections_max, 1)?;
        at_least(
            "broker.packet_size_bytes_max",
            b.packet_size_bytes_max,
            PACKET_SIZE_BYTES_MAX_MIN,
        )?;
        at_most(
            "broker.packet_size_bytes_max",
            b.packet_size_bytes_max,
            PACKET_SIZE_BYTES_MAX,
        )?;
        at_least("broker.connect_timeout_ms", b.connect_timeout_ms, 1)?;
        at_most(
            "broker.connect_timeout_ms",
            b.connect_timeout_ms,
            CONNECT_TIMEOUT_MS_MAX,
        )?;
        at_least(
            "broker.session_queue_messages_max",
            b.session_queue_messages_max,
            1,
        )?;
        at_least(
            "broker.outgoing_queue_messages_max",
            b.outgoing_queue_messages_max,
            1,
        )?;
        at_least("broker.inflight_messages_max", b.inflight_messages_max, 1)?;
        // MQTT 5.0 §3.2.2.3.3: a Receive Maximum of 0 is a protocol error.
        at_least("broker.receive_maximum", b.receive_maximum, 1)?;
        at_least(
            "broker.inter_shard_channel_capacity",
            b.inter_shard_channel_capacity,
            1,
        )?;

        self.kafka.validate()?;

        let g = &self.batching;
        at_least("batching.max_messages", g.max_messages, 1)?;
        at_least("batching.max_bytes", g.max_bytes, BATCHING_MAX_BYTES_MIN)?;
        // 0 is allowed: a batch leaves as soon as the producer can take it.
        at_most("batching.linger_us", g.linger_us, BATCHING_LINGER_US_MAX)?;
        at_least("batching.ring_capacity_batches", g.ring_capacity_batches, 1)?;
        let p = &self.spool;
        at_most("spool.sync_us", p.sync_us, SPOOL_SYNC_US_MAX)?;
        at_least("spool.sync_bytes", p.sync_bytes, 1)?;
        at_least(
            "spool.segment_bytes",
            p.segment_bytes,
            SPOOL_SEGMENT_BYTES_MIN,
        )?;
        at_least("spool.max_bytes", p.max_bytes, p.segment_bytes)?;
        if p.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("spool.data_dir: cannot be empty".into()));
        }
        // The files are read now, so that a broken line stops the start (SIGHUP reloads
        // them later; a broken reload keeps the files in use).
        if let Some(path) = &self.auth.password_file {
            crate::auth::PasswordFile::load(path)
                .map_err(|e| ConfigError(format!("auth.password_file: {e}")))?;
        }
        if let Some(path) = &self.auth.acl_file {
            crate::auth::Acl::load(path).map_err(|e| ConfigError(format!("auth.acl_file: {e}")))?;
        }
        check_log_filter(&self.log.level).map_err(|e| ConfigError(format!("log.level: {e}")))?;
        Ok(())
    }
}

impl KafkaConfig {
    /// Checks the clusters and mappings; the error names the first key in error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, cluster) in &self.clusters {
            let key = format!("kafka.clusters.{}", toml_key(name));
            if name.is_empty() {
                return Err(ConfigError(format!(
                    "{key}: a cluster name cannot be empty"
                )));
            }
            check_bootstrap(&cluster.bootstrap)
                .map_err(|e| ConfigError(format!("{key}.bootstrap: {e}")))?;
            if let Some(property) = BOOTSTRAP_PROPERTIES
                .iter()
                .find(|p| cluster.config.contains_key(**p))
            {
                return Err(ConfigError(format!(
                    "{key}.config.{}: the brokers are set by {key}.bootstrap",
                    toml_key(property)
                )));
            }
        }
        for (i, mapping) in self.mappings.iter().enumerate() {
            self.check_mapping(mapping)
                .map_err(|e| ConfigError(format!("kafka.mapping[{i}].{e}")))?;
        }
        Ok(())
    }

    /// The name of the cluster `mapping` sends to: its `cluster`, or when that is left out
    /// and there is exactly one cluster, that one. None when neither gives a known cluster.
    pub fn cluster_of<'a>(&'a self, mapping: &'a MappingConfig) -> Option<&'a str> {
        match &mapping.cluster {
            Some(name) => self.clusters.contains_key(name).then_some(name.as_str()),
            None if self.clusters.len() == 1 => self.clusters.keys().next().map(String::as_str),
            None => None,
        }
    }

    /// Checks one mapping; the error starts with the key inside the mapping (`topic: ...`).
    fn check_mapping(&self, mapping: &MappingConfig) -> Result<(), String> {
        match validate_topic_filter(&mapping.mqtt) {
            Err(DecodeError::InvalidTopicFilter { reason }) => {
                return Err(format!(
                    "mqtt: {:?} is not a topic filter: {reason}",
                    mapping.mqtt
                ));
            }
            Err(e) => return Err(format!("mqtt: {:?}: {e}", mapping.mqtt)),
            Ok(()) if is_shared(&mapping.mqtt) => {
                return Err(format!(
                    "mqtt: {:?} is a shared subscription; a mapping takes every matching \
                     message, so give the filter without `$share/GROUP/`",
                    mapping.mqtt
                ));
            }
            Ok(()) => {}
        }

        if self.cluster_of(mapping).is_none() {
            let known = self.cluster_names_known();
            return Err(match &mapping.cluster {
                Some(name) => format!("cluster: {name:?} is not a cluster (known: {known})"),
                None if self.clusters.is_empty() => {
                    "cluster: there is no cluster to send to; add a [kafka.clusters.NAME] table"
                        .to_string()
                }
                None => format!(
                    "cluster: missing, and needed when there are several clusters \
                     (known: {known})"
                ),
            });
        }

        let topic = Template::parse(&mapping.topic).map_err(|e| format!("topic: {e}"))?;
        if let Some(name) = topic.is_literal() {
            validate_kafka_topic(name).map_err(|e| format!("topic: {e}"))?;
        }
        if let Some(key) = &mapping.key {
            Template::parse(key).map_err(|e| format!("key: {e}"))?;
        }

        for (i, field) in mapping.headers.iter().enumerate() {
            if mapping.headers[..i].contains(field) {
                return Err(format!("headers: {:?} is listed twice", field.as_str()));
            }
        }

        match (&mapping.dead_letter_topic, mapping.on_refused) {
            (None, OnRefused::DeadLetter) => {
                return Err(
                    "dead_letter_topic: missing, and needed with on_refused = \"dead_letter\""
                        .to_string(),
                );
            }
            (Some(topic), OnRefused::DeadLetter) => {
                validate_kafka_topic(topic).map_err(|e| format!("dead_letter_topic: {e}"))?;
            }
            (Some(_), other) => {
                return Err(format!(
                    "dead_letter_topic: used only with on_refused = \"dead_letter\" (this \
                     mapping has {:?})",
                    other.as_str()
                ));
            }
            (None, _) => {}
        }
        if let Some(name) = &mapping.dead_letter_cluster {
            if mapping.on_refused != OnRefused::DeadLetter {
                return Err(
                    "dead_letter_cluster: used only with on_refused = \"dead_letter\"".to_string(),
                );
            }
            if !self.clusters.contains_key(name) {
                let known = self.cluster_names_known();
                return Err(format!(
                    "dead_letter_cluster: {name:?} is not a cluster (known: {known})"
                ));
            }
        }

        Ok(())
    }

    /// The cluster that takes `mapping`'s dead letters: its `dead_letter_cluster`, else its
    /// own. None when the mapping has no dead letters (or no known cluster).
    pub fn dead_letter_cluster_of<'a>(&'a self, mapping: &'a MappingConfig) -> Option<&'a str> {
        if mapping.on_refused != OnRefused::DeadLetter {
            return None;
        }
        match &mapping.dead_letter_cluster {
            Some(name) => self.clusters.contains_key(name).then_some(name.as_str()),
            None => self.cluster_of(mapping),
        }
    }

    /// The cluster names for an error message: `a, b`, or `none`.
    fn cluster_names_known(&self) -> String {
        if self.clusters.is_empty() {
            return "none".to_string();
        }
        let names: Vec<_> = self.clusters.keys().map(|name| toml_key(name)).collect();
        names.join(", ")
    }
}

/// Checks a bootstrap list: one or more `host:port`, comma-separated, spaces allowed around
/// each. An IPv6 host is written in brackets, `[::1]:9092`.
fn check_bootstrap(list: &str) -> Result<(), String> {
    if list.trim().is_empty() {
        return Err("empty; give one or more host:port, separated by commas".into());
    }
    for item in list.split(',') {
        let item = item.trim();
        let valid = item.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|port| port != 0)
        });
        if !valid {
            return Err(format!("{item:?} in {list:?} is not host:port"));
        }
    }
    Ok(())
}

/// A TOML key as written in a key path: bare when it can be, quoted otherwise
/// (`"compression.type"`).
pub(crate) fn toml_key(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{key:?}"))
    }
}

fn at_least<T: PartialOrd + fmt::Display>(key: &str, value: T, min: T) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError(format!(
            "{key}: {value} is below the minimum of {min}"
        )));
    }
    Ok(())
}

fn at_most<T: PartialOrd + fmt::Display>(key: &str, value: T, max: T) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError(format!(
            "{key}: {value} is above the maximum of {max}"
        )));
    }
    Ok(())
}

/// Parses a CPU list as `taskset -c` and `/sys/devices/system/cpu/online` write it: numbers
/// and inclusive ranges separated by commas, e.g. `0,1` or `0-3,6`. Keeps the given order.
pub fn parse_cpu_list(list: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} in {list:?} is not a CPU number"))
        };
        match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse(first)?, parse(last)?);
                if first > last {
                    return Err(format!("range {item:?} in {list:?} runs backwards"));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(parse(item)?),
        }
    }
    check_cpu_list(&cpus)?;
    Ok(cpus)
}

fn check_cpu_list(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Err("the list of CPUs is empty".into());
    }
    let mut seen = HashSet::new();
    for &cpu in cpus {
        if cpu > CORE_ID_MAX {
            return Err(format!("CPU {cpu} is above the maximum of {CORE_ID_MAX}"));
        }
        if !seen.insert(cpu) {
            return Err(format!("CPU {cpu} is listed twice"));
        }
    }
    Ok(())
}

fn deserialize_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| de::Error::custom(format!("{text:?} is not an IP address and port")))
}

fn deserialize_optional_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    deserialize_socket_addr(d).map(Some)
}

/// Accepts `cores = "0-3,6"` as well as `cores = [0, 1, 2, 3, 6]`.
fn deserialize_cores<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CpuList>, D::Error> {
    struct CoresVisitor;

    impl<'de> Visitor<'de> for CoresVisitor {
        type Value = CpuList;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a CPU list such as \"0-3,6\" or an array of CPU numbers")
        }

        fn visit_str<E: de::Error>(self, list: &str) -> Result<CpuList, E> {
            parse_cpu_list(list).map_err(E::custom)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuList, A::Error> {
            let mut cpus = Vec::new();
            while let Some(cpu) = seq.next_element()? {
                cpus.push(cpu);
            }
            Ok(cpus)
        }
    }

    d.deserialize_any(CoresVisitor).map(Some)
}

/// A librdkafka property value: librdkafka takes every value as a string, so a TOML string is
/// kept as it is and an integer or boolean as its TOML text (`linger.ms = 5` gives "5").
struct PropertyValue(String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PropertyValue, D::Error> {
        struct PropertyVisitor;

        impl Visitor<'_> for PropertyVisitor {
            type Value = PropertyValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer or boolean")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(value.to_string()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(value.to_string()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(value.to_string()))
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(value.to_string()))
            }
        }

        d.deserialize_any(PropertyVisitor)
    }
}

fn deserialize_properties<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let properties = BTreeMap::<String, PropertyValue>::deserialize(d)?;
    Ok(properties
        .into_iter()
        .map(|(name, PropertyValue(value))| (name, value))
        .collect())
}

/// Turns a TOML error into one line: `file:line:column: key: problem`, where `key` is the
/// path of the offending key (`listener[1].bind`), found from the error's position. `error`
/// is about `resolved.text`; the position is given in `text`, the file as written, whose
/// parsed `document` names the key, and the message is scrubbed of what references gave. An
/// error in a reference's value reads `file:line:column: key: reference: problem`.
fn describe_toml_error(
    text: &str,
    file: &str,
    error: &toml::de::Error,
    resolved: &Resolved<'_>,
    document: Option<&toml::de::DeTable<'_>>,
) -> String {
    // serde says "field"; the file's reader knows them as keys.
    let message = resolved
        .scrub(error.message().trim())
        .replace('\n', "; ")
        .replacen("unknown field", "unknown key", 1);
    let Some(span) = error.span() else {
        return format!("{file}: {message}");
    };
    let (offset, substitution) = resolved.original_offset(span.start);
    let message = match substitution {
        Some(substitution) => format!("{}: {message}", substitution.reference()),
        None => message,
    };
    let (line, column) = line_and_column(text, offset);
    // A syntax error leaves no document to find the key in; the position says enough.
    let key = document.and_then(|document| key_at_table(document, offset, ""));
    match key {
        Some(key) => format!("{file}:{line}:{column}: {key}: {message}"),
        None => format!("{file}:{line}:{column}: {message}"),
    }
}

/// One-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The path of the deepest key whose name or value covers `offset`.
fn key_at_table(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let name = toml_key(key.get_ref());
        let path = if prefix.is_empty() {
            name.into_owned()
        } else {
            format!("{prefix}.{name}")
        };
        key_at_value(value, offset, &path).or_else(|| {
            (key.span().contains(&offset) || value.span().contains(&offset)).then_some(path)
        })
    })
}

fn key_at_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    offset: usize,
    path: &str,
) -> Option<String> {
    match value.get_ref() {
        toml::de::DeValue::Table(table) => key_at_table(table, offset, path),
        toml::de::DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = format!("{path}[{i}]");
            key_at_value(item, offset, &path)
                .or_else(|| item.span().contains(&offset).then_some(path))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// The `ferrymq` command as far as this module is concerned.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BrokerArgs,
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml")
    }

    fn args(flags: &[&str]) -> BrokerArgs {
        let argv = std::iter::once("ferrymq").chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").args
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::default();
        config.validate().expect("defaults valid");
        assert_eq!(
            config.listeners,
            [ListenerConfig::new(addr("127.0.0.1:1883"))]
        );
        assert_eq!(config.broker.packet_size_bytes_max, 1_048_576);
        assert_eq!(config.broker.session_expiry_secs_max, 604_800);
        assert_eq!(parse("").expect("empty file"), config);
        assert_eq!(load(&BrokerArgs::default()).expect("no flags"), config);
    }

    #[test]
    fn no_flag_given_leaves_every_value_unset() {
        let given = args(&[]);
        assert!(given.config.is_none() && given.listen.is_empty() && given.cores.is_none());
        let mut config = Config::default();
        config.apply(&given);
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_overrides_defaults() {
        let config = parse(
            "[[listener]]\nbind = \"0.0.0.0:1884\"\n[[listener]]\nbind = \"[::1]:1885\"\n\
             [broker]\ncores = \"0-2,5\"\nconnections_max = 7\nretain_available = false\n",
        )
        .expect("file parses");
        let binds: Vec<_> = config.listeners.iter().map(|l| l.bind).collect();
        assert_eq!(binds, [addr("0.0.0.0:1884"), addr("[::1]:1885")]);
        assert_eq!(config.broker.cores, Some(vec![0, 1, 2, 5]));
        assert_eq!(config.broker.connections_max, 7);
        assert!(!config.broker.retain_available);
        // Keys the file leaves out keep their defaults.
        let defaults = BrokerConfig::default();
        assert_eq!(config.broker.receive_maximum, defaults.receive_maximum);
        assert_eq!(config.broker.sys_interval_secs, defaults.sys_interval_secs);
    }

    #[test]
    fn cores_may_be_an_array() {
        let config = parse("[broker]\ncores = [3, 1]\n").expect("array of CPUs");
        assert_eq!(config.broker.cores, Some(vec![3, 1]));
    }

    #[test]
    fn flags_override_file() {
        let mut config = parse(
            "[[listener]]\nbind = \"0.0.0.0:1884\"\n[broker]\ncores = [0]\n\
             connections_max = 7\nreceive_maximum = 10\ntopic_alias_maximum = 5\n",
        )
        .expect("file parses");
        config.apply(&args(&[
            "--listen",
            "127.0.0.1:2000",
            "--listen",
            "127.0.0.1:2001",
            "--cores",
            "1-2",
            "--connections-max",
            "9",
            "--retain-available",
            "false",
            "--sys-interval-secs",
            "0",
        ]));
        let binds: Vec<_> = config.listeners.iter().map(|l| l.bind).collect();
        assert_eq!(binds, [addr("127.0.0.1:2000"), addr("127.0.0.1:2001")]);
        assert_eq!(config.broker.cores, Some(vec![1, 2]));
        assert_eq!(config.broker.connections_max, 9);
        assert!(!config.broker.retain_available);
        assert_eq!(config.broker.sys_interval_secs, 0);
        // Flags not given leave the file's values.
        assert_eq!(config.broker.receive_maximum, 10);
        assert_eq!(config.broker.topic_alias_maximum, 5);
    }

    #[test]
    fn every_flag_sets_its_field() {
        let mut config = Config::default();
        config.apply(&args(&[
            "--connections-max=1",
            "--packet-size-bytes-max=2",
            "--connect-timeout-ms=3",
            "--keep-alive-secs-max=4",
            "--session-expiry-secs-max=5",
            "--session-queue-messages-max=6",
            "--outgoing-queue-messages-max=7",
            "--inflight-messages-max=8",
            "--receive-maximum=9",
            "--topic-alias-maximum=10",
            "--retain-available=false",
            "--inter-shard-channel-capacity=11",
            "--sys-interval-secs=12",
            "--batch-max-messages=13",
            "--batch-max-bytes=14",
            "--batch-linger-us=15",
            "--ring-capacity-batches=16",
            "--metrics=127.0.0.1:9100",
            "--subscriptions-per-client-max=17",
            "--publish-rate-max=18",
            "--password-file=/p",
            "--acl-file=/a",
            "--allow-anonymous=true",
            "--log-format=json",
            "--log-level=trace",
        ]));
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, "trace");
        let auth = crate::auth::AuthConfig {
            password_file: Some(PathBuf::from("/p")),
            acl_file: Some(PathBuf::from("/a")),
            allow_anonymous: Some(true),
        };
        assert_eq!(config.auth, auth);
        let batching = BatchingConfig {
            max_messages: 13,
            max_bytes: 14,
            linger_us: 15,
            ring_capacity_batches: 16,
        };
        assert_eq!(config.batching, batching);
        let expected = BrokerConfig {
            cores: None,
            connections_max: 1,
            packet_size_bytes_max: 2,
            connect_timeout_ms: 3,
            keep_alive_secs_max: 4,
            session_expiry_secs_max: 5,
            session_queue_messages_max: 6,
            outgoing_queue_messages_max: 7,
            inflight_messages_max: 8,
            receive_maximum: 9,
            topic_alias_maximum: 10,
            retain_available: false,
            inter_shard_channel_capacity: 11,
            sys_interval_secs: 12,
            metrics_bind: Some("127.0.0.1:9100".parse().unwrap()),
            subscriptions_per_client_max: 17,
            publish_rate_max: 18,
        };
        assert_eq!(config.broker, expected);
    }

    #[test]
    fn validation_errors_name_the_key() {
        type Edit = fn(&mut Config);
        let cases: [(Edit, &str); 19] = [
            (
                |c| c.listeners.clear(),
                "listener: at least one listener is needed",
            ),
            (
                |c| c.listeners.push(c.listeners[0].clone()),
                "listener[1].bind: 127.0.0.1:1883 is already bound by listener[0]",
            ),
            (
                |c| c.broker.cores = Some(vec![]),
                "broker.cores: the list of CPUs is empty",
            ),
            (
                |c| c.broker.cores = Some(vec![0, 2, 0]),
                "broker.cores: CPU 0 is listed twice",
            ),
            (
                |c| c.broker.cores = Some(vec![1024]),
                "broker.cores: CPU 1024 is above the maximum of 1023",
            ),
            (
                |c| c.broker.connections_max = 0,
                "broker.connections_max: 0 is below the minimum of 1",
            ),
            (
                |c| c.broker.packet_size_bytes_max = 5,
                "broker.packet_size_bytes_max: 5 is below the minimum of 16",
            ),
            (
                |c| c.broker.packet_size_bytes_max = 268_435_461,
                "broker.packet_size_bytes_max: 268435461 is above the maximum of 268435460",
            ),
            (
                |c| c.broker.connect_timeout_ms = 0,
                "broker.connect_timeout_ms: 0 is below the minimum of 1",
            ),
            (
                |c| c.broker.connect_timeout_ms = 3_600_001,
                "broker.connect_timeout_ms: 3600001 is above the maximum of 3600000",
            ),
            (
                |c| c.broker.session_queue_messages_max = 0,
                "broker.session_queue_messages_max: 0 is below the minimum of 1",
            ),
            (
                |c| c.broker.outgoing_queue_messages_max = 0,
                "broker.outgoing_queue_messages_max: 0 is below the minimum of 1",
            ),
            (
                |c| c.broker.inflight_messages_max = 0,
                "broker.inflight_messages_max: 0 is below the minimum of 1",
            ),
            (
                |c| c.broker.receive_maximum = 0,
                "broker.receive_maximum: 0 is below the minimum of 1",
            ),
            (
                |c| c.broker.inter_shard_channel_capacity = 0,
                "broker.inter_shard_channel_capacity: 0 is below the minimum of 1",
            ),
            (
                |c| c.batching.max_messages = 0,
                "batching.max_messages: 0 is below the minimum of 1",
            ),
            (
                |c| c.batching.max_bytes = 1023,
                "batching.max_bytes: 1023 is below the minimum of 1024",
            ),
            (
                |c| c.batching.linger_us = 1_000_001,
                "batching.linger_us: 1000001 is above the maximum of 1000000",
            ),
            (
                |c| c.batching.ring_capacity_batches = 0,
                "batching.ring_capacity_batches: 0 is below the minimum of 1",
            ),
        ];
        for (edit, expected) in cases {
            let mut config = Config::default();
            edit(&mut config);
            let error = config.validate().expect_err(expected).to_string();
            assert_eq!(error, expected);
        }
    }

    #[test]
    fn bounds_are_inclusive() {
        let mut config = Config::default();
        let b = &mut config.broker;
        b.packet_size_bytes_max = PACKET_SIZE_BYTES_MAX_MIN;
        b.connect_timeout_ms = CONNECT_TIMEOUT_MS_MAX;
        b.receive_maximum = u16::MAX;
        b.cores = Some(vec![CORE_ID_MAX]);
        let g = &mut config.batching;
        g.max_messages = 1;
        g.max_bytes = BATCHING_MAX_BYTES_MIN;
        g.linger_us = BATCHING_LINGER_US_MAX;
        g.ring_capacity_batches = 1;
        config
            .validate()
            .expect("lowest and highest values accepted");
        config.broker.packet_size_bytes_max = PACKET_SIZE_BYTES_MAX;
        config
            .validate()
            .expect("largest packet MQTT can encode accepted");
        // Port 0 asks for any free port, so two such listeners do not collide.
        config.listeners = vec![ListenerConfig::new(addr("127.0.0.1:0")); 2];
        config.validate().expect("two port-0 listeners");
        config.batching.linger_us = 0;
        config.validate().expect("no linger");
    }

    #[test]
    fn file_errors_give_position_and_key() {
        let cases = [
            (
                "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"foo\"\n",
                "test.toml:4:8: listener[1].bind: \"foo\" is not an IP address and port",
            ),
            (
                "[[listener]]\n",
                "test.toml:1:1: listener[0]: missing field `bind`",
            ),
            (
                "[broker]\nreceive_maximum = 70000\n",
                "test.toml:2:19: broker.receive_maximum: invalid value: integer `70000`, \
                 expected u16",
            ),
            (
                "[broker]\nconnections_max = -1\n",
                "test.toml:2:19: broker.connections_max: invalid value: integer `-1`, \
                 expected usize",
            ),
            (
                "[broker]\nretain_available = 1\n",
                "test.toml:2:20: broker.retain_available: invalid type: integer `1`, \
                 expected a boolean",
            ),
            (
                "[broker]\ncores = \"0-x\"\n",
                "test.toml:2:9: broker.cores: \"x\" in \"0-x\" is not a CPU number",
            ),
            (
                "[broker]\ncores = [0, \"x\"]\n",
                "test.toml:2:13: broker.cores[1]: invalid type: string \"x\", expected usize",
            ),
            (
                "broker = 1\n",
                "test.toml:1:10: broker: invalid type: integer `1`, expected a table",
            ),
            // Syntax errors: there is no key to name, the position says where.
            ("[broker\n", "test.toml:1:8: unclosed table, expected `]`"),
            (
                "[broker]\nx = = 1\n",
                "test.toml:2:5: extra `=`, expected nothing",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(expected).to_string();
            assert_eq!(error, expected);
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error = parse("[broker]\nconections_max = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "test.toml:2:1: broker.conections_max: unknown key `conections_max`, \
                 expected one of `cores`, `connections_max`,"
            ),
            "{error}"
        );
        let error = parse("[kafkaa]\nx = 1\n").unwrap_err().to_string();
        assert_eq!(
            error,
            "test.toml:1:2: kafkaa: unknown key `kafkaa`, expected one of `listener`, \
             `broker`, `kafka`, `batching`, `spool`, `auth`, `log`"
        );
        let error = parse("[kafka]\ncluster = 1\n").unwrap_err().to_string();
        assert_eq!(
            error,
            "test.toml:2:1: kafka.cluster: unknown key `cluster`, expected `clusters` or \
             `mapping`"
        );
        let error = parse("[batching]\nring_capacity = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "test.toml:2:1: batching.ring_capacity: unknown key `ring_capacity`, \
                 expected one of `max_messages`,"
            ),
            "{error}"
        );
        let error = parse("[[listener]]\nport = 5\n").unwrap_err().to_string();
        assert_eq!(
            error,
            "test.toml:2:1: listener[0].port: unknown key `port`, expected one of `bind`, \
             `tls_cert`, `tls_key`, `tls_client_ca`, `require_certificate`, \
             `use_identity_as_username`"
        );
    }

    #[test]
    fn tls_listener_keys_parse_and_go_together() {
        let config = parse(
            "[[listener]]\nbind = \"0.0.0.0:8883\"\ntls_cert = \"/etc/ferrymq/server.pem\"\n\
             tls_key = \"/etc/ferrymq/server.key\"\ntls_client_ca = \"/etc/ferrymq/ca.pem\"\n\
             require_certificate = true\nuse_identity_as_username = true\n",
        )
        .expect("TLS listener parses");
        config.validate().expect("TLS listener valid");
        let listener = &config.listeners[0];
        assert!(listener.is_tls());
        assert_eq!(
            listener.tls_key.as_deref(),
            Some(Path::new("/etc/ferrymq/server.key"))
        );
        assert!(listener.require_certificate && listener.use_identity_as_username);
        assert!(!ListenerConfig::new(addr("127.0.0.1:1883")).is_tls());

        let tls = || {
            let mut listener = ListenerConfig::new(addr("127.0.0.1:8883"));
            listener.tls_cert = Some("cert.pem".into());
            listener.tls_key = Some("key.pem".into());
            listener
        };
        type Change = fn(&mut ListenerConfig);
        let cases: [(Change, &str); 7] = [
            (
                |l| l.tls_key = None,
                "listener[1].tls_key: missing; tls_cert needs its private key",
            ),
            (
                |l| l.tls_cert = None,
                "listener[1].tls_cert: missing; tls_key needs its certificate",
            ),
            (
                |l| l.tls_cert = Some("".into()),
                "listener[1].tls_cert: cannot be empty",
            ),
            (
                |l| {
                    l.tls_cert = None;
                    l.tls_key = None;
                    l.tls_client_ca = Some("ca.pem".into());
                },
                "listener[1].tls_client_ca: needs tls_cert and tls_key (a TLS listener)",
            ),
            (
                |l| l.require_certificate = true,
                "listener[1].require_certificate: needs tls_client_ca to verify \
                 certificates against",
            ),
            (
                |l| l.use_identity_as_username = true,
                "listener[1].use_identity_as_username: needs tls_client_ca to verify \
                 certificates against",
            ),
            (
                |l| {
                    l.tls_cert = None;
                    l.tls_key = None;
                    l.require_certificate = true;
                },
                "listener[1].require_certificate: needs tls_client_ca to verify \
                 certificates against",
            ),
        ];
        for (change, expected) in cases {
            let mut config = Config::default();
            let mut listener = tls();
            change(&mut listener);
            config.listeners.push(listener);
            assert_eq!(config.validate().unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn errors_are_one_line() {
        for text in [
            "[broker\n",
            "[broker]\nfoo = 1\n",
            "[[listener]]\nbind = 1\n",
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(!error.contains('\n'), "{error:?}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("0,1"), Ok(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list(" 4 , 2-3 "), Ok(vec![4, 2, 3]));
        assert_eq!(parse_cpu_list("5-5"), Ok(vec![5]));
        let errors = [
            ("", "\"\" in \"\" is not a CPU number"),
            ("0,", "\"\" in \"0,\" is not a CPU number"),
            ("a", "\"a\" in \"a\" is not a CPU number"),
            ("-1", "\"\" in \"-1\" is not a CPU number"),
            ("0-", "\"\" in \"0-\" is not a CPU number"),
            ("3-1", "range \"3-1\" in \"3-1\" runs backwards"),
            ("0-2,1", "CPU 1 is listed twice"),
            ("1024", "CPU 1024 is above the maximum of 1023"),
        ];
        for (list, expected) in errors {
            assert_eq!(parse_cpu_list(list), Err(expected.to_string()), "{list:?}");
        }
    }

    #[test]
    fn bad_flags_are_refused_by_clap() {
        for flags in [
            &["--cores", "2-1"][..],
            &["--listen", "foo"],
            &["--receive-maximum", "70000"],
            &["--retain-available", "yes"],
        ] {
            let argv = std::iter::once("ferrymq").chain(flags.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{flags:?}");
        }
    }

    #[test]
    fn log_section_flags_and_rust_log() {
        let config = parse("[log]\nformat = \"json\"\nlevel = \"warn,ferrymq::tls=debug\"\n")
            .expect("[log] parses");
        config.validate().expect("[log] valid");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, "warn,ferrymq::tls=debug");
        assert_eq!(
            parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string(),
            "test.toml:2:10: log.format: unknown variant `xml`, expected `text` or `json`"
        );
        assert!(parse("[log]\nlevels = \"info\"\n")
            .unwrap_err()
            .to_string()
            .starts_with("test.toml:2:1: log.levels: unknown key `levels`, expected"));

        let mut config = Config::default();
        config.apply(&args(&["--log-format", "json", "--log-level", "debug"]));
        assert_eq!(
            config.log,
            LogConfig {
                format: LogFormat::Json,
                level: "debug".into()
            }
        );
        assert!(Cli::try_parse_from(["ferrymq", "--log-format", "yaml"]).is_err());

        for (level, expected) in [
            ("", "log.level: empty; give a level such as info"),
            (
                "verbose",
                "log.level: \"verbose\" in \"verbose\" is not a level (off, error, warn, info, \
                 debug, trace); a target takes one, as in verbose=debug",
            ),
            (
                "ferrymq=loud",
                "log.level: \"ferrymq=loud\" is not a log filter: ",
            ),
        ] {
            let mut config = Config::default();
            config.log.level = level.into();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.starts_with(expected), "{level:?}: {error}");
        }
        for level in [
            "off",
            "ERROR",
            "info",
            "trace",
            "info,ferrymq::tls=debug",
            "ferrymq=warn",
        ] {
            check_log_filter(level).unwrap_or_else(|e| panic!("{level:?}: {e}"));
        }

        // Defaults < RUST_LOG < --log-level.
        let level = |flags: &[&str], rust_log: Option<&str>| {
            load_with_rust_log(&args(flags), rust_log).map(|c| c.log.level)
        };
        assert_eq!(level(&[], None).unwrap(), "info");
        assert_eq!(level(&[], Some("debug")).unwrap(), "debug");
        assert_eq!(level(&[], Some("  ")).unwrap(), "info");
        assert_eq!(
            level(&["--log-level", "warn"], Some("debug")).unwrap(),
            "warn"
        );
        assert!(level(&[], Some("loud"))
            .unwrap_err()
            .to_string()
            .starts_with("RUST_LOG: \"loud\" in \"loud\" is not a level"));
        // Overridden by the flag, a bad RUST_LOG does not matter.
        assert_eq!(
            level(&["--log-level", "warn"], Some("loud")).unwrap(),
            "warn"
        );
    }

    #[test]
    fn help_gives_each_default() {
        Cli::command().debug_assert();
        let d = BrokerConfig::default();
        let g = BatchingConfig::default();
        let defaults = [
            ("listen", "127.0.0.1:1883".to_string()),
            ("cores", "every CPU the process may run on".to_string()),
            ("connections_max", d.connections_max.to_string()),
            ("packet_size_bytes_max", d.packet_size_bytes_max.to_string()),
            ("connect_timeout_ms", d.connect_timeout_ms.to_string()),
            ("keep_alive_secs_max", d.keep_alive_secs_max.to_string()),
            (
                "session_expiry_secs_max",
                d.session_expiry_secs_max.to_string(),
            ),
            (
                "session_queue_messages_max",
                d.session_queue_messages_max.to_string(),
            ),
            (
                "outgoing_queue_messages_max",
                d.outgoing_queue_messages_max.to_string(),
            ),
            ("inflight_messages_max", d.inflight_messages_max.to_string()),
            ("receive_maximum", d.receive_maximum.to_string()),
            ("topic_alias_maximum", d.topic_alias_maximum.to_string()),
            ("retain_available", d.retain_available.to_string()),
            (
                "inter_shard_channel_capacity",
                d.inter_shard_channel_capacity.to_string(),
            ),
            ("sys_interval_secs", d.sys_interval_secs.to_string()),
            ("metrics_bind", "none".to_string()),
            (
                "subscriptions_per_client_max",
                d.subscriptions_per_client_max.to_string(),
            ),
            ("publish_rate_max", d.publish_rate_max.to_string()),
            ("password_file", "none".to_string()),
            ("acl_file", "none".to_string()),
            (
                "allow_anonymous",
                "false with a password file, true without".to_string(),
            ),
            ("batch_max_messages", g.max_messages.to_string()),
            ("batch_max_bytes", g.max_bytes.to_string()),
            ("batch_linger_us", g.linger_us.to_string()),
            ("ring_capacity_batches", g.ring_capacity_batches.to_string()),
            ("data_dir", "ferrymq-data".to_string()),
            ("spool_sync_us", SpoolConfig::default().sync_us.to_string()),
            (
                "spool_sync_bytes",
                SpoolConfig::default().sync_bytes.to_string(),
            ),
            (
                "spool_max_bytes",
                SpoolConfig::default().max_bytes.to_string(),
            ),
            ("spool_when_full", "hold".to_string()),
            (
                "log_format",
                clap::ValueEnum::to_possible_value(&LogConfig::default().format)
                    .expect("a named format")
                    .get_name()
                    .to_string(),
            ),
            ("log_level", LogConfig::default().level),
        ];
        let command = Cli::command();
        let flags = command.get_arguments().filter(|a| a.get_id() != "config");
        assert_eq!(
            flags.count(),
            defaults.len(),
            "a flag without a checked default"
        );
        for (id, default) in defaults {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect(id);
            let help = arg.get_help().expect(id).to_string();
            assert!(
                help.ends_with(&format!("[default: {default}]")),
                "{id}: {help}"
            );
            assert!(
                arg.get_default_values().is_empty(),
                "{id}: clap must not fill it"
            );
        }
    }

    const KAFKA: &str = r#"
[kafka.clusters.main]
bootstrap = "kafka1:9092, kafka2:9092"
config = { "compression.type" = "lz4", "linger.ms" = 5, "enable.idempotence" = true }

[kafka.clusters.backup]
bootstrap = "[::1]:9093"

[[kafka.mapping]]
mqtt = "devices/+/telemetry/#"
cluster = "main"
topic = "telemetry"
key = "{client_id}"
ack = "kafka"

[[kafka.mapping]]
mqtt = "alerts/#"
cluster = "backup"
topic = "alerts.{2}"
headers = ["mqtt_topic", "user_properties"]
ack = "none"
mqtt_subscribers = false

[batching]
max_messages = 100
linger_us = 0
"#;

    #[test]
    fn kafka_and_batching_sections_parse() {
        let config = parse(KAFKA).expect("parses");
        config.validate().expect("valid");
        let main = &config.kafka.clusters["main"];
        assert_eq!(main.bootstrap, "kafka1:9092, kafka2:9092");
        let properties: Vec<_> = main
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            properties,
            [
                ("compression.type", "lz4"),
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
            ]
        );
        assert!(config.kafka.clusters["backup"].config.is_empty());
        let [telemetry, alerts] = config.kafka.mappings.as_slice() else {
            panic!("two mappings");
        };
        assert_eq!(
            *telemetry,
            MappingConfig {
                mqtt: "devices/+/telemetry/#".into(),
                cluster: Some("main".into()),
                topic: "telemetry".into(),
                key: Some("{client_id}".into()),
                headers: vec![
                    HeaderField::MqttTopic,
                    HeaderField::ClientId,
                    HeaderField::Qos
                ],
                ack: AckMode::Kafka,
                mqtt_subscribers: true,
                on_refused: OnRefused::ReasonCode,
                dead_letter_topic: None,
                dead_letter_cluster: None,
            }
        );
        assert_eq!(
            alerts.headers,
            [HeaderField::MqttTopic, HeaderField::UserProperties]
        );
        assert_eq!(alerts.ack, AckMode::None);
        assert!(!alerts.mqtt_subscribers);
        assert_eq!(config.kafka.cluster_of(alerts), Some("backup"));
        let expected = BatchingConfig {
            max_messages: 100,
            linger_us: 0,
            ..BatchingConfig::default()
        };
        assert_eq!(config.batching, expected);
    }

    #[test]
    fn every_header_field_has_its_toml_name() {
        for field in HeaderField::ALL {
            let name = field.as_str();
            let text = format!(
                "[kafka.clusters.k]\nbootstrap = \"k:1\"\n[[kafka.mapping]]\nmqtt = \"a\"\n\
                 topic = \"a\"\nheaders = [\"{name}\"]\n"
            );
            let config = parse(&text).expect(name);
            assert_eq!(config.kafka.mappings[0].headers, [field]);
        }
    }

    /// The clusters `main` and `audit`, then `mappings`.
    fn kafka_error(mappings: &str) -> String {
        let text = format!(
            "[kafka.clusters.main]\nbootstrap = \"k1:9092\"\n\
             [kafka.clusters.audit]\nbootstrap = \"a1:9092\"\n{mappings}"
        );
        let config = parse(&text).expect(&text);
        config.validate().expect_err(&text).to_string()
    }

    #[test]
    fn kafka_validation_errors_name_the_key() {
        let ok = "[[kafka.mapping]]\nmqtt = \"ok\"\ncluster = \"main\"\ntopic = \"ok\"\n";
        let cases = [
            (
                "mqtt = \"a/#/b\"\ncluster = \"main\"\ntopic = \"t\"\n",
                "kafka.mapping[1].mqtt: \"a/#/b\" is not a topic filter: '#' must be the \
                 whole last level",
            ),
            (
                "mqtt = \"\"\ncluster = \"main\"\ntopic = \"t\"\n",
                "kafka.mapping[1].mqtt: \"\" is not a topic filter: empty topic filter",
            ),
            (
                "mqtt = \"$share/g/a/#\"\ncluster = \"main\"\ntopic = \"t\"\n",
                "kafka.mapping[1].mqtt: \"$share/g/a/#\" is a shared subscription; a mapping \
                 takes every matching message, so give the filter without `$share/GROUP/`",
            ),
            (
                "mqtt = \"a\"\ncluster = \"backup\"\ntopic = \"t\"\n",
                "kafka.mapping[1].cluster: \"backup\" is not a cluster (known: audit, main)",
            ),
            (
                "mqtt = \"a\"\ntopic = \"t\"\n",
                "kafka.mapping[1].cluster: missing, and needed when there are several \
                 clusters (known: audit, main)",
            ),
            (
                "mqtt = \"a\"\ncluster = \"main\"\ntopic = \"t.{clientid}\"\n",
                "kafka.mapping[1].topic: unknown placeholder {clientid} (known: {client_id}, \
                 {username}, {topic}, {1}, {2}..., {prop:NAME})",
            ),
            (
                "mqtt = \"a\"\ncluster = \"main\"\ntopic = \"devices/all\"\n",
                "kafka.mapping[1].topic: \"devices/all\" is not a Kafka topic name: '/' is not \
                 allowed (only ASCII letters, digits, '.', '_' and '-')",
            ),
            (
                "mqtt = \"a\"\ncluster = \"main\"\ntopic = \"\"\n",
                "kafka.mapping[1].topic: a Kafka topic name cannot be empty",
            ),
            (
                "mqtt = \"a\"\ncluster = \"main\"\ntopic = \"t\"\nkey = \"{1\"\n",
                "kafka.mapping[1].key: unclosed '{' in \"{1\"; write '{{' for a literal brace",
            ),
            (
                "mqtt = \"a\"\ncluster = \"main\"\ntopic = \"t\"\nheaders = [\"qos\", \"qos\"]\n",
                "kafka.mapping[1].headers: \"qos\" is listed twice",
            ),
        ];
        for (second, expected) in cases {
            let error = kafka_error(&format!("{ok}[[kafka.mapping]]\n{second}"));
            assert_eq!(error, expected);
        }
        // A topic that depends on the message is sanitized when rendered, not refused here:
        // mapping[1] passes and the error is mapping[2]'s.
        let error = kafka_error(&format!(
            "{ok}[[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"main\"\ntopic = \"t/{{1}}\"\n\
             [[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"x\"\ntopic = \"t\"\n"
        ));
        assert_eq!(
            error,
            "kafka.mapping[2].cluster: \"x\" is not a cluster (known: audit, main)"
        );
    }

    #[test]
    fn cluster_errors_name_the_key() {
        let cases = [
            (
                "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\n",
                "kafka.mapping[0].cluster: there is no cluster to send to; add a \
                 [kafka.clusters.NAME] table",
            ),
            (
                "[[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"main\"\ntopic = \"t\"\n",
                "kafka.mapping[0].cluster: \"main\" is not a cluster (known: none)",
            ),
            (
                "[kafka.clusters.main]\nbootstrap = \"\"\n",
                "kafka.clusters.main.bootstrap: empty; give one or more host:port, separated \
                 by commas",
            ),
            (
                "[kafka.clusters.main]\nbootstrap = \"k1:9092,k2\"\n",
                "kafka.clusters.main.bootstrap: \"k2\" in \"k1:9092,k2\" is not host:port",
            ),
            (
                "[kafka.clusters.main]\nbootstrap = \"k1:9092,\"\n",
                "kafka.clusters.main.bootstrap: \"\" in \"k1:9092,\" is not host:port",
            ),
            (
                "[kafka.clusters.main]\nbootstrap = \"k1:0\"\n",
                "kafka.clusters.main.bootstrap: \"k1:0\" in \"k1:0\" is not host:port",
            ),
            (
                "[kafka.clusters.\"eu west\"]\nbootstrap = \":9092\"\n",
                "kafka.clusters.\"eu west\".bootstrap: \":9092\" in \":9092\" is not host:port",
            ),
            (
                "[kafka.clusters.main]\nbootstrap = \"k:1\"\n\
                 config = { \"bootstrap.servers\" = \"k:2\" }\n",
                "kafka.clusters.main.config.\"bootstrap.servers\": the brokers are set by \
                 kafka.clusters.main.bootstrap",
            ),
            (
                "[kafka.clusters.main]\nbootstrap = \"k:1\"\n\
                 config = { \"metadata.broker.list\" = \"k:2\" }\n",
                "kafka.clusters.main.config.\"metadata.broker.list\": the brokers are set by \
                 kafka.clusters.main.bootstrap",
            ),
            (
                "[kafka.clusters.\"\"]\nbootstrap = \"k:1\"\n",
                "kafka.clusters.\"\": a cluster name cannot be empty",
            ),
        ];
        for (text, expected) in cases {
            let config = parse(text).expect(text);
            let error = config.validate().expect_err(text).to_string();
            assert_eq!(error, expected);
        }
    }

    #[test]
    fn kafka_file_errors_give_position_and_key() {
        let cases = [
            (
                "[kafka.clusters.main]\nconfig = {}\n",
                "test.toml:1:1: kafka.clusters.main: missing field `bootstrap`",
            ),
            (
                "[kafka.clusters.main]\nbootstrap = \"k:1\"\nconfig = { \"linger.ms\" = 0.5 }\n",
                "test.toml:3:26: kafka.clusters.main.config.\"linger.ms\": invalid type: \
                 floating point `0.5`, expected a string, integer or boolean",
            ),
            (
                "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\nack = \"always\"\n",
                "test.toml:4:7: kafka.mapping[0].ack: unknown variant `always`, expected one \
                 of `none`, `kafka`, `durable`",
            ),
            (
                "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\nheaders = [\"qos\", \"ip\"]\n",
                "test.toml:4:19: kafka.mapping[0].headers[1]: unknown variant `ip`, expected \
                 one of `mqtt_topic`,",
            ),
            (
                "[[kafka.mapping]]\nmqtt = \"a\"\n",
                "test.toml:1:1: kafka.mapping[0]: missing field `topic`",
            ),
            (
                "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\nqos = 1\n",
                "test.toml:4:1: kafka.mapping[0].qos: unknown key `qos`, expected one of",
            ),
            (
                "[batching]\nlinger_us = -1\n",
                "test.toml:2:13: batching.linger_us: invalid value: integer `-1`, expected u64",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(expected).to_string();
            assert!(
                error.starts_with(expected),
                "{error:?} should start {expected:?}"
            );
            assert!(!error.contains('\n'), "{error:?}");
        }
    }

    #[test]
    fn mapping_defaults() {
        let config = parse(
            "[kafka.clusters.only]\nbootstrap = \"k:9092\"\n\
             [[kafka.mapping]]\nmqtt = \"a/#\"\ntopic = \"a\"\n",
        )
        .expect("parses");
        config.validate().expect("the only cluster is taken");
        let mapping = &config.kafka.mappings[0];
        assert_eq!(mapping.cluster, None);
        assert_eq!(config.kafka.cluster_of(mapping), Some("only"));
        assert_eq!(mapping.key, None);
        assert_eq!(
            mapping.headers,
            [
                HeaderField::MqttTopic,
                HeaderField::ClientId,
                HeaderField::Qos
            ]
        );
        assert_eq!(mapping.ack, AckMode::Kafka);
        assert!(mapping.mqtt_subscribers);
    }
}
