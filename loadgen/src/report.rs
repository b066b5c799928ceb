//! What a run tells: live counters per shard and the progress line made from them each
//! second, latency histograms, and the final report, printed as a table and written as
//! JSON. Reports of several processes (`--procs`) merge into one: counts add up and the
//! histograms travel in the JSON so that percentiles are computed over all of them.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, 1 µs to 1 h, 3 significant digits.
pub type Latency = Histogram<u64>;

const LATENCY_US_MAX: u64 = 3_600_000_000;

pub fn latency_histogram() -> Latency {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Records `us`, clamped into the histogram's range.
pub fn record_latency(histogram: &mut Latency, us: u64) {
    histogram.saturating_record(us.clamp(1, LATENCY_US_MAX));
}

/// Live counters of one shard: written by that shard only (relaxed stores, no lock on the
/// message path), read once a second by the thread that prints progress. Aligned so that
/// two shards never write the same cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub connected: AtomicI64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub publishes: AtomicU64,
    pub acks: AtomicU64,
    pub errors: AtomicU64,
    pub sub_received: AtomicU64,
    /// `commands`: this run's commands received for the first time.
    pub commands_received: AtomicU64,
    /// `commands`: devices offline now, by plan (away from their sessions).
    pub offline: AtomicI64,
    /// `commands`: the Kafka partitions whose readiness probe record reached a device, as
    /// a bitmap.
    pub probe_partitions: [AtomicU64; PROBE_PARTITION_WORDS],
}

/// Partitions a `commands` readiness probe can tell apart: 64 per word.
pub const PROBE_PARTITION_WORDS: usize = 16;

impl ShardCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A probe record of Kafka partition `partition` arrived.
    pub fn probe_arrived(&self, partition: u64) {
        if let Some(word) = self.probe_partitions.get((partition / 64) as usize) {
            word.fetch_or(1 << (partition % 64), Ordering::Relaxed);
        }
    }

    /// Whether a probe record of `partition` arrived at a device of this shard.
    pub fn probe_seen(&self, partition: u64) -> bool {
        self.probe_partitions
            .get((partition / 64) as usize)
            .is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (partition % 64)) != 0)
    }
}

/// The counters of all shards (or processes) added up at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub connected: i64,
    pub connects: u64,
    pub connect_errors: u64,
    pub publishes: u64,
    pub acks: u64,
    pub errors: u64,
    pub sub_received: u64,
    #[serde(default)]
    pub commands_received: u64,
    #[serde(default)]
    pub offline: i64,
}

impl Totals {
    pub fn of(shards: &[ShardCounters]) -> Totals {
        let mut totals = Totals::default();
        for shard in shards {
            totals += Totals {
                connected: shard.connected.load(Ordering::Relaxed),
                connects: shard.connects.load(Ordering::Relaxed),
                connect_errors: shard.connect_errors.load(Ordering::Relaxed),
                publishes: shard.publishes.load(Ordering::Relaxed),
                acks: shard.acks.load(Ordering::Relaxed),
                errors: shard.errors.load(Ordering::Relaxed),
                sub_received: shard.sub_received.load(Ordering::Relaxed),
                commands_received: shard.commands_received.load(Ordering::Relaxed),
                offline: shard.offline.load(Ordering::Relaxed),
            };
        }
        totals
    }

    /// The progress line: `previous` is the sample `secs` earlier.
    pub fn progress_line(&self, previous: &Totals, elapsed_secs: u64, secs: f64) -> String {
        let rate = |now: u64, before: u64| (now.saturating_sub(before) as f64 / secs).round();
        let mut line = format!(
            "[{elapsed_secs:>4}s] connected {:>7} | connects/s {:>6} | publishes/s {:>7} | \
             acks/s {:>7} | errors {}",
            self.connected,
            rate(self.connects, previous.connects),
            rate(self.publishes, previous.publishes),
            rate(self.acks, previous.acks),
            self.errors + self.connect_errors,
        );
        if self.sub_received > 0 {
            line.push_str(&format!(
                " | subscriber msgs/s {}",
                rate(self.sub_received, previous.sub_received)
            ));
        }
        line
    }
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, other: Totals) {
        self.connected += other.connected;
        self.connects += other.connects;
        self.connect_errors += other.connect_errors;
        self.publishes += other.publishes;
        self.acks += other.acks;
        self.errors += other.errors;
        self.sub_received += other.sub_received;
        self.commands_received += other.commands_received;
        self.offline += other.offline;
    }
}

