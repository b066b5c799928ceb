//! `ferrymq-bench-bridge`: the "home-made bridge" that ferrymq's benchmarks compare against.
//!
//! Many teams that need MQTT device data in Kafka run a stock MQTT broker (here Mosquitto)
//! plus a small process like this one: it subscribes to a topic filter (default `#`) and
//! produces every message it receives to one Kafka topic, with key = the MQTT topic and
//! value = the MQTT payload, unchanged. It is written the way such bridges usually are —
//! rumqttc with its automatic acknowledgements, librdkafka with its defaults — neither
//! tuned nor made deliberately worse, so that benchmarks measure the architecture rather
//! than a straw man.
//!
//! Known weaknesses (the point of the comparison; none of them is fixed here):
//!
//! - **It acknowledges before Kafka has the message.** rumqttc sends the PUBACK (QoS 1) or
//!   PUBREC (QoS 2) as soon as it has read the PUBLISH, even before handing it to this code;
//!   from then on Mosquitto considers the message delivered and forgets it. Whatever
//!   happens next — the process is killed, librdkafka's queue is full (the message is
//!   logged and dropped), Kafka is unreachable for longer than `message.timeout.ms`
//!   (librdkafka default 300 s) — the message is lost and no device learns about it.
//! - **Its only buffer is in memory.** Messages waiting for Kafka sit in librdkafka's
//!   producer queue (defaults: 100,000 messages or 1 GiB); nothing is written to disk. On
//!   SIGTERM/SIGINT it flushes for at most 5 s; what is still queued then is lost (the
//!   final JSON line reports it as `undelivered_at_exit`). A crash or SIGKILL loses all
//!   of it.
//! - **Clean session, one connection.** Messages published while the bridge is
//!   disconnected are not kept for it by Mosquitto; all traffic goes through one MQTT
//!   connection and one subscriber, which also caps throughput.
//! - **Possible duplicates.** librdkafka's defaults (`enable.idempotence=false`, retries
//!   on) may write a message twice after a transient broker error.
//! - **Packet size.** rumqttc's default incoming limit of 10 KiB is raised to 1 MiB (the
//!   same as ferrymq's default `packet_size_bytes_max`); a bigger message makes rumqttc
//!   drop the connection, and with it whatever Mosquitto had in flight for the bridge.
//!
//! Counters: `received` (PUBLISH packets read from MQTT), `delivered` (confirmed by Kafka's
//! delivery report), `dropped_queue_full` (librdkafka refused to enqueue: logged and
//! dropped), `delivery_failed` (enqueued but the delivery report was an error, e.g. message
//! timed out). They are printed to stderr every `--stats-interval-secs` and as one JSON
//! line on stdout at exit.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode,
};

// The loadgen's `--kafka-config` parser, shared source (it needs only std and rdkafka).
#[path = "../../loadgen/src/kafka_config.rs"]
mod kafka_config;

