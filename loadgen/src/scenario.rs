//! The scenario a run plays, built from the flags once and shared read-only by every shard:
//! who the devices are (numbers, client ids, topics), where they connect from and to, what
//! and how often they publish, and the payload every message carries.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ferrymq::protocol::{Protocol, QoS};

use crate::kafka_config::KafkaConfig;

/// Device number (8 bytes), sequence number (8 bytes) and send time in microseconds since
/// the Unix epoch (8 bytes), big-endian, at the start of every payload.
pub const PAYLOAD_HEADER_BYTES: usize = 24;

/// What every payload starts with: enough for a receiver (a subscriber, the Kafka
/// consumer) to say which message of which device it got, and how late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    pub device: u64,
    pub seq: u64,
    pub sent_us: u64,
}

impl PayloadHeader {
    /// Appends the header and then filler up to `size_bytes` (at least the header).
    pub fn encode(&self, size_bytes: usize, buf: &mut BytesMut) {
        assert!(size_bytes >= PAYLOAD_HEADER_BYTES);
        buf.reserve(size_bytes);
        buf.put_u64(self.device);
        buf.put_u64(self.seq);
        buf.put_u64(self.sent_us);
        // Printable filler, so that a payload is readable in kafka-console-consumer.
        let filler = size_bytes - PAYLOAD_HEADER_BYTES;
        buf.extend(b"ferrymq-loadgen-".iter().copied().cycle().take(filler));
    }

    /// `None` when `payload` is too short to be one of ours.
    pub fn decode(payload: &[u8]) -> Option<PayloadHeader> {
        let field = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                payload.get(at..at + 8)?.try_into().ok()?,
            ))
        };
        Some(PayloadHeader {
            device: field(0)?,
            seq: field(8)?,
            sent_us: field(16)?,
        })
    }
}

/// Microseconds since the Unix epoch: the clock of payloads, so that processes and Kafka
/// timestamps compare.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A topic template: `%i` is the device number, `%c` the client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Number,
    ClientId,
}

impl Template {
    pub fn parse(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let part = match (c, chars.peek()) {
                ('%', Some('i')) => Part::Number,
                ('%', Some('c')) => Part::ClientId,
                _ => {
                    literal.push(c);
                    continue;
                }
            };
            chars.next();
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(part);
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Template { parts }
    }

    /// The topic of device `number`, whose client id is `id_prefix` then `number`.
    pub fn render(&self, number: u64, id_prefix: &str) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Number => write!(out, "{number}").expect("write to a String"),
                Part::ClientId => write!(out, "{id_prefix}{number}").expect("write to a String"),
            }
        }
        out
    }

    /// Whether the template names the device (`%i` or `%c`), so that each device has a
    /// topic of its own.
    pub fn is_per_device(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::Number | Part::ClientId))
    }

    /// A filter matching every topic of the template: each level holding `%i` or `%c`
    /// becomes `+` (`devices/%i/telemetry` → `devices/+/telemetry`).
    pub fn wildcard_filter(&self) -> String {
        let marker = '\u{0}';
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Number | Part::ClientId => text.push(marker),
            }
        }
        text.split('/')
            .map(|level| if level.contains(marker) { "+" } else { level })
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Per-message QoS: percentages of QoS 0, 1 and 2 (`--qos-mix 0:20,1:80`), chosen by a
/// hash of (device, sequence number), so the verifier recomputes which messages had to be
/// acknowledged without the devices keeping a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosMix {
    percent: [u8; 3],
}

impl QosMix {
    pub fn only(qos: QoS) -> QosMix {
        let mut percent = [0; 3];
        percent[qos as usize] = 100;
        QosMix { percent }
    }

