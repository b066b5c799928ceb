//! TOML `[cluster]`: many ferrymq nodes acting as one broker, with a Kafka cluster of
//! `[kafka.clusters]` as their only shared state (see `crate::cluster`).
//!
//! ```toml
//! [cluster]
//! name = "fleet"
//! node = "node-a"          # unique per node; default: host name and first listener port
//! kafka = "main"           # a cluster of [kafka.clusters]
//! ```
//!
//! Without `[cluster]` nothing changes: the process is a broker on its own.

use serde::Deserialize;

use super::ConfigError;

/// Longest `name` and `node`: both become parts of Kafka topic names and group ids.
pub const CLUSTER_NAME_LEN_MAX: usize = 100;

/// Most partitions of the internal topics.
pub const CLUSTER_PARTITIONS_MAX: i32 = 10_000;

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `name` and `kafka` keys"
)]
pub struct BrokerClusterConfig {
    /// The cluster's name: nodes with the same name and Kafka cluster form one broker.
    pub name: String,
    /// This node's name, unique in the cluster; `HOST-PORT` (host name, first listener's
    /// port) when left out.
    #[serde(default)]
    pub node: Option<String>,
    /// The `[kafka.clusters]` entry holding the cluster's state; may be left out when there
    /// is exactly one.
    #[serde(default)]
    pub kafka: Option<String>,
    /// Prefix of the internal topics' names; `ferrymq.NAME.` when left out.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Partitions of the internal topics, when ferrymq creates them. Messages of one
    /// publisher go through one partition (their order), so this bounds how many
    /// consumers' worth of parallelism the cross-node traffic has.
    #[serde(default = "partitions_default")]
    pub partitions: i32,
    /// Replication factor of the internal topics, when ferrymq creates them; -1: the
    /// Kafka cluster's `default.replication.factor`.
    #[serde(default = "replication_factor_default")]
    pub replication_factor: i16,
    /// How long Kafka keeps cross-node messages (`retention.ms` of the messages topic).
    #[serde(default = "retention_ms_default")]
    pub retention_ms: u64,
}

fn partitions_default() -> i32 {
    12
}

fn replication_factor_default() -> i16 {
    -1
}

fn retention_ms_default() -> u64 {
    // A day: a node that was away that long starts again from the end.
    86_400_000
}

/// Characters allowed in `name` and `node`: they go into topic names (Kafka allows
/// `[a-zA-Z0-9._-]`) and the state topic's keys (which use `/` as separator).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(format!("{key}: must not be empty")));
    }
    if value.len() > CLUSTER_NAME_LEN_MAX {
        return Err(ConfigError::new(format!(
            "{key}: {} characters, the maximum is {CLUSTER_NAME_LEN_MAX}",
            value.len()
        )));
    }
    if let Some(bad) = value.chars().find(|c| !is_name_char(*c)) {
        return Err(ConfigError::new(format!(
            "{key}: {bad:?} is not allowed (letters, digits, '.', '_' and '-' only)"
        )));
    }
    Ok(())
}

impl BrokerClusterConfig {
    /// Checks the values; `kafka_clusters` are the names of `[kafka.clusters]`.
    pub fn check<'a>(
        &self,
        mut kafka_clusters: impl ExactSizeIterator<Item = &'a String>,
    ) -> Result<(), ConfigError> {
        check_name("cluster.name", &self.name)?;
        if let Some(node) = &self.node {
            check_name("cluster.node", node)?;
        }
        match &self.kafka {
            Some(name) if !kafka_clusters.any(|known| known == name) => {
                return Err(ConfigError::new(format!(
                    "cluster.kafka: no [kafka.clusters.{name}] is configured"
                )));
            }
            Some(_) => {}
            None if kafka_clusters.len() != 1 => {
                return Err(ConfigError::new(
                    "cluster.kafka: name the [kafka.clusters] entry that holds the cluster's state (there is not exactly one)",
                ));
            }
            None => {}
        }
        if let Some(prefix) = &self.topic_prefix {
            if let Some(bad) = prefix.chars().find(|c| !is_name_char(*c)) {
                return Err(ConfigError::new(format!(
                    "cluster.topic_prefix: {bad:?} is not allowed in a Kafka topic name"
                )));
            }
        }
        super::at_least("cluster.partitions", self.partitions, 1)?;
        super::at_most(
            "cluster.partitions",
            self.partitions,
            CLUSTER_PARTITIONS_MAX,
        )?;
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(ConfigError::new(format!(
                "cluster.replication_factor: {} is neither -1 (the Kafka cluster's default) nor 1 or more",
                self.replication_factor
            )));
        }
        super::at_least("cluster.retention_ms", self.retention_ms, 60_000)?;
        Ok(())
    }

    /// The prefix of the internal topics: `topic_prefix`, or `ferrymq.NAME.`.
    pub fn prefix(&self) -> String {
        self.topic_prefix
            .clone()
            .unwrap_or_else(|| format!("ferrymq.{}.", self.name))
    }

    /// This node's name: `node`, or `HOST-PORT` from the host name and `port`.
    pub fn node_name(&self, port: u16) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ferrymq".to_string());
        let host: String = host
            .chars()
            .map(|c| if is_name_char(c) { c } else { '-' })
            .take(CLUSTER_NAME_LEN_MAX - 6)
            .collect();
        format!("{host}-{port}")
    }
}
