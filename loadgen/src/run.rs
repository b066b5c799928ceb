//! One process's run: start the Kafka consumer (so that its start offsets come before the
//! first message), start the shards, measure memory before the devices connect, release
//! them, print progress each second and stop at the deadline, then gather what the shards
//! and the consumer found into the report.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::Failure;
use crate::engine::{self, Control};
use crate::probe::KafkaProbe;
use crate::report::{
    dump, heap_live_bytes, latency_histogram, rss_bytes, ConnectionFigures, DeviceFigures,
    DeviceIssue, Histograms, MemoryFigures, MessageFigures, Report, Totals,
};
use crate::scenario::Scenario;
use crate::verify::{check_subscribers, DeviceRecord, KafkaVerifier};

/// SIGINT/SIGTERM: stop publishing, drain, verify and report as at the deadline.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registration only fails for forbidden signals, which these are not.
        let _ = signal_hook::flag::register(signal, flag.clone());
    }
    flag
}

/// Samples of this process's (and the broker's) resident memory as devices connect; see
/// [`MemoryFigures`] for what is compared with what.
#[derive(Default)]
pub struct MemorySampler {
    pub figures: MemoryFigures,
    broker_pids: Vec<u32>,
}

impl MemorySampler {
    pub fn new(broker_pids: &[u32], own: bool) -> MemorySampler {
        let mut sampler = MemorySampler {
            broker_pids: broker_pids.to_vec(),
            ..Default::default()
        };
        if own {
            sampler.figures.loadgen_rss_base_bytes = rss_bytes("self").unwrap_or(0);
            sampler.figures.loadgen_heap_base_bytes = heap_live_bytes();
        }
        sampler.figures.broker_rss_base_bytes = sampler.broker_rss();
        sampler
    }

    /// The brokers' resident memory together.
    fn broker_rss(&self) -> u64 {
        self.broker_pids
            .iter()
            .filter_map(|pid| rss_bytes(&pid.to_string()))
            .sum()
    }

    /// Takes a sample whenever more connections are open than at the last one.
    pub fn observe(&mut self, connected: i64, own: bool) {
        let figures = &mut self.figures;
        if connected <= figures.connected_at_sample {
            return;
        }
        figures.connected_at_sample = connected;
        if own {
            figures.loadgen_rss_connected_bytes = rss_bytes("self").unwrap_or(0);
            figures.loadgen_heap_connected_bytes = heap_live_bytes();
        }
        let broker = self.broker_rss();
        let figures = &mut self.figures;
        figures.broker_rss_connected_bytes = broker;
        figures.compute();
    }
}

pub fn describe(scenario: &Scenario) -> String {
    let mut text = format!(
        "{} devices{}, QoS {}, {} B",
        scenario.devices,
        match scenario.churn_total {
            Some(total) => format!(" churning through {total} ids"),
            None => String::new(),
        },
        scenario.qos_mix.describe(),
        scenario.payload_size_bytes
    );
    match scenario.messages_per_device {
        Some(n) => text.push_str(&format!(", {n} messages each")),
        None => text.push_str(&format!(
            ", every {} ms",
            scenario.publish_interval.as_millis()
        )),
    }
    if let Some(duration) = scenario.duration {
        text.push_str(&format!(", {} s", duration.as_secs()));
    }
    if scenario.one_to_one {
        text.push_str(&format!(
            ", one-to-one: {} subscribers, one per publisher",
            scenario.subscribers
        ));
    } else if scenario.subscribers > 0 {
        text.push_str(&format!(", {} subscribers", scenario.subscribers));
    }
    text.push_str(&format!(
        ", MQTT {}{}, {} shard(s)",
        scenario.protocol.level(),
        if scenario.tls.is_some() {
            " over TLS"
        } else {
            ""
        },
        scenario.cores.len()
    ));
    if let Some(verify) = scenario.verify.as_ref().filter(|v| !v.config.is_empty()) {
        text.push_str(&format!(", Kafka: {}", verify.config.describe()));
    }
    text
}

