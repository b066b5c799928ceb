//! Faults around the durable spool (`ack = "durable"`), against the real `ferrymq` binary
//! (two shards) and real Apache Kafka: a Kafka outage under steady QoS 1 load, `kill -9` of
//! the broker while records wait in the spool, a damaged segment tail found on restart, and
//! a spool that reaches `spool.max_bytes`.
//!
//! The guarantee checked (README, "What the PUBACK means"): a `durable` PUBACK is sent once
//! the record is on disk, whether Kafka is there or not; every acknowledged message then
//! reaches Kafka, across outages and restarts (duplicates are allowed, and counted); past
//! `max_bytes` publishers wait. Replay cuts a damaged tail, says so on stderr and keeps the
//! records before it.
//!
//! MQTT is spoken over raw sockets with ferrymq's codec, each PUBLISH carrying packet id
//! `seq + 1`, so every PUBACK names the exact message it acknowledges. Payloads are
//! `DEVICE:SEQ` (then padding after `|`), and an rdkafka consumer reads the Kafka topic back
//! to prove which (device, seq) pairs are there.
//!
//! Needs the shared Kafka on `127.0.0.1:9092` (`$FERRYMQ_KAFKA_BOOTSTRAP`), which nothing
//! here stops; the outage test runs its own instance (`scripts/kafka --name spool-outage`)
//! and stops it at the end. "Kafka unreachable" is a loopback port nobody listens on.
//! Every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka::{self, ExtraKafka, Record};
use common::raw::{encode, RawClient};
use common::{id_on, shard_count, Broker};
use ferrymq::protocol::{Packet, Protocol, Publish, QoS, ReasonCode};
use ferrymq::spool::record::decode_one;

/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(15);
/// Longest reading a topic back may take.
const READ: Duration = Duration::from_secs(30);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_secs(2);
/// The smallest segment the configuration allows: several segments per shard.
const SEGMENT_BYTES: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Helpers

/// `count` device ids, spread over the shards.
fn devices(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| id_on(i, &format!("{prefix}{i}")))
        .collect()
}

/// A spool directory of its own under the temporary directory, removed when dropped.
struct DataDir {
    path: PathBuf,
}

impl DataDir {
    fn new(label: &str) -> DataDir {
        let path = std::env::temp_dir().join(kafka::unique(&format!("ferrymq-spool-{label}")));
        DataDir { path }
    }

    fn path_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    /// Every segment file under `shard-*/`, sorted.
    fn segments(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in self.shard_dirs() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }

    fn shard_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("shard-"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dirs
    }

    /// Bytes of all segment files of `shard`.
    fn shard_bytes(&self, shard: usize) -> u64 {
        let dir = self.path.join(format!("shard-{shard}"));
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The configuration of one durable mapping of `spool/#` to `topic` on cluster `main` at
/// `bootstrap`, spooling under `data_dir`; `cluster_extra` and `extra` are added to the
/// cluster table and to the end.
fn durable_config(
    bootstrap: &str,
    topic: &str,
    data_dir: &DataDir,
    cluster_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[kafka.clusters.main]
bootstrap = "{bootstrap}"
# Reconnect within a second of Kafka coming back (librdkafka's default backs off to 10 s).
config = {{ "reconnect.backoff.max.ms" = 1000{cluster_extra} }}

[[kafka.mapping]]
mqtt = "spool/#"
topic = "{topic}"
key = "{{client_id}}"
ack = "durable"

{extra}

[spool]
data_dir = "{}"
segment_bytes = {SEGMENT_BYTES}
"#,
        data_dir.path_str()
    )
}

/// A loopback port nobody listens on: Kafka "down".
fn dead_kafka() -> String {
    format!("127.0.0.1:{}", common::free_port())
}

/// `DEVICE:SEQ`, then `|` and `padding` bytes.
fn payload(device: &str, seq: u32, padding: usize) -> Vec<u8> {
    let mut bytes = format!("{device}:{seq:05}").into_bytes();
    if padding > 0 {
        bytes.push(b'|');
        bytes.extend(std::iter::repeat_n(b'x', padding));
    }
    bytes
}

/// The (device, seq) a payload carries.
fn parse_payload(bytes: &[u8]) -> Option<(String, u32)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.split('|').next()?;
    let (device, seq) = text.rsplit_once(':')?;
    Some((device.to_string(), seq.parse().ok()?))
}

