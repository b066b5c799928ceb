//! TOML `[kafka]`: the Kafka clusters, and the `[[kafka.mapping]]` list of MQTT topic filters
//! forwarded to them.
//!
//! Plain data: the topic and key templates stay strings here. The bridge parses them, once,
//! when it compiles the mappings, and refuses a bad one naming its key
//! (`kafka.mapping[2].topic: ...`); see `bridge::validate`, which `ferrymq` runs right after
//! [`super::load`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::file::toml_key;
use super::ConfigError;
use crate::protocol::topic::{is_shared, validate_topic_filter};
use crate::protocol::DecodeError;

/// librdkafka properties that `kafka.clusters.NAME.bootstrap` sets, refused in `config` so the
/// brokers are named in one place (`metadata.broker.list` is librdkafka's alias).
pub(super) const BOOTSTRAP_PROPERTIES: [&str; 2] = ["bootstrap.servers", "metadata.broker.list"];

/// Kafka clusters and the mappings that forward MQTT messages to them; TOML `[kafka]`. Empty by
/// default: without mappings the broker is a plain MQTT broker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct KafkaConfig {
    /// Clusters by name; TOML `[kafka.clusters.NAME]`. Ordered by name, which gives each its
    /// index among the bridge's clusters (the compiled mappings' `cluster_names`).
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// MQTT topic filters and where their messages go, in file order; TOML `[[kafka.mapping]]`.
    #[serde(rename = "mapping")]
    pub mappings: Vec<MappingConfig>,
    /// Kafka topics whose records go to MQTT subscribers; TOML `[[kafka.source]]`.
    #[serde(rename = "source")]
    pub sources: Vec<super::source::SourceConfig>,
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
    /// Kafka topic, a template (`telemetry`, `telemetry.{2}`), parsed by the bridge.
    pub topic: String,
    /// Kafka record key, a template as `topic` is; None (the default) keys records by their MQTT topic,
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
    /// Whether messages that came from a `[[kafka.source]]` go through this mapping too.
    /// They never do otherwise: a record read from Kafka is not written back (no loops).
    #[serde(default)]
    pub from_sources: bool,
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

impl KafkaConfig {
    /// Checks the clusters and mappings, all but what the bridge parses (the templates of
    /// `topic` and `key`, the name of `dead_letter_topic`); the error names the first key in
    /// error.
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
        for (i, source) in self.sources.iter().enumerate() {
            self.check_source(i, source)
                .map_err(|e| ConfigError(format!("kafka.source[{i}].{e}")))?;
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

        // `topic`, `key` and the name of `dead_letter_topic` are the bridge's to check: it
        // parses the templates once, when it compiles the mappings.

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
            (Some(_), OnRefused::DeadLetter) | (None, _) => {}
            (Some(_), other) => {
                return Err(format!(
                    "dead_letter_topic: used only with on_refused = \"dead_letter\" (this \
                     mapping has {:?})",
                    other.as_str()
                ));
            }
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
    pub(super) fn cluster_names_known(&self) -> String {
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

pub(super) fn deserialize_properties<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let properties = BTreeMap::<String, PropertyValue>::deserialize(d)?;
    Ok(properties
        .into_iter()
        .map(|(name, PropertyValue(value))| (name, value))
        .collect())
}
