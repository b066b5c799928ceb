//! One librdkafka producer per (shard, cluster), driven from the shard itself.
//!
//! The shard hands each lingered batch to librdkafka (`rd_kafka_producev`, which never
//! blocks: it appends to a partition queue and may wake the broker thread), and serves the
//! delivery reports on its own thread when librdkafka signals that its report queue is no
//! longer empty. Earlier a producer thread drained a ring of batches into librdkafka and
//! rdkafka's polling thread carried reports back: two more threads woken per batch. On the
//! project's 2-core VM every wake-up of a thread costs tens of microseconds of scheduling,
//! and at device rates (a few records per batch) those hops were most of what a Kafka
//! mapping cost per PUBLISH (see BENCHMARKS.md, "Broker CPU per PUBLISH at device rates").
//!
//! librdkafka's threads are started by whichever thread creates the producer and inherit its
//! CPU affinity: producers are created on the unpinned main thread, or, when one is replaced
//! after a fatal error, on a short-lived thread given the process's original CPU set, so
//! they never land pinned on a shard's core.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::queue::SegQueue;
use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientContext;

use crate::runtime::CrossThreadWake;

use super::ticket::Tag;

/// One Kafka record on its way, built on the shard.
#[derive(Debug)]
pub struct Record {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Bytes,
    pub headers: Vec<(&'static str, Bytes)>,
    /// Who waits for it, its mapping, whether it is a dead letter: back in its report.
    pub tag: Tag,
}

impl Record {
    /// Bytes this record adds to a batch, for `batching.max_bytes`.
    pub fn size_bytes(&self) -> usize {
        self.topic.len()
            + self.key.len()
            + self.payload.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

pub type Batch = Vec<Record>;

/// The outcome of one record with a ticket (or of any failed record, for the counters).
#[derive(Debug)]
pub struct Report {
    pub tag: Tag,
    pub result: Result<(), RDKafkaErrorCode>,
    /// The record, when Kafka refused it for good ([`is_refused_for_good`]: what a
    /// dead-letter record is made of), or when a producer being replaced by new settings
    /// purged it (to send it again through the new one). Copied only on those paths.
    pub refused: Option<Box<RefusedRecord>>,
}

/// A record as librdkafka gave it back in a failed delivery report.
#[derive(Debug)]
pub struct RefusedRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// Whether Kafka refused a record for good: sending it again would be refused again (too
/// large for the topic, an invalid or unknown topic, not authorized, against a policy, a
/// record the broker rejects). Transient errors (brokers down, a leader moving, timeouts)
/// are not: librdkafka retries those itself (`message.timeout.ms = 0`), and a record failed
/// by a producer's fatal error or purge may be sent again.
pub fn is_refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidArgument
    )
}

/// What happened to a record handed to [`KafkaProducer::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// librdkafka has it; its report comes later.
    Queued,
    /// librdkafka holds as many records as it may (`queue.buffering.max.messages` or
    /// `.max.kbytes`): keep the record and try again when reports have made room.
    QueueFull,
    /// Refused at once (too large, bad topic name...): its failure report is queued.
    Refused,
}

/// What the shard and whoever else serves a lane's producers share: the reports, and the
/// wake-up of the shard's report loop.
struct LaneShared {
    /// Unbounded as a queue, bounded by what librdkafka may hold: every report is of a
    /// record librdkafka accepted, and the shard drains them after each poll.
    reports: SegQueue<Report>,
    wake: CrossThreadWake,
}

thread_local! {
    /// Set while the shard itself polls: its reports need no wake-up, it drains them next.
    static SERVING_ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

struct DeliveryContext {
    shared: Arc<LaneShared>,
    /// Set when the producer is being replaced by new settings: the records it purges come
    /// back whole, to be sent again.
    handing_over: AtomicBool,
}

/// Whether a failed record is one a producer being replaced purged.
pub fn is_purged(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
    )
}

