//! The broker's configuration: defaults, overridden by a TOML file (`--config FILE`),
//! overridden by command-line flags.
//!
//! [`load`] reads the file, applies the flags and validates the result, so the rest of the
//! broker only ever sees a [`Config`] whose every value is within its bounds. Errors are one
//! line and name the key as it is written in TOML (`broker.packet_size_bytes_max: 5 is below
//! the minimum of 16`), prefixed with `FILE:LINE:COLUMN` when they come from reading the file.
//!
//! ```toml
//! [[listener]]
//! bind = "0.0.0.0:1883"
//!
//! [broker]
//! cores = "0-3"
//! connections_max = 100000
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::protocol::PACKET_SIZE_BYTES_MAX;

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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            // Loopback only: a broker started without configuration is not open to the network.
            listeners: vec![ListenerConfig {
                bind: SocketAddr::from((Ipv4Addr::LOCALHOST, PORT_DEFAULT)),
            }],
            broker: BrokerConfig::default(),
        }
    }
}

/// One listening socket; TOML `[[listener]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a `bind` key")]
pub struct ListenerConfig {
    /// IP address and port, e.g. `0.0.0.0:1883` or `[::]:1883`. Port 0 picks a free port.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub bind: SocketAddr,
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
        }
    }
}

/// Broker flags, flattened into the `ferrymq` command. Each overrides the file's value; a flag
/// not given leaves the file's value (or the default) in place.
#[derive(Args, Clone, Debug, Default)]
pub struct BrokerArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:1883; repeat for several. Replaces the file's
    /// listeners. [default: 127.0.0.1:1883]
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
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply(args);
    config.validate()?;
    Ok(config)
}

impl Config {
    /// Reads a TOML file over the defaults, without validating the values.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text over the defaults, without validating the values. `file` names the
    /// text's origin in errors, which read `file:line:column: key: problem`.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(describe_toml_error(text, file, &e)))
    }

    /// Overrides the values given on the command line.
    pub fn apply(&mut self, args: &BrokerArgs) {
        if !args.listen.is_empty() {
            self.listeners = args
                .listen
                .iter()
                .map(|&bind| ListenerConfig { bind })
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
    }

    /// Checks every value against its bounds; the error names the first key out of bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        Ok(())
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

/// Turns a TOML error into one line: `file:line:column: key: problem`, where `key` is the
/// path of the offending key (`listener[1].bind`), found from the error's position.
fn describe_toml_error(text: &str, file: &str, error: &toml::de::Error) -> String {
    // serde says "field"; the file's reader knows them as keys.
    let message =
        error
            .message()
            .trim()
            .replace('\n', "; ")
            .replacen("unknown field", "unknown key", 1);
    let Some(span) = error.span() else {
        return format!("{file}: {message}");
    };
    let (line, column) = line_and_column(text, span.start);
    // A syntax error leaves no document to find the key in; the position says enough.
    let key = toml::de::DeTable::parse(text)
        .ok()
        .and_then(|document| key_at_table(document.get_ref(), span.start, ""));
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
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
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
            [ListenerConfig {
                bind: addr("127.0.0.1:1883")
            }]
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
        ]));
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
        };
        assert_eq!(config.broker, expected);
    }

    #[test]
    fn validation_errors_name_the_key() {
        type Edit = fn(&mut Config);
        let cases: [(Edit, &str); 15] = [
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
        config
            .validate()
            .expect("lowest and highest values accepted");
        config.broker.packet_size_bytes_max = PACKET_SIZE_BYTES_MAX;
        config
            .validate()
            .expect("largest packet MQTT can encode accepted");
        // Port 0 asks for any free port, so two such listeners do not collide.
        config.listeners = vec![
            ListenerConfig {
                bind: addr("127.0.0.1:0")
            };
            2
        ];
        config.validate().expect("two port-0 listeners");
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
        let error = parse("[kafka]\nx = 1\n").unwrap_err().to_string();
        assert_eq!(
            error,
            "test.toml:1:2: kafka: unknown key `kafka`, expected `listener` or `broker`"
        );
        let error = parse("[[listener]]\nport = 5\n").unwrap_err().to_string();
        assert_eq!(
            error,
            "test.toml:2:1: listener[0].port: unknown key `port`, expected `bind`"
        );
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
    fn help_gives_each_default() {
        Cli::command().debug_assert();
        let d = BrokerConfig::default();
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
}
