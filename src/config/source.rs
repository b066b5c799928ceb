//! TOML `[[kafka.source]]`: Kafka topics whose records are delivered to MQTT subscribers
//! (Kafka → MQTT), the other direction from `[[kafka.mapping]]`.
//!
//! Plain data: the MQTT topic template stays a string here; the bridge parses it, once, and
//! refuses a bad one naming its key (`kafka.source[0].mqtt: ...`), as it does the mappings'.
//!
//! ```toml
//! [[kafka.source]]
//! name = "commands"
//! topics = ["device-commands"]          # or ["^commands\\..*"]: a regular expression
//! mqtt = "devices/{key}/commands"
//! qos = 1
//! user_properties = ["trace-id"]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::kafka::{deserialize_properties, KafkaConfig};
use crate::protocol::QoS;

/// librdkafka consumer properties that ferrymq sets itself: offsets are stored only after a
/// record was handed to every matching subscription, and committed by ferrymq.
pub const SOURCE_OWNED_PROPERTIES: [&str; 4] = [
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.offset.reset",
];

/// Longest `name` (it becomes part of the default group id and of metric labels).
pub const SOURCE_NAME_LEN_MAX: usize = 128;

/// Most records of one partition handed to the shards and not yet delivered; beyond it the
/// partition is paused. The bound on what a source holds in memory per partition.
pub const SOURCE_IN_FLIGHT_MAX: usize = 100_000;

/// Longest `start_delay_ms`: an hour.
pub const SOURCE_START_DELAY_MS_MAX: u64 = 3_600_000;

/// One source of Kafka records for MQTT subscribers; TOML `[[kafka.source]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `name`, `topics` and `mqtt` keys"
)]
pub struct SourceConfig {
    /// Names the source in metrics and logs, and gives the default consumer group.
    pub name: String,
    /// Cluster to read from; may be left out when there is exactly one cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Kafka topics to read: names, or regular expressions starting with `^` (librdkafka's
    /// convention), which also take topics created later.
    pub topics: Vec<String>,
    /// Consumer group id; `ferrymq-source-NAME` when left out. Several ferrymq processes
    /// with the same group share the partitions.
    #[serde(default)]
    pub group: Option<String>,
    /// MQTT topic of each record, a template: `{topic}`, `{partition}`, `{key}` and
    /// `{header.NAME}` are replaced by the record's; `{{`/`}}` are braces.
    pub mqtt: String,
    /// QoS of the PUBLISH (what a subscription may lower, never raise).
    #[serde(default = "qos_default", deserialize_with = "deserialize_qos")]
    pub qos: QoS,
    /// A header whose value (`0`, `1` or `2`) gives the QoS of its record instead of `qos`.
    #[serde(default)]
    pub qos_header: Option<String>,
    /// Whether the PUBLISH is retained.
    #[serde(default)]
    pub retain: bool,
    /// A header whose value (`true`/`false`, `1`/`0`) gives the retain flag instead of `retain`.
    #[serde(default)]
    pub retain_header: Option<String>,
    /// Headers that become MQTT 5 user properties, by name; `["*"]` takes every header not
    /// used for something else.
    #[serde(default)]
    pub user_properties: Vec<String>,
    /// A header holding the MQTT 5 Content Type.
    #[serde(default)]
    pub content_type_header: Option<String>,
    /// A header holding the MQTT 5 Response Topic (a topic name).
    #[serde(default)]
    pub response_topic_header: Option<String>,
    /// A header holding the MQTT 5 Correlation Data (bytes, as they are).
    #[serde(default)]
    pub correlation_data_header: Option<String>,
    /// A header holding the MQTT 5 Message Expiry Interval in seconds (decimal text).
    #[serde(default)]
    pub message_expiry_header: Option<String>,
    /// Where a new consumer group starts: `latest` (records produced from now on, the
    /// default) or `earliest` (everything the topics hold). A group with committed offsets
    /// goes on from them.
    #[serde(default)]
    pub start: SourceStart,
    /// Records of one partition handed to the broker and not yet delivered before the
    /// partition is paused.
    #[serde(default = "in_flight_max_default")]
    pub in_flight_max: usize,
    /// Milliseconds between the broker's start and the source joining its group. After a
    /// restart, sessions are gone until their devices reconnect and subscribe again; the
    /// records read before that match no subscriber and are committed as unrouted. A
    /// delay as long as the fleet takes to reconnect gives them time.
    #[serde(default)]
    pub start_delay_ms: u64,
    /// librdkafka consumer properties, passed as written after the cluster's `config`.
    #[serde(default, deserialize_with = "deserialize_properties")]
    pub config: BTreeMap<String, String>,
}

/// Where a consumer group without committed offsets starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceStart {
    Earliest,
    #[default]
    Latest,
}

impl SourceStart {
    /// The value of librdkafka's `auto.offset.reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceStart::Earliest => "earliest",
            SourceStart::Latest => "latest",
        }
    }
}

fn qos_default() -> QoS {
    QoS::AtLeastOnce
}

fn in_flight_max_default() -> usize {
    1000
}

fn deserialize_qos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
    let value = u8::deserialize(d)?;
    QoS::from_bits(value).map_err(|_| serde::de::Error::custom(format!("{value} is not 0, 1 or 2")))
}