fn copy_back(message: &rdkafka::message::BorrowedMessage<'_>) -> Box<RefusedRecord> {
    Box::new(RefusedRecord {
        topic: message.topic().to_string(),
        key: message.key().unwrap_or_default().to_vec(),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.unwrap_or_default();
                        (h.key.to_string(), Bytes::copy_from_slice(value))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let tag = Tag::unpack(opaque);
        let (result, refused) = match result {
            Ok(_) => (Ok(()), None),
            Err((error, message)) => {
                let code = error_code(error);
                let handed_over = is_purged(code) && self.handing_over.load(Ordering::Acquire);
                let refused =
                    (is_refused_for_good(code) || handed_over).then(|| copy_back(message));
                (Err(code), refused)
            }
        };
        self.shared.reports.push(Report {
            tag,
            result,
            refused,
        });
        // A replaced producer is drained on a thread of its own: wake the shard for it.
        if !SERVING_ON_SHARD.with(Cell::get) {
            self.shared.wake.wake();
        }
    }
}

fn error_code(error: &KafkaError) -> RDKafkaErrorCode {
    error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)
}

/// Called by librdkafka's threads when the report queue of a producer goes from empty to
/// non-empty. It may call no librdkafka function; it only wakes the shard.
unsafe extern "C" fn reports_ready(_rk: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `LaneShared` of the producer's own context, which lives as
    // long as the producer (see `KafkaProducer::create`).
    let shared = unsafe { &*(opaque as *const LaneShared) };
    shared.wake.wake();
}

