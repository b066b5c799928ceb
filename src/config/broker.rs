//! TOML `[broker]`: limits and announced capabilities, and the CPUs the shards run on.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::listener::deserialize_socket_addr;
use super::{at_least, at_most, ConfigError};
use crate::protocol::PACKET_SIZE_BYTES_MAX;

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

impl BrokerConfig {
    /// Checks every value against its bounds; the error names the first key out of bounds.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if let Some(cores) = &self.cores {
            check_cpu_list(cores).map_err(|e| ConfigError(format!("broker.cores: {e}")))?;
        }
        at_least("broker.connections_max", self.connections_max, 1)?;
        at_least(
            "broker.packet_size_bytes_max",
            self.packet_size_bytes_max,
            PACKET_SIZE_BYTES_MAX_MIN,
        )?;
        at_most(
            "broker.packet_size_bytes_max",
            self.packet_size_bytes_max,
            PACKET_SIZE_BYTES_MAX,
        )?;
        at_least("broker.connect_timeout_ms", self.connect_timeout_ms, 1)?;
        at_most(
            "broker.connect_timeout_ms",
            self.connect_timeout_ms,
            CONNECT_TIMEOUT_MS_MAX,
        )?;
        at_least(
            "broker.session_queue_messages_max",
            self.session_queue_messages_max,
            1,
        )?;
        at_least(
            "broker.outgoing_queue_messages_max",
            self.outgoing_queue_messages_max,
            1,
        )?;
        at_least(
            "broker.inflight_messages_max",
            self.inflight_messages_max,
            1,
        )?;
        // MQTT 5.0 §3.2.2.3.3: a Receive Maximum of 0 is a protocol error.
        at_least("broker.receive_maximum", self.receive_maximum, 1)?;
        at_least(
            "broker.inter_shard_channel_capacity",
            self.inter_shard_channel_capacity,
            1,
        )
    }
}
