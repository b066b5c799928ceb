//! Where did every message go? Two checks against what the devices sent and had
//! acknowledged:
//!
//! - the Kafka consumer: an rdkafka consumer on its own thread reads the mapped topics
//!   from the end offsets captured before the first device connects, and goes on after
//!   the run until every acknowledged message is found or `--verify-timeout` passes;
//! - the subscriptions: what this process's subscribing devices received.
//!
//! Both keep, per publishing device, the set of sequence numbers seen ([`SeqSet`]); a
//! device's acknowledged set is recomputed from its record (sent, which sequence numbers
//! went at QoS 0, which were left unacknowledged), so devices keep no list of what they
//! sent.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferrymq::protocol::QoS;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};

use crate::report::{
    latency_histogram, record_latency, DeviceIssue, KafkaFigures, Latency, SubscriberFigures,
    DEVICE_ISSUES_LISTED_MAX,
};
use crate::scenario::{now_us, KafkaVerify, PayloadHeader, QosMix, Scenario};

/// Sequence numbers beyond this are not ours (a corrupt or foreign payload), so a bitmap
/// is never grown for them.
const SEQ_MAX: u64 = 1 << 28;

/// Sequence numbers of one device seen by one receiver, as a bitmap, with the counts of
/// firsts, repeats and late arrivals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqSet {
    bits: Vec<u64>,
    /// One past the highest sequence number seen.
    high: u32,
    /// Distinct sequence numbers seen.
    pub received: u32,
    pub duplicated: u32,
    /// First arrivals after a higher sequence number of the same device.
    pub out_of_order: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    FirstOutOfOrder,
    Duplicate,
    Invalid,
}

impl SeqSet {
    pub fn record(&mut self, seq: u64) -> Seen {
        if seq >= SEQ_MAX {
            return Seen::Invalid;
        }
        let seq = seq as u32;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return Seen::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        self.received += 1;
        if seq < self.high {
            self.out_of_order += 1;
            return Seen::FirstOutOfOrder;
        }
        self.high = seq + 1;
        Seen::First
    }

    /// One past the highest sequence number seen.
    pub fn high(&self) -> u32 {
        self.high
    }

    pub fn contains(&self, seq: u32) -> bool {
        self.bits
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }
}

/// What one publishing device did, as the engine reports it when the device is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub number: u64,
    /// Sequence numbers 0..sent went out.
    pub sent: u32,
    pub sent_qos0: u32,
    pub acked: u32,
    /// QoS 1/2 sequence numbers not acknowledged.
    pub unacked: Vec<u32>,
}

impl DeviceRecord {
    pub fn was_acked(&self, seq: u32, mix: &QosMix) -> bool {
        seq < self.sent
            && mix.qos_of(self.number, seq) != QoS::AtMostOnce
            && !self.unacked.contains(&seq)
    }

    /// Acknowledged sequence numbers missing from `seen`.
    pub fn lost_in(&self, seen: Option<&SeqSet>, mix: &QosMix) -> u64 {
        (0..self.sent)
            .filter(|&seq| self.was_acked(seq, mix) && !seen.is_some_and(|s| s.contains(seq)))
            .count() as u64
    }
}