use kafka_config::KafkaConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the producer may take to deliver what it holds after SIGTERM/SIGINT.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between MQTT reconnection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// MQTT keep alive.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet accepted from the broker (rumqttc's default is 10 KiB).
const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// A typical home-made MQTT → Kafka bridge, the baseline for ferrymq's benchmarks: it
/// subscribes to FILTER on an MQTT broker (e.g. Mosquitto) and produces every message it
/// receives to one Kafka topic, key = MQTT topic, value = MQTT payload unchanged.
///
/// QoS 1/2 messages are acknowledged to the broker as soon as they are received, before
/// Kafka has them, and are buffered in memory only: a message is lost if the process dies,
/// if librdkafka's queue is full (it is logged and dropped), or if Kafka does not take it
/// within librdkafka's message.timeout.ms (default 300 s).
///
/// Every --stats-interval-secs it prints the counters to stderr. On SIGTERM or SIGINT it
/// disconnects from MQTT, flushes the producer for at most 5 s, prints the final counters
/// as one JSON line on stdout (received, delivered, dropped_queue_full, delivery_failed,
/// undelivered_at_exit) and exits 0. Exit status 2: bad flags or -X/--kafka-config
/// properties.
#[derive(Parser, Debug)]
#[command(name = "ferrymq-bench-bridge", version)]
struct Args {
    /// MQTT broker to subscribe to, HOST:PORT (plain TCP, MQTT 3.1.1, no credentials).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883", value_parser = parse_host_port)]
    mqtt: (String, u16),
    /// MQTT topic filter to subscribe to.
    #[arg(long, default_value = "#")]
    filter: String,
    /// QoS of the subscription (0, 1 or 2). QoS 1 and 2 messages are acknowledged on
    /// receipt, not once Kafka has them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// MQTT client id (clean session: the broker keeps nothing for it while disconnected).
    #[arg(long, default_value = "ferrymq-bench-bridge")]
    client_id: String,
    /// Kafka bootstrap servers (librdkafka's bootstrap.servers).
    #[arg(long, value_name = "SERVERS", default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Kafka topic every message is produced to.
    #[arg(long)]
    topic: String,
    /// librdkafka producer property (repeatable), e.g. -X linger.ms=20, or for a secured
    /// Kafka security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512, sasl.username=NAME,
    /// sasl.password=${env:KAFKA_PASSWORD}, ssl.ca.location=ca.pem,
    /// ssl.certificate.location=client.pem, ssl.key.location=client.key,
    /// compression.type=zstd. Applied after bootstrap.servers; not bootstrap.servers itself
    /// (that is --kafka); everything not set keeps librdkafka's default. A value written
    /// ${env:NAME} is that environment variable, ${file:PATH} that file's content without its
    /// final newline. Checked by librdkafka at start (exit 2 if refused); values of keys
    /// holding password, secret or token, and values read from ${env:}/${file:}, are never
    /// printed.
    #[arg(short = 'X', long = "kafka-config", value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
    /// Seconds between two counter lines on stderr; 0 turns them off.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    stats_interval_secs: u64,
}

fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {text:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("expected HOST:PORT, got {text:?}"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|e| format!("bad port in {text:?}: {e}"))?;
    Ok((host.to_string(), port))
}

/// The bridge's counters, shared by the MQTT task, the producer's delivery callback (on
/// librdkafka's polling thread) and the stats task.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    dropped_queue_full: AtomicU64,
    delivery_failed: AtomicU64,
}

/// At most one stderr line per second for a recurring error, with how many occurred since
/// the previous line.
struct RateLimitedLog {
    what: &'static str,
    state: Mutex<LogState>,
}

struct LogState {
    last_line: Option<Instant>,
    since_last_line: u64,
}

impl RateLimitedLog {
    fn new(what: &'static str) -> RateLimitedLog {
        RateLimitedLog {
            what,
            state: Mutex::new(LogState {
                last_line: None,
                since_last_line: 0,
            }),
        }
    }

    fn note(&self, detail: impl Display) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.since_last_line += 1;
        let due = state
            .last_line
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            eprintln!(
                "bench-bridge: {}: {} since last report, latest: {detail}",
                self.what, state.since_last_line
            );
            state.last_line = Some(Instant::now());
            state.since_last_line = 0;
        }
    }
}

/// Producer context: counts delivery reports and logs failures and client errors.
struct BridgeContext {
    counters: Arc<Counters>,
    delivery_errors: RateLimitedLog,
    client_errors: RateLimitedLog,
}

impl ClientContext for BridgeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.client_errors.note(format_args!("{error}: {reason}"));
    }
}

impl ProducerContext for BridgeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.counters
                    .delivery_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.delivery_errors.note(error);
            }
        }
    }
}

