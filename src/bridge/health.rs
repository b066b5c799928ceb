//! Whether each Kafka cluster answers: one small thread per cluster asks for metadata every
//! few seconds. `/readyz` and `ferrymq_kafka_up` report it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer};

use super::producer::client_config;

/// Time between two metadata requests.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a metadata request may take before the cluster counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts the probe of one cluster; the flag starts false until the first answer.
pub fn spawn_probe(
    name: &str,
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
) -> Result<Arc<AtomicBool>, String> {
    let up = Arc::new(AtomicBool::new(false));
    let producer: BaseProducer = client_config(bootstrap, properties)
        .create()
        .map_err(|e| e.to_string())?;
    let flag = up.clone();
    thread::Builder::new()
        .name(format!("kafka-probe-{name}"))
        .spawn(move || loop {
            let answered = producer
                .client()
                .fetch_metadata(None, PROBE_TIMEOUT)
                .is_ok();
            flag.store(answered, Ordering::Relaxed);
            thread::sleep(PROBE_INTERVAL);
        })
        .map_err(|e| e.to_string())?;
    Ok(up)
}