/// Compares each subscriber's receipts with what the publishers had acknowledged: in
/// fan-out every subscriber must have every acknowledged message; one-to-one each
/// publisher's subscriber must have its publisher's (`misrouted`: what subscribers got
/// that was not their publisher's, counted as it arrived).
pub fn check_subscribers(
    records: &[DeviceRecord],
    subscribers: &[HashMap<u64, SeqSet>],
    misrouted: u64,
    scenario: &Scenario,
) -> SubscriberFigures {
    let mut figures = SubscriberFigures {
        subscribers: subscribers.len() as u64,
        one_to_one: scenario.one_to_one,
        misrouted,
        best_effort: scenario.sub_qos == QoS::AtMostOnce,
        ..Default::default()
    };
    let acked_total: u64 = records.iter().map(|r| u64::from(r.acked)).sum();
    if scenario.one_to_one {
        // A subscriber records only its own publisher's messages, so each publisher is a
        // key of at most one subscriber's map: the maps' union, by publisher.
        let by_publisher: HashMap<u64, &SeqSet> = subscribers
            .iter()
            .flat_map(|seen| seen.iter().map(|(device, set)| (*device, set)))
            .collect();
        figures.expected = acked_total;
        for set in by_publisher.values() {
            figures.received += u64::from(set.received);
            figures.duplicated += u64::from(set.duplicated);
            figures.out_of_order += u64::from(set.out_of_order);
        }
        for record in records {
            figures.lost +=
                record.lost_in(by_publisher.get(&record.number).copied(), &scenario.qos_mix);
        }
        return figures;
    }
    figures.expected = acked_total * subscribers.len() as u64;
    for seen in subscribers {
        for set in seen.values() {
            figures.received += u64::from(set.received);
            figures.duplicated += u64::from(set.duplicated);
            figures.out_of_order += u64::from(set.out_of_order);
        }
        for record in records {
            figures.lost += record.lost_in(seen.get(&record.number), &scenario.qos_mix);
        }
    }
    figures
}

/// What the Kafka check found.
pub struct KafkaOutcome {
    pub figures: KafkaFigures,
    pub latency: Latency,
    pub issues: Vec<DeviceIssue>,
    /// Every device's figures, when `--per-device` asked for them.
    pub per_device: Vec<DeviceIssue>,
}

/// The consumer thread: started before the devices, told when they are done.
pub struct KafkaVerifier {
    records: mpsc::Sender<Vec<DeviceRecord>>,
    thread: std::thread::JoinHandle<Result<KafkaOutcome, String>>,
}

impl KafkaVerifier {
    /// Starts the consumer and returns once it has captured the topics' end offsets: from
    /// then on, every record of this run will be read.
    pub fn start(
        verify: &KafkaVerify,
        mix: QosMix,
        id_range: (u64, u64),
        per_device: bool,
    ) -> Result<KafkaVerifier, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (records_tx, records_rx) = mpsc::channel();
        let verify = verify.clone();
        // librdkafka's threads inherit this thread's CPU affinity: the main thread is
        // not pinned, so neither are they.
        let thread = std::thread::Builder::new()
            .name("kafka-verify".into())
            .spawn(move || {
                let mut consumer = Reader::open(&verify).inspect_err(|e| {
                    let _ = ready_tx.send(Err(e.clone()));
                })?;
                let _ = ready_tx.send(Ok(()));
                consumer.run(records_rx, mix, id_range, per_device)
            })
            .map_err(|e| format!("start the Kafka consumer thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(KafkaVerifier {
                records: records_tx,
                thread,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("the Kafka consumer thread ended at start".into()),
        }
    }

    /// Hands over what the devices did and waits for the verdict.
    pub fn finish(self, records: Vec<DeviceRecord>) -> Result<KafkaOutcome, String> {
        let _ = self.records.send(records);
        self.thread
            .join()
            .map_err(|_| "the Kafka consumer thread panicked".to_string())?
    }
}

struct Reader {
    consumer: BaseConsumer,
    verify: KafkaVerify,
    /// Topics that did not exist at start: read from their beginning once they appear.
    absent: Vec<String>,
}

