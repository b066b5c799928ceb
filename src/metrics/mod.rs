//! Metrics: each shard counts on its own and, once a second, leaves a snapshot on the
//! board; the HTTP endpoint and `$SYS` read the board. The per-message path never touches
//! shared state.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use hdrhistogram::Histogram;

pub mod cluster;
pub mod mapping;
pub mod source;
pub mod stats;

pub use cluster::ClusterMetrics;
pub use mapping::{MappingCounters, RefusedReason, REFUSED_ACTIONS};
pub use source::{SourceDropped, SourceMetrics};
use stats::StatsSnapshot;

/// One cluster as one shard sees it.
#[derive(Clone)]
pub struct ClusterSnapshot {
    pub records_in_ring: u64,
    pub records_in_librdkafka: i64,
    /// Publish → Kafka acknowledgement, µs, for `ack = "kafka"` messages.
    pub latency_us: Histogram<u64>,
}

/// One shard's spool.
#[derive(Clone)]
pub struct SpoolSnapshot {
    pub bytes: u64,
    pub records_unacked: u64,
    pub oldest_unacked_secs: f64,
    pub flush_latency_us: Histogram<u64>,
    /// Append → durable, µs (what a durable PUBACK waits for).
    pub append_latency_us: Histogram<u64>,
    pub replayed: u64,
    pub write_errors: u64,
}

#[derive(Clone, Default)]
pub struct ShardSnapshot {
    pub spool: Option<SpoolSnapshot>,
    pub stats: StatsSnapshot,
    pub mappings: Vec<MappingCounters>,
    pub clusters: Vec<ClusterSnapshot>,
    pub dropped_qos0_ring_full: u64,
    pub pending_acks: u64,
    /// CPU time the shard's thread has used, in seconds ([`thread_cpu_seconds`] read on it).
    pub busy_seconds: f64,
}

/// CPU time used by the calling thread so far, in seconds (CLOCK_THREAD_CPUTIME_ID): on a
/// shard's thread, the time it was busy rather than parked waiting for I/O or timers.
pub fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// What the board knows about each mapping, for labels.
#[derive(Clone, Debug)]
pub struct MappingLabel {
    pub mqtt: String,
    pub cluster: String,
    /// Its `on_refused`, as an index into [`REFUSED_ACTIONS`]: the refused-record series
    /// it always shows.
    pub on_refused: usize,
}

pub struct Board {
    shards: Mutex<Vec<ShardSnapshot>>,
    pub cluster_names: Vec<String>,
    pub mappings: Vec<MappingLabel>,
    /// Per cluster: whether it answered its last metadata request.
    pub kafka_up: Vec<Arc<AtomicBool>>,
    /// The Kafka sources' counters, shared with their consumer threads.
    pub sources: Vec<Arc<SourceMetrics>>,
    /// This node's part in a cluster, when `[cluster]` is set.
    pub cluster: Option<Arc<ClusterMetrics>>,
}

impl Board {
    pub fn new(
        shard_count: usize,
        cluster_names: Vec<String>,
        mappings: Vec<MappingLabel>,
        kafka_up: Vec<Arc<AtomicBool>>,
    ) -> Board {
        Board {
            shards: Mutex::new(vec![ShardSnapshot::default(); shard_count]),
            cluster_names,
            mappings,
            kafka_up,
            sources: Vec::new(),
            cluster: None,
        }
    }

    /// The board with the cluster's counters on it.
    pub fn with_cluster(mut self, cluster: Option<Arc<ClusterMetrics>>) -> Board {
        self.cluster = cluster;
        self
    }

    /// The board with `sources` on it.
    pub fn with_sources(mut self, sources: Vec<Arc<SourceMetrics>>) -> Board {
        self.sources = sources;
        self
    }

    pub fn publish(&self, shard: usize, snapshot: ShardSnapshot) {
        self.shards.lock().expect("metrics board")[shard] = snapshot;
    }

    pub fn shards(&self) -> Vec<ShardSnapshot> {
        self.shards.lock().expect("metrics board").clone()
    }

