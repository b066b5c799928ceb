//! The internal topics and this node's consumer group on the messages topic, set up before
//! the node serves anything.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::BrokerClusterConfig;

/// How long start-up waits for Kafka to answer each step.
const KAFKA_WAIT: Duration = Duration::from_secs(30);

/// Creates the messages and state topics unless they exist, and waits until both have
/// leaders for every partition.
pub fn ensure_topics(
    client: &ClientConfig,
    cluster: &BrokerClusterConfig,
    messages_topic: &str,
    state_topic: &str,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| format!("cluster.kafka: cannot create an admin client: {e}"))?;
    let replication = || TopicReplication::Fixed(i32::from(cluster.replication_factor));
    let retention = cluster.retention_ms.to_string();
    let topics = [
        NewTopic::new(messages_topic, cluster.partitions, replication())
            .set("retention.ms", &retention),
        NewTopic::new(state_topic, cluster.partitions, replication())
            .set("cleanup.policy", "compact"),
    ];
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_WAIT));
    let results = futures_lite::future::block_on(admin.create_topics(&topics, &options))
        .map_err(|e| format!("cluster.kafka: cannot create the internal topics: {e}"))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(format!(
                    "cluster.kafka: cannot create topic {topic}: {code}"
                ))
            }
        }
    }
    let deadline = Instant::now() + KAFKA_WAIT;
    for topic in [messages_topic, state_topic] {
        loop {
            let ready = admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics().first().map(|t| {
                        t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "cluster.kafka: topic {topic} has no leader for every partition after {}s",
                    KAFKA_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A node's first start: its group has no offsets on the messages topic, and must begin at
/// the topic's end as it is now (before the node listens), not wherever the end is when
/// the group's first rebalance ends: a message published in between would be missed.
/// A group with offsets goes on from them.
pub fn start_messages_group(
    client: &ClientConfig,
    group: &str,
    messages_topic: &str,
) -> Result<(), String> {
    let mut config = client.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cluster.kafka: cannot create a consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(messages_topic), KAFKA_WAIT)
        .map_err(|e| format!("cluster.kafka: no metadata for {messages_topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted.add_partition(messages_topic, partition);
    }
    let committed = consumer
        .committed_offsets(wanted, KAFKA_WAIT)
        .map_err(|e| format!("cluster.kafka: cannot read group {group}'s offsets: {e}"))?;
    let mut to_commit = TopicPartitionList::new();
    for element in committed.elements() {
        if matches!(element.offset(), Offset::Offset(_)) {
            continue;
        }
        let (_, high) = consumer
            .fetch_watermarks(messages_topic, element.partition(), KAFKA_WAIT)
            .map_err(|e| format!("cluster.kafka: no offsets for {messages_topic}: {e}"))?;
        to_commit
            .add_partition_offset(messages_topic, element.partition(), Offset::Offset(high))
            .map_err(|e| format!("cluster.kafka: {e}"))?;
    }
    if to_commit.count() > 0 {
        consumer
            .commit(&to_commit, CommitMode::Sync)
            .map_err(|e| format!("cluster.kafka: cannot set group {group}'s offsets: {e}"))?;
    }
    Ok(())
}
