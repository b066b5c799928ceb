//! Counters of one Kafka source (`[[kafka.source]]`), written by its consumer thread and
//! read by the metrics endpoint. Atomics and two small locks: a source's thread is not a
//! shard, and these change per record, not per connection.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{escape, new_latency_histogram};

/// Why records of a source went nowhere (each is committed: waiting would not help).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceDropped {
    /// The MQTT topic template names a key or header the record does not have (or empty).
    TopicValueMissing,
    /// A value for the template is not UTF-8 or holds `/`, `+`, `#` or U+0000.
    TopicValueInvalid,
    /// The rendered topic is not an MQTT topic name (too long, say).
    TopicInvalid,
}

impl SourceDropped {
    pub const ALL: [SourceDropped; 3] = [
        SourceDropped::TopicValueMissing,
        SourceDropped::TopicValueInvalid,
        SourceDropped::TopicInvalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SourceDropped::TopicValueMissing => "topic_value_missing",
            SourceDropped::TopicValueInvalid => "topic_value_invalid",
            SourceDropped::TopicInvalid => "topic_invalid",
        }
    }
}

pub struct SourceMetrics {
    pub name: String,
    pub cluster: String,
    /// Records read from Kafka and handed on (stale re-reads skipped are not counted).
    pub consumed: AtomicU64,
    /// Records handed to at least one subscription.
    pub delivered: AtomicU64,
    /// Records that matched no subscription (committed).
    pub unrouted: AtomicU64,
    /// Records a shard refused (a full session): their partition went back to them.
    pub redelivered: AtomicU64,
    dropped: [AtomicU64; 3],
    /// Times the consumer found a shard's inbox full and waited.
    pub inbox_full_waits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub errors: AtomicU64,
    assigned: AtomicU64,
    paused: AtomicU64,
    /// Consumer lag per (topic, partition), from librdkafka's statistics.
    pub lag: Mutex<Vec<(String, i32, i64)>>,
    commit_latency_us: Mutex<Histogram<u64>>,
}

impl SourceMetrics {
    pub fn new(name: &str, cluster: &str) -> SourceMetrics {
        SourceMetrics {
            name: name.to_string(),
            cluster: cluster.to_string(),
            consumed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            dropped: Default::default(),
            inbox_full_waits: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            lag: Mutex::new(Vec::new()),
            commit_latency_us: Mutex::new(new_latency_histogram()),
        }
    }

    pub fn count_dropped(&self, reason: SourceDropped) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: SourceDropped) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions as u64, Ordering::Relaxed);
    }

    pub fn set_paused(&self, partitions: usize) {
        self.paused.store(partitions as u64, Ordering::Relaxed);
    }

    pub fn record_commit(&self, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, super::LATENCY_US_MAX);
        let _ = self
            .commit_latency_us
            .lock()
            .expect("commit latency")
            .record(us);
    }

    /// A consumer error (librdkafka's, or a pause/seek/commit that failed): counted and
    /// logged at most once in a while.
    pub fn note_error(&self, error: &str) {
        let count = self.errors.fetch_add(1, Ordering::Relaxed);
        // The first, then one in a thousand: a Kafka outage repeats the same error.
        if count % 1000 == 0 {
            tracing::warn!(source = %self.name, "kafka source {}: {error}", self.name);
        }
    }
}

/// Appends the sources' families to a Prometheus page.
pub fn render(out: &mut String, sources: &[std::sync::Arc<SourceMetrics>]) {
    if sources.is_empty() {
        return;
    }
    let label = |s: &SourceMetrics| {
        format!(
            "source=\"{}\",cluster=\"{}\"",
            escape(&s.name),
            escape(&s.cluster)
        )
    };
    type Counter = fn(&SourceMetrics) -> u64;
    let counters: [(&str, &str, Counter); 9] = [
        ("consumed_total", "counter", |s| {
            s.consumed.load(Ordering::Relaxed)
        }),
        ("delivered_total", "counter", |s| {
            s.delivered.load(Ordering::Relaxed)
        }),
        ("unrouted_total", "counter", |s| {
            s.unrouted.load(Ordering::Relaxed)
        }),
        ("redelivered_total", "counter", |s| {
            s.redelivered.load(Ordering::Relaxed)
        }),
        ("commit_failures_total", "counter", |s| {
            s.commit_failures.load(Ordering::Relaxed)
        }),
        ("errors_total", "counter", |s| {
            s.errors.load(Ordering::Relaxed)
        }),
        ("inbox_full_waits_total", "counter", |s| {
            s.inbox_full_waits.load(Ordering::Relaxed)
        }),
        ("assigned_partitions", "gauge", |s| {
            s.assigned.load(Ordering::Relaxed)
        }),
        ("paused_partitions", "gauge", |s| {
            s.paused.load(Ordering::Relaxed)
        }),
    ];
    for (name, kind, get) in counters {
        let _ = writeln!(out, "# TYPE ferrymq_kafka_source_{name} {kind}");
        for source in sources {
            let _ = writeln!(
                out,
                "ferrymq_kafka_source_{name}{{{}}} {}",
                label(source),
                get(source)
            );
        }
    }
    let _ = writeln!(out, "# TYPE ferrymq_kafka_source_dropped_total counter");
    for source in sources {
        for reason in SourceDropped::ALL {
            let _ = writeln!(
                out,
                "ferrymq_kafka_source_dropped_total{{{},reason=\"{}\"}} {}",
                label(source),
                reason.label(),
                source.dropped(reason)
            );
        }
    }
    let _ = writeln!(out, "# TYPE ferrymq_kafka_source_lag gauge");
    for source in sources {
        for (topic, partition, lag) in source.lag.lock().expect("lag").iter() {
            let _ = writeln!(
                out,
                "ferrymq_kafka_source_lag{{{},topic=\"{}\",partition=\"{partition}\"}} {lag}",
                label(source),
                escape(topic)
            );
        }
    }
    let _ = writeln!(
        out,
        "# TYPE ferrymq_kafka_source_commit_latency_seconds summary"
    );
    for source in sources {
        let histogram = source.commit_latency_us.lock().expect("commit latency");
        for quantile in [0.5, 0.99, 0.999] {
            let _ = writeln!(
                out,
                "ferrymq_kafka_source_commit_latency_seconds{{{},quantile=\"{quantile}\"}} {}",
                label(source),
                histogram.value_at_quantile(quantile) as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "ferrymq_kafka_source_commit_latency_seconds_count{{{}}} {}",
            label(source),
            histogram.len()
        );
    }
}