type Acks = Arc<Mutex<Vec<(u16, ReasonCode, Instant)>>>;

/// A 3.1.1 publisher over a raw socket: PUBLISH `seq` goes out with packet id `seq + 1`;
/// a reader thread keeps every PUBACK with its arrival time.
struct Publisher {
    device: String,
    stream: TcpStream,
    /// When PUBLISH `seq` was written, by seq.
    sent_at: Vec<Instant>,
    acks: Acks,
    closed: Arc<AtomicBool>,
    /// PINGRESPs received.
    pings: Arc<AtomicUsize>,
}

impl Publisher {
    fn connect(port: u16, device: &str) -> Publisher {
        let mut client =
            RawClient::connected_to(("127.0.0.1", port), Protocol::V3_1_1, device, WAIT);
        client.set_read_timeout(None);
        let stream = client.tcp.try_clone().unwrap();
        let acks: Acks = Default::default();
        let closed = Arc::new(AtomicBool::new(false));
        let pings = Arc::new(AtomicUsize::new(0));
        let (reader_acks, reader_closed, reader_pings) =
            (acks.clone(), closed.clone(), pings.clone());
        let name = device.to_string();
        thread::spawn(move || {
            loop {
                match client.try_recv() {
                    Ok(Some(Packet::PubAck(ack))) => {
                        reader_acks.lock().unwrap().push((
                            ack.packet_id,
                            ack.reason_code,
                            Instant::now(),
                        ));
                    }
                    Ok(Some(Packet::PingResp)) => {
                        reader_pings.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(other)) => panic!("{name}: unexpected {other:?}"),
                    Ok(None) | Err(_) => break,
                }
            }
            reader_closed.store(true, Ordering::Release);
        });
        Publisher {
            device: device.to_string(),
            stream,
            sent_at: Vec::new(),
            acks,
            closed,
            pings,
        }
    }