/// `probe`: prepared (Kafka warmed up) before; it sends from the clock's start until the
/// devices are done.
pub fn run(scenario: Scenario, mut probe: Option<KafkaProbe>) -> Result<Report, String> {
    let scenario = Arc::new(scenario);
    let verifier = match &scenario.verify {
        Some(verify) => Some(KafkaVerifier::start(
            verify,
            scenario.qos_mix,
            (scenario.id_start, scenario.publisher_ids()),
            scenario.per_device_csv.is_some(),
        )?),
        None => None,
    };
    let interrupted = stop_on_signals();
    let shard_count = scenario.cores.len();
    let control = Arc::new(Control::new(shard_count, scenario.devices as usize));
    let engine = {
        let scenario = scenario.clone();
        let control = control.clone();
        std::thread::Builder::new()
            .name("loadgen-engine".into())
            .spawn(move || engine::run(scenario, control))
            .map_err(|e| format!("start the shards: {e}"))?
    };
    while control.shards_ready.load(Ordering::Acquire) < shard_count {
        if engine.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut memory = MemorySampler::new(&scenario.broker_pids, true);
    if let Some(probe) = &mut probe {
        probe.start();
    }
    let started = Instant::now();
    control.go.store(true, Ordering::Release);

    let mut previous = Totals::default();
    let mut last_tick = started;
    let mut connected_max = 0;
    while !engine.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let connected_now = Totals::of(&control.counters).connected;
        connected_max = connected_max.max(connected_now);
        memory.observe(connected_now, true);
        let stop_due = scenario.duration.is_some_and(|d| started.elapsed() >= d);
        if (stop_due || interrupted.load(Ordering::Relaxed)) && !control.stopping() {
            control.request_stop();
        }
        if last_tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let totals = Totals::of(&control.counters);
        let secs = last_tick.elapsed().as_secs_f64();
        last_tick = Instant::now();
        if scenario.child {
            println!(
                "@progress {}",
                serde_json::to_string(&totals).expect("totals serialize")
            );
        } else {
            println!(
                "{}",
                totals.progress_line(&previous, started.elapsed().as_secs(), secs)
            );
        }
        let _ = std::io::stdout().flush();
        previous = totals;
    }
    let outputs = engine
        .join()
        .map_err(|_| "a shard panicked".to_string())?
        .map_err(|e| format!("shards: {e}"))?;
    let elapsed = started.elapsed();
    let totals = Totals::of(&control.counters);
    let (kafka_probe, probe_latency) = match probe {
        Some(probe) => {
            let (figures, latency) = probe.finish();
            (Some(figures), latency)
        }
        None => (None, latency_histogram()),
    };

    let mut records: Vec<DeviceRecord> = Vec::new();
    let mut puback = latency_histogram();
    let mut subscriber = latency_histogram();
    let mut connect = latency_histogram();
    let (mut first_connect_us, mut last_connack_us) = (u64::MAX, 0);
    let mut misrouted = 0;
    let mut sub_seen: Vec<HashMap<u64, _>> = Vec::new();
    let mut failures = [0u64; Failure::ALL.len()];
    for output in outputs {
        records.extend(output.records);
        let observed = output.observed;
        puback.add(&observed.puback).expect("equal bounds");
        subscriber.add(&observed.subscriber).expect("equal bounds");
        connect.add(&observed.connect).expect("equal bounds");
        first_connect_us = first_connect_us.min(observed.first_connect_us);
        last_connack_us = last_connack_us.max(observed.last_connack_us);
        misrouted += observed.sub_misrouted;
        sub_seen.extend(observed.sub_seen);
        for (total, n) in failures.iter_mut().zip(observed.failures) {
            *total += n;
        }
    }
    records.sort_by_key(|r| r.number);
    let subscriptions = (scenario.subscribers > 0)
        .then(|| check_subscribers(&records, &sub_seen, misrouted, &scenario));
    let messages = MessageFigures {
        sent: records.iter().map(|r| u64::from(r.sent)).sum(),
        sent_qos0: records.iter().map(|r| u64::from(r.sent_qos0)).sum(),
        acknowledged: records.iter().map(|r| u64::from(r.acked)).sum(),
        unacknowledged: records.iter().map(|r| r.unacked.len() as u64).sum(),
        publishes_per_sec: 0.0,
    };
    let distinct_ids = records.len() as u64;
    let (kafka, kafka_latency, issues, per_device) = match verifier {
        Some(verifier) => {
            if !scenario.child {
                println!(
                    "verifying: waiting for {} acknowledged messages in Kafka (at most {} s)",
                    messages.acknowledged,
                    scenario.verify.as_ref().map_or(0, |v| v.timeout.as_secs())
                );
            }
            let outcome = verifier.finish(records)?;
            (
                Some(outcome.figures),
                outcome.latency,
                outcome.issues,
                outcome.per_device,
            )
        }
        None => (None, latency_histogram(), Vec::new(), Vec::new()),
    };
    if let Some(path) = &scenario.per_device_csv {
        write_per_device(path, &per_device)
            .map_err(|e| format!("--per-device {}: {e}", path.display()))?;
    }
    let mut report = Report {
        scenario: describe(&scenario),
        procs: 1,
        elapsed_secs: elapsed.as_secs_f64(),
        devices: DeviceFigures {
            publishers: u64::from(scenario.devices),
            subscribers: u64::from(scenario.subscribers),
            distinct_ids,
            connected_max: connected_max.max(memory.figures.connected_at_sample),
        },
        connections: ConnectionFigures {
            connects: totals.connects,
            connect_errors: totals.connect_errors,
            errors: Failure::ALL
                .iter()
                .zip(failures)
                .filter(|(_, n)| *n > 0)
                .map(|(f, n)| (f.name().to_string(), n))
                .collect(),
            first_connect_unix_us: if first_connect_us == u64::MAX {
                0
            } else {
                first_connect_us
            },
            last_connack_unix_us: last_connack_us,
            ..Default::default()
        },
        messages: MessageFigures {
            publishes_per_sec: messages.sent as f64 / elapsed.as_secs_f64().max(0.001),
            ..messages
        },
        kafka,
        subscriptions,
        kafka_probe,
        memory: memory.figures,
        devices_with_issues: issues,
        histograms: Histograms {
            puback: dump(&puback),
            subscriber: dump(&subscriber),
            kafka: dump(&kafka_latency),
            connect: dump(&connect),
            kafka_probe: dump(&probe_latency),
        },
        ..Default::default()
    };
    report.connections.compute_rate();
    report.summarize_latencies();
    Ok(report)
}

fn write_per_device(path: &std::path::Path, rows: &[DeviceIssue]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "device,sent,acknowledged,kafka_received,lost,duplicated,out_of_order"
    )?;
    for row in rows {
        writeln!(
            out,
            "{},{},{},{},{},{},{}",
            row.device,
            row.sent,
            row.acknowledged,
            row.received,
            row.lost,
            row.duplicated,
            row.out_of_order
        )?;
    }
    out.flush()
}

/// Writes `report` as JSON to `path`.
pub fn write_json(path: &std::path::Path, report: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).expect("report serializes");
    std::fs::write(path, text).map_err(|e| format!("--json {}: {e}", path.display()))
}
