//! Kafka → MQTT: `[[kafka.source]]` sections, each a consumer whose records are delivered
//! to MQTT subscribers, with offsets committed only once delivered.
//!
//! A record's trip:
//! 1. the source's consumer thread (`consumer.rs`, unpinned, beside the shards as the
//!    producers are) reads it, renders its MQTT topic (`template.rs`), builds the message
//!    (`record.rs`) and pushes it to the inbox of the shard its partition is given to
//!    ([`shard_of`]): all records of a partition go through one shard, in offset order;
//! 2. that shard (the broker's `ingress`) delivers it to its own matching subscriptions and
//!    forwards it to the shards that have others, through the broker's bounded channels;
//! 3. every shard holding it finishes its share of the record's [`Receipt`]: delivered, or
//!    refused when a QoS 1/2 session it feeds is full (`receipt.rs`);
//! 4. back on the consumer thread, `partitions.rs` turns outcomes into the offset to
//!    commit (the lowest not delivered), pauses a partition with too much out, and sends a
//!    partition with a refused record back to it (duplicates, never losses).
//!
//! May import what the bridge may; the broker imports this (never the reverse).

mod consumer;
pub mod partitions;
pub mod receipt;
mod record;
pub mod template;

use std::sync::Arc;

use bytes::Bytes;
use crossbeam::queue::ArrayQueue;
use rdkafka::config::ClientConfig;

use crate::config::{Config, ConfigError, SourceConfig};
use crate::metrics::SourceMetrics;
use crate::protocol::{MqttStr, PublishProperties, QoS};
use crate::runtime::{self, CrossThreadWake, WakeEnd};

pub use consumer::start as start_consumer;
pub use consumer::SourceThread;
pub use receipt::{Position, Receipt};
pub use record::CompiledSource;

/// Records one shard's inbox holds from all sources together; a consumer that finds it full
/// waits (its partitions' reads stop; Kafka keeps the rest).
pub const SHARD_INBOX_RECORDS_MAX: usize = 4096;

/// A record on its way to subscribers.
#[derive(Debug)]
pub struct SourceRecord {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
    /// The MQTT client that published it, when one did (a message from another node of a
    /// cluster): No Local applies [MQTT-3.8.3-3]. Empty for records written by Kafka
    /// clients.
    pub publisher: MqttStr,
    /// Set for a message from another node of a cluster: who here gets it.
    pub cross_node: Option<Box<CrossNode>>,
    /// Where it comes from; finished by each shard that delivers it.
    pub receipt: Receipt,
}

/// Who on this node gets a message published on another node of the cluster.
#[derive(Debug, Default)]
pub struct CrossNode {
    /// Ordinary (non-shared) subscribers.
    pub ordinary: bool,
    /// Shared groups whose turn fell on this node: one member here gets it.
    pub groups: Vec<String>,
}

/// A record read by a [`RecordReader`]: everything but its receipt.
pub struct ReadRecord {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
    pub publisher: MqttStr,
    pub cross_node: Option<Box<CrossNode>>,
}

/// Reads the records of a source whose values are whole messages rather than payloads for a
/// topic template (the cluster's messages topic). `None`: the record is for nobody here;
/// it is settled at once.
#[derive(Clone)]
pub struct RecordReader(pub Arc<ReadFn>);

/// What a [`RecordReader`] calls per record.
pub type ReadFn =
    dyn Fn(&rdkafka::message::BorrowedMessage<'_>) -> Option<ReadRecord> + Send + Sync;

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordReader")
    }
}

/// One shard's inbox of source records: a bounded lock-free queue filled by consumer
/// threads and a wake-up for the shard.
pub struct SourceInbox {
    queue: ArrayQueue<SourceRecord>,
    wake: CrossThreadWake,
}

impl SourceInbox {
    /// An inbox and the end the shard listens on.
    pub fn new() -> std::io::Result<(SourceInbox, WakeEnd)> {
        let (wake, end) = runtime::cross_thread_wake()?;
        Ok((
            SourceInbox {
                queue: ArrayQueue::new(SHARD_INBOX_RECORDS_MAX),
                wake,
            },
            end,
        ))
    }