impl Reader {
    fn open(verify: &KafkaVerify) -> Result<Reader, String> {
        let mut config = ClientConfig::new();
        config
            .set(
                "group.id",
                format!("ferrymq-loadgen-verify-{}-{}", std::process::id(), now_us()),
            )
            .set("client.id", "ferrymq-loadgen-verify")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "20")
            // Prefetch less than librdkafka's 64 MiB default: the consumer lives in the
            // process whose memory per device the report measures.
            .set("queued.max.messages.kbytes", "8192");
        let consumer: BaseConsumer = client_config(verify, config)
            .create()
            .map_err(|e| client_error(verify, "--verify-kafka: create the consumer", e))?;
        if let Some(count) = verify.create_partitions {
            create_missing_topics(consumer.client(), verify, count)?;
        }
        let mut assignment = TopicPartitionList::new();
        let mut absent = Vec::new();
        for topic in &verify.topics {
            match partitions(consumer.client(), topic)? {
                Some(partitions) => {
                    for partition in partitions {
                        let (_, high) = consumer
                            .fetch_watermarks(topic, partition, Duration::from_secs(10))
                            .map_err(|e| {
                                format!("--verify-kafka: end offset of {topic}/{partition}: {e}")
                            })?;
                        assignment
                            .add_partition_offset(topic, partition, Offset::Offset(high))
                            .map_err(|e| format!("--verify-kafka: {e}"))?;
                    }
                }
                None => absent.push(topic.clone()),
            }
        }
        consumer
            .assign(&assignment)
            .map_err(|e| format!("--verify-kafka: assign: {e}"))?;
        Ok(Reader {
            consumer,
            verify: verify.clone(),
            absent,
        })
    }

    fn adopt_new_topics(&mut self) {
        let mut still_absent = Vec::new();
        for topic in std::mem::take(&mut self.absent) {
            match partitions(self.consumer.client(), &topic) {
                Ok(Some(partitions)) => {
                    let mut added = TopicPartitionList::new();
                    for partition in partitions {
                        let _ = added.add_partition_offset(&topic, partition, Offset::Beginning);
                    }
                    if self.consumer.incremental_assign(&added).is_err() {
                        still_absent.push(topic);
                    }
                }
                _ => still_absent.push(topic),
            }
        }
        self.absent = still_absent;
    }

    fn run(
        &mut self,
        records_rx: mpsc::Receiver<Vec<DeviceRecord>>,
        mix: QosMix,
        (id_first, id_count): (u64, u64),
        per_device: bool,
    ) -> Result<KafkaOutcome, String> {
        let mut seen: HashMap<u64, SeqSet> = HashMap::new();
        let mut latency = latency_histogram();
        let mut latency_to = "consume-time";
        let mut foreign = 0u64;
        let mut invalid = 0u64;
        // The earliest send and the latest arrival of the messages read (first copies).
        let mut first_send_us = u64::MAX;
        let mut last_arrival_us = 0u64;
        // After the run: the devices' records, by number, and the acknowledged messages
        // not found yet.
        let mut expected: Option<(Vec<DeviceRecord>, HashMap<u64, usize>)> = None;
        let mut missing = 0u64;
        let mut deadline = None;
        let mut last_topic_check = Instant::now();
        let mut last_error: Option<String> = None;
        loop {
            if expected.is_none() {
                if let Ok(records) = records_rx.try_recv() {
                    let index: HashMap<u64, usize> = records
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (r.number, i))
                        .collect();
                    missing = records
                        .iter()
                        .map(|r| r.lost_in(seen.get(&r.number), &mix))
                        .sum();
                    expected = Some((records, index));
                    deadline = Some(Instant::now() + self.verify.timeout);
                }
            }
            if expected.is_some() && missing == 0 {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if !self.absent.is_empty() && last_topic_check.elapsed() >= Duration::from_secs(1) {
                self.adopt_new_topics();
                last_topic_check = Instant::now();
            }
            let Some(result) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    last_error = Some(error.to_string());
                    continue;
                }
            };
            let Some(header) = message.payload().and_then(PayloadHeader::decode) else {
                foreign += 1;
                continue;
            };
            if header.device < id_first || header.device - id_first >= id_count {
                foreign += 1;
                continue;
            }
            let set = seen.entry(header.device).or_default();
            let first = match set.record(header.seq) {
                Seen::Invalid => {
                    invalid += 1;
                    continue;
                }
                Seen::Duplicate => false,
                Seen::First | Seen::FirstOutOfOrder => true,
            };
            if !first {
                continue;
            }
            let arrived_us = match message.timestamp() {
                Timestamp::LogAppendTime(ms) => {
                    latency_to = "log-append-time";
                    ms as u64 * 1000
                }
                _ => now_us(),
            };
            record_latency(&mut latency, arrived_us.saturating_sub(header.sent_us));
            first_send_us = first_send_us.min(header.sent_us);
            last_arrival_us = last_arrival_us.max(arrived_us);
            if let Some((records, index)) = &expected {
                let acked = index
                    .get(&header.device)
                    .is_some_and(|&i| records[i].was_acked(header.seq as u32, &mix));
                if acked {
                    missing -= 1;
                }
            }
        }
        let timed_out = missing > 0 || expected.is_none();
        let (records, _) = expected.unwrap_or_default();
        if timed_out {
            if let Some(error) = last_error {
                eprintln!("ferrymq-loadgen: Kafka consumer: last error: {error}");
            }
        }
        Ok(tally(
            &records,
            &seen,
            &mix,
            TallyInput {
                topics: self.verify.topics.clone(),
                foreign,
                invalid,
                timed_out,
                latency_to,
                per_device,
                first_send_unix_ms: if first_send_us == u64::MAX {
                    0
                } else {
                    first_send_us / 1000
                },
                last_arrival_unix_ms: last_arrival_us / 1000,
            },
            latency,
        ))
    }
}

