//! The Kafka bridge: which MQTT messages go to which Kafka cluster and topic, and how.
//!
//! `mapping.rs` and `template.rs` compile the `[[kafka.mapping]]` sections; `shard_bridge.rs`
//! is a shard's side (batches per cluster, pending acknowledgements); `producer.rs` is the
//! librdkafka producer of each (shard, cluster), which the shard feeds and whose delivery
//! reports it serves; `settings.rs` the clusters' settings in force, which SIGHUP may
//! replace; `health.rs` the readiness probe of each cluster.

pub mod health;
pub mod mapping;
pub mod producer;
pub mod settings;
pub mod shard_bridge;
pub mod template;

use crate::config::{Config, ConfigError};

/// Checks what the configuration leaves to the bridge: the mappings' topic and key templates
/// and Kafka topic names, by compiling the mappings once. The error is one line naming the
/// key (`kafka.mapping[2].topic: ...`), with references and secrets shown as
/// [`Config::validate`] shows them. `ferrymq` calls it right after [`crate::config::load`],
/// so a bad template stops the start as any other config error does.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    mapping::Mappings::new(&config.kafka)
        .map(drop)
        .map_err(|error| config.shown_error(error))
}
