//! Kafka's own latency, beside ferrymq's (`--verify-kafka`).
//!
//! - The warm-up, before the clock starts: a Kafka just started (JIT, first segments,
//!   controller) answers in seconds at first, and every PUBACK of an `ack = "kafka"`
//!   mapping waits for it. Rounds of small probe records, one to each partition of the
//!   verified topics that exist and one to the probe topic, go out until the slowest of a
//!   round is answered within [`WARM_ROUND_TRIP`] [`WARM_ROUNDS`] rounds in a row, or
//!   until `--kafka-warmup-timeout` passes (then a warning says how slow Kafka still was).
//!   It runs after `--kafka-create-topics` and before the verifier captures the topics'
//!   end offsets, so the verification never reads a probe record.
//! - The probe, during the run: one small record every [`PROBE_INTERVAL`] to the probe
//!   topic, on a connection of its own; send → ack latencies go into a histogram, the
//!   report's "Kafka produce (probe)" row (`latency.kafka_probe`): Kafka's own append
//!   latency on the same cluster at the same time, to tell whether slow PUBACKs waited for
//!   Kafka or for ferrymq.
//!
//! Only the process that prints the report runs them: the single process, or the parent of
//! `--procs` children (which then probes until the last child has verified).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::report::{latency_histogram, record_latency, KafkaProbeFigures, Latency};
use crate::scenario::KafkaVerify;
use crate::verify::{
    client_config, client_error, create_missing, create_missing_topics, partitions,
};

pub const PROBE_TOPIC_DEFAULT: &str = "ferrymq-loadgen-probe";
/// One probe record this often during the run.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// A round of the warm-up counts as fast when its slowest record was answered within this.
pub const WARM_ROUND_TRIP: Duration = Duration::from_millis(50);
/// Fast rounds in a row that end the warm-up.
pub const WARM_ROUNDS: usize = 3;
/// How long the end of the run waits for probes still on their way.
const FINISH_WAIT: Duration = Duration::from_secs(10);
/// Shorter than a payload header, so never taken for a device's message.
const PAYLOAD: &[u8] = b"ferrymq-loadgen probe";

/// What goes with each probe record to its delivery report.
struct Sent {
    at: Instant,
    /// The warm-up waits on its rounds; the run's probes go to the histogram.
    reply: Option<mpsc::Sender<Result<Duration, String>>>,
}

struct ProbeContext {
    latency: Mutex<Latency>,
    answered: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let took = sent.at.elapsed();
        let outcome = match result {
            Ok(_) => Ok(took),
            Err((error, _)) => Err(error.to_string()),
        };
        if let Some(reply) = sent.reply {
            let _ = reply.send(outcome);
            return;
        }
        match outcome {
            Ok(took) => {
                let mut latency = self.latency.lock().expect("probe histogram lock");
                record_latency(&mut latency, took.as_micros() as u64);
                self.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().expect("probe error lock") = Some(error);
            }
        }
    }
}

/// The probe producer: prepared (topics, warm-up) before the clock, started with it,
/// finished when the devices are done.
pub struct KafkaProbe {
    producer: Arc<ThreadedProducer<ProbeContext>>,
    figures: KafkaProbeFigures,
    running: Option<(Arc<AtomicBool>, JoinHandle<u64>)>,
}