/// The librdkafka configuration of a cluster: our defaults, then the user's properties.
pub fn client_config(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // Records of one client and mapping reach their partition in publish order, once.
        .set("enable.idempotence", "true")
        // Kafka away: records wait in librdkafka (bounded by its queue, then held on the
        // shard) instead of failing after the default five minutes.
        .set("message.timeout.ms", "0")
        // We batch per shard already; a short linger keeps PUBACK latency low.
        .set("linger.ms", "1");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// The CPUs the process may use, as found before any shard pinned itself: producers made
/// later get them, so that librdkafka's threads are not pinned to a shard's core.
static PROCESS_CPUS: OnceLock<libc::cpu_set_t> = OnceLock::new();

fn remember_process_cpus() {
    PROCESS_CPUS.get_or_init(|| {
        // SAFETY: a zeroed cpu_set_t is valid, and sched_getaffinity fills at most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        set
    });
}

/// The producer of one (shard, cluster), served by the shard.
pub struct KafkaProducer {
    producer: BaseProducer<DeliveryContext>,
    /// librdkafka's report queue of `producer`, to know when it is drained.
    reports_queue: *mut rdsys::rd_kafka_queue_t,
    shared: Arc<LaneShared>,
    config: ClientConfig,
    name: String,
}

// SAFETY: `reports_queue` is a reference-counted librdkafka handle, usable from any thread;
// the producer moves once, from the thread that made it to its shard.
unsafe impl Send for KafkaProducer {}

/// How long a stopping or replaced producer may take to deliver what it holds.
const STOP_FLUSH: Duration = Duration::from_secs(5);
/// Report events served in one go before the shard lets its other tasks run.
const EVENTS_PER_SERVE: usize = 256;

impl KafkaProducer {
    /// Makes the producer of one (shard, cluster), on the calling (unpinned) thread. Fails
    /// if librdkafka refuses the configuration, with its message.
    pub fn create(
        name: String,
        config: ClientConfig,
        wake: CrossThreadWake,
    ) -> Result<KafkaProducer, String> {
        remember_process_cpus();
        let shared = Arc::new(LaneShared {
            reports: SegQueue::new(),
            wake,
        });
        Self::with_shared(name, config, shared)
    }

    fn with_shared(
        name: String,
        config: ClientConfig,
        shared: Arc<LaneShared>,
    ) -> Result<KafkaProducer, String> {
        let context = DeliveryContext {
            shared: shared.clone(),
            handing_over: AtomicBool::new(false),
        };
        let producer: BaseProducer<DeliveryContext> = config
            .create_with_context(context)
            .map_err(|e| e.to_string())?;
        // SAFETY: a valid client; the handle is destroyed in `Drop`. The callback's opaque
        // is the context's `LaneShared`, which the client keeps alive as long as it can
        // call the callback.
        let reports_queue = unsafe {
            let queue = rdsys::rd_kafka_queue_get_main(producer.client().native_ptr());
            let opaque = Arc::as_ptr(&producer.context().shared) as *mut c_void;
            rdsys::rd_kafka_queue_cb_event_enable(queue, Some(reports_ready), opaque);
            queue
        };
        // The callback fires only when the queue turns non-empty: an event queued before it
        // was set (an error about unreachable brokers, made at once) would leave the queue
        // non-empty and every later report unannounced. Serve once to start from empty.
        shared.wake.wake();
        Ok(KafkaProducer {
            producer,
            reports_queue,
            shared,
            config,
            name,
        })
    }

    /// Hands one record to librdkafka. Never blocks.
    pub fn send(&self, record: &Record) -> Sent {
        let opaque = record.tag.pack();
        let mut base =
            BaseRecord::with_opaque_to(&record.topic, opaque).payload(record.payload.as_ref());
        if !record.key.is_empty() {
            base = base.key(&record.key[..]);
        }
        if !record.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_ref()),
                });
            }
            base = base.headers(headers);
        }
        match self.producer.send(base) {
            Ok(()) => Sent::Queued,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Sent::QueueFull,
            Err((error, _)) => {
                let code = error_code(&error);
                let refused = is_refused_for_good(code).then(|| {
                    Box::new(RefusedRecord {
                        topic: record.topic.clone(),
                        key: record.key.clone(),
                        payload: record.payload.clone(),
                        headers: (record.headers.iter())
                            .map(|(name, value)| (name.to_string(), value.clone()))
                            .collect(),
                    })
                });
                self.shared.reports.push(Report {
                    tag: record.tag,
                    result: Err(code),
                    refused,
                });
                self.shared.wake.wake();
                Sent::Refused
            }
        }
    }

    /// Serves librdkafka's delivery reports into [`KafkaProducer::pop_report`]. Returns
    /// `false` if events are left (more than [`EVENTS_PER_SERVE`]); the shard has then been
    /// woken again, to come back after its other tasks.
    pub fn serve_reports(&self) -> bool {
        SERVING_ON_SHARD.with(|s| s.set(true));
        let mut served = 0;
        // SAFETY: the queue handle lives as long as `self`.
        while unsafe { rdsys::rd_kafka_queue_length(self.reports_queue) } > 0 {
            if served == EVENTS_PER_SERVE {
                SERVING_ON_SHARD.with(|s| s.set(false));
                // librdkafka wakes only when its queue turns non-empty: wake ourselves.
                self.shared.wake.wake();
                return false;
            }
            self.producer.poll(Duration::ZERO);
            served += 1;
        }
        SERVING_ON_SHARD.with(|s| s.set(false));
        true
    }

    pub fn pop_report(&self) -> Option<Report> {
        self.shared.reports.pop()
    }

    /// Records librdkafka holds (queued or in flight).
    pub fn in_flight(&self) -> i64 {
        i64::from(self.producer.in_flight_count())
    }

    /// A fatal error (the idempotent producer lost track of its sequence, say) makes a
    /// librdkafka producer unusable for good: every later record fails.
    pub fn has_fatal_error(&self) -> bool {
        self.producer.client().fatal_error().is_some()
    }

    /// Replaces a producer that had a fatal error. The old one is drained on a thread of
    /// its own: what it held is reported (failures, so the devices publish again) into the
    /// same reports, waking the shard. The new one is made on a thread with the process's
    /// CPUs (see the module's note). Blocks the shard for the making of a producer (about
    /// a millisecond), which happens only after a fatal error.
    pub fn replace(&mut self) -> Result<(), String> {
        let config = self.config.clone();
        self.replace_with(config, false)
    }

    /// Replaces this producer by one with `config` (new settings from SIGHUP). What the old
    /// one holds is purged and comes back in reports with the records whole
    /// ([`is_purged`]), for the shard to send again through the new one: nothing waits on
    /// a producer whose settings were wrong (bad credentials, an untrusted CA).
    pub fn reconfigure(&mut self, config: ClientConfig) -> Result<(), String> {
        self.replace_with(config, true)
    }

    fn replace_with(&mut self, config: ClientConfig, hand_over: bool) -> Result<(), String> {
        let name = self.name.clone();
        let shared = self.shared.clone();
        let made = thread::Builder::new()
            .name(format!("{name}-new"))
            .spawn(move || {
                if let Some(cpus) = PROCESS_CPUS.get() {
                    // SAFETY: a valid set, for this thread only.
                    unsafe {
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cpus)
                    };
                }
                KafkaProducer::with_shared(name, config, shared)
            })
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "making a new producer panicked".to_string())??;
        let old = std::mem::replace(self, made);
        let _ = thread::Builder::new()
            .name(format!("{}-old", self.name))
            .spawn(move || {
                if hand_over {
                    old.hand_over();
                } else {
                    old.close(STOP_FLUSH);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Purges everything this producer holds, reporting each record whole, then drops it.
    fn hand_over(self) {
        self.producer
            .context()
            .handing_over
            .store(true, Ordering::Release);
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        // The purge reports come through the report queue; serve them here (this producer
        // is no longer the shard's), each waking the shard.
        let _ = self.producer.flush(STOP_FLUSH);
    }

    /// Delivers what the producer holds, for at most `timeout`, then drops it (what is
    /// still held then is reported failed).
    pub fn close(self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        // SAFETY: our handle, destroyed once; the callback is removed first so that nothing
        // calls it once the shard stops listening.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.reports_queue, None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.reports_queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::producer::BaseProducer;

    use super::client_config;

    /// Whether librdkafka takes `properties` (it checks them when a client is made; nothing
    /// connects here): what it lacks at build time ("OpenSSL not available at build time",
    /// "libzstd not available at build time", "... not supported by this build") fails.
    fn accepted(properties: &[(&str, &str)]) -> Result<(), String> {
        let properties: BTreeMap<String, String> = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        client_config("127.0.0.1:9", &properties)
            .create::<BaseProducer>()
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn librdkafka_is_built_with_tls_every_sasl_mechanism_and_every_codec() {
        for protocol in ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] {
            accepted(&[
                ("security.protocol", protocol),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ])
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        }
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
            accepted(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ])
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        }
        // Kerberos through Cyrus SASL: librdkafka renders its kinit command from the keytab
        // and principal when the client is made (and would run it later; not here).
        accepted(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "GSSAPI"),
            ("sasl.kerberos.service.name", "kafka"),
            ("sasl.kerberos.principal", "ferrymq"),
            ("sasl.kerberos.keytab", "/etc/ferrymq/ferrymq.keytab"),
            ("sasl.kerberos.min.time.before.relogin", "0"),
        ])
        .unwrap();
        // librdkafka's OIDC client-credentials flow needs libcurl.
        accepted(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "OAUTHBEARER"),
            ("sasl.oauthbearer.method", "oidc"),
            ("sasl.oauthbearer.client.id", "ferrymq"),
            ("sasl.oauthbearer.client.secret", "s"),
            (
                "sasl.oauthbearer.token.endpoint.url",
                "https://127.0.0.1:9/token",
            ),
        ])
        .unwrap();
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            accepted(&[("compression.type", codec)]).unwrap_or_else(|e| panic!("{codec}: {e}"));
        }
        // And a refused value still says why.
        let error = accepted(&[("compression.type", "brotli")]).unwrap_err();
        assert!(error.contains("compression.type"), "{error}");
    }
}
