//! Round trip through a real Apache Kafka broker.
//!
//! This test is the proof that the Kafka the other tests talk to is a real,
//! reachable broker and that our librdkafka build (via the `rdkafka` crate)
//! works against it: it produces one record with a unique key, payload and
//! header to a unique, auto-created topic, flushes, consumes partition 0 from
//! the beginning and checks that all three come back unchanged.
//!
//! It needs Kafka on `127.0.0.1:9092` (or `$FERRYMQ_KAFKA_BOOTSTRAP`). Start
//! one with `scripts/kafka start`. When Kafka is not reachable the test
//! FAILS on purpose instead of skipping, so a missing broker can never turn
//! the Kafka tests into silent passes.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const DEADLINE: Duration = Duration::from_secs(30);

fn bootstrap() -> String {
    std::env::var("FERRYMQ_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Fails the test (with the fix in the message) unless some bootstrap server
/// accepts a TCP connection.
fn require_kafka(bootstrap: &str) {
    let reachable = bootstrap.split(',').any(|server| {
        server
            .trim()
            .to_socket_addrs()
            .map(|mut addrs| {
                addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok())
            })
            .unwrap_or(false)
    });
    assert!(
        reachable,
        "Kafka is not reachable at {bootstrap}. Run `scripts/kafka start` \
         (or point FERRYMQ_KAFKA_BOOTSTRAP at a running broker)."
    );
}

/// Records the outcome of the delivery report, so a failed produce is
/// reported as such rather than as a missing record on the consumer side.
#[derive(Default)]
struct Delivery(Mutex<Option<Result<(i32, i64), String>>>);

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        *self.0.lock().unwrap() = Some(outcome);
    }
}

#[test]
fn produce_then_consume_roundtrip() {
    let bootstrap = bootstrap();
    require_kafka(&bootstrap);

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let unique = format!("{}-{nanos}", std::process::id());
    let topic = format!("ferrymq-roundtrip-{unique}");
    let key = format!("key-{unique}");
    let payload = format!("payload-{unique}");
    let header_value = format!("header-{unique}");

    let producer: BaseProducer<Delivery> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "30000")
        .create_with_context(Delivery::default())
        .expect("create producer");

    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            panic!(
                "Kafka at {bootstrap} accepts connections but did not answer a metadata \
                 request: {e}. Run `scripts/kafka status` / `scripts/kafka start`."
            )
        });
    assert!(
        !metadata.brokers().is_empty(),
        "metadata from {bootstrap} lists no brokers"
    );

    producer
        .send(
            BaseRecord::to(&topic)
                .partition(0)
                .key(&key)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "ferrymq-test",
                    value: Some(&header_value),
                })),
        )
        .map_err(|(e, _)| e)
        .expect("enqueue record");
    producer.flush(DEADLINE).expect("flush producer");
    let (partition, offset) = producer
        .context()
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("no delivery report after flush")
        .unwrap_or_else(|e| panic!("delivery to {topic} failed: {e}"));
    assert_eq!(partition, 0);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("ferrymq-roundtrip-{unique}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).expect("assign partition 0");

    let start = Instant::now();
    loop {
        let left = DEADLINE
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("no record on {topic} within {DEADLINE:?}"));
        match consumer.poll(left.min(Duration::from_millis(500))) {
            None => continue,
            Some(Err(e)) => panic!("consume from {topic} failed: {e}"),
            Some(Ok(msg)) => {
                assert_eq!(msg.offset(), offset, "unexpected record on a fresh topic");
                assert_eq!(msg.key(), Some(key.as_bytes()));
                assert_eq!(msg.payload(), Some(payload.as_bytes()));
                let headers = msg.headers().expect("record has no headers");
                let header = headers
                    .iter()
                    .find(|h| h.key == "ferrymq-test")
                    .expect("header ferrymq-test missing");
                assert_eq!(header.value, Some(header_value.as_bytes()));
                return;
            }
        }
    }
}