    pub fn parse(spec: &str) -> Result<QosMix, String> {
        let mut percent = [0u8; 3];
        for item in spec.split(',') {
            let (qos, share) = item
                .split_once(':')
                .ok_or_else(|| format!("--qos-mix: {item:?} is not QOS:PERCENT"))?;
            let qos: usize = qos
                .trim()
                .parse()
                .ok()
                .filter(|&q| q <= 2)
                .ok_or_else(|| format!("--qos-mix: {qos:?} is not a QoS (0, 1 or 2)"))?;
            percent[qos] = share
                .trim()
                .parse()
                .ok()
                .filter(|&p| p <= 100)
                .ok_or_else(|| format!("--qos-mix: {share:?} is not a percentage"))?;
        }
        let total: u32 = percent.iter().map(|&p| u32::from(p)).sum();
        if total != 100 {
            return Err(format!("--qos-mix: the shares add up to {total}, not 100"));
        }
        Ok(QosMix { percent })
    }

    pub fn qos_of(&self, device: u64, seq: u32) -> QoS {
        for (qos, &share) in self.percent.iter().enumerate() {
            if share == 100 {
                return qos_from(qos);
            }
        }
        let roll = (mix64(device ^ (u64::from(seq) << 40) ^ u64::from(seq)) % 100) as u8;
        let mut floor = 0;
        for (qos, &share) in self.percent.iter().enumerate() {
            floor += share;
            if roll < floor {
                return qos_from(qos);
            }
        }
        unreachable!("the shares add up to 100")
    }

    /// `1` for a single QoS, else the shares: `0:20,1:80`.
    pub fn describe(&self) -> String {
        if let Some(qos) = self.percent.iter().position(|&p| p == 100) {
            return qos.to_string();
        }
        (0..3)
            .filter(|&q| self.percent[q] > 0)
            .map(|q| format!("{q}:{}", self.percent[q]))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn qos_from(bits: usize) -> QoS {
    QoS::from_bits(bits as u8).expect("0..=2")
}

/// splitmix64's finalizer: a cheap, well-spread hash of one word.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Kafka verification settings.
#[derive(Debug, Clone)]
pub struct KafkaVerify {
    pub bootstrap: String,
    /// `--kafka-config`: set on every Kafka client, after the loadgen's own properties.
    pub config: KafkaConfig,
    pub topics: Vec<String>,
    pub timeout: Duration,
    /// Create missing topics with this many partitions and LogAppendTime timestamps.
    pub create_partitions: Option<i32>,
    /// Bound of the warm-up before the clock starts (zero: no warm-up); see [`crate::probe`].
    pub warmup_timeout: Duration,
    /// Where the probe records go during the run.
    pub probe_topic: String,
}

/// `ferrymq-loadgen commands`: each subscribing device is device `id_start + index`, with
/// the plain client id, subscribed to its own topic (the template filled in for it) in a
/// persistent session. Payloads it receives are commands the loadgen produced to Kafka:
/// the header's device, a sequence number per device and the produce time.
#[derive(Debug, Clone)]
pub struct CommandDevices {
    /// Payloads sent before this moment (µs since the epoch) are an earlier run's: stale.
    pub since_us: u64,
    /// Share of the devices that go offline once while commands are produced.
    pub offline_fraction: f64,
    /// How long such a device stays away before it reconnects to its session.
    pub offline: Duration,
    /// Leave by closing the TCP connection (a device losing its network) instead of
    /// sending DISCONNECT.
    pub offline_drop: bool,
    /// The moments devices leave at are spread over this span, from the first command on.
    pub offline_window: Duration,
}

/// The device number in the header of the loadgen's readiness probe records; the sequence
/// number is the Kafka partition the probe went to.
pub const PROBE_DEVICE: u64 = u64::MAX;

impl CommandDevices {
    /// When device `number` goes offline, in µs after the first command, if it is one of
    /// those that do: chosen and spread by a hash of the number, so that the engine and
    /// the report agree without a list.
    pub fn leaves_after_us(&self, number: u64) -> Option<u64> {
        if self.offline_fraction <= 0.0 {
            return None;
        }
        let roll = mix64(number ^ 0x6f66_666c_696e_6521);
        let chosen = (roll % 1_000_000) as f64 / 1_000_000.0 < self.offline_fraction;
        let window_us = (self.offline_window.as_micros() as u64).max(1);
        chosen.then(|| (roll >> 20) % window_us)
    }

    pub fn offline_us(&self) -> u64 {
        self.offline.as_micros() as u64
    }
}

/// Everything a run needs to know, fixed before it starts.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub targets: Vec<SocketAddr>,
    pub source_ips: Vec<IpAddr>,
    pub cores: Vec<usize>,
    /// Publishing devices connected at once (the churn slots with `churn`).
    pub devices: u32,
    /// Subscribing devices of this process: `--subscribers`, or with `one_to_one` as many
    /// as publishing devices.
    pub subscribers: u32,
    /// `--one-to-one`: subscriber `k` subscribes to exactly the topic of publisher
    /// `id_start + k`, so that each message goes to exactly one subscriber.
    pub one_to_one: bool,
    pub connect_rate: u32,
    pub connect_timeout: Duration,
    pub publish_interval: Duration,
    pub topic: Template,
    pub sub_topic: String,
    pub sub_qos: QoS,
    pub payload_size_bytes: usize,
    pub qos_mix: QosMix,
    pub inflight_max: u16,
    pub protocol: Protocol,
    pub keep_alive_secs: u16,
    pub clean_start: bool,
    pub session_expiry_secs: Option<u32>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub id_start: u64,
    pub id_prefix: String,
    pub duration: Option<Duration>,
    pub messages_per_device: Option<u32>,
    /// Distinct device ids over the run with churn: each slot takes a new one after its
    /// device has published its messages and left.
    pub churn_total: Option<u64>,
    /// After the run: how long publishers wait for their outstanding acks.
    pub drain: Duration,
    pub verify: Option<KafkaVerify>,
    pub json: Option<PathBuf>,
    pub per_device_csv: Option<PathBuf>,
    pub broker_pids: Vec<u32>,
    /// Run as a child of `--procs`: machine-readable progress on stdout, no table.
    pub child: bool,
    /// `--tls`: the devices speak MQTT over TLS with this client configuration.
    pub tls: Option<crate::tls::TlsClient>,
    /// `ferrymq-loadgen commands`: the subscribing devices are command receivers (see
    /// [`CommandDevices`]); no device publishes.
    pub commands: Option<CommandDevices>,
    /// Exact schedule (`kafka-bench`): shards sleep on microsecond timers instead of whole
    /// milliseconds, a device sends every message that is due in one go (a late device
    /// catches up instead of starting afresh; with no interval it fills its window), and
    /// publish→ack latency counts from each message's scheduled send time, so that a late
    /// send shows as latency (no coordinated omission). Off for fleets: many devices on
    /// millisecond timers share wake-ups.
    pub exact_schedule: bool,
}

impl Scenario {
    /// Distinct publishing device numbers in this process: `id_start ..
    /// id_start + publisher_ids()`.
    pub fn publisher_ids(&self) -> u64 {
        self.churn_total.unwrap_or(u64::from(self.devices))
    }