struct TallyInput {
    topics: Vec<String>,
    foreign: u64,
    invalid: u64,
    timed_out: bool,
    latency_to: &'static str,
    per_device: bool,
    first_send_unix_ms: u64,
    last_arrival_unix_ms: u64,
}

fn tally(
    records: &[DeviceRecord],
    seen: &HashMap<u64, SeqSet>,
    mix: &QosMix,
    input: TallyInput,
    latency: Latency,
) -> KafkaOutcome {
    let mut figures = KafkaFigures {
        topics: input.topics,
        foreign: input.foreign,
        unexpected: input.invalid,
        timed_out: input.timed_out,
        latency_to: input.latency_to.to_string(),
        first_send_unix_ms: input.first_send_unix_ms,
        last_arrival_unix_ms: input.last_arrival_unix_ms,
        ..Default::default()
    };
    let mut issues = Vec::new();
    let mut per_device = Vec::new();
    let known: std::collections::HashSet<u64> = records.iter().map(|r| r.number).collect();
    for record in records {
        let set = seen.get(&record.number);
        let lost = record.lost_in(set, mix);
        let (mut received, mut qos0_missing, mut unexpected) = (0u64, 0u64, 0u64);
        if let Some(set) = set {
            received = u64::from(set.received);
            unexpected = u64::from(set.high.saturating_sub(record.sent));
        }
        for seq in 0..record.sent {
            if mix.qos_of(record.number, seq) == QoS::AtMostOnce
                && !set.is_some_and(|s| s.contains(seq))
            {
                qos0_missing += 1;
            }
        }
        let (duplicated, out_of_order) = set.map_or((0, 0), |s| {
            (u64::from(s.duplicated), u64::from(s.out_of_order))
        });
        figures.received += received;
        figures.lost += lost;
        figures.duplicated += duplicated;
        figures.out_of_order += out_of_order;
        figures.qos0_missing += qos0_missing;
        figures.unexpected += unexpected;
        if lost > 0 {
            figures.devices_with_loss += 1;
        }
        let row = DeviceIssue {
            device: record.number,
            sent: u64::from(record.sent),
            acknowledged: u64::from(record.acked),
            received,
            lost,
            duplicated,
            out_of_order,
        };
        if (lost > 0 || duplicated > 0 || out_of_order > 0)
            && issues.len() < DEVICE_ISSUES_LISTED_MAX
        {
            issues.push(row.clone());
        }
        if input.per_device {
            per_device.push(row);
        }
    }
    // Records of devices in our range that never reported (they cannot have sent).
    for (device, set) in seen {
        if !known.contains(device) {
            figures.unexpected += u64::from(set.received);
        }
    }
    figures.compute_rate();
    KafkaOutcome {
        figures,
        latency,
        issues,
        per_device,
    }
}