impl KafkaProbe {
    /// Creates the missing topics (`--kafka-create-topics`, and the probe topic with one
    /// partition), then warms Kafka up (unless the bound is zero) and prints one line on
    /// how it went.
    pub fn prepare(verify: &KafkaVerify) -> Result<KafkaProbe, String> {
        let context = ProbeContext {
            latency: Mutex::new(latency_histogram()),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        let mut config = ClientConfig::new();
        config
            .set("client.id", "ferrymq-loadgen-probe")
            // Asking for a topic's metadata must not create it.
            .set("allow.auto.create.topics", "false")
            // As the broker's idempotent producer: answered once every replica has it.
            .set("acks", "all")
            // Each record goes out at once: the round trip is Kafka's, not a batch wait.
            .set("linger.ms", "0")
            // A Kafka that stalls shows as slow probes, not as failed ones.
            .set("message.timeout.ms", "0");
        let producer: ThreadedProducer<ProbeContext> = client_config(verify, config)
            .create_with_context(context)
            .map_err(|e| client_error(verify, "--verify-kafka: create the probe producer", e))?;
        let client = producer.client();
        if let Some(count) = verify.create_partitions {
            create_missing_topics(client, verify, count)?;
        }
        create_missing(
            client,
            verify,
            &[verify.probe_topic.as_str()],
            1,
            false,
            "--kafka-probe-topic",
        )?;
        let mut targets = Vec::new();
        for topic in &verify.topics {
            // Topics that do not exist yet are left alone: producing would create them.
            for partition in partitions(client, topic)?.unwrap_or_default() {
                targets.push((topic.clone(), partition));
            }
        }
        targets.push((verify.probe_topic.clone(), 0));
        let mut probe = KafkaProbe {
            producer: Arc::new(producer),
            figures: KafkaProbeFigures {
                topic: verify.probe_topic.clone(),
                interval_ms: PROBE_INTERVAL.as_millis() as u64,
                warmup: "off".into(),
                ..Default::default()
            },
            running: None,
        };
        if verify.warmup_timeout.is_zero() {
            println!("kafka warm-up: off (--kafka-warmup-timeout 0)");
        } else {
            probe.warm_up(&targets, verify.warmup_timeout);
        }
        Ok(probe)
    }

    /// Rounds of one record to each target until [`WARM_ROUNDS`] in a row are answered
    /// within [`WARM_ROUND_TRIP`], or `timeout` passes.
    fn warm_up(&mut self, targets: &[(String, i32)], timeout: Duration) {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut fast_in_a_row = 0;
        let mut round_trips: Vec<u64> = Vec::new();
        let mut last_error = None;
        let mut rounds = 0u64;
        let (warm, unanswered) = loop {
            rounds += 1;
            let round = self.round(targets, deadline);
            let answered = round.error.is_none() && !round.unanswered;
            round_trips.push(round.slowest.as_micros() as u64);
            if round_trips.len() > WARM_ROUNDS {
                round_trips.remove(0);
            }
            if round.error.is_some() {
                last_error = round.error;
            }
            if answered && round.slowest < WARM_ROUND_TRIP {
                fast_in_a_row += 1;
            } else {
                fast_in_a_row = 0;
            }
            if fast_in_a_row >= WARM_ROUNDS {
                break (true, false);
            }
            if Instant::now() >= deadline {
                break (false, round.unanswered);
            }
            if !answered {
                // Kafka refused (no leader yet, say): give it a moment.
                std::thread::sleep(
                    Duration::from_millis(100)
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let trips = round_trips
            .iter()
            .map(|&us| format!("{:.1}", us as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ");
        let what = format!(
            "{rounds} round{} of {} record{}",
            if rounds == 1 { "" } else { "s" },
            targets.len(),
            if targets.len() == 1 { "" } else { "s" }
        );
        if warm {
            println!(
                "kafka warm-up: warm after {secs:.2} s ({what}; {WARM_ROUNDS} in a row answered \
                 within {} ms); last round trips {trips} ms",
                WARM_ROUND_TRIP.as_millis()
            );
        } else {
            eprintln!(
                "ferrymq-loadgen: warning: Kafka still slow after the {} s warm-up \
                 (--kafka-warmup-timeout; {what}): last round trips {trips} ms{}{}; going on, \
                 expect slow acks",
                timeout.as_secs_f64(),
                if unanswered {
                    " (the last one still unanswered)"
                } else {
                    ""
                },
                last_error.map_or(String::new(), |e| format!("; last error: {e}"))
            );
        }
        self.figures.warmup = if warm { "warm" } else { "slow" }.into();
        self.figures.warmup_secs = secs;
        self.figures.warmup_rounds = rounds;
        self.figures.warmup_round_trips_us = round_trips;
    }

    /// One record to each target; waits for all answers (until `deadline`).
    fn round(&self, targets: &[(String, i32)], deadline: Instant) -> Round {
        let (reply, answers) = mpsc::channel();
        let sent_at = Instant::now();
        let mut round = Round {
            slowest: Duration::ZERO,
            unanswered: false,
            error: None,
        };
        let mut pending = 0;
        for (topic, partition) in targets {
            let sent = Box::new(Sent {
                at: Instant::now(),
                reply: Some(reply.clone()),
            });
            let record = BaseRecord::with_opaque_to(topic, sent)
                .partition(*partition)
                .payload(PAYLOAD);
            match self.producer.send::<(), _>(record) {
                Ok(()) => pending += 1,
                Err((error, _)) => round.error = Some(error.to_string()),
            }
        }
        drop(reply);
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match answers.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(Ok(took)) => round.slowest = round.slowest.max(took),
                Ok(Err(error)) => round.error = Some(error),
                Err(_) => {
                    // Past the deadline: what is still out counts as this slow, at least.
                    round.unanswered = true;
                    round.slowest = round.slowest.max(sent_at.elapsed());
                    break;
                }
            }
            pending -= 1;
        }
        round
    }

    /// Starts sending one record every [`PROBE_INTERVAL`] to the probe topic.
    pub fn start(&mut self) {
        let stop = Arc::new(AtomicBool::new(false));
        let producer = self.producer.clone();
        let topic = self.figures.topic.clone();
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || {
                let mut sent = 0u64;
                let mut next = Instant::now();
                while !stopped.load(Ordering::Relaxed) {
                    let record = BaseRecord::with_opaque_to(
                        &topic,
                        Box::new(Sent {
                            at: Instant::now(),
                            reply: None,
                        }),
                    )
                    .partition(0)
                    .payload(PAYLOAD);
                    if producer.send::<(), _>(record).is_ok() {
                        sent += 1;
                    }
                    next += PROBE_INTERVAL;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                sent
            });
        match spawned {
            Ok(thread) => self.running = Some((stop, thread)),
            Err(error) => eprintln!("ferrymq-loadgen: warning: no Kafka probe: {error}"),
        }
    }

    /// Stops sending, waits a little for the probes still out, and hands over the figures
    /// and the send → ack histogram.
    pub fn finish(mut self) -> (KafkaProbeFigures, Latency) {
        if let Some((stop, thread)) = self.running.take() {
            stop.store(true, Ordering::Relaxed);
            self.figures.sent = thread.join().unwrap_or(0);
        }
        let context = self.producer.context();
        let settled = |c: &ProbeContext| {
            c.answered.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed)
        };
        let deadline = Instant::now() + FINISH_WAIT;
        while settled(context) < self.figures.sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let figures = &mut self.figures;
        figures.failed = context.failed.load(Ordering::Relaxed);
        figures.unanswered = figures.sent.saturating_sub(settled(context));
        if figures.failed > 0 {
            if let Some(error) = context.last_error.lock().expect("probe error lock").take() {
                eprintln!(
                    "ferrymq-loadgen: {} Kafka probe(s) failed; last error: {error}",
                    figures.failed
                );
            }
        }
        let latency = context
            .latency
            .lock()
            .expect("probe histogram lock")
            .clone();
        (self.figures.clone(), latency)
    }
}

struct Round {
    /// The slowest answer of the round (at least the wait, when one is missing).
    slowest: Duration,
    unanswered: bool,
    error: Option<String>,
}
