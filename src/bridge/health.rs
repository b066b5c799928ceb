//! Whether each Kafka cluster answers: one small thread per cluster asks for metadata every
//! few seconds, with the cluster's settings in force (SIGHUP may replace them). `/readyz`
//! and `ferrymq_kafka_up` report it; while a cluster does not answer, a log line at most
//! every [`LOG_EVERY`] gives librdkafka's last reason (wrong credentials, an untrusted
//! certificate, a broker that does not speak TLS, nobody listening...).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::{info, warn};

use super::settings::ClusterSettings;

/// Time between two metadata requests.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a metadata request may take before the cluster counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most often a cluster that does not answer is logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Keeps librdkafka's errors of the probe's client since the last look (the distinct ones,
/// a few): the reasons a cluster is not ready. The specific one (an authentication failure,
/// a certificate not trusted) comes first; "all brokers down" follows it.
#[derive(Default)]
struct ProbeContext {
    errors: Mutex<Vec<String>>,
}

/// Events served after each probe, at most.
const EVENTS_PER_PROBE: usize = 32;
/// Distinct errors kept between two log lines.
const ERRORS_KEPT: usize = 3;

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let text = format!("{error} ({reason})");
        let mut errors = self.errors.lock().expect("probe errors");
        if errors.len() < ERRORS_KEPT && !errors.contains(&text) {
            errors.push(text);
        }
    }
}

impl ProbeContext {
    fn take_reason(&self) -> Option<String> {
        let mut errors = self.errors.lock().expect("probe errors");
        (!errors.is_empty()).then(|| std::mem::take(&mut *errors).join("; "))
    }
}

/// How long a cluster that does not answer may stay unexplained before it is logged anyway.
const REASON_WAIT: Duration = Duration::from_secs(6);

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

fn probe_client(
    settings: &ClusterSettings,
    index: usize,
) -> Result<BaseProducer<ProbeContext>, String> {
    settings
        .producer_config(index)
        .create_with_context(ProbeContext::default())
        .map_err(|e| e.to_string())
}

/// Starts the probe of cluster `index` (named `name`); the flag starts false until the
/// first answer.
pub fn spawn_probe(
    name: &str,
    index: usize,
    settings: Arc<ClusterSettings>,
) -> Result<Arc<AtomicBool>, String> {
    let up = Arc::new(AtomicBool::new(false));
    let mut producer = probe_client(&settings, index)?;
    let mut generation = settings.generation();
    let flag = up.clone();
    let name = name.to_string();
    thread::Builder::new()
        .name(format!("kafka-probe-{name}"))
        .spawn(move || {
            let started = Instant::now();
            let mut logged: Option<Instant> = None;
            loop {
                if settings.generation() != generation {
                    generation = settings.generation();
                    match probe_client(&settings, index) {
                        Ok(new) => producer = new,
                        Err(error) => {
                            let error = settings.scrub(&error);
                            warn!(cluster = %name, %error, "kafka.clusters.{name}: probe not remade: {error}")
                        }
                    }
                }
                let answered = producer
                    .client()
                    .fetch_metadata(None, PROBE_TIMEOUT)
                    .is_ok();
                // Serves librdkafka's error events (one per call, none waiting: at once) into
                // the context's errors.
                for _ in 0..EVENTS_PER_PROBE {
                    producer.poll(Duration::ZERO);
                }
                let was_up = flag.swap(answered, Ordering::Relaxed);
                if answered {
                    producer.context().take_reason();
                    if !was_up && logged.is_some() {
                        info!(cluster = %name, "kafka cluster {name} answers again");
                        logged = None;
                    }
                } else if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    let reason = match producer.context().take_reason() {
                        Some(reason) => reason,
                        None if started.elapsed() < REASON_WAIT => {
                            thread::sleep(PROBE_INTERVAL);
                            continue;
                        }
                        None => "no answer to a metadata request".to_string(),
                    };
                    let reason = settings.scrub(&reason);
                    warn!(cluster = %name, %reason, "kafka cluster {name} not ready: {reason}");
                    logged = Some(Instant::now());
                }
                thread::sleep(PROBE_INTERVAL);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(up)
}