    /// Clusters that did not answer their last metadata request.
    pub fn kafka_down(&self) -> Vec<&str> {
        self.cluster_names
            .iter()
            .zip(&self.kafka_up)
            .filter(|(_, up)| !up.load(Ordering::Relaxed))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Sums over shards: broker counters, per-mapping counters, and per cluster the shards and
    /// librdkafka gauges with the merged latency histogram.
    pub fn totals(&self) -> Totals {
        let shards = self.shards();
        let mut totals = Totals {
            stats: StatsSnapshot::default(),
            mappings: vec![MappingCounters::default(); self.mappings.len()],
            clusters: self
                .cluster_names
                .iter()
                .map(|_| (0, 0, new_latency_histogram()))
                .collect(),
            dropped_qos0_ring_full: 0,
            pending_acks: 0,
        };
        for shard in &shards {
            totals.stats.add(&shard.stats);
            totals.dropped_qos0_ring_full += shard.dropped_qos0_ring_full;
            totals.pending_acks += shard.pending_acks;
            for (total, m) in totals.mappings.iter_mut().zip(&shard.mappings) {
                total.matched += m.matched;
                total.produced += m.produced;
                total.acknowledged += m.acknowledged;
                total.failed += m.failed;
                total.dropped_ring_full += m.dropped_ring_full;
                total.dead_lettered += m.dead_lettered;
                for (total, m) in total.refused.iter_mut().zip(&m.refused) {
                    for (total, m) in total.iter_mut().zip(m) {
                        *total += m;
                    }
                }
            }
            for (total, c) in totals.clusters.iter_mut().zip(&shard.clusters) {
                total.0 += c.records_in_ring;
                total.1 += c.records_in_librdkafka;
                let _ = total.2.add(&c.latency_us);
            }
        }
        totals
    }
}

pub struct Totals {
    pub stats: StatsSnapshot,
    pub mappings: Vec<MappingCounters>,
    /// (records in rings, records in librdkafka, latency µs)
    pub clusters: Vec<(u64, i64, Histogram<u64>)>,
    pub dropped_qos0_ring_full: u64,
    pub pending_acks: u64,
}

/// Highest latency tracked: an hour, in µs.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// One of a spool snapshot's latency histograms.
type SpoolHistogram = fn(&SpoolSnapshot) -> &Histogram<u64>;

/// The board in Prometheus text format (version 0.0.4).
pub fn render_prometheus(board: &Board) -> String {
    let totals = board.totals();
    let mut out = String::new();
    for (name, value) in totals.stats.fields() {
        let _ = writeln!(out, "# TYPE ferrymq_{name} gauge\nferrymq_{name} {value}");
    }
    let _ = writeln!(
        out,
        "# TYPE ferrymq_kafka_dropped_qos0_ring_full_total counter\nferrymq_kafka_dropped_qos0_ring_full_total {}",
        totals.dropped_qos0_ring_full
    );
    let _ = writeln!(
        out,
        "# TYPE ferrymq_kafka_pending_acks gauge\nferrymq_kafka_pending_acks {}",
        totals.pending_acks
    );
    let by_qos = [
        ("received", &totals.stats.messages_received_by_qos),
        ("sent", &totals.stats.messages_sent_by_qos),
    ];
    for (name, counts) in by_qos {
        let _ = writeln!(out, "# TYPE ferrymq_messages_{name}_total counter");
        for (qos, count) in counts.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferrymq_messages_{name}_total{{qos=\"{qos}\"}} {count}"
            );
        }
    }
    let _ = writeln!(out, "# TYPE ferrymq_shard_busy_seconds_total counter");
    for (shard, snapshot) in board.shards().iter().enumerate() {
        let _ = writeln!(
            out,
            "ferrymq_shard_busy_seconds_total{{shard=\"{shard}\"}} {}",
            snapshot.busy_seconds
        );
    }
    let counters: [(&str, CounterOf); 6] = [
        ("matched", |m| m.matched),
        ("produced", |m| m.produced),
        ("acknowledged", |m| m.acknowledged),
        ("failed", |m| m.failed),
        ("dropped_ring_full", |m| m.dropped_ring_full),
        ("dead_lettered", |m| m.dead_lettered),
    ];
    for (name, get) in counters {
        let _ = writeln!(out, "# TYPE ferrymq_kafka_mapping_{name}_total counter");
        for (index, (counters, label)) in totals.mappings.iter().zip(&board.mappings).enumerate() {
            let _ = writeln!(
                out,
                "ferrymq_kafka_mapping_{name}_total{{mapping=\"{index}\",mqtt=\"{}\",cluster=\"{}\"}} {}",
                escape(&label.mqtt),
                escape(&label.cluster),
                get(counters)
            );
        }
    }
    // Records Kafka refused for good, by reason and by what became of them: every reason
    // with the mapping's own `on_refused`, and any other pair that happened.
    let _ = writeln!(out, "# TYPE ferrymq_kafka_mapping_refused_total counter");
    for (index, (counters, label)) in totals.mappings.iter().zip(&board.mappings).enumerate() {
        for reason in RefusedReason::ALL {
            for (action, action_name) in REFUSED_ACTIONS.iter().enumerate() {
                let count = counters.refused[reason as usize][action];
                if count == 0 && action != label.on_refused {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "ferrymq_kafka_mapping_refused_total{{mapping=\"{index}\",mqtt=\"{}\",cluster=\"{}\",reason=\"{}\",action=\"{}\"}} {count}",
                    escape(&label.mqtt),
                    escape(&label.cluster),
                    reason.as_str(),
                    action_name,
                );
            }
        }
    }
    let spools: Vec<(usize, SpoolSnapshot)> = board
        .shards()
        .into_iter()
        .enumerate()
        .filter_map(|(shard, snapshot)| snapshot.spool.map(|s| (shard, s)))
        .collect();
    if !spools.is_empty() {
        let gauges: [(&str, &str, SpoolValue); 5] = [
            ("spool_bytes", "gauge", |s| s.bytes as f64),
            ("spool_records", "gauge", |s| s.records_unacked as f64),
            ("spool_oldest_record_age_seconds", "gauge", |s| {
                s.oldest_unacked_secs
            }),
            ("spool_replayed_records_total", "counter", |s| {
                s.replayed as f64
            }),
            ("spool_write_errors_total", "counter", |s| {
                s.write_errors as f64
            }),
        ];
        for (name, kind, get) in gauges {
            let _ = writeln!(out, "# TYPE ferrymq_{name} {kind}");
            for (shard, spool) in &spools {
                let _ = writeln!(out, "ferrymq_{name}{{shard=\"{shard}\"}} {}", get(spool));
            }
        }
        let summaries: [(&str, SpoolHistogram); 2] = [
            ("spool_flush_latency_seconds", |s| &s.flush_latency_us),
            ("spool_append_latency_seconds", |s| &s.append_latency_us),
        ];
        for (name, histogram_of) in summaries {
            let _ = writeln!(out, "# TYPE ferrymq_{name} summary");
            for (shard, spool) in &spools {
                let histogram = histogram_of(spool);
                for quantile in [0.5, 0.99, 0.999] {
                    let _ = writeln!(
                        out,
                        "ferrymq_{name}{{shard=\"{shard}\",quantile=\"{quantile}\"}} {}",
                        histogram.value_at_quantile(quantile) as f64 / 1e6
                    );
                }
                let _ = writeln!(
                    out,
                    "ferrymq_{name}_count{{shard=\"{shard}\"}} {}",
                    histogram.len()
                );
            }
        }
    }
    let _ = writeln!(out, "# TYPE ferrymq_kafka_up gauge");
    for (name, up) in board.cluster_names.iter().zip(&board.kafka_up) {
        let _ = writeln!(
            out,
            "ferrymq_kafka_up{{cluster=\"{}\"}} {}",
            escape(name),
            u8::from(up.load(Ordering::Relaxed))
        );
    }
    // Each family's samples together, after its TYPE line.
    let clusters: Vec<_> = board
        .cluster_names
        .iter()
        .map(|name| escape(name))
        .zip(&totals.clusters)
        .collect();
    let _ = writeln!(out, "# TYPE ferrymq_kafka_records_in_ring gauge");
    for (name, (in_ring, _, _)) in &clusters {
        let _ = writeln!(
            out,
            "ferrymq_kafka_records_in_ring{{cluster=\"{name}\"}} {in_ring}"
        );
    }
    let _ = writeln!(out, "# TYPE ferrymq_kafka_records_in_librdkafka gauge");
    for (name, (_, in_librdkafka, _)) in &clusters {
        let _ = writeln!(
            out,
            "ferrymq_kafka_records_in_librdkafka{{cluster=\"{name}\"}} {in_librdkafka}"
        );
    }
    let _ = writeln!(out, "# TYPE ferrymq_kafka_delivery_latency_seconds summary");
    for (name, (_, _, latency)) in &clusters {
        for quantile in [0.5, 0.99, 0.999] {
            let _ = writeln!(
                out,
                "ferrymq_kafka_delivery_latency_seconds{{cluster=\"{name}\",quantile=\"{quantile}\"}} {}",
                latency.value_at_quantile(quantile) as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "ferrymq_kafka_delivery_latency_seconds_count{{cluster=\"{name}\"}} {}",
            latency.len()
        );
    }
    source::render(&mut out, &board.sources);
    cluster::render(&mut out, board.cluster.as_deref());
    out
}

/// Reads one figure of a shard's spool.
type SpoolValue = fn(&SpoolSnapshot) -> f64;

/// Reads one counter of a mapping.
type CounterOf = fn(&MappingCounters) -> u64;

pub(crate) fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (every Kafka cluster
/// answers; 503 naming those that do not) on a thread of its own.
pub fn serve(addr: SocketAddr, board: Arc<Board>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    thread::Builder::new()
        .name("ferrymq-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &board);
            }
        })?;
    Ok(local)
}

fn answer(mut stream: std::net::TcpStream, board: &Board) -> io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    let mut request_line = String::new();
    BufReader::new(&stream).read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/metrics" => ("200 OK", render_prometheus(board)),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" => match board.kafka_down() {
            down if down.is_empty() => ("200 OK", "ready\n".to_string()),
            down => (
                "503 Service Unavailable",
                format!("Kafka unavailable: {}\n", down.join(", ")),
            ),
        },
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board of two shards with spools, two clusters and a mapping, each figure set.
    fn board() -> Board {
        let board = Board::new(
            2,
            vec!["main".into(), "audit \"x\"".into()],
            vec![MappingLabel {
                mqtt: "devices/#".into(),
                cluster: "main".into(),
                on_refused: 0,
            }],
            vec![
                Arc::new(AtomicBool::new(true)),
                Arc::new(AtomicBool::new(false)),
            ],
        );
        for shard in 0..2u64 {
            let mut stats = StatsSnapshot {
                messages_received: 6 + shard,
                ..StatsSnapshot::default()
            };
            stats.messages_received_by_qos = [1, 2, 3 + shard];
            stats.messages_sent_by_qos = [4, 0, shard];
            let mut latency = new_latency_histogram();
            latency.record(1500).unwrap();
            let cluster = ClusterSnapshot {
                records_in_ring: 1,
                records_in_librdkafka: 2,
                latency_us: latency.clone(),
            };
            board.publish(
                shard as usize,
                ShardSnapshot {
                    spool: Some(SpoolSnapshot {
                        bytes: 4096,
                        records_unacked: 3,
                        oldest_unacked_secs: 0.5,
                        flush_latency_us: latency.clone(),
                        append_latency_us: latency,
                        replayed: 0,
                        write_errors: 0,
                    }),
                    stats,
                    mappings: vec![MappingCounters {
                        matched: 5,
                        ..MappingCounters::default()
                    }],
                    clusters: vec![cluster.clone(), cluster],
                    dropped_qos0_ring_full: 0,
                    pending_acks: 1,
                    busy_seconds: 1.25 + shard as f64,
                },
            );
        }
        board
    }

