//! TOML `[batching]`: how records are grouped on their way to Kafka.

use serde::Deserialize;

use super::{at_least, at_most, ConfigError};

/// Smallest accepted `batching.max_bytes`: below it a batch would hold a single small telemetry
/// record, and every record would pay the per-batch cost.
pub const BATCHING_MAX_BYTES_MIN: usize = 1024;

/// Largest accepted `batching.linger_us`: a QoS 1 PUBLISH on an `ack = "kafka"` mapping waits
/// up to this long before its batch leaves, and a device's PUBACK with it.
pub const BATCHING_LINGER_US_MAX: u64 = 1_000_000;

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
        BatchingConfig {
            max_messages: 512,
            max_bytes: 1024 * 1024,
            linger_us: 5000,
            ring_capacity_batches: 256,
        }
    }
}

impl BatchingConfig {
    /// Checks every value against its bounds; the error names the first key out of bounds.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        at_least("batching.max_messages", self.max_messages, 1)?;
        at_least("batching.max_bytes", self.max_bytes, BATCHING_MAX_BYTES_MIN)?;
        // 0 is allowed: a batch leaves as soon as the producer can take it.
        at_most("batching.linger_us", self.linger_us, BATCHING_LINGER_US_MAX)?;
        at_least(
            "batching.ring_capacity_batches",
            self.ring_capacity_batches,
            1,
        )
    }
}