    /// Whether payloads of device `number` are this process's: one of its publishing
    /// devices, or with [`Scenario::commands`] one of its command receivers.
    pub fn owns_device(&self, number: u64) -> bool {
        let ids = match self.commands {
            Some(_) => u64::from(self.subscribers),
            None => self.publisher_ids(),
        };
        number >= self.id_start && number - self.id_start < ids
    }

    pub fn client_id(&self, number: u64) -> String {
        format!("{}{number}", self.id_prefix)
    }

    /// A subscribing device's client id; a command receiver's is the plain client id of
    /// the device it is (the key of its commands).
    pub fn subscriber_client_id(&self, index: u32) -> String {
        match self.commands {
            Some(_) => self.client_id(self.id_start + u64::from(index)),
            None => format!("{}sub{}-{index}", self.id_prefix, self.id_start),
        }
    }

    /// With `--one-to-one`, the publishing device subscriber `index` is paired with; with
    /// [`Scenario::commands`], the device it is (whose commands only it may receive).
    pub fn paired_publisher(&self, index: u64) -> Option<u64> {
        (self.one_to_one || self.commands.is_some()).then(|| self.id_start + index)
    }

    /// What subscriber `index` subscribes to: its publisher's topic with `--one-to-one`,
    /// else the shared filter. Rendered when the SUBSCRIBE is sent, so that a device keeps
    /// no string of its own.
    pub fn subscriber_filter(&self, index: u64) -> String {
        match self.paired_publisher(index) {
            Some(publisher) => self.topic.render(publisher, &self.id_prefix),
            None => self.sub_topic.clone(),
        }
    }