    /// Queues `record` and wakes the shard; gives it back when the inbox is full.
    // The record comes back by value so that the consumer can push it again; boxing it
    // would cost an allocation per record for the rare full inbox.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, record: SourceRecord) -> Result<(), SourceRecord> {
        self.queue.push(record)?;
        self.wake.wake();
        Ok(())
    }

    /// The next record, on the shard.
    pub fn pop(&self) -> Option<SourceRecord> {
        self.queue.pop()
    }
}

/// The shard that takes the records of a partition slot: the same one for as long as the
/// process runs, so that they keep their order.
pub fn shard_of(slot: u64, shards: usize) -> usize {
    // Slots are small counters per source with the source in the high bits: mix both.
    let mixed = (slot ^ (slot >> 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize % shards.max(1)
}

/// The sources of `config`, compiled; the error names the key (`kafka.source[0].mqtt`).
pub fn compile(config: &Config) -> Result<Vec<CompiledSource>, ConfigError> {
    config
        .kafka
        .sources
        .iter()
        .enumerate()
        .map(|(index, source)| {
            CompiledSource::new(index, source).map_err(|error| {
                config.shown_error(ConfigError::new(format!(
                    "kafka.source[{index}].mqtt: {error}"
                )))
            })
        })
        .collect()
}

/// The librdkafka consumer configuration of `source`: the cluster's bootstrap and
/// properties (security included), ferrymq's consumer settings, then the source's own.
pub fn consumer_config(config: &Config, source: &SourceConfig) -> ClientConfig {
    let cluster_name = config
        .kafka
        .source_cluster(source)
        .expect("validated with the config");
    let cluster = &config.kafka.clusters[cluster_name];
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &cluster.bootstrap);
    for (key, value) in &cluster.config {
        // The cluster's `config` is written for producers too; producer-only properties
        // would make librdkafka warn on every consumer.
        if !PRODUCER_ONLY_PROPERTIES.contains(&key.as_str()) {
            client.set(key, value);
        }
    }
    client
        .set("group.id", source.group_id())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", source.start.as_str())
        .set("statistics.interval.ms", "1000")
        .set("client.id", format!("ferrymq-source-{}", source.name));
    for (key, value) in &source.config {
        client.set(key, value);
    }
    client
}

/// Cluster properties that only a producer takes.
const PRODUCER_ONLY_PROPERTIES: [&str; 12] = [
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "linger.ms",
    "queue.buffering.max.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "batch.num.messages",
    "batch.size",
    "compression.type",
    "compression.codec",
    "queue.buffering.max.messages",
];

/// Starts every source's consumer. Records go to `inboxes`, one per shard.
pub fn start_sources(
    config: &Config,
    inboxes: &Arc<Vec<Arc<SourceInbox>>>,
    metrics: &[Arc<SourceMetrics>],
) -> Result<Vec<SourceThread>, ConfigError> {
    let compiled = compile(config)?;
    let mut threads = Vec::with_capacity(compiled.len());
    for (source, metrics) in compiled.into_iter().zip(metrics) {
        let client = consumer_config(config, &config.kafka.sources[usize::from(source.index)]);
        let thread = consumer::start(source, client, inboxes.clone(), metrics.clone())
            .map_err(|error| config.shown_error(ConfigError::new(error)))?;
        threads.push(thread);
    }
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_always_goes_to_the_same_shard_and_slots_spread() {
        let shards = 4;
        let mut used = [0usize; 4];
        for slot in 0..64u64 {
            let shard = shard_of(slot, shards);
            assert_eq!(shard, shard_of(slot, shards));
            used[shard] += 1;
        }
        assert!(used.iter().all(|&n| n > 0), "{used:?}");
        assert_eq!(shard_of(7, 1), 0);
    }
}
