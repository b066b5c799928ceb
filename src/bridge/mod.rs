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
