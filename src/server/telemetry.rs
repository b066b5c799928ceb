//! What a running broker tells about itself: each shard's snapshot on the metrics board
//! once a second, and the `$SYS/broker/...` topics shard 0 publishes.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::bridge::health;
use crate::bridge::settings::ClusterSettings;
use crate::broker::context::ShardRef;
use crate::broker::message::Message;
use crate::broker::router;
use crate::broker::shard_message::ShardMessage;
use crate::config::{Config, OnRefused};
use crate::metrics::stats::StatsSnapshot;
use crate::metrics::{self, Board, MappingLabel, RefusedReason, ShardSnapshot};
use crate::protocol::{MqttStr, PublishProperties, QoS};
use crate::runtime;

/// The metrics board, with a Kafka probe per cluster.
pub(super) fn metrics_board(
    config: &Config,
    settings: &Arc<ClusterSettings>,
    shard_count: usize,
) -> io::Result<Board> {
    let mut kafka_up = Vec::new();
    for (index, name) in config.kafka.clusters.keys().enumerate() {
        let up = health::spawn_probe(name, index, settings.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("kafka.clusters.{name}.config: {}", settings.scrub(&e)),
            )
        })?;
        kafka_up.push(up);
    }
    let mappings = config
        .kafka
        .mappings
        .iter()
        .map(|m| MappingLabel {
            mqtt: m.mqtt.clone(),
            cluster: config.kafka.cluster_of(m).unwrap_or_default().to_string(),
            on_refused: m.on_refused.index(),
        })
        .collect();
    Ok(Board::new(
        shard_count,
        config.kafka.clusters.keys().cloned().collect(),
        mappings,
        kafka_up,
    ))
}

/// How often a shard leaves its snapshot on the metrics board.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

pub(super) async fn metrics_loop(shard: ShardRef) {
    loop {
        runtime::sleep(METRICS_INTERVAL).await;
        // New Kafka settings from SIGHUP are put in force here, within a second.
        shard.bridge.follow_settings();
        let bridge = shard.bridge.snapshot();
        let (queued, inflight, writing) = shard.state.borrow().queue_totals();
        shard.stats.session_queued_messages.set(queued);
        shard.stats.inflight_messages.set(inflight);
        shard.stats.connection_queued_packets.set(writing);
        let snapshot = ShardSnapshot {
            spool: bridge.spool,
            stats: shard.stats.snapshot(),
            mappings: bridge.mappings,
            clusters: bridge.clusters,
            dropped_qos0_ring_full: bridge.dropped_qos0_ring_full,
            pending_acks: bridge.pending_acks,
            // This loop runs on the shard's thread: its CPU time is the shard's.
            busy_seconds: metrics::thread_cpu_seconds(),
        };
        shard.board.publish(shard.id, snapshot);
    }
}

/// Every `sys_interval_secs`, shards send their counters to shard 0, which publishes the
/// sums as retained `$SYS/broker/...` messages.
pub(super) async fn sys_loop(shard: ShardRef) {
    let interval = Duration::from_secs(shard.config.sys_interval_secs.into());
    loop {
        runtime::sleep(interval).await;
        let snapshot = shard.stats.snapshot();
        if shard.id != 0 {
            let message = ShardMessage::Stats {
                from: shard.id,
                snapshot,
            };
            let _ = shard.senders.send(0, message).await;
            continue;
        }
        shard.remote_stats.borrow_mut()[0] = snapshot;
        let mut total = StatsSnapshot::default();
        for other in shard.remote_stats.borrow().iter() {
            total.add(other);
        }
        let uptime = shard.started_at.elapsed().as_secs();
        let mut topics = vec![
            (
                "$SYS/broker/version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (
                "$SYS/broker/uptime".to_string(),
                format!("{uptime} seconds"),
            ),
            ("$SYS/broker/shards".to_string(), shard.count.to_string()),
        ];
        let kafka = shard.board.totals();
        for (index, name) in shard.board.cluster_names.iter().enumerate() {
            let (in_ring, in_librdkafka, latency) = &kafka.clusters[index];
            let up = shard.board.kafka_up[index].load(Ordering::Relaxed);
            let prefix = format!("$SYS/broker/kafka/clusters/{name}");
            topics.push((format!("{prefix}/up"), u8::from(up).to_string()));
            topics.push((format!("{prefix}/records_in_ring"), in_ring.to_string()));
            topics.push((
                format!("{prefix}/records_in_librdkafka"),
                in_librdkafka.to_string(),
            ));
            for (label, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
                topics.push((
                    format!("{prefix}/delivery_latency_us/{label}"),
                    latency.value_at_quantile(quantile).to_string(),
                ));
            }
        }
        for (index, counters) in kafka.mappings.iter().enumerate() {
            let prefix = format!("$SYS/broker/kafka/mappings/{index}");
            topics.push((format!("{prefix}/matched"), counters.matched.to_string()));
            topics.push((format!("{prefix}/produced"), counters.produced.to_string()));
            topics.push((
                format!("{prefix}/acknowledged"),
                counters.acknowledged.to_string(),
            ));
            topics.push((format!("{prefix}/failed"), counters.failed.to_string()));
            topics.push((
                format!("{prefix}/dropped_ring_full"),
                counters.dropped_ring_full.to_string(),
            ));
            topics.push((
                format!("{prefix}/dead_lettered"),
                counters.dead_lettered.to_string(),
            ));
            // Records refused for good: one topic per reason and what became of them.
            for reason in RefusedReason::ALL {
                for action in OnRefused::ALL {
                    let count = counters.refused[reason as usize][action.index()];
                    if count > 0 {
                        topics.push((
                            format!("{prefix}/refused/{}/{}", reason.as_str(), action.as_str()),
                            count.to_string(),
                        ));
                    }
                }
            }
        }
        for (name, value) in total.fields() {
            topics.push((
                format!("$SYS/broker/{}", name.replacen('_', "/", 1)),
                value.to_string(),
            ));
        }
        for (topic, value) in topics {
            let message = Message {
                topic: MqttStr::from(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                publisher: MqttStr::from_static("$SYS"),
                expires_at: None,
            };
            router::publish(&shard, message).await;
        }
    }
}
