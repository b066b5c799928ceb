//! The settings of each Kafka cluster in force (`bootstrap` and librdkafka `config`), which
//! SIGHUP may replace: a password rotated in its `${file:}`, a CA fixed. The shards (their
//! producers) and the readiness probes each look at [`ClusterSettings::generation`] now and
//! then and, when it moved, make new librdkafka clients with the new settings.
//!
//! Clusters and mappings themselves are not reloaded (a restart applies those): a reload
//! that adds, removes or renames a cluster is refused as a whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::config::ClientConfig;

use super::producer::client_config;
use crate::config::{scrub, BatchingConfig, ClusterConfig, Config};

pub struct ClusterSettings {
    generation: AtomicU64,
    /// By cluster, in name order (as `Mappings::cluster_names`).
    clusters: Mutex<Vec<(String, ClusterConfig)>>,
    batching: BatchingConfig,
    /// Values never to show (passwords, keys, anything from `${env:}`/`${file:}`):
    /// librdkafka's messages may quote a property's value.
    secrets: Mutex<Vec<String>>,
}

impl ClusterSettings {
    pub fn new(config: &Config) -> ClusterSettings {
        ClusterSettings {
            generation: AtomicU64::new(0),
            clusters: Mutex::new(clusters_of(config)),
            batching: config.batching.clone(),
            secrets: Mutex::new(config.secret_values()),
        }
    }

    /// `text` with every secret value of the settings masked.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets.lock().expect("secrets"))
    }

    /// Moves on each reload that changed a cluster's settings.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The settings of cluster `index` now.
    pub fn cluster(&self, index: usize) -> ClusterConfig {
        self.clusters.lock().expect("cluster settings")[index]
            .1
            .clone()
    }

    /// The producer configuration of cluster `index` now.
    pub fn producer_config(&self, index: usize) -> ClientConfig {
        producer_config(&self.cluster(index), &self.batching)
    }

    /// Takes the clusters of a reloaded configuration. Returns the names of those whose
    /// settings changed, or an error when the set of clusters differs (a restart applies
    /// that).
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let new = clusters_of(config);
        let mut clusters = self.clusters.lock().expect("cluster settings");
        let names = |list: &[(String, ClusterConfig)]| -> Vec<String> {
            list.iter().map(|(name, _)| name.clone()).collect()
        };
        if names(&clusters) != names(&new) {
            return Err(format!(
                "kafka.clusters: the clusters changed ({} before, {} now); a restart applies that",
                names(&clusters).join(", "),
                names(&new).join(", ")
            ));
        }
        let changed: Vec<String> = clusters
            .iter()
            .zip(&new)
            .filter(|(old, new)| old.1 != new.1)
            .map(|(old, _)| old.0.clone())
            .collect();
        if !changed.is_empty() {
            // The old values stay masked too: a message may still quote them.
            let mut secrets = self.secrets.lock().expect("secrets");
            for value in config.secret_values() {
                if !secrets.contains(&value) {
                    secrets.push(value);
                }
            }
            *clusters = new;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(changed)
    }
}

fn clusters_of(config: &Config) -> Vec<(String, ClusterConfig)> {
    config
        .kafka
        .clusters
        .iter()
        .map(|(name, cluster)| (name.clone(), cluster.clone()))
        .collect()
}

/// The librdkafka configuration of one shard's producer for `cluster`.
pub fn producer_config(cluster: &ClusterConfig, batching: &BatchingConfig) -> ClientConfig {
    let mut client = client_config(&cluster.bootstrap, &cluster.config);
    if !cluster.config.contains_key("queue.buffering.max.messages") {
        // The bound on what one shard's producer holds for a cluster; beyond it records
        // wait on the shard and QoS 1/2 publishers are held back.
        let bound = batching.ring_capacity_batches * batching.max_messages;
        client.set("queue.buffering.max.messages", bound.to_string());
    }
    client
}
