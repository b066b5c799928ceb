//! Counters of this node's part in a cluster (`[cluster]`), written by the cluster's
//! threads (state reader, producer callbacks) and the shards, read by the metrics endpoint.
//! The messages topic's consumer is a Kafka source named `cluster`: its lag and delivery
//! counters are the `ferrymq_kafka_source_*` families.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{escape, new_latency_histogram};

pub struct ClusterMetrics {
    pub cluster: String,
    pub node: String,
    /// Nodes whose heartbeat is recent (this one included).
    pub members: AtomicU64,
    /// Messages this node wrote to the messages topic for subscribers on other nodes.
    pub messages_sent: AtomicU64,
    /// Of those, Kafka refused or lost (the publisher of a QoS 1/2 one was told).
    pub messages_send_failed: AtomicU64,
    /// Records (messages, retained messages) on their way to Kafka whose answer a shard
    /// waits for; at most `SEND_IN_FLIGHT_MAX` (10,000) per shard.
    pub records_in_flight: AtomicU64,
    /// QoS 0 messages for other nodes dropped because this node had too many in flight.
    pub messages_dropped_in_flight_full: AtomicU64,
    /// Messages from other nodes read from the messages topic.
    pub messages_received: AtomicU64,
    /// Records of the state topic read (interest, retained, heartbeats).
    pub state_records: AtomicU64,
    /// State records this node wrote that Kafka did not take.
    pub state_send_failed: AtomicU64,
    /// Filters other nodes have subscribers for (one per node and filter).
    pub remote_filters: AtomicU64,
    /// Retained messages known cluster-wide.
    pub retained: AtomicU64,
    /// State updates waiting for the shards (bounded at 4,096 per shard).
    pub state_updates_queued: AtomicU64,
    /// Records of the state topic not read yet (every partition, sampled every 5 s).
    pub state_lag: AtomicU64,
    /// How long reading the state topic took at start, in milliseconds.
    pub catch_up_ms: AtomicU64,
    /// Records read at start.
    pub catch_up_records: AtomicU64,
    /// Messages from other nodes whose envelope could not be read (counted, skipped).
    pub malformed: AtomicU64,
    /// Sessions handed over to this node by the node their client was on.
    pub sessions_moved_in: AtomicU64,
    /// Sessions this node handed over to another.
    pub sessions_moved_out: AtomicU64,
    /// Connections that waited for a hand-over that did not come (the old node died).
    pub handover_timeouts: AtomicU64,
    /// Sessions (connected or kept) in the whole cluster, as this node's directory holds
    /// them: its memory for remote sessions.
    pub sessions_known: AtomicU64,
    /// From a PUBLISH on another node to its hand-over here (Kafka's record timestamp to
    /// the read), microseconds.
    latency_us: Mutex<Histogram<u64>>,
}

impl ClusterMetrics {
    pub fn new(cluster: &str, node: &str) -> ClusterMetrics {
        ClusterMetrics {
            cluster: cluster.to_string(),
            node: node.to_string(),
            members: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_send_failed: AtomicU64::new(0),
            records_in_flight: AtomicU64::new(0),
            messages_dropped_in_flight_full: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            state_records: AtomicU64::new(0),
            state_send_failed: AtomicU64::new(0),
            remote_filters: AtomicU64::new(0),
            retained: AtomicU64::new(0),
            state_updates_queued: AtomicU64::new(0),
            state_lag: AtomicU64::new(0),
            catch_up_ms: AtomicU64::new(0),
            catch_up_records: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            sessions_moved_in: AtomicU64::new(0),
            sessions_moved_out: AtomicU64::new(0),
            handover_timeouts: AtomicU64::new(0),
            sessions_known: AtomicU64::new(0),
            latency_us: Mutex::new(new_latency_histogram()),
        }
    }

    pub fn record_latency(&self, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, super::LATENCY_US_MAX);
        let _ = self.latency_us.lock().expect("cluster latency").record(us);
    }
}

/// Appends the cluster's families to a Prometheus page.
pub fn render(out: &mut String, metrics: Option<&ClusterMetrics>) {
    let Some(m) = metrics else {
        return;
    };
    let label = format!(
        "cluster=\"{}\",node=\"{}\"",
        escape(&m.cluster),
        escape(&m.node)
    );
    let families: [(&str, &str, &AtomicU64); 20] = [
        ("state_updates_queued", "gauge", &m.state_updates_queued),
        ("records_in_flight", "gauge", &m.records_in_flight),
        ("state_lag", "gauge", &m.state_lag),
        ("sessions_moved_in_total", "counter", &m.sessions_moved_in),
        ("sessions_moved_out_total", "counter", &m.sessions_moved_out),
        ("handover_timeouts_total", "counter", &m.handover_timeouts),
        ("sessions_known", "gauge", &m.sessions_known),
        ("members", "gauge", &m.members),
        ("messages_sent_total", "counter", &m.messages_sent),
        (
            "messages_send_failed_total",
            "counter",
            &m.messages_send_failed,
        ),
        (
            "messages_dropped_in_flight_full_total",
            "counter",
            &m.messages_dropped_in_flight_full,
        ),
        ("messages_received_total", "counter", &m.messages_received),
        ("state_records_total", "counter", &m.state_records),
        ("state_send_failed_total", "counter", &m.state_send_failed),
        ("remote_filters", "gauge", &m.remote_filters),
        ("retained_messages", "gauge", &m.retained),
        ("catch_up_milliseconds", "gauge", &m.catch_up_ms),
        ("catch_up_records", "gauge", &m.catch_up_records),
        ("malformed_total", "counter", &m.malformed),
        ("up", "gauge", &AtomicU64::new(1)),
    ];
    for (name, kind, value) in families {
        let _ = writeln!(out, "# TYPE ferrymq_cluster_{name} {kind}");
        let _ = writeln!(
            out,
            "ferrymq_cluster_{name}{{{label}}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let histogram = m.latency_us.lock().expect("cluster latency");
    let _ = writeln!(
        out,
        "# TYPE ferrymq_cluster_message_latency_seconds summary"
    );
    for quantile in [0.5, 0.99, 0.999] {
        let _ = writeln!(
            out,
            "ferrymq_cluster_message_latency_seconds{{{label},quantile=\"{quantile}\"}} {:.6}",
            histogram.value_at_quantile(quantile) as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "ferrymq_cluster_message_latency_seconds_count{{{label}}} {}",
        histogram.len()
    );
}