// Producer choice: a `ThreadedProducer` (a `BaseProducer` polled by its own thread), the
// pattern rust-rdkafka's docs show for fire-and-forget producing. `send` never blocks the
// MQTT task: it only enqueues, and a full queue comes back at once as `QueueFull`, which is
// what a typical bridge logs and drops. Delivery reports arrive on the polling thread and
// only bump counters. A `FutureProducer` awaited per message would serialize the bridge
// on Kafka round trips (deliberately slow), and one spawning a task per delivery future
// would just be this with more allocation.
type KafkaProducer = ThreadedProducer<BridgeContext>;

fn create_producer(
    args: &Args,
    kafka_config: &KafkaConfig,
    counters: Arc<Counters>,
) -> Result<KafkaProducer, KafkaError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.kafka);
    kafka_config.apply(&mut config);
    config.create_with_context(BridgeContext {
        counters,
        delivery_errors: RateLimitedLog::new("kafka delivery failed"),
        client_errors: RateLimitedLog::new("kafka client error"),
    })
}

/// The MQTT side: one connection, re-subscribing after every (re)connect because the
/// session is clean.
struct Mqtt {
    client: AsyncClient,
    eventloop: EventLoop,
    filter: String,
    qos: QoS,
}

impl Mqtt {
    fn new(args: &Args) -> Mqtt {
        let (host, port) = args.mqtt.clone();
        let mut options = MqttOptions::new(args.client_id.clone(), host, port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        // manual_acks stays false (rumqttc's default): acks go out as packets are read.
        let (client, eventloop) = AsyncClient::new(options, 10);
        let qos = match args.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        Mqtt {
            client,
            eventloop,
            filter: args.filter.clone(),
            qos,
        }
    }

    /// Handles one event: produces PUBLISHes, subscribes after CONNACK, logs SUBACK.
    fn handle(&self, event: Event, bridge: &Bridge) {
        match event {
            Event::Incoming(Packet::Publish(publish)) => {
                bridge.forward(&publish.topic, &publish.payload)
            }
            Event::Incoming(Packet::ConnAck(ack)) => {
                eprintln!(
                    "bench-bridge: connected to MQTT (session present: {}), subscribing to {:?} with {:?}",
                    ack.session_present, self.filter, self.qos
                );
                // try_: the request channel only ever holds this one request.
                if let Err(error) = self.client.try_subscribe(self.filter.clone(), self.qos) {
                    eprintln!("bench-bridge: subscribe request failed: {error}");
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    eprintln!(
                        "bench-bridge: subscription to {:?} refused by the broker",
                        self.filter
                    );
                } else {
                    eprintln!(
                        "bench-bridge: subscribed to {:?}: {:?}",
                        self.filter, ack.return_codes
                    );
                }
            }
            _ => {}
        }
    }
}

/// The Kafka side.
struct Bridge {
    producer: KafkaProducer,
    topic: String,
    counters: Arc<Counters>,
    enqueue_errors: RateLimitedLog,
}

impl Bridge {
    fn forward(&self, mqtt_topic: &str, payload: &[u8]) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let record = BaseRecord::to(&self.topic).key(mqtt_topic).payload(payload);
        if let Err((error, _)) = self.producer.send(record) {
            // QueueFull above all; any other enqueue error is handled the same way.
            self.counters
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            if error == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                self.enqueue_errors
                    .note("librdkafka queue full, message dropped");
            } else {
                self.enqueue_errors
                    .note(format_args!("{error}, message dropped"));
            }
        }
    }

    fn stats_line(&self) -> String {
        let c = &self.counters;
        format!(
            "bench-bridge: received={} delivered={} dropped_queue_full={} delivery_failed={} in_flight={}",
            c.received.load(Ordering::Relaxed),
            c.delivered.load(Ordering::Relaxed),
            c.dropped_queue_full.load(Ordering::Relaxed),
            c.delivery_failed.load(Ordering::Relaxed),
            self.producer.in_flight_count(),
        )
    }

    fn final_json(&self, undelivered_at_exit: i32) -> String {
        let c = &self.counters;
        format!(
            "{{\"received\":{},\"delivered\":{},\"dropped_queue_full\":{},\"delivery_failed\":{},\"undelivered_at_exit\":{}}}",
            c.received.load(Ordering::Relaxed),
            c.delivered.load(Ordering::Relaxed),
            c.dropped_queue_full.load(Ordering::Relaxed),
            c.delivery_failed.load(Ordering::Relaxed),
            undelivered_at_exit,
        )
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let kafka_config = match KafkaConfig::parse(&args.kafka_config, "--kafka")
        .and_then(|config| config.check().map(|()| config))
    {
        Ok(config) => config,
        Err(message) => {
            eprintln!("bench-bridge: {message}");
            std::process::exit(2);
        }
    };
    let counters = Arc::new(Counters::default());
    let producer = match create_producer(&args, &kafka_config, Arc::clone(&counters)) {
        Ok(producer) => producer,
        Err(error) => {
            eprintln!(
                "bench-bridge: cannot create the Kafka producer: {}",
                kafka_config.redact(&error.to_string())
            );
            std::process::exit(2);
        }
    };
    let bridge = Arc::new(Bridge {
        producer,
        topic: args.topic.clone(),
        counters,
        enqueue_errors: RateLimitedLog::new("kafka enqueue failed"),
    });
    let mut mqtt = Mqtt::new(&args);
    eprintln!(
        "bench-bridge: MQTT {}:{} filter {:?} → Kafka {} topic {:?}{}",
        args.mqtt.0,
        args.mqtt.1,
        args.filter,
        args.kafka,
        args.topic,
        if kafka_config.is_empty() {
            String::new()
        } else {
            format!(" ({})", kafka_config.describe())
        }
    );

    // The stats line runs on its own task so that the MQTT loop below is only ever
    // interrupted by the shutdown signal.
    if args.stats_interval_secs > 0 {
        let bridge = Arc::clone(&bridge);
        let period = Duration::from_secs(args.stats_interval_secs);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                ticker.tick().await;
                eprintln!("{}", bridge.stats_line());
            }
        });
    }

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = mqtt.eventloop.poll() => match event {
                Ok(event) => mqtt.handle(event, &bridge),
                Err(error) => {
                    // The next poll reconnects.
                    eprintln!("bench-bridge: MQTT connection error: {error}; reconnecting in 1 s");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    }
                }
            },
        }
    }

    eprintln!("bench-bridge: stopping: disconnecting from MQTT, flushing Kafka (at most 5 s)");
    // A clean DISCONNECT, bounded: messages read meanwhile are still forwarded.
    if mqtt.client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match mqtt.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(event) => mqtt.handle(event, &bridge),
                }
            }
        })
        .await;
    }
    let flushed = tokio::task::block_in_place(|| bridge.producer.flush(FLUSH_TIMEOUT));
    if let Err(error) = flushed {
        eprintln!("bench-bridge: flush incomplete: {error}");
    }
    let undelivered = bridge.producer.in_flight_count();
    eprintln!("{}", bridge.stats_line());
    println!("{}", bridge.final_json(undelivered));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn kafka_config_flags_accumulate_under_both_spellings() {
        let args = Args::try_parse_from([
            "ferrymq-bench-bridge",
            "--topic",
            "t",
            "-X",
            "linger.ms=20",
            "--kafka-config",
            "security.protocol=SSL",
            "--kafka-config=compression.type=zstd",
        ])
        .unwrap();
        let config = KafkaConfig::parse(&args.kafka_config, "--kafka").unwrap();
        assert_eq!(config.check(), Ok(()));
        let mut client = ClientConfig::new();
        config.apply(&mut client);
        assert_eq!(client.get("linger.ms"), Some("20"));
        assert_eq!(client.get("security.protocol"), Some("SSL"));
        assert_eq!(client.get("compression.type"), Some("zstd"));
        let error = KafkaConfig::parse(&["bootstrap.servers=h:1".into()], "--kafka").unwrap_err();
        assert!(error.ends_with("the brokers are set by --kafka"), "{error}");
    }
}
