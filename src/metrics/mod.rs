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

use crate::bridge::shard_bridge::MappingCounters;
use crate::broker::stats::StatsSnapshot;

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
}

/// What the board knows about each mapping, for labels.
#[derive(Clone, Debug)]
pub struct MappingLabel {
    pub mqtt: String,
    pub cluster: String,
}

pub struct Board {
    shards: Mutex<Vec<ShardSnapshot>>,
    pub cluster_names: Vec<String>,
    pub mappings: Vec<MappingLabel>,
    /// Per cluster: whether it answered its last metadata request.
    pub kafka_up: Vec<Arc<AtomicBool>>,
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
        }
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

    /// Sums over shards: broker counters, per-mapping counters, and per cluster the ring and
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
    let counters: [(&str, CounterOf); 5] = [
        ("matched", |m| m.matched),
        ("produced", |m| m.produced),
        ("acknowledged", |m| m.acknowledged),
        ("failed", |m| m.failed),
        ("dropped_ring_full", |m| m.dropped_ring_full),
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
        let _ = writeln!(out, "# TYPE ferrymq_spool_flush_latency_seconds summary");
        for (shard, spool) in &spools {
            for quantile in [0.5, 0.99, 0.999] {
                let _ = writeln!(
                    out,
                    "ferrymq_spool_flush_latency_seconds{{shard=\"{shard}\",quantile=\"{quantile}\"}} {}",
                    spool.flush_latency_us.value_at_quantile(quantile) as f64 / 1e6
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
    let _ = writeln!(out, "# TYPE ferrymq_kafka_records_in_ring gauge");
    let _ = writeln!(out, "# TYPE ferrymq_kafka_records_in_librdkafka gauge");
    let _ = writeln!(out, "# TYPE ferrymq_kafka_delivery_latency_seconds summary");
    for (name, (in_ring, in_librdkafka, latency)) in
        board.cluster_names.iter().zip(&totals.clusters)
    {
        let name = escape(name);
        let _ = writeln!(
            out,
            "ferrymq_kafka_records_in_ring{{cluster=\"{name}\"}} {in_ring}"
        );
        let _ = writeln!(
            out,
            "ferrymq_kafka_records_in_librdkafka{{cluster=\"{name}\"}} {in_librdkafka}"
        );
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
    out
}

/// Reads one figure of a shard's spool.
type SpoolValue = fn(&SpoolSnapshot) -> f64;

/// Reads one counter of a mapping.
type CounterOf = fn(&MappingCounters) -> u64;

fn escape(value: &str) -> String {
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