/// A Kafka client's configuration: --verify-kafka's brokers, the loadgen's own properties
/// for that client (`own`), then --kafka-config's, which win.
pub fn client_config(verify: &KafkaVerify, own: ClientConfig) -> ClientConfig {
    let mut config = own;
    config.set("bootstrap.servers", &verify.bootstrap);
    verify.config.apply(&mut config);
    config
}

/// One line on a client librdkafka could not make, without --kafka-config's secrets.
pub fn client_error(verify: &KafkaVerify, what: &str, error: KafkaError) -> String {
    let text = format!("{what}: {error}");
    let text = verify.config.redact(&text);
    if verify.config.is_empty() {
        text
    } else {
        format!("{text} (--kafka-config {})", verify.config.describe())
    }
}

/// `--kafka-create-topics`: creates the topics that do not exist yet, with Kafka's
/// append time as record timestamp, so that publish→Kafka is measured to the moment the
/// broker stored the record; then waits until each has a leader.
pub fn create_missing_topics<C: ClientContext>(
    client: &Client<C>,
    verify: &KafkaVerify,
    count: i32,
) -> Result<(), String> {
    let topics: Vec<&str> = verify.topics.iter().map(String::as_str).collect();
    create_missing(
        client,
        verify,
        &topics,
        count,
        true,
        "--kafka-create-topics",
    )
}