    #[test]
    fn each_family_has_one_type_line_then_its_samples_together() {
        let text = render_prometheus(&board());
        let mut families: Vec<(&str, &str)> = Vec::new();
        let mut closed: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    families.iter().all(|(seen, _)| *seen != name),
                    "second TYPE for {name}"
                );
                closed.extend(families.last().map(|(name, _)| *name));
                families.push((name, kind));
                continue;
            }
            let name = &line[..line.find(['{', ' ']).unwrap()];
            let (family, kind) = *families.last().expect("a TYPE line first");
            let belongs = name == family
                || (kind == "summary" && name.strip_suffix("_count") == Some(family));
            assert!(belongs, "{name} is not in the group of {family}");
            assert!(!closed.contains(&family), "{name}: second group");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        for expected in [
            "ferrymq_messages_received 13",
            "ferrymq_messages_received_total{qos=\"0\"} 2",
            "ferrymq_messages_received_total{qos=\"1\"} 4",
            "ferrymq_messages_received_total{qos=\"2\"} 7",
            "ferrymq_messages_sent_total{qos=\"0\"} 8",
            "ferrymq_messages_sent_total{qos=\"1\"} 0",
            "ferrymq_messages_sent_total{qos=\"2\"} 1",
            "ferrymq_shard_busy_seconds_total{shard=\"0\"} 1.25",
            "ferrymq_shard_busy_seconds_total{shard=\"1\"} 2.25",
            "ferrymq_kafka_records_in_ring{cluster=\"audit \\\"x\\\"\"} 2",
            "ferrymq_kafka_delivery_latency_seconds_count{cluster=\"main\"} 2",
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
        }
    }

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_seconds();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while thread_cpu_seconds() - before < 0.01 && started.elapsed().as_secs() < 5 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(thread_cpu_seconds() - before >= 0.01, "{before}");
    }
}