/// Percentiles of one latency, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Latency) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// A histogram as (value, count) pairs: what the JSON carries for merging.
pub fn dump(histogram: &Latency) -> Vec<[u64; 2]> {
    histogram
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

pub fn undump(pairs: &[[u64; 2]]) -> Latency {
    let mut histogram = latency_histogram();
    for &[value, count] in pairs {
        histogram
            .record_n(value.clamp(1, LATENCY_US_MAX), count)
            .expect("value within bounds");
    }
    histogram
}

/// Figures of one device with something wrong, for the report's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIssue {
    pub device: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

/// How many device issues a report lists (the counts cover all of them).
pub const DEVICE_ISSUES_LISTED_MAX: usize = 100;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceFigures {
    /// Publishing devices connected at once (churn slots).
    pub publishers: u64,
    pub subscribers: u64,
    /// Publishing device ids that ran.
    pub distinct_ids: u64,
    pub connected_max: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionFigures {
    /// Connections that got a successful CONNACK (subscribers' and reconnects included).
    pub connects: u64,
    pub connect_errors: u64,
    /// Errors by kind, connect errors included.
    pub errors: BTreeMap<String, u64>,
    /// The connect rate: `connects` over the connect phase, from the first connect attempt
    /// to the last CONNACK (not over the whole run). 0 without connections.
    pub connects_per_sec: f64,
    /// The connect phase in seconds: `last_connack_unix_us - first_connect_unix_us`.
    pub connect_phase_secs: f64,
    /// When the first connect attempt started (µs since the Unix epoch; 0: none).
    pub first_connect_unix_us: u64,
    /// When the last connection got its CONNACK (µs since the Unix epoch; 0: none).
    pub last_connack_unix_us: u64,
}

impl ConnectionFigures {
    /// Sets the connect phase and rate from the connects and the two moments.
    pub fn compute_rate(&mut self) {
        let (first, last) = (self.first_connect_unix_us, self.last_connack_unix_us);
        if self.connects == 0 || first == 0 || last < first {
            self.connect_phase_secs = 0.0;
            self.connects_per_sec = 0.0;
            return;
        }
        // At least a microsecond: one connection can start and finish within one tick.
        let span_us = (last - first).max(1);
        self.connect_phase_secs = span_us as f64 / 1e6;
        self.connects_per_sec = self.connects as f64 / self.connect_phase_secs;
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageFigures {
    pub sent: u64,
    pub sent_qos0: u64,
    /// QoS 1/2 messages the broker acknowledged (PUBACK, or PUBREC for QoS 2).
    pub acknowledged: u64,
    /// QoS 1/2 messages without an ack when their connection ended.
    pub unacknowledged: u64,
    pub publishes_per_sec: f64,
}

/// What the Kafka consumer saw of this run's messages.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaFigures {
    pub topics: Vec<String>,
    /// Distinct messages of this run found in Kafka.
    pub received: u64,
    /// Acknowledged, yet not in Kafka.
    pub lost: u64,
    /// Records beyond the first of a message.
    pub duplicated: u64,
    /// Messages that arrived after a later message of the same device.
    pub out_of_order: u64,
    /// QoS 0 messages sent but not in Kafka (best effort: not a loss).
    pub qos0_missing: u64,
    /// Records of this run's devices with a sequence number never sent.
    pub unexpected: u64,
    /// Records of other devices (other processes, other runs) that were skipped.
    pub foreign: u64,
    pub devices_with_loss: u64,
    /// The consumer gave up before every acknowledged message was found.
    pub timed_out: bool,
    /// "log-append-time", "create-time" or "consume-time": what publish→Kafka measures to.
    pub latency_to: String,
    /// The rate at which messages reached Kafka: `received` over the time from the first
    /// message's send (the earliest send time in the payloads read) to the last message's
    /// arrival. Arrival is the record's LogAppendTime, Kafka's own append time, where the
    /// topic has it (as `--kafka-create-topics` creates them); else the moment the consumer
    /// read it, which trails the append by the consumer's fetch wait. 0 when none arrived.
    pub received_per_sec: f64,
    /// Send time of the first message of this run found in Kafka (ms since the Unix
    /// epoch; 0: none).
    pub first_send_unix_ms: u64,
    /// Arrival time in Kafka of the last message (as for `received_per_sec`; 0: none).
    pub last_arrival_unix_ms: u64,
}

impl KafkaFigures {
    /// Sets `received_per_sec` from `received` and the two moments (1 ms at least apart:
    /// their resolution).
    pub fn compute_rate(&mut self) {
        let (first, last) = (self.first_send_unix_ms, self.last_arrival_unix_ms);
        self.received_per_sec = if self.received == 0 || first == 0 || last == 0 {
            0.0
        } else {
            self.received as f64 * 1000.0 / last.saturating_sub(first).max(1) as f64
        };
    }
}

/// Kafka's own append latency on the same cluster, measured beside the run
/// (`--verify-kafka`, see the `probe` module): the probe records and the warm-up before
/// the clock. Their send → ack latencies are `latency.kafka_probe`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaProbeFigures {
    /// The topic the probe records went to (one partition).
    pub topic: String,
    /// One record this often during the run.
    pub interval_ms: u64,
    /// Probe records sent during the run.
    pub sent: u64,
    /// Probe records Kafka refused.
    pub failed: u64,
    /// Probe records still without an answer at the end (after waiting up to 10 s).
    pub unanswered: u64,
    /// "warm": three warm-up rounds in a row were answered within 50 ms; "slow":
    /// `--kafka-warmup-timeout` passed first; "off": no warm-up.
    pub warmup: String,
    pub warmup_secs: f64,
    pub warmup_rounds: u64,
    /// The last warm-up rounds' round trips (the slowest record of each), oldest first, µs.
    pub warmup_round_trips_us: Vec<u64>,
}

/// What this process's subscribing devices saw of its publishers' messages.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberFigures {
    pub subscribers: u64,
    /// `--one-to-one`: each subscriber had to receive exactly its own publisher's messages.
    pub one_to_one: bool,
    /// Acknowledged messages times subscribers (one-to-one: the acknowledged messages):
    /// what they had to receive.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// One-to-one: messages a subscriber got that were not its own publisher's (each
    /// fails the run).
    pub misrouted: u64,
    /// Subscribed at QoS 0: copies may be dropped, so losses do not fail the run.
    pub best_effort: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyFigures {
    pub puback: LatencySummary,
    pub subscriber: LatencySummary,
    pub kafka: LatencySummary,
    /// Start of the TCP connect → CONNACK, per connection established.
    pub connect: LatencySummary,
    /// Send → ack of the probe records: Kafka's own append latency during the run.
    pub kafka_probe: LatencySummary,
}

/// The process's allocator: mimalloc, counting the bytes handed out and not yet returned,
/// so that the report can say exactly how much heap a connected device holds. (VmRSS says
/// it too, but moves in allocator-sized steps and keeps freed pages.) One relaxed atomic
/// add per allocation; the Kafka consumer's C allocations are not counted.
pub struct CountingAllocator;

static HEAP_LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

pub fn heap_live_bytes() -> u64 {
    HEAP_LIVE_BYTES.load(Ordering::Relaxed).max(0) as u64
}

// SAFETY: every call is forwarded to mimalloc unchanged; the counter only observes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = mimalloc::MiMalloc.alloc(layout);
        if !ptr.is_null() {
            HEAP_LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = mimalloc::MiMalloc.alloc_zeroed(layout);
        if !ptr.is_null() {
            HEAP_LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout);
        HEAP_LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = mimalloc::MiMalloc.realloc(ptr, layout, new_size);
        if !new.is_null() {
            HEAP_LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        new
    }
}

/// Memory of the loadgen and of the broker: at the start of the run (shards and buffers
/// ready, no device yet; an idle broker) and at the most connections. The difference over
/// the connections is what a connected device costs in user space (kernel socket buffers
/// are in neither figure): the live heap exactly, and VmRSS as the kernel sees it, which
/// also moves with the allocator's page reuse and, with --verify-kafka, the consumer's
/// buffers.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryFigures {
    pub loadgen_heap_base_bytes: u64,
    pub loadgen_heap_connected_bytes: u64,
    pub loadgen_heap_bytes_per_device: u64,
    pub loadgen_rss_base_bytes: u64,
    pub loadgen_rss_connected_bytes: u64,
    /// Connections open when the connected RSS was taken (the most of the run).
    pub connected_at_sample: i64,
    pub loadgen_bytes_per_device: u64,
    pub broker_rss_base_bytes: u64,
    pub broker_rss_connected_bytes: u64,
    pub broker_bytes_per_connection: u64,
}

impl MemoryFigures {
    pub fn compute(&mut self) {
        let per = |base: u64, connected: u64, n: i64| {
            if n > 0 {
                connected.saturating_sub(base) / n as u64
            } else {
                0
            }
        };
        self.loadgen_bytes_per_device = per(
            self.loadgen_rss_base_bytes,
            self.loadgen_rss_connected_bytes,
            self.connected_at_sample,
        );
        self.loadgen_heap_bytes_per_device = per(
            self.loadgen_heap_base_bytes,
            self.loadgen_heap_connected_bytes,
            self.connected_at_sample,
        );
        self.broker_bytes_per_connection = per(
            self.broker_rss_base_bytes,
            self.broker_rss_connected_bytes,
            self.connected_at_sample,
        );
    }

    /// Adds another process's figures: RSS and connections add up, the cost per device
    /// is the mean weighted by connections.
    pub fn merge(&mut self, other: &MemoryFigures) {
        let (mine, theirs) = (
            self.connected_at_sample.max(0),
            other.connected_at_sample.max(0),
        );
        let weighted =
            |a: u64, b: u64| (a * mine as u64 + b * theirs as u64) / (mine + theirs).max(1) as u64;
        let rss_per_device = weighted(
            self.loadgen_bytes_per_device,
            other.loadgen_bytes_per_device,
        );
        let heap_per_device = weighted(
            self.loadgen_heap_bytes_per_device,
            other.loadgen_heap_bytes_per_device,
        );
        self.loadgen_heap_base_bytes += other.loadgen_heap_base_bytes;
        self.loadgen_heap_connected_bytes += other.loadgen_heap_connected_bytes;
        self.loadgen_rss_base_bytes += other.loadgen_rss_base_bytes;
        self.loadgen_rss_connected_bytes += other.loadgen_rss_connected_bytes;
        self.connected_at_sample += other.connected_at_sample;
        self.loadgen_bytes_per_device = rss_per_device;
        self.loadgen_heap_bytes_per_device = heap_per_device;
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    pub puback: Vec<[u64; 2]>,
    pub subscriber: Vec<[u64; 2]>,
    pub kafka: Vec<[u64; 2]>,
    pub connect: Vec<[u64; 2]>,
    pub kafka_probe: Vec<[u64; 2]>,
}

/// The final report; `--json` writes it as is.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub procs: u64,
    pub elapsed_secs: f64,
    pub devices: DeviceFigures,
    pub connections: ConnectionFigures,
    pub messages: MessageFigures,
    pub kafka: Option<KafkaFigures>,
    pub subscriptions: Option<SubscriberFigures>,
    pub kafka_probe: Option<KafkaProbeFigures>,
    pub latency: LatencyFigures,
    pub memory: MemoryFigures,
    pub devices_with_issues: Vec<DeviceIssue>,
    pub histograms: Histograms,
}

impl Report {
    /// No acknowledged message missing from Kafka or from a subscriber, and the
    /// verification finished.
    pub fn passed(&self) -> bool {
        let kafka_ok = self
            .kafka
            .as_ref()
            .is_none_or(|k| k.lost == 0 && !k.timed_out);
        let subs_ok = self
            .subscriptions
            .as_ref()
            .is_none_or(|s| (s.lost == 0 || s.best_effort) && s.misrouted == 0);
        kafka_ok && subs_ok
    }

    /// Recomputes the latency summaries from the histograms.
    pub fn summarize_latencies(&mut self) {
        self.latency = LatencyFigures {
            puback: LatencySummary::of(&undump(&self.histograms.puback)),
            subscriber: LatencySummary::of(&undump(&self.histograms.subscriber)),
            kafka: LatencySummary::of(&undump(&self.histograms.kafka)),
            connect: LatencySummary::of(&undump(&self.histograms.connect)),
            kafka_probe: LatencySummary::of(&undump(&self.histograms.kafka_probe)),
        };
    }

    /// Adds the report of another process of the same run.
    pub fn merge(&mut self, other: &Report) {
        self.procs += other.procs;
        self.elapsed_secs = self.elapsed_secs.max(other.elapsed_secs);
        let d = &mut self.devices;
        d.publishers += other.devices.publishers;
        d.subscribers += other.devices.subscribers;
        d.distinct_ids += other.devices.distinct_ids;
        d.connected_max += other.devices.connected_max;
        let c = &mut self.connections;
        c.connects += other.connections.connects;
        c.connect_errors += other.connections.connect_errors;
        for (kind, n) in &other.connections.errors {
            *c.errors.entry(kind.clone()).or_default() += n;
        }
        // The connect phase of the run spans from the earliest first attempt to the latest
        // last CONNACK of any process.
        c.first_connect_unix_us = earliest(
            c.first_connect_unix_us,
            other.connections.first_connect_unix_us,
        );
        c.last_connack_unix_us = c
            .last_connack_unix_us
            .max(other.connections.last_connack_unix_us);
        c.compute_rate();
        let m = &mut self.messages;
        m.sent += other.messages.sent;
        m.sent_qos0 += other.messages.sent_qos0;
        m.acknowledged += other.messages.acknowledged;
        m.unacknowledged += other.messages.unacknowledged;
        m.publishes_per_sec += other.messages.publishes_per_sec;
        match (&mut self.kafka, &other.kafka) {
            (Some(k), Some(o)) => {
                k.received += o.received;
                k.lost += o.lost;
                k.duplicated += o.duplicated;
                k.out_of_order += o.out_of_order;
                k.qos0_missing += o.qos0_missing;
                k.unexpected += o.unexpected;
                // Each process skips the others' records: not foreign to the run.
                k.foreign = k.foreign.min(o.foreign);
                k.devices_with_loss += o.devices_with_loss;
                k.timed_out |= o.timed_out;
                k.first_send_unix_ms = earliest(k.first_send_unix_ms, o.first_send_unix_ms);
                k.last_arrival_unix_ms = k.last_arrival_unix_ms.max(o.last_arrival_unix_ms);
                k.compute_rate();
            }
            (None, Some(o)) => self.kafka = Some(o.clone()),
            _ => {}
        }
        match (&mut self.subscriptions, &other.subscriptions) {
            (Some(s), Some(o)) => {
                s.subscribers += o.subscribers;
                s.expected += o.expected;
                s.received += o.received;
                s.lost += o.lost;
                s.duplicated += o.duplicated;
                s.out_of_order += o.out_of_order;
                s.misrouted += o.misrouted;
                s.one_to_one |= o.one_to_one;
            }
            (None, Some(o)) => self.subscriptions = Some(o.clone()),
            _ => {}
        }
        match (&mut self.kafka_probe, &other.kafka_probe) {
            (Some(p), Some(o)) => {
                p.sent += o.sent;
                p.failed += o.failed;
                p.unanswered += o.unanswered;
            }
            (None, Some(o)) => self.kafka_probe = Some(o.clone()),
            _ => {}
        }
        self.memory.merge(&other.memory);
        let room = DEVICE_ISSUES_LISTED_MAX.saturating_sub(self.devices_with_issues.len());
        self.devices_with_issues
            .extend(other.devices_with_issues.iter().take(room).cloned());
        for (mine, theirs) in [
            (&mut self.histograms.puback, &other.histograms.puback),
            (
                &mut self.histograms.subscriber,
                &other.histograms.subscriber,
            ),
            (&mut self.histograms.kafka, &other.histograms.kafka),
            (&mut self.histograms.connect, &other.histograms.connect),
            (
                &mut self.histograms.kafka_probe,
                &other.histograms.kafka_probe,
            ),
        ] {
            let mut merged = undump(mine);
            merged
                .add(undump(theirs))
                .expect("histograms of equal bounds");
            *mine = dump(&merged);
        }
        self.summarize_latencies();
    }

    /// The report as the table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "== ferrymq-loadgen report: {} ({} process{}, {:.1} s)",
            self.scenario,
            self.procs,
            if self.procs == 1 { "" } else { "es" },
            self.elapsed_secs
        ));
        let d = &self.devices;
        let c = &self.connections;
        line(format!(
            "devices      {} publishing at once, {} subscribing; {} distinct ids; connected max {}",
            d.publishers, d.subscribers, d.distinct_ids, d.connected_max
        ));
        let errors = if c.errors.is_empty() {
            "none".to_string()
        } else {
            c.errors
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line(format!(
            "connections  {} connects ({:.0}/s over the connect phase of {:.2} s), {} connect \
             errors; errors: {errors}",
            c.connects, c.connects_per_sec, c.connect_phase_secs, c.connect_errors
        ));
        let m = &self.messages;
        line(format!(
            "messages     sent {} (QoS 0: {}), acknowledged {}, unacknowledged {}; {:.0} publishes/s",
            m.sent, m.sent_qos0, m.acknowledged, m.unacknowledged, m.publishes_per_sec
        ));
        if let Some(k) = &self.kafka {
            line(format!(
                "kafka        received {} ({:.0}/s from first send to last arrival), LOST {}, \
                 duplicated {}, out of order {}, QoS 0 missing {}, unexpected {}{} [{}]",
                k.received,
                k.received_per_sec,
                k.lost,
                k.duplicated,
                k.out_of_order,
                k.qos0_missing,
                k.unexpected,
                if k.timed_out {
                    ", TIMED OUT waiting"
                } else {
                    ""
                },
                k.topics.join(",")
            ));
        }
        if let Some(p) = &self.kafka_probe {
            let trips = p
                .warmup_round_trips_us
                .iter()
                .map(|&us| format!("{:.1}", us as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(", ");
            let warmup = match p.warmup.as_str() {
                "off" => "no warm-up".to_string(),
                "warm" => format!(
                    "Kafka warm after a {:.1} s warm-up (last round trips {trips} ms)",
                    p.warmup_secs
                ),
                _ => format!(
                    "Kafka STILL SLOW after a {:.1} s warm-up (last round trips {trips} ms)",
                    p.warmup_secs
                ),
            };
            line(format!(
                "kafka probe  {} records to {}, one every {} ms, failed {}, unanswered {}; {warmup}",
                p.sent, p.topic, p.interval_ms, p.failed, p.unanswered
            ));
        }
        if let Some(s) = &self.subscriptions {
            let mut text = format!(
                "subscribers  {} {}subscribers expected {}, received {}, LOST {}, duplicated {}, \
                 out of order {}",
                s.subscribers,
                if s.one_to_one { "one-to-one " } else { "" },
                s.expected,
                s.received,
                s.lost,
                s.duplicated,
                s.out_of_order
            );
            if s.one_to_one {
                text.push_str(&format!(", MISROUTED {}", s.misrouted));
            }
            line(text);
        }
        line(format!(
            "latency ms   {:<30} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "", "p50", "p90", "p99", "p99.9", "max", "count"
        ));
        let kafka_label = format!(
            "publish→Kafka ({})",
            self.kafka.as_ref().map_or("", |k| k.latency_to.as_str())
        );
        for (label, summary) in [
            ("connect→CONNACK".to_string(), &self.latency.connect),
            ("publish→ack".to_string(), &self.latency.puback),
            ("publish→subscriber".to_string(), &self.latency.subscriber),
            (kafka_label, &self.latency.kafka),
            (
                "Kafka produce (probe)".to_string(),
                &self.latency.kafka_probe,
            ),
        ] {
            if summary.count == 0 {
                continue;
            }
            let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
            line(format!(
                "             {label:<30} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
                ms(summary.p50_us),
                ms(summary.p90_us),
                ms(summary.p99_us),
                ms(summary.p999_us),
                ms(summary.max_us),
                summary.count
            ));
        }
        let probe = &self.latency.kafka_probe;
        if probe.count > 0 && probe.p99_us >= KAFKA_SLOW_US {
            line(format!(
                "note         Kafka itself was slow: its own produce latency (probe) reached \
                 {:.0} ms at p99, {:.0} ms at most; acks that wait for Kafka (ack = \"kafka\") \
                 include that",
                probe.p99_us as f64 / 1000.0,
                probe.max_us as f64 / 1000.0
            ));
        }
        let mem = &self.memory;
        let churn = self.devices.distinct_ids > self.devices.publishers;
        let per_device = if churn {
            "(churn: records of every id past, not a cost per connected device)".to_string()
        } else if mem.connected_at_sample >= MEMORY_SAMPLE_CONNECTIONS_MIN {
            format!(
                "{} B heap, {} B RSS per connected device",
                mem.loadgen_heap_bytes_per_device, mem.loadgen_bytes_per_device
            )
        } else {
            "too few connections for a figure per device".to_string()
        };
        let mut memory = format!(
            "memory       loadgen {per_device} (RSS {:.1} → {:.1} MiB at {} connections)",
            mib(mem.loadgen_rss_base_bytes),
            mib(mem.loadgen_rss_connected_bytes),
            mem.connected_at_sample
        );
        if mem.broker_rss_connected_bytes > 0 && !churn {
            memory.push_str(&format!(
                "; broker {} B per connection (RSS {:.1} → {:.1} MiB)",
                mem.broker_bytes_per_connection,
                mib(mem.broker_rss_base_bytes),
                mib(mem.broker_rss_connected_bytes)
            ));
        }
        line(memory);
        if !self.devices_with_issues.is_empty() {
            line(format!(
                "devices with lost, duplicated or out-of-order messages (first {}):",
                self.devices_with_issues.len()
            ));
            for issue in self.devices_with_issues.iter().take(10) {
                line(format!(
                    "  device {}: sent {}, acknowledged {}, received {}, lost {}, duplicated {}, \
                     out of order {}",
                    issue.device,
                    issue.sent,
                    issue.acknowledged,
                    issue.received,
                    issue.lost,
                    issue.duplicated,
                    issue.out_of_order
                ));
            }
        }
        line(format!(
            "result       {}",
            if self.passed() {
                "PASS: every acknowledged message was delivered"
            } else if self.subscriptions.as_ref().is_some_and(|s| s.misrouted > 0) {
                "FAIL: messages reached subscribers they were not for (see MISROUTED above)"
            } else {
                "FAIL: acknowledged messages are missing (see LOST above)"
            }
        ));
        out
    }
}

/// The earlier of two moments where 0 means "none".
fn earliest(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    }
}