/// Creates those of `topics` that do not exist yet with `count` partitions (and
/// LogAppendTime timestamps if asked), then waits until each has a leader. `flag` starts
/// the error messages.
pub fn create_missing<C: ClientContext>(
    client: &Client<C>,
    verify: &KafkaVerify,
    topics: &[&str],
    count: i32,
    log_append_time: bool,
    flag: &str,
) -> Result<(), String> {
    let mut missing = Vec::new();
    for &topic in topics {
        if partitions(client, topic)?.is_none() {
            missing.push(topic);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(verify, ClientConfig::new())
        .create()
        .map_err(|e| client_error(verify, &format!("{flag}: admin client"), e))?;
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|topic| {
            let topic = NewTopic::new(topic, count, TopicReplication::Fixed(1));
            if log_append_time {
                topic.set("message.timestamp.type", "LogAppendTime")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_lite::future::block_on(admin.create_topics(&new_topics, &options))
        .map_err(|e| format!("{flag}: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("{flag}: {topic}: {code}")),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for topic in missing {
        while partitions(client, topic)?.is_none() {
            if Instant::now() >= deadline {
                return Err(format!("{flag}: {topic} has no leader after 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Partitions of `topic` when it exists with a leader for each. The client must not
/// create topics by asking (`allow.auto.create.topics=false`).
pub fn partitions<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
) -> Result<Option<Vec<i32>>, String> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("--verify-kafka: metadata of {topic}: {e}"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if found.error().is_some()
        || found.partitions().is_empty()
        || found.partitions().iter().any(|p| p.leader() < 0)
    {
        return Ok(None);
    }
    Ok(Some(found.partitions().iter().map(|p| p.id()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set_counts_firsts_duplicates_and_late_arrivals() {
        let mut set = SeqSet::default();
        assert_eq!(set.record(0), Seen::First);
        assert_eq!(set.record(2), Seen::First);
        assert_eq!(set.record(1), Seen::FirstOutOfOrder);
        assert_eq!(set.record(2), Seen::Duplicate);
        assert_eq!(set.record(200), Seen::First);
        assert_eq!(set.record(SEQ_MAX), Seen::Invalid);
        assert_eq!((set.received, set.duplicated, set.out_of_order), (4, 1, 1));
        assert!(set.contains(1) && set.contains(200) && !set.contains(3) && !set.contains(9999));
    }

    #[test]
    fn lost_counts_only_acknowledged_messages() {
        let mix = QosMix::parse("0:50,1:50").unwrap();
        let record = DeviceRecord {
            number: 7,
            sent: 100,
            sent_qos0: 0,
            acked: 0,
            unacked: vec![3],
        };
        let mut seen = SeqSet::default();
        for seq in 0..100 {
            if seq != 5 && seq != 3 {
                seen.record(seq);
            }
        }
        let expected_lost = u64::from(record.was_acked(5, &mix));
        assert!(!record.was_acked(3, &mix), "left unacknowledged");
        assert!(!record.was_acked(100, &mix), "never sent");
        assert_eq!(record.lost_in(Some(&seen), &mix), expected_lost);
        let acked = (0..100).filter(|&s| record.was_acked(s, &mix)).count() as u64;
        assert_eq!(record.lost_in(None, &mix), acked);
    }

    #[test]
    fn tally_and_subscriber_check() {
        let mix = QosMix::only(QoS::AtLeastOnce);
        let records = vec![
            DeviceRecord {
                number: 1,
                sent: 3,
                sent_qos0: 0,
                acked: 3,
                unacked: vec![],
            },
            DeviceRecord {
                number: 2,
                sent: 2,
                sent_qos0: 0,
                acked: 1,
                unacked: vec![1],
            },
        ];
        let mut seen = HashMap::new();
        let one: &mut SeqSet = seen.entry(1).or_default();
        for seq in [0, 2, 1, 1] {
            one.record(seq);
        }
        seen.entry(2).or_default().record(1);
        let input = TallyInput {
            topics: vec!["t".into()],
            foreign: 0,
            invalid: 0,
            timed_out: false,
            latency_to: "consume-time",
            per_device: true,
            first_send_unix_ms: 1_000,
            last_arrival_unix_ms: 1_500,
        };
        let outcome = tally(&records, &seen, &mix, input, latency_histogram());
        let f = &outcome.figures;
        // Device 2's seq 0 was acknowledged and is missing; its seq 1 was not acknowledged.
        assert_eq!(
            (f.received, f.lost, f.duplicated, f.out_of_order),
            (4, 1, 1, 1)
        );
        assert_eq!(f.devices_with_loss, 1);
        // 4 distinct messages in 0.5 s.
        assert_eq!(f.received_per_sec, 8.0);
        assert_eq!(outcome.per_device.len(), 2);
        assert_eq!(outcome.issues.len(), 2);

        let scenario = crate::device::tests::scenario();
        let subs = check_subscribers(&records, &[seen.clone(), HashMap::new()], 0, &scenario);
        assert_eq!(subs.expected, 8);
        assert_eq!(subs.lost, 1 + 4);
        assert!(!subs.one_to_one);
    }

    #[test]
    fn one_to_one_subscribers_are_checked_against_their_own_publisher() {
        let mut scenario = crate::device::tests::scenario();
        scenario.one_to_one = true;
        let record = |number, sent| DeviceRecord {
            number,
            sent,
            sent_qos0: 0,
            acked: sent,
            unacked: vec![],
        };
        let records = vec![record(10, 3), record(11, 2), record(12, 4)];
        // Subscriber of 10: everything, one twice; of 11: seq 1 only; of 12: nothing.
        let mut first = HashMap::new();
        let set: &mut SeqSet = first.entry(10).or_default();
        for seq in [0, 1, 1, 2] {
            set.record(seq);
        }
        let mut second = HashMap::new();
        second.entry(11).or_insert_with(SeqSet::default).record(1);
        let subs = check_subscribers(&records, &[first, HashMap::new(), second], 3, &scenario);
        assert!(subs.one_to_one);
        assert_eq!((subs.subscribers, subs.expected), (3, 9));
        assert_eq!((subs.received, subs.duplicated, subs.lost), (4, 1, 1 + 4));
        assert_eq!(subs.misrouted, 3);
    }
}