    fn write(&mut self, packet: Packet) -> bool {
        match self.stream.write_all(&encode(&packet, Protocol::V3_1_1)) {
            Ok(()) => true,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                false
            }
            Err(e) => panic!("{}: write: {e}", self.device),
        }
    }

    /// Sends the next message (seq = messages sent so far) on `spool/DEVICE` with `qos`;
    /// false once the broker is gone.
    fn publish(&mut self, qos: QoS, padding: usize) -> bool {
        let seq = self.sent_at.len() as u32;
        assert!(seq < u32::from(u16::MAX), "packet ids are seq + 1");
        let mut publish = Publish::new(
            format!("spool/{}", self.device),
            qos,
            payload(&self.device, seq, padding),
        );
        if qos != QoS::AtMostOnce {
            publish.packet_id = seq as u16 + 1;
        }
        self.sent_at.push(Instant::now());
        self.write(Packet::Publish(publish))
    }

    fn ping(&mut self) -> bool {
        self.write(Packet::PingReq)
    }

    /// Seqs acknowledged with success so far, and when.
    fn acked(&self) -> BTreeMap<u32, Instant> {
        let acks = self.acks.lock().unwrap();
        for (id, reason, _) in acks.iter() {
            assert_eq!(*reason, ReasonCode::Success, "{}: PUBACK {id}", self.device);
        }
        acks.iter()
            .map(|(id, _, at)| (u32::from(*id) - 1, *at))
            .collect()
    }

    fn acked_count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Publishes `count` QoS 1 messages of `padding` bytes and waits until PUBACKs stop
    /// coming (none for half a second, at least one in all): the count acknowledged then.
    fn publish_until_held(&mut self, count: usize, padding: usize) -> usize {
        for _ in 0..count {
            assert!(self.publish(QoS::AtLeastOnce, padding));
        }
        let mut acked = self.acked_count();
        let deadline = Instant::now() + WAIT;
        loop {
            thread::sleep(Duration::from_millis(500));
            let now = self.acked_count();
            if now == acked && now > 0 {
                return now;
            }
            acked = now;
            assert!(Instant::now() < deadline, "PUBACKs never stopped");
        }
    }

    /// Waits until `count` PUBACKs came; false on timeout.
    fn wait_acks(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.acked_count() < count {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The (device, seq) pairs acknowledged.
    fn acked_set(&self) -> BTreeSet<(String, u32)> {
        self.acked()
            .keys()
            .map(|seq| (self.device.clone(), *seq))
            .collect()
    }
}

/// How many times Kafka holds each (device, seq); fails on a record that is not ours.
fn tally(records: &[Record]) -> BTreeMap<(String, u32), usize> {
    let mut count = BTreeMap::new();
    for record in records {
        let id = parse_payload(&record.payload)
            .unwrap_or_else(|| panic!("foreign record in Kafka: {:?}", record.payload_str()));
        *count.entry(id).or_default() += 1;
    }
    count
}

/// Asserts every acknowledged message is in `got`; prints and returns the duplicates.
fn assert_all_acked_in_kafka(
    label: &str,
    got: &BTreeMap<(String, u32), usize>,
    acked: &BTreeSet<(String, u32)>,
) -> usize {
    let missing: Vec<_> = acked.iter().filter(|id| !got.contains_key(id)).collect();
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    let unacked_delivered = got.keys().filter(|id| !acked.contains(id)).count();
    eprintln!(
        "{label}: {} acknowledged, {} distinct in Kafka ({} not acknowledged but delivered), \
         {duplicates} duplicates, {} missing",
        acked.len(),
        got.len(),
        unacked_delivered,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{label}: {} acknowledged messages not in Kafka, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    duplicates
}

/// Polls until none of `paths` exists; returns how long it took, or fails after `timeout`.
fn wait_deleted(paths: &[PathBuf], timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let left: Vec<_> = paths.iter().filter(|p| p.exists()).collect();
        if left.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "spool segments still there {timeout:?} after Kafka got their records: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn start(config: &str) -> (Broker, kafka::ConfigFile) {
    let file = kafka::write_config(config);
    let broker = Broker::start_capturing_stderr(&["--config", file.path_str()]);
    (broker, file)
}

// ---------------------------------------------------------------------------------------
// 1. Kafka outage under steady QoS 1 load.

/// Four devices publish QoS 1 steadily on a durable mapping while the cluster's Kafka
/// (an instance of its own) is stopped for 10 s and started again. The librdkafka queue and
/// the ring are kept small, so the outage outlasts what memory holds and the spool must
/// take the rest. Every PUBLISH is acknowledged from disk, each within 5 s (one held back
/// for Kafka would wait out the 10 s outage); afterwards every acknowledged message is in
/// Kafka, and the sealed segments are gone.
#[test]
fn kafka_outage_under_qos1_load_loses_no_acknowledged_message() {
    const DEVICES: usize = 4;
    /// At most this many each: publishing stops a second after Kafka is back.
    const PER_DEVICE_MAX: u32 = 450;
    const INTERVAL: Duration = Duration::from_millis(65);
    const PADDING: usize = 150;
    let test_started = Instant::now();
    let outage = ExtraKafka::start("spool-outage");
    let bootstrap = outage.bootstrap();
    let topic = kafka::unique("spool-outage");
    kafka::create_topic(&bootstrap, &topic, 2);
    let data = DataDir::new("outage");
    let (mut broker, _file) = start(&durable_config(
        &bootstrap,
        &topic,
        &data,
        r#", "queue.buffering.max.messages" = 64"#,
        "[batching]\nmax_messages = 16\nring_capacity_batches = 2\n",
    ));
    let port = broker.port;
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = devices("outage-dev", DEVICES)
        .into_iter()
        .map(|device| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut publisher = Publisher::connect(port, &device);
                let begin = Instant::now();
                for seq in 0..PER_DEVICE_MAX {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Steady: the n-th PUBLISH leaves n intervals after the first.
                    let due = begin + INTERVAL * seq;
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    assert!(publisher.publish(QoS::AtLeastOnce, PADDING), "broker gone");
                }
                let sent = publisher.sent_at.len();
                assert!(
                    publisher.wait_acks(sent, WAIT),
                    "{device}: {} of {sent} PUBACKs",
                    publisher.acked_count()
                );
                publisher
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(2));
    outage.run("stop");
    let down_from = Instant::now();
    thread::sleep(Duration::from_secs(10));
    let down_until = Instant::now();
    outage.run("start");
    let back = Instant::now();
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let publishers: Vec<Publisher> = publishers
        .into_iter()
        .map(|p| p.join().expect("publisher"))
        .collect();
    assert!(broker.is_running(), "ferrymq exited during the outage");

    // Durable: PUBACKs kept coming while Kafka was away.
    // Durable: PUBACKs kept coming while Kafka was away and while it came back.
    let mut during = 0;
    let mut slowest_during = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    let mut sent = 0;
    let mut acked = BTreeSet::new();
    for publisher in &publishers {
        for (seq, at) in publisher.acked() {
            let sent_at = publisher.sent_at[seq as usize];
            let took = at.duration_since(sent_at);
            slowest = slowest.max(took);
            if sent_at >= down_from && sent_at < down_until {
                during += 1;
                slowest_during = slowest_during.max(took);
            }
        }
        sent += publisher.sent_at.len();
        acked.extend(publisher.acked_set());
    }
    eprintln!(
        "outage: {sent} PUBLISHes, {during} while Kafka was stopped (slowest PUBACK \
         {slowest_during:?}), slowest PUBACK overall {slowest:?}; Kafka took {:.1?} to start",
        back.duration_since(down_until)
    );
    assert!(
        during >= DEVICES * 100,
        "only {during} PUBLISHes in the outage"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a durable PUBACK took {slowest:?} (Kafka away or coming back)"
    );
    assert_eq!(acked.len(), sent);

    let records = kafka::read_topic(&bootstrap, &topic, acked.len(), READ);
    eprintln!(
        "outage: {} records in Kafka {:.1?} after Kafka was back",
        records.len(),
        back.elapsed()
    );
    let got = tally(&records);
    assert_all_acked_in_kafka("outage", &got, &acked);
    // Kafka has every record: only each shard's active segment may remain.
    let deadline = Instant::now() + WAIT;
    while data.segments().len() > shard_count() {
        assert!(
            Instant::now() < deadline,
            "segments left after delivery: {:?}",
            data.segments()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(broker.stop().code(), Some(0));
    drop(outage);
    eprintln!("outage test: {:.1?}", test_started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 while records wait in the spool.

/// Runs the broker with Kafka unreachable, `devices` publishing `per_device` QoS 1
/// messages each (`padding` bytes after the id) at `interval`, and kills it with SIGKILL
/// once `kill_after` PUBACKs came (or all did). Returns the acknowledged (device, seq)
/// pairs and how many PUBLISHes were written.
fn publish_then_kill9(
    data: &DataDir,
    topic: &str,
    devices: &[String],
    per_device: u32,
    interval: Duration,
    kill_after: usize,
) -> (BTreeSet<(String, u32)>, usize) {
    const PADDING: usize = 200;
    let (broker, _file) = start(&durable_config(&dead_kafka(), topic, data, "", ""));
    let port = broker.port;
    let acked_total = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = devices
        .iter()
        .cloned()
        .map(|device| {
            let acked_total = acked_total.clone();
            thread::spawn(move || {
                let mut publisher = Publisher::connect(port, &device);
                let mut counted = 0;
                for _ in 0..per_device {
                    if !publisher.publish(QoS::AtLeastOnce, PADDING) {
                        break;
                    }
                    let now = publisher.acked_count();
                    acked_total.fetch_add(now - counted, Ordering::Relaxed);
                    counted = now;
                    thread::sleep(interval);
                }
                // Until the broker is gone or everything is acknowledged.
                let deadline = Instant::now() + WAIT;
                while !publisher.closed.load(Ordering::Acquire)
                    && publisher.acked_count() < per_device as usize
                    && Instant::now() < deadline
                {
                    let now = publisher.acked_count();
                    acked_total.fetch_add(now - counted, Ordering::Relaxed);
                    counted = now;
                    thread::sleep(Duration::from_millis(5));
                }
                let now = publisher.acked_count();
                acked_total.fetch_add(now - counted, Ordering::Relaxed);
                publisher
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while acked_total.load(Ordering::Relaxed) < kill_after {
        assert!(
            Instant::now() < deadline,
            "only {} PUBACKs with Kafka down",
            acked_total.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(1));
    }
    let status = broker.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    let mut acked = BTreeSet::new();
    let mut sent = 0;
    for publisher in publishers {
        let publisher = publisher.join().expect("publisher");
        // Whatever came before the kill, read to the end of the connection.
        let deadline = Instant::now() + WAIT;
        while !publisher.closed.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "connection open after SIGKILL");
            thread::sleep(Duration::from_millis(5));
        }
        sent += publisher.sent_at.len();
        acked.extend(publisher.acked_set());
    }
    (acked, sent)
}

/// With Kafka unreachable, four devices publish 2,000 QoS 1 messages and ferrymq is killed
/// with SIGKILL halfway through, records waiting in the spool. Restarted on the same
/// data_dir with the cluster on the real Kafka, it replays: every acknowledged message
/// reaches Kafka, and the old segment files go once Kafka has their records.
#[test]
fn kill9_with_records_in_the_spool_then_restart_delivers_every_acknowledged_message() {
    const DEVICES: usize = 4;
    const PER_DEVICE: u32 = 500;
    let test_started = Instant::now();
    let main = kafka::bootstrap();
    let topic = kafka::unique("spool-kill9");
    kafka::create_topic(&main, &topic, 2);
    let data = DataDir::new("kill9");
    let devices = devices("kill9-dev", DEVICES);
    let (acked, sent) = publish_then_kill9(
        &data,
        &topic,
        &devices,
        PER_DEVICE,
        Duration::from_millis(1),
        DEVICES * PER_DEVICE as usize / 2,
    );
    let old = data.segments();
    eprintln!(
        "kill -9: {sent} PUBLISHes written, {} acknowledged, {} segment files left: {:?}",
        acked.len(),
        old.len(),
        old.iter()
            .map(|p| (
                p.file_name().unwrap().to_owned(),
                p.metadata().unwrap().len()
            ))
            .collect::<Vec<_>>()
    );
    assert!(acked.len() >= DEVICES * PER_DEVICE as usize / 2);
    // Only segments holding records must go. An empty one (a shard whose records never
    // reached the disk before the kill) is removed at restart, and the shard's new segment
    // may take its name: both start at seq 0.
    let old: Vec<PathBuf> = old
        .into_iter()
        .filter(|p| p.metadata().unwrap().len() > 0)
        .collect();
    assert!(!old.is_empty(), "nothing spooled");

    let restarted = Instant::now();
    let (broker, _file) = start(&durable_config(&main, &topic, &data, "", ""));
    let records = kafka::read_topic(&main, &topic, acked.len(), READ);
    eprintln!(
        "kill -9: {} records in Kafka {:.1?} after the restart",
        records.len(),
        restarted.elapsed()
    );
    let got = tally(&records);
    assert_all_acked_in_kafka("kill -9", &got, &acked);
    // Nothing beyond what was written, and nothing foreign.
    assert!(got
        .keys()
        .all(|(device, seq)| devices.contains(device) && (*seq as usize) < sent));
    let took = wait_deleted(&old, WAIT);
    eprintln!("kill -9: old segments deleted {took:.1?} after delivery");
    let stderr = broker.stderr_text();
    assert!(
        !stderr.contains("spool: cut"),
        "a SIGKILL must not damage the spool: {stderr}"
    );
    assert_eq!(broker.stop().code(), Some(0));
    eprintln!("kill -9 test: {:.1?}", test_started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 3. A damaged segment tail.

/// One record found in a segment file: where it starts, its length, and what it carries.
struct OnDisk {
    offset: usize,
    len: usize,
    id: (String, u32),
}

/// The records of a segment file, read with the spool's own decoder up to the padding.
fn records_in(path: &Path) -> (Vec<u8>, Vec<OnDisk>) {
    let bytes = std::fs::read(path).unwrap();
    let all = Bytes::from(bytes.clone());
    let mut found = Vec::new();
    let mut at = 0;
    while let Ok((record, len)) = decode_one(&all.slice(at..)) {
        let id = parse_payload(&record.payload).expect("our payload");
        found.push(OnDisk {
            offset: at,
            len,
            id,
        });
        at += len;
    }
    (bytes, found)
}

/// The newest segment with at least two records, in the first shard directory that has
/// one: (path, file bytes, records).
fn last_segment(data: &DataDir) -> (PathBuf, Vec<u8>, Vec<OnDisk>) {
    for dir in data.shard_dirs() {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        // Names are zero-padded base seqs: the last name is the newest segment.
        segments.sort();
        for path in segments.into_iter().rev() {
            let (bytes, records) = records_in(&path);
            if records.len() >= 2 {
                return (path, bytes, records);
            }
            if !records.is_empty() {
                break;
            }
        }
    }
    panic!("no segment with two records under {}", data.path.display());
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Bytes flipped inside the last record (its checksum no longer matches).
    FlipLastRecord,
    /// Half of a record appended after the last one, where the file then ends (a torn
    /// write).
    HalfRecord,
    /// Non-zero garbage after the last record, over the padding and beyond the end.
    Garbage,
}

/// Kafka unreachable: two devices (one per shard) publish 250 QoS 1 messages each, all acknowledged, and
/// ferrymq is killed. The last segment of a shard is damaged (`damage`); restarted on the
/// real Kafka, ferrymq says on stderr that it cut the damaged bytes of that file at the
/// damaged record, keeps running, and delivers every whole record.
fn damaged_tail(label: &str, damage: Damage) {
    const DEVICES: usize = 2;
    const PER_DEVICE: u32 = 250;
    let test_started = Instant::now();
    let main = kafka::bootstrap();
    let topic = kafka::unique(&format!("spool-{label}"));
    kafka::create_topic(&main, &topic, 1);
    let data = DataDir::new(label);
    let devices = devices(&format!("{label}-dev"), DEVICES);
    let all = DEVICES * PER_DEVICE as usize;
    let (mut acked, sent) = publish_then_kill9(
        &data,
        &topic,
        &devices,
        PER_DEVICE,
        Duration::from_millis(1),
        all,
    );
    assert_eq!((acked.len(), sent), (all, all));
    let (path, mut bytes, records) = last_segment(&data);
    let last = records.last().unwrap();
    let (cut_at, reason, lost) = match damage {
        Damage::FlipLastRecord => {
            // Inside the payload, near the end of the record.
            let at = last.offset + last.len - 3;
            bytes[at] ^= 0x5a;
            bytes[at - 40] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            (last.offset, "checksum mismatch", Some(last.id.clone()))
        }
        Damage::HalfRecord => {
            let end = last.offset + last.len;
            let half: Vec<u8> = bytes[last.offset..last.offset + last.len / 2].to_vec();
            bytes.truncate(end);
            bytes.extend_from_slice(&half);
            std::fs::write(&path, &bytes).unwrap();
            (end, "torn write", None)
        }
        Damage::Garbage => {
            let end = last.offset + last.len;
            bytes.truncate(end);
            bytes.extend((0..4096 + 100).map(|i| 0xa5 ^ (i as u8)));
            std::fs::write(&path, &bytes).unwrap();
            (end, "checksum mismatch", None)
        }
    };
    eprintln!(
        "{label}: {damage:?} in {} ({} records, {} bytes), the last record at {}: {:?}",
        path.display(),
        records.len(),
        bytes.len(),
        last.offset,
        last.id
    );
    if let Some(lost) = &lost {
        acked.remove(lost);
    }

    let (mut broker, _file) = start(&durable_config(&main, &topic, &data, "", ""));
    let records = kafka::read_topic(&main, &topic, acked.len(), READ);
    let got = tally(&records);
    assert_all_acked_in_kafka(label, &got, &acked);
    if let Some(lost) = &lost {
        assert!(
            !got.contains_key(lost),
            "the damaged record {lost:?} reached Kafka"
        );
    }
    let stderr = broker.stderr_text();
    let cut_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("spool: cut"))
        .collect();
    assert_eq!(cut_lines.len(), 1, "one cut line in {stderr:?}");
    let expected = format!(
        "ferrymq: spool: cut {} damaged bytes at offset {cut_at} of {} (",
        bytes.len() - cut_at,
        path.display()
    );
    assert!(
        cut_lines[0].starts_with(&expected)
            && cut_lines[0].contains(reason)
            && cut_lines[0].ends_with("the records before it are kept"),
        "expected {expected:?} ({reason}), got {:?}",
        cut_lines[0]
    );
    assert!(broker.is_running(), "ferrymq exited after the cut");
    // The cut segment goes like any other once Kafka has what was kept.
    wait_deleted(&[path], WAIT);
    assert_eq!(broker.stop().code(), Some(0));
    eprintln!("{label} test: {:.1?}", test_started.elapsed());
}

#[test]
fn flipped_bytes_in_the_last_record_are_cut_and_the_records_before_it_delivered() {
    damaged_tail("flip", Damage::FlipLastRecord);
}

#[test]
fn a_half_record_at_the_end_is_cut_and_every_whole_record_delivered() {
    damaged_tail("torn", Damage::HalfRecord);
}

#[test]
fn garbage_after_the_last_record_is_cut_and_every_whole_record_delivered() {
    damaged_tail("garbage", Damage::Garbage);
}

// ---------------------------------------------------------------------------------------
// 4. Durable PUBACK without Kafka; a full spool holds publishers back.

/// Kafka unreachable: a durable mapping's PUBACKs come at once (from the spool's flush),
/// while an `ack = "kafka"` mapping's on the same broker do not come at all.
#[test]
fn durable_puback_comes_while_kafka_is_unreachable_and_kafka_mode_does_not() {
    const N: usize = 20;
    let data = DataDir::new("unreachable");
    let topic = kafka::unique("spool-unreachable");
    let (mut broker, _file) = start(&durable_config(
        &dead_kafka(),
        &topic,
        &data,
        "",
        &format!(
            "[[kafka.mapping]]\nmqtt = \"wait/#\"\ntopic = \"{topic}-wait\"\nack = \"kafka\"\n"
        ),
    ));
    let mut durable = Publisher::connect(broker.port, &id_on(0, "unreachable-durable"));
    let mut waiting = Publisher::connect(broker.port, &id_on(1, "unreachable-wait"));
    let published = Instant::now();
    for seq in 0..N as u16 {
        assert!(durable.publish(QoS::AtLeastOnce, 0));
        let mut publish = Publish::new("wait/x", QoS::AtLeastOnce, format!("wait {seq}"));
        publish.packet_id = seq + 1;
        assert!(waiting.write(Packet::Publish(publish)));
    }
    assert!(
        durable.wait_acks(N, Duration::from_secs(5)),
        "{} of {N} durable PUBACKs with Kafka unreachable",
        durable.acked_count()
    );
    let slowest = durable
        .acked()
        .values()
        .map(|at| at.duration_since(published))
        .max()
        .unwrap();
    eprintln!("unreachable: {N} durable PUBACKs, the last {slowest:?} after the first PUBLISH");
    assert!(
        slowest < Duration::from_secs(2),
        "durable PUBACK took {slowest:?}"
    );
    assert!(
        !waiting.wait_acks(1, QUIET),
        "ack = kafka PUBACK without Kafka"
    );
    assert!(broker.is_running());
}

/// Kafka unreachable and `--spool-max-bytes` = one 64 KiB segment: a QoS 1 publisher gets
/// PUBACKs until its shard's spool holds 64 KiB, then none (held back, not refused); QoS 0
/// on the same shard does not grow the spool past the bound either. The broker keeps
/// serving: a new client connects and is answered.
#[test]
fn full_spool_holds_qos1_publishers_back_and_nothing_crashes() {
    const QOS1: usize = 200;
    const QOS0: usize = 300;
    const PADDING: usize = 1000;
    let data = DataDir::new("full");
    let topic = kafka::unique("spool-full");
    let file = kafka::write_config(&durable_config(&dead_kafka(), &topic, &data, "", ""));
    let max = SEGMENT_BYTES.to_string();
    let mut broker =
        Broker::start_capturing_stderr(&["--config", file.path_str(), "--spool-max-bytes", &max]);
    let mut held = Publisher::connect(broker.port, &id_on(0, "full-qos1"));
    // PUBACKs come until the spool is full, then stop.
    held.publish_until_held(QOS1, PADDING);
    thread::sleep(QUIET);
    let acked = held.acked_count();
    let record_bytes = PADDING as u64 + 100;
    eprintln!(
        "full: {acked} of {QOS1} PUBACKs, then none; shard 0 spool files {} bytes",
        data.shard_bytes(0)
    );
    assert!(acked < QOS1, "every PUBLISH acknowledged past max_bytes");
    assert!(
        acked as u64 * record_bytes >= SEGMENT_BYTES / 2,
        "only {acked} PUBACKs before the spool counted as full"
    );
    assert_eq!(held.acks.lock().unwrap().len(), acked);
    assert!(
        !held.closed.load(Ordering::Acquire),
        "held publisher disconnected"
    );

    // QoS 0 on the same shard: best effort, it must not grow the spool past the bound.
    let mut qos0 = Publisher::connect(broker.port, &id_on(0, "full-qos0"));
    for _ in 0..QOS0 {
        assert!(qos0.publish(QoS::AtMostOnce, PADDING));
    }
    assert!(qos0.ping(), "PINGREQ");
    let deadline = Instant::now() + WAIT;
    while qos0.pings.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no PINGRESP after QoS 0 PUBLISHes"
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let bytes = data.shard_bytes(0);
    eprintln!("full: after {QOS0} QoS 0 PUBLISHes, shard 0 spool files {bytes} bytes");
    assert!(
        bytes <= SEGMENT_BYTES + 16 * 1024,
        "spool of shard 0 holds {bytes} bytes, max_bytes is {SEGMENT_BYTES}"
    );

    // Still serving: a new client on each shard is answered.
    for shard in 0..shard_count() {
        let mut other = Publisher::connect(broker.port, &id_on(shard, "full-other"));
        assert!(other.ping());
        let deadline = Instant::now() + WAIT;
        while other.pings.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no PINGRESP on shard {shard}");
            thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(held.acked_count(), acked, "PUBACK while the spool is full");
    assert!(broker.is_running(), "ferrymq exited with a full spool");
}

/// `--spool-when-full refuse`: with the spool of shard 0 full (Kafka unreachable), an MQTT
/// 5.0 publisher on that shard (rumqttc) gets PUBACK and PUBREC 0x97 Quota exceeded at
/// once instead of waiting, each refusal counted in `ferrymq_refused_spool_full`; a 3.1.1
/// publisher, which has no negative acknowledgement, is held as with the default.
#[test]
fn full_spool_refuses_5_0_publishers_with_quota_exceeded_when_configured() {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason, PubRecReason};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{Client, Event, MqttOptions};

    const PADDING: usize = 1000;
    let data = DataDir::new("refuse");
    let topic = kafka::unique("spool-refuse");
    let file = kafka::write_config(&durable_config(&dead_kafka(), &topic, &data, "", ""));
    let max = SEGMENT_BYTES.to_string();
    let metrics_port = common::free_port();
    let broker = Broker::start_with(&[
        "--config",
        file.path_str(),
        "--spool-max-bytes",
        &max,
        "--spool-when-full",
        "refuse",
        "--metrics",
        &format!("127.0.0.1:{metrics_port}"),
    ]);

    // Fill shard 0's spool with a 3.1.1 publisher: PUBACKs until it is full, then none.
    let mut held = Publisher::connect(broker.port, &id_on(0, "refuse-v311"));
    let acked = held.publish_until_held(200, PADDING);
    assert!(acked < 200, "every PUBLISH acknowledged past max_bytes");

    // A 5.0 publisher on the same shard is told at once.
    let client_id = id_on(0, "refuse-v5");
    let mut options = MqttOptions::new(client_id.as_str(), "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 16);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for event in connection.iter() {
            let stop = event.is_err();
            if tx.send(event).is_err() || stop {
                break;
            }
        }
    });
    let topic_v5 = format!("spool/{client_id}");
    for qos in [QoS5::AtLeastOnce, QoS5::AtLeastOnce, QoS5::ExactlyOnce] {
        client
            .publish(topic_v5.as_str(), qos, false, vec![b'x'; PADDING])
            .unwrap();
    }
    let (mut pubacks, mut pubrecs) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + WAIT;
    while pubacks.len() < 2 || pubrecs.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet5::PubAck(ack)))) => pubacks.push(ack.reason),
            Ok(Ok(Event::Incoming(Packet5::PubRec(rec)))) => pubrecs.push(rec.reason),
            Ok(Ok(_)) => {}
            other => panic!("waiting for PUBACK/PUBREC: {other:?} ({pubacks:?} {pubrecs:?})"),
        }
    }
    assert_eq!(
        pubacks,
        [PubAckReason::QuotaExceeded, PubAckReason::QuotaExceeded],
        "QoS 1 refused with 0x97"
    );
    assert_eq!(
        pubrecs,
        [PubRecReason::QuotaExceeded],
        "QoS 2 refused with 0x97"
    );
    let refused = (0..50)
        .map(|_| {
            thread::sleep(Duration::from_millis(100));
            let body = common::metrics::http_get(metrics_port, "/metrics");
            common::metrics::metric(&body, "refused_spool_full").unwrap_or(0)
        })
        .find(|&n| n >= 3)
        .unwrap_or(0);
    assert_eq!(refused, 3, "each refusal counted");
    assert_eq!(
        held.acked_count(),
        acked,
        "the 3.1.1 publisher is still held, not acknowledged"
    );
    assert!(
        !held.closed.load(Ordering::Acquire),
        "held publisher disconnected"
    );
    client.disconnect().unwrap();
}