/// A probe p99 from here on gets the "Kafka itself was slow" note.
const KAFKA_SLOW_US: u64 = 50_000;

/// Below this many connections allocator noise outweighs what devices cost.
const MEMORY_SAMPLE_CONNECTIONS_MIN: i64 = 100;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Resident memory of process `pid` ("self" for this one), from /proc/PID/status VmRSS.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with(sent: u64, lost: u64, latencies: &[u64]) -> Report {
        let mut histogram = latency_histogram();
        for &us in latencies {
            record_latency(&mut histogram, us);
        }
        let mut report = Report {
            scenario: "test".into(),
            procs: 1,
            elapsed_secs: 10.0,
            messages: MessageFigures {
                sent,
                acknowledged: sent,
                ..Default::default()
            },
            kafka: Some(KafkaFigures {
                received: sent - lost,
                lost,
                foreign: 5,
                ..Default::default()
            }),
            memory: MemoryFigures {
                loadgen_rss_base_bytes: 10_000_000,
                loadgen_rss_connected_bytes: 10_000_000 + 700 * 1000,
                connected_at_sample: 1000,
                ..Default::default()
            },
            histograms: Histograms {
                puback: dump(&histogram),
                ..Default::default()
            },
            ..Default::default()
        };
        report.memory.compute();
        report.summarize_latencies();
        report
    }

    #[test]
    fn merging_adds_counts_and_histograms() {
        let mut merged = report_with(100, 0, &[1_000; 99]);
        let second = report_with(50, 2, &[100_000]);
        assert!(merged.passed());
        assert!(!second.passed());
        merged.merge(&second);
        assert_eq!(merged.procs, 2);
        assert_eq!(merged.messages.sent, 150);
        let kafka = merged.kafka.as_ref().unwrap();
        assert_eq!((kafka.received, kafka.lost, kafka.foreign), (148, 2, 5));
        assert!(!merged.passed());
        assert_eq!(merged.latency.puback.count, 100);
        assert!((999..=1001).contains(&merged.latency.puback.p50_us));
        assert!((99_900..=100_100).contains(&merged.latency.puback.max_us));
        assert_eq!(merged.memory.loadgen_bytes_per_device, 700);
    }

    #[test]
    fn merging_recomputes_connect_and_kafka_rates_over_all_processes() {
        let process = |first_us: u64, last_us: u64, connects: u64, connect_us: u64| {
            let mut report = report_with(100, 0, &[1_000]);
            report.connections = ConnectionFigures {
                connects,
                first_connect_unix_us: first_us,
                last_connack_unix_us: last_us,
                ..Default::default()
            };
            report.connections.compute_rate();
            let mut histogram = latency_histogram();
            for _ in 0..connects {
                record_latency(&mut histogram, connect_us);
            }
            report.histograms.connect = dump(&histogram);
            let kafka = report.kafka.as_mut().unwrap();
            kafka.first_send_unix_ms = first_us / 1000;
            kafka.last_arrival_unix_ms = last_us / 1000 + 500;
            kafka.compute_rate();
            report.summarize_latencies();
            report
        };
        // 100 connections in 0.5 s; 300 in 1 s, starting 0.25 s later.
        let mut merged = process(1_000_000_000, 1_000_500_000, 100, 2_000);
        assert_eq!(merged.connections.connects_per_sec, 200.0);
        assert_eq!(merged.latency.connect.count, 100);
        assert_eq!(merged.kafka.as_ref().unwrap().received_per_sec, 100.0);
        merged.merge(&process(1_000_250_000, 1_001_250_000, 300, 4_000));
        let c = &merged.connections;
        assert_eq!((c.connects, c.connect_phase_secs), (400, 1.25));
        assert_eq!(c.connects_per_sec, 320.0);
        assert_eq!(merged.latency.connect.count, 400);
        assert!((3_990..=4_010).contains(&merged.latency.connect.p90_us));
        // 200 messages from the first send (1_000_000 ms) to the last arrival (1_001_750).
        let k = merged.kafka.as_ref().unwrap();
        assert_eq!(
            (k.first_send_unix_ms, k.last_arrival_unix_ms),
            (1_000_000, 1_001_750)
        );
        assert!((k.received_per_sec - 200.0 / 1.75).abs() < 1e-9);
        // A process that connected nothing leaves the phase alone.
        merged.merge(&report_with(0, 0, &[]));
        assert_eq!(merged.connections.connects_per_sec, 320.0);
        assert!(merged
            .table()
            .contains("320/s over the connect phase of 1.25 s"));
        assert!(merged.table().contains("connect→CONNACK"));
    }

    #[test]
    fn the_kafka_probe_has_its_own_row_and_a_note_when_kafka_was_slow() {
        let probe = |us: u64| {
            let mut report = report_with(10, 0, &[90_000; 10]);
            let mut histogram = latency_histogram();
            for _ in 0..20 {
                record_latency(&mut histogram, us);
            }
            report.histograms.kafka_probe = dump(&histogram);
            report.kafka_probe = Some(KafkaProbeFigures {
                topic: "probe".into(),
                interval_ms: 100,
                sent: 20,
                warmup: "warm".into(),
                warmup_secs: 1.5,
                warmup_rounds: 9,
                warmup_round_trips_us: vec![30_000, 2_000, 1_000],
                ..Default::default()
            });
            report.summarize_latencies();
            report
        };
        let fast = probe(2_000);
        assert_eq!(fast.latency.kafka_probe.count, 20);
        let table = fast.table();
        assert!(table.contains("Kafka produce (probe)"), "{table}");
        assert!(
            table.contains("kafka probe  20 records to probe"),
            "{table}"
        );
        assert!(
            table.contains("last round trips 30.0, 2.0, 1.0 ms"),
            "{table}"
        );
        assert!(!table.contains("Kafka itself was slow"), "{table}");
        let slow = probe(80_000);
        assert!(slow.table().contains("Kafka itself was slow"));
        // Merged: one probe figure, the histograms added.
        let mut merged = fast.clone();
        merged.merge(&report_with(10, 0, &[1_000]));
        assert_eq!(merged.latency.kafka_probe.count, 20);
        assert_eq!(merged.kafka_probe, fast.kafka_probe);
        let text = serde_json::to_string(&slow).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, slow);
    }

    #[test]
    fn rates_without_anything_are_zero() {
        let mut c = ConnectionFigures::default();
        c.compute_rate();
        assert_eq!((c.connects_per_sec, c.connect_phase_secs), (0.0, 0.0));
        let mut k = KafkaFigures {
            received: 5,
            ..Default::default()
        };
        k.compute_rate();
        assert_eq!(k.received_per_sec, 0.0);
        // One message appended within the millisecond it was sent.
        k.received = 1;
        k.first_send_unix_ms = 7;
        k.last_arrival_unix_ms = 7;
        k.compute_rate();
        assert_eq!(k.received_per_sec, 1000.0);
    }

    #[test]
    fn misrouted_one_to_one_messages_fail_the_run() {
        let mut report = report_with(10, 0, &[5]);
        report.subscriptions = Some(SubscriberFigures {
            subscribers: 10,
            one_to_one: true,
            expected: 10,
            received: 10,
            best_effort: true,
            ..Default::default()
        });
        assert!(report.passed());
        assert!(report.table().contains("one-to-one subscribers"));
        report.subscriptions.as_mut().unwrap().misrouted = 1;
        assert!(!report.passed());
        assert!(report.table().contains("MISROUTED 1"));
    }

    #[test]
    fn json_round_trip_keeps_what_merging_needs() {
        let report = report_with(10, 0, &[5, 50, 500]);
        let text = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        assert!(report.table().contains("PASS"));
    }

    #[test]
    fn progress_line_rates() {
        let before = Totals {
            connects: 100,
            publishes: 1_000,
            ..Default::default()
        };
        let now = Totals {
            connected: 300,
            connects: 300,
            publishes: 3_000,
            acks: 2_000,
            ..Default::default()
        };
        let line = now.progress_line(&before, 7, 1.0);
        assert!(line.contains("connected     300"), "{line}");
        assert!(line.contains("connects/s    200"), "{line}");
        assert!(line.contains("publishes/s    2000"), "{line}");
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_bytes("self").unwrap() > 0);
    }
}