    /// Source address and target of device `number`: consecutive numbers go round the
    /// (source, target) pairs, so each pair carries an equal share of the connections.
    pub fn route(&self, number: u64) -> (Option<IpAddr>, SocketAddr) {
        let sources = self.source_ips.len().max(1) as u64;
        let pair = number % (sources * self.targets.len() as u64);
        let source = self.source_ips.get((pair % sources) as usize).copied();
        (source, self.targets[(pair / sources) as usize])
    }

    pub fn payload(&self, header: PayloadHeader) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.payload_size_bytes);
        header.encode(self.payload_size_bytes, &mut buf);
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_header_is_big_endian_at_the_start() {
        let header = PayloadHeader {
            device: 0x0102_0304_0506_0708,
            seq: 7,
            sent_us: 1_700_000_000_000_000,
        };
        let mut buf = BytesMut::new();
        header.encode(40, &mut buf);
        assert_eq!(buf.len(), 40);
        assert_eq!(&buf[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[8..16], &7u64.to_be_bytes());
        assert_eq!(&buf[16..24], &1_700_000_000_000_000u64.to_be_bytes());
        assert_eq!(&buf[24..40], b"ferrymq-loadgen-");
        assert_eq!(PayloadHeader::decode(&buf), Some(header));
        assert_eq!(PayloadHeader::decode(&buf[..23]), None);
        let mut exact = BytesMut::new();
        header.encode(PAYLOAD_HEADER_BYTES, &mut exact);
        assert_eq!(exact.len(), PAYLOAD_HEADER_BYTES);
        assert_eq!(PayloadHeader::decode(&exact), Some(header));
    }

    #[test]
    fn topic_templates() {
        let template = Template::parse("devices/%i/telemetry/%c");
        assert_eq!(
            template.render(42, "lg-"),
            "devices/42/telemetry/lg-42".to_string()
        );
        assert_eq!(template.wildcard_filter(), "devices/+/telemetry/+");
        assert_eq!(Template::parse("plain").render(1, "x"), "plain");
        assert_eq!(Template::parse("d%i").wildcard_filter(), "+");
        assert_eq!(Template::parse("100%").render(1, "x"), "100%");
        assert!(template.is_per_device() && Template::parse("a/%c").is_per_device());
        assert!(!Template::parse("a/b%").is_per_device());
    }

    #[test]
    fn one_to_one_pairs_each_subscriber_with_one_publisher_topic() {
        let mut scenario = crate::device::tests::scenario();
        assert_eq!(scenario.paired_publisher(3), None);
        assert_eq!(scenario.subscriber_filter(3), "d/+/t");
        scenario.one_to_one = true;
        assert_eq!(scenario.paired_publisher(3), Some(13));
        assert_eq!(scenario.subscriber_filter(3), "d/13/t");
    }

    #[test]
    fn qos_mix_shares() {
        let mix = QosMix::parse("0:20,1:80").unwrap();
        let qos1 = (0..10_000)
            .filter(|&seq| mix.qos_of(seq as u64 % 97, seq) == QoS::AtLeastOnce)
            .count();
        assert!((7_600..8_400).contains(&qos1), "{qos1}");
        assert_eq!(mix.describe(), "0:20,1:80");
        assert_eq!(QosMix::only(QoS::AtLeastOnce).describe(), "1");
        // Deterministic: the verifier recomputes the same choice.
        assert_eq!(mix.qos_of(5, 9), mix.qos_of(5, 9));
        assert!(QosMix::parse("0:20,1:70").is_err());
        assert!(QosMix::parse("3:100").is_err());
        assert_eq!(
            QosMix::only(QoS::ExactlyOnce).qos_of(1, 1),
            QoS::ExactlyOnce
        );
    }
}