impl SourceConfig {
    /// The consumer group: `group`, or `ferrymq-source-NAME`.
    pub fn group_id(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("ferrymq-source-{}", self.name))
    }

    /// Every header option with its key, for checks and for `user_properties = ["*"]`.
    pub fn header_options(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("qos_header", self.qos_header.as_deref()),
            ("retain_header", self.retain_header.as_deref()),
            ("content_type_header", self.content_type_header.as_deref()),
            (
                "response_topic_header",
                self.response_topic_header.as_deref(),
            ),
            (
                "correlation_data_header",
                self.correlation_data_header.as_deref(),
            ),
            (
                "message_expiry_header",
                self.message_expiry_header.as_deref(),
            ),
        ]
    }
}

impl KafkaConfig {
    /// The name of the cluster `source` reads from, as [`KafkaConfig::cluster_of`] does for
    /// a mapping.
    pub fn source_cluster<'a>(&'a self, source: &'a SourceConfig) -> Option<&'a str> {
        match &source.cluster {
            Some(name) => self.clusters.contains_key(name).then_some(name.as_str()),
            None if self.clusters.len() == 1 => self.clusters.keys().next().map(String::as_str),
            None => None,
        }
    }

    /// Checks one source, all but its `mqtt` template (the bridge's); the error starts with
    /// the key inside the source (`topics: ...`).
    pub(super) fn check_source(&self, index: usize, source: &SourceConfig) -> Result<(), String> {
        if source.name.is_empty()
            || source.name.len() > SOURCE_NAME_LEN_MAX
            || !source
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "name: {:?} is not a source name: 1 to {SOURCE_NAME_LEN_MAX} letters, digits, \
                 '-', '_' or '.'",
                source.name
            ));
        }
        if let Some(earlier) = self.sources[..index]
            .iter()
            .position(|other| other.name == source.name)
        {
            return Err(format!(
                "name: {:?} is also the name of kafka.source[{earlier}]",
                source.name
            ));
        }
        if self.source_cluster(source).is_none() {
            let known = self.cluster_names_known();
            return Err(match &source.cluster {
                Some(name) => format!("cluster: {name:?} is not a cluster (known: {known})"),
                None if self.clusters.is_empty() => {
                    "cluster: there is no cluster to read from; add a [kafka.clusters.NAME] table"
                        .to_string()
                }
                None => format!(
                    "cluster: missing, and needed when there are several clusters \
                     (known: {known})"
                ),
            });
        }
        if source.topics.is_empty() {
            return Err("topics: empty; give one or more topic names or ^patterns".to_string());
        }
        for topic in &source.topics {
            check_topic_or_pattern(topic).map_err(|e| format!("topics: {topic:?} {e}"))?;
        }
        if let Some(group) = &source.group {
            if group.is_empty() {
                return Err("group: empty; leave it out for ferrymq-source-NAME".to_string());
            }
        }
        for (key, header) in source.header_options() {
            if header.is_some_and(str::is_empty) {
                return Err(format!("{key}: empty; give a header name or leave it out"));
            }
        }
        for (i, name) in source.user_properties.iter().enumerate() {
            if name.is_empty() {
                return Err("user_properties: an empty header name".to_string());
            }
            if name == "*" && source.user_properties.len() > 1 {
                return Err(
                    "user_properties: \"*\" takes every header; list no others with it".to_string(),
                );
            }
            if source.user_properties[..i].contains(name) {
                return Err(format!("user_properties: {name:?} is listed twice"));
            }
        }
        if source.start_delay_ms > SOURCE_START_DELAY_MS_MAX {
            return Err(format!(
                "start_delay_ms: {} is more than {SOURCE_START_DELAY_MS_MAX} (an hour)",
                source.start_delay_ms
            ));
        }
        if !(1..=SOURCE_IN_FLIGHT_MAX).contains(&source.in_flight_max) {
            return Err(format!(
                "in_flight_max: {} is not within 1..={SOURCE_IN_FLIGHT_MAX}",
                source.in_flight_max
            ));
        }
        for property in SOURCE_OWNED_PROPERTIES
            .iter()
            .chain(super::kafka::BOOTSTRAP_PROPERTIES.iter())
        {
            if source.config.contains_key(*property) {
                let owner = match *property {
                    "group.id" => "set it with `group`",
                    "auto.offset.reset" => "set it with `start`",
                    "bootstrap.servers" | "metadata.broker.list" => {
                        "the brokers are set by the cluster's bootstrap"
                    }
                    _ => "ferrymq commits an offset only once its record is delivered",
                };
                return Err(format!("config.{property:?}: {owner}"));
            }
        }
        Ok(())
    }
}

/// A Kafka topic name (letters, digits, `.`, `_`, `-`, at most 249) or a `^` pattern.
fn check_topic_or_pattern(topic: &str) -> Result<(), &'static str> {
    if topic.starts_with('^') {
        return if topic.len() > 1 {
            Ok(())
        } else {
            Err("is an empty pattern")
        };
    }
    if topic.is_empty() || topic.len() > 249 {
        return Err("is not a Kafka topic name: 1 to 249 characters");
    }
    if topic == "." || topic == ".." {
        return Err("is not a Kafka topic name");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(
            "is not a Kafka topic name: letters, digits, '.', '_' and '-' only (a pattern \
             starts with '^')",
        );
    }
    Ok(())
}
