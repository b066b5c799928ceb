//! Hostile clients against the real `ferrymq` binary (two shards where the machine has two
//! CPUs) while a well-behaved device publishes QoS 1 through to Kafka: "a flood of bad
//! CONNECTs, malformed packets or slow half-open sockets must not hurt connected clients".
//!
//! One broker with `connect_timeout_ms = 1000`, `connections_max = 300`, a password file
//! (anonymous clients allowed) and a mapping `good/#` → a Kafka topic of its own with
//! `ack = "kafka"`, on the shared Kafka (`$FERRYMQ_KAFKA_BOOTSTRAP`, default
//! 127.0.0.1:9092; never stopped here). While the device publishes 2,000 QoS 1 messages at
//! 200/s and times each PUBACK, threads attack the same port:
//!
//! - malformed packets, round-robin, each on a connection of its own, before and after a
//!   CONNECT (each must be closed by the broker within a few seconds, with the 5.0
//!   CONNACK/DISCONNECT reason code where the specification gives one): garbage bytes and
//!   a PUBLISH as first packet [MQTT-3.1.0-1], a remaining length of five bytes (section
//!   1.5.5 / 3.1.1 section 2.2.3: four bytes at most), a wrong protocol name
//!   [MQTT-3.1.2-1], reserved fixed-header flags [MQTT-2.1.3-1] (3.1.1 [MQTT-2.2.2-2]),
//!   the reserved CONNECT flag [MQTT-3.1.2-3], a client id that is not UTF-8 or holds
//!   U+0000 [MQTT-1.5.4-1], [MQTT-1.5.4-2], a second CONNECT [MQTT-3.1.0-2], QoS 3
//!   [MQTT-3.3.1-4]; 3.1.1 has no DISCONNECT from the server, so there the connection is
//!   just closed [MQTT-4.8.0-1];
//! - slowloris: 150 sockets that send nothing, one byte of a CONNECT every 300 ms, or half
//!   a CONNECT and then nothing: each must be closed once `connect_timeout_ms` has passed
//!   (not before, and within 1.5 s after);
//! - a connect flood for 5 s: threads connecting as fast as they can with a wrong password
//!   (CONNACK 0x86 / 3.1.1 return code 4, [MQTT-3.1.4-2]) or a bad client id (3.1.1 return
//!   code 2 [MQTT-3.1.3-8], 5.0 CONNACK 0x81 [MQTT-1.5.4-1]), and, for its first 3 s,
//!   silent sockets held open so that more than `connections_max` are open: connections
//!   beyond it are closed at once without a word and counted (`connections_refused_max`).
//!
//! Afterwards: the device was never disconnected, its PUBACK p99 during the attack stayed
//! under 2 s, every message it got a PUBACK for is in Kafka (counted by sequence number;
//! duplicates allowed, loss not), the broker is alive, a fresh client connects and
//! publishes, and the Prometheus counters (`--metrics`) show the attack: protocol errors,
//! refusals for `connections_max`, authentication failures.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka;
use common::raw::{encode, read_until_closed_or_timeout, try_open as open, RawClient};
use common::{free_port, Broker};
use ferrymq::auth::{PasswordHash, DEFAULT_ITERATIONS};
use ferrymq::protocol::{Connect, MqttStr, Packet, Protocol, Publish, QoS, ReasonCode};

/// `broker.connect_timeout_ms`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long after the connect timeout a silent socket may still be open.
const TIMEOUT_SLACK: Duration = Duration::from_millis(1500);
/// `broker.connections_max`.
const CONNECTIONS_MAX: usize = 300;
/// QoS 1 messages of the device, one every `PUBLISH_EVERY` (200/s).
const MESSAGES: u16 = 2000;
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// From the device's first PUBLISH: when the malformed packets and the slowloris sockets
/// start, and when the malformed packets stop.
const ATTACK_START: Duration = Duration::from_millis(500);
const ATTACK_END: Duration = Duration::from_millis(9500);
/// From the device's first PUBLISH: the connect flood, and how long of it silent sockets
/// are held open beyond `connections_max`.
const FLOOD_START: Duration = Duration::from_millis(3000);
const FLOOD: Duration = Duration::from_secs(5);
const FLOOD_HOLD: Duration = Duration::from_secs(3);
const FLOOD_THREADS: usize = 4;
/// Silent sockets the flood keeps open at once: more than `connections_max`.
const FLOOD_HELD_SOCKETS: usize = 360;
const SLOWLORIS_SOCKETS: usize = 150;
/// One byte of a CONNECT this often, for the slowloris sockets that trickle.
const TRICKLE_EVERY: Duration = Duration::from_millis(300);
/// Longest a connection the broker must close may stay open.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// PUBACK latency p99 of the device during the attack must stay below this.
const P99_MAX: Duration = Duration::from_secs(2);
/// The device's MQTT topic (mapped to Kafka by `good/#`) and credentials.
const GOOD_TOPIC: &str = "good/device-1";
const USER: &str = "alice";
const PASSWORD: &[u8] = b"right-password";

// ---------------------------------------------------------------------------------------
// Bytes on the wire

/// A CONNECT with `Clean Start`, no keep alive and, when given, user name and password.
fn connect_bytes(
    protocol: Protocol,
    client_id: &str,
    credentials: Option<(&str, &[u8])>,
    clean_start: bool,
) -> Vec<u8> {
    let mut connect = Connect::new(protocol, client_id, 0);
    connect.clean_start = clean_start;
    if let Some((user, password)) = credentials {
        connect.username = Some(MqttStr::from(user));
        connect.password = Some(Bytes::copy_from_slice(password));
    }
    encode(&Packet::Connect(Box::new(connect)), protocol)
}

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Failures seen by attacker threads, asserted empty at the end (threads do not panic, so
/// that every other figure is still printed).
type Failures = Arc<Mutex<Vec<String>>>;

fn fail(failures: &Failures, message: String) {
    let mut failures = failures.lock().unwrap();
    if failures.len() < 50 {
        failures.push(message);
    }
}

// ---------------------------------------------------------------------------------------
// The well-behaved device

/// What the device's reader thread saw.
#[derive(Default)]
struct DeviceLog {
    /// Arrival of the PUBACK of packet id N, at index N.
    acked_at: Vec<Option<Instant>>,
    /// PUBACKs with an error reason code, or for an id never sent or already acknowledged.
    bad_acks: Vec<String>,
    pingresps: usize,
    /// Why the connection ended, if it did.
    ended: Option<String>,
}

/// A 5.0 client speaking the broker's own codec over a std socket: the test thread
/// writes, a reader thread decodes and records.
struct Device {
    stream: TcpStream,
    log: Arc<Mutex<DeviceLog>>,
    reader: Option<JoinHandle<()>>,
    sent_at: Vec<Option<Instant>>,
    write_error: Option<String>,
}

impl Device {
    fn connect(addr: &str, client_id: &str) -> Device {
        let stream = open(addr, Duration::from_secs(10)).expect("device: connect");
        let mut client = RawClient::from_tcp(stream, Protocol::V5);
        client
            .try_send_raw(&connect_bytes(
                Protocol::V5,
                client_id,
                Some((USER, PASSWORD)),
                true,
            ))
            .expect("device: send CONNECT");
        let connack = client.next_or_end();
        match connack {
            Some(Packet::ConnAck(connack)) if connack.reason_code == ReasonCode::Success => {}
            other => panic!("device {client_id}: expected CONNACK 0x00, got {other:?}"),
        }
        client.set_read_timeout(None);
        let stream = client.tcp.try_clone().unwrap();
        let log = Arc::new(Mutex::new(DeviceLog {
            acked_at: vec![None; usize::from(MESSAGES) + 1],
            ..DeviceLog::default()
        }));
        let reader = {
            let log = log.clone();
            thread::spawn(move || loop {
                match client.next_or_end() {
                    Some(Packet::PubAck(ack)) => {
                        let now = Instant::now();
                        let mut log = log.lock().unwrap();
                        let id = usize::from(ack.packet_id);
                        if ack.reason_code.is_error() {
                            log.bad_acks
                                .push(format!("PUBACK {id}: {}", ack.reason_code));
                        } else if id >= log.acked_at.len() || log.acked_at[id].is_some() {
                            log.bad_acks.push(format!("unexpected PUBACK {id}"));
                        } else {
                            log.acked_at[id] = Some(now);
                        }
                    }
                    Some(Packet::PingResp) => log.lock().unwrap().pingresps += 1,
                    Some(other) => {
                        log.lock().unwrap().ended = Some(format!("got {other:?}"));
                        return;
                    }
                    None => {
                        log.lock().unwrap().ended = Some("connection closed by the broker".into());
                        return;
                    }
                }
            })
        };
        Device {
            stream,
            log,
            reader: Some(reader),
            sent_at: vec![None; usize::from(MESSAGES) + 1],
            write_error: None,
        }
    }

    /// Publishes messages 1..=MESSAGES, message N at `start + (N - 1) * PUBLISH_EVERY`.
    fn publish_all(&mut self, start: Instant) {
        for seq in 1..=MESSAGES {
            let due = start + PUBLISH_EVERY * u32::from(seq - 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let mut publish = Publish::new(GOOD_TOPIC, QoS::AtLeastOnce, payload(seq));
            publish.packet_id = seq;
            let bytes = encode(&Packet::Publish(publish), Protocol::V5);
            self.sent_at[usize::from(seq)] = Some(Instant::now());
            if let Err(e) = self.stream.write_all(&bytes) {
                self.write_error = Some(format!("PUBLISH {seq}: {e}"));
                return;
            }
        }
    }

    fn acked(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.acked_at.iter().filter(|at| at.is_some()).count()
    }

    /// Waits until every message sent is acknowledged, the connection ends or `timeout`.
    fn wait_acks(&self, timeout: Duration) {
        let sent = self.sent_at.iter().filter(|at| at.is_some()).count();
        let deadline = Instant::now() + timeout;
        while self.acked() < sent
            && self.log.lock().unwrap().ended.is_none()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// PINGREQ; whether the PINGRESP came within `timeout`.
    fn ping(&mut self, timeout: Duration) -> bool {
        let before = self.log.lock().unwrap().pingresps;
        if self.stream.write_all(&[0xC0, 0x00]).is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().pingresps > before {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Normal DISCONNECT; the reader thread ends with the connection.
    fn disconnect(mut self) {
        let _ = self.stream.write_all(&[0xE0, 0x00]);
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Payload of message `seq`: its sequence number first, for counting in Kafka.
fn payload(seq: u16) -> Vec<u8> {
    format!("seq={seq:05};device-1;{}", "x".repeat(64)).into_bytes()
}

fn seq_of(payload: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(payload).ok()?;
    text.strip_prefix("seq=")?.get(..5)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Malformed packets

/// Connection state before the bad bytes are sent.
#[derive(Clone, Copy, Debug)]
enum Before {
    /// The bad bytes are the first thing on the connection.
    Nothing,
    /// An accepted CONNECT of this version first.
    Connected(Protocol),
}

struct Case {
    name: &'static str,
    spec: &'static str,
    before: Before,
    bytes: Vec<u8>,
    /// Everything the broker must send before it closes the connection.
    answer: Vec<u8>,
}

/// DISCONNECT with one reason code and no properties.
fn disconnect(code: u8) -> Vec<u8> {
    vec![0xE0, 0x02, code, 0x00]
}

/// 5.0 CONNACK refusing with `code`, no properties.
fn connack_v5(code: u8) -> Vec<u8> {
    vec![0x20, 0x03, 0x00, code, 0x00]
}

/// 3.1.1 CONNACK with return code `code`.
fn connack_v311(code: u8) -> Vec<u8> {
    vec![0x20, 0x02, 0x00, code]
}

fn malformed_cases() -> Vec<Case> {
    let v5 = Before::Connected(Protocol::V5);
    let v311 = Before::Connected(Protocol::V3_1_1);
    let mut mqtx_5 = connect_bytes(Protocol::V5, "mqtx", None, true);
    mqtx_5[7] = b'X';
    let mut mqtx_4 = connect_bytes(Protocol::V3_1_1, "mqtx", None, true);
    mqtx_4[7] = b'X';
    let with_level = |level: u8| {
        let mut bytes = connect_bytes(Protocol::V5, "level", None, true);
        bytes[8] = level;
        bytes
    };
    let mut flags_0001 = connect_bytes(Protocol::V5, "flags", None, true);
    flags_0001[0] = 0x11;
    let mut flags_0001_v311 = connect_bytes(Protocol::V3_1_1, "flags", None, true);
    flags_0001_v311[0] = 0x11;
    let mut reserved_connect_flag = connect_bytes(Protocol::V5, "reserved", None, true);
    reserved_connect_flag[9] |= 0x01;
    vec![
        Case {
            name: "garbage: an HTTP request",
            spec: "[MQTT-3.1.0-1] (first packet must be CONNECT), [MQTT-4.8.0-1]",
            before: Before::Nothing,
            bytes: b"GET / HTTP/1.1\r\nHost: ferrymq\r\n\r\n".to_vec(),
            answer: vec![],
        },
        Case {
            name: "garbage: random bytes",
            spec: "[MQTT-3.1.0-1], [MQTT-4.8.0-1]",
            before: Before::Nothing,
            bytes: vec![0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x01, 0x02, 0x03, 0xFF, 0xFE],
            answer: vec![],
        },
        Case {
            name: "garbage: zero bytes (packet type 0, reserved)",
            spec: "section 2.1.2 (type 0 reserved), [MQTT-3.1.0-1]",
            before: Before::Nothing,
            bytes: vec![0; 16],
            answer: vec![],
        },
        Case {
            name: "CONNECT with a remaining length of five bytes",
            spec: "section 1.5.5 (four bytes at most), [MQTT-4.8.0-1]",
            before: Before::Nothing,
            bytes: vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            answer: vec![],
        },
        Case {
            name: "PUBLISH before CONNECT",
            spec: "[MQTT-3.1.0-1]",
            before: Before::Nothing,
            bytes: vec![0x30, 0x03, 0x00, 0x01, b'a'],
            answer: vec![],
        },
        Case {
            name: "5.0 CONNECT with protocol name MQTX",
            spec: "[MQTT-3.1.2-1] (MAY send CONNACK 0x84, then MUST close)",
            before: Before::Nothing,
            bytes: mqtx_5,
            answer: connack_v5(0x84),
        },
        Case {
            // 3.1.1 [MQTT-3.1.2-1] lets the server disconnect; ferrymq answers as for an
            // unknown level (return code 1), which every version can read.
            name: "3.1.1 CONNECT with protocol name MQTX",
            spec: "3.1.1 [MQTT-3.1.2-1]",
            before: Before::Nothing,
            bytes: mqtx_4,
            answer: connack_v311(0x01),
        },
        Case {
            // A version newer than 5 is answered in 5.0's form, which its client most
            // likely reads; the MQTT 5.0 conformance suite expects exactly this.
            name: "CONNECT with protocol level 99",
            spec: "[MQTT-3.1.2-2] (MAY send CONNACK 0x84, then MUST close)",
            before: Before::Nothing,
            bytes: with_level(99),
            answer: connack_v5(0x84),
        },
        Case {
            name: "CONNECT with protocol level 6",
            spec: "[MQTT-3.1.2-2]",
            before: Before::Nothing,
            bytes: with_level(6),
            answer: connack_v5(0x84),
        },
        Case {
            // Below 3 no version exists; the 3.1.1 form is what 3.1 and 3.1.1 clients read.
            name: "CONNECT with protocol level 2",
            spec: "3.1.1 [MQTT-3.1.2-2] (return code 0x01, then close)",
            before: Before::Nothing,
            bytes: with_level(2),
            answer: connack_v311(0x01),
        },
        Case {
            name: "5.0 CONNECT with fixed-header flags 0001",
            spec: "[MQTT-2.1.3-1] (a Malformed Packet: CONNACK 0x81, section 4.13.1)",
            before: Before::Nothing,
            bytes: flags_0001,
            answer: connack_v5(0x81),
        },
        Case {
            name: "3.1.1 CONNECT with fixed-header flags 0001",
            spec: "3.1.1 [MQTT-2.2.2-2]",
            before: Before::Nothing,
            bytes: flags_0001_v311,
            answer: vec![],
        },
        Case {
            name: "5.0 CONNECT with the reserved connect flag set",
            spec: "[MQTT-3.1.2-3]",
            before: Before::Nothing,
            bytes: reserved_connect_flag,
            answer: connack_v5(0x81),
        },
        Case {
            name: "5.0 CONNECT with a client id that is not UTF-8",
            spec: "[MQTT-1.5.4-1]",
            before: Before::Nothing,
            bytes: [
                &[0x10, 0x0F, 0x00, 0x04][..],
                b"MQTT",
                &[0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x02, 0xC3, 0x28],
            ]
            .concat(),
            answer: connack_v5(0x81),
        },
        Case {
            name: "5.0 CONNECT with a client id holding U+0000",
            spec: "[MQTT-1.5.4-2]",
            before: Before::Nothing,
            bytes: [
                &[0x10, 0x0F, 0x00, 0x04][..],
                b"MQTT",
                &[0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x02, b'a', 0x00],
            ]
            .concat(),
            answer: connack_v5(0x81),
        },
        Case {
            name: "5.0 second CONNECT",
            spec: "[MQTT-3.1.0-2]",
            before: v5,
            bytes: connect_bytes(Protocol::V5, "again", None, true),
            answer: disconnect(0x82),
        },
        Case {
            name: "5.0 PINGREQ with a reserved flag bit set",
            spec: "[MQTT-2.1.3-1]",
            before: v5,
            bytes: vec![0xC1, 0x00],
            answer: disconnect(0x81),
        },
        Case {
            name: "5.0 PUBLISH with QoS 3",
            spec: "[MQTT-3.3.1-4]",
            before: v5,
            bytes: vec![0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
            answer: disconnect(0x81),
        },
        Case {
            name: "5.0 remaining length of five bytes",
            spec: "section 1.5.5 (four bytes at most)",
            before: v5,
            bytes: vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            answer: disconnect(0x81),
        },
        Case {
            name: "5.0 PUBLISH topic that is not UTF-8",
            spec: "[MQTT-1.5.4-1]",
            before: v5,
            bytes: vec![0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00],
            answer: disconnect(0x81),
        },
        Case {
            name: "3.1.1 second CONNECT",
            spec: "3.1.1 [MQTT-3.1.0-2]",
            before: v311,
            bytes: connect_bytes(Protocol::V3_1_1, "again", None, true),
            answer: vec![],
        },
        Case {
            name: "3.1.1 PINGREQ with a reserved flag bit set",
            spec: "3.1.1 [MQTT-2.2.2-2]",
            before: v311,
            bytes: vec![0xC1, 0x00],
            answer: vec![],
        },
    ]
}

/// Per case: attempts that got the whole expected answer, and attempts closed at once
/// without a word where an answer was due (refused at accept for `connections_max`).
#[derive(Default, Clone, Copy)]
struct CaseTally {
    answered: u64,
    refused_at_accept: u64,
}

#[derive(Default)]
struct MalformedReport {
    tallies: Vec<CaseTally>,
    /// Longest time from sending the bad bytes to the broker closing.
    slowest_close: Duration,
}

/// Sends the cases round-robin from `first`, each on a connection of its own, until
/// `stop`.
fn malformed_attacker(
    addr: String,
    worker: usize,
    first: usize,
    stop: Arc<AtomicBool>,
    failures: Failures,
) -> MalformedReport {
    let cases = malformed_cases();
    let mut report = MalformedReport {
        tallies: vec![CaseTally::default(); cases.len()],
        ..MalformedReport::default()
    };
    let mut attempt = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let index = (first + attempt) % cases.len();
        attempt += 1;
        let case = &cases[index];
        let Some(mut stream) = open(&addr, CLOSE_WITHIN) else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        if let Before::Connected(protocol) = case.before {
            let id = format!("bad-{worker}-{attempt}");
            let mut client = RawClient::from_tcp(stream, protocol);
            let _ = client.try_send_raw(&connect_bytes(protocol, &id, None, true));
            let connack = client.next_or_end();
            stream = client.tcp;
            match connack {
                Some(Packet::ConnAck(connack)) if connack.reason_code == ReasonCode::Success => {}
                // Closed before any CONNACK: refused at accept, try again later.
                None => {
                    report.tallies[index].refused_at_accept += 1;
                    continue;
                }
                other => {
                    fail(
                        &failures,
                        format!("{}: CONNECT before the bad bytes got {other:?}", case.name),
                    );
                    continue;
                }
            }
        }
        let sent = Instant::now();
        let _ = stream.write_all(&case.bytes);
        let (answer, closed) = read_until_closed_or_timeout(&mut stream);
        let waited = sent.elapsed();
        if !closed {
            fail(
                &failures,
                format!(
                    "{} ({}): connection still open {waited:?} after the bad bytes; \
                     received {answer:02X?}",
                    case.name, case.spec
                ),
            );
            continue;
        }
        report.slowest_close = report.slowest_close.max(waited);
        if answer == case.answer {
            report.tallies[index].answered += 1;
        } else if answer.is_empty() && matches!(case.before, Before::Nothing) {
            report.tallies[index].refused_at_accept += 1;
        } else {
            fail(
                &failures,
                format!(
                    "{} ({}): the broker answered {answer:02X?} before closing, want {:02X?}",
                    case.name, case.spec, case.answer
                ),
            );
        }
    }
    report
}

// ---------------------------------------------------------------------------------------
// Slowloris

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slow {
    /// Connects and sends nothing.
    Silent,
    /// One byte of a CONNECT every `TRICKLE_EVERY`.
    Trickle,
    /// The fixed header and half of a CONNECT at once, then nothing.
    HalfPacket,
}

struct SlowReport {
    /// Time from connect to the broker closing, per socket; None if never closed.
    closed_after: Vec<(Slow, Option<Duration>)>,
}

/// Opens `SLOWLORIS_SOCKETS` slow sockets and watches them until each is closed or
/// `CONNECT_TIMEOUT + TIMEOUT_SLACK + 2 s` passed.
fn slowloris(addr: String, failures: Failures) -> SlowReport {
    let connect = connect_bytes(Protocol::V3_1_1, "slowloris", None, true);
    struct Socket {
        stream: TcpStream,
        kind: Slow,
        opened: Instant,
        sent: usize,
        next_byte: Instant,
        closed_after: Option<Duration>,
    }
    let mut sockets = Vec::new();
    for n in 0..SLOWLORIS_SOCKETS {
        let kind = [Slow::Silent, Slow::Trickle, Slow::HalfPacket][n % 3];
        let Some(mut stream) = open(&addr, CLOSE_WITHIN) else {
            fail(&failures, format!("slowloris {n}: could not connect"));
            continue;
        };
        let opened = Instant::now();
        let mut sent = 0;
        match kind {
            Slow::Silent => {}
            Slow::Trickle => {
                let _ = stream.write_all(&connect[..1]);
                sent = 1;
            }
            Slow::HalfPacket => {
                sent = connect.len() / 2;
                let _ = stream.write_all(&connect[..sent]);
            }
        }
        stream.set_nonblocking(true).unwrap();
        sockets.push(Socket {
            stream,
            kind,
            opened,
            sent,
            next_byte: opened + TRICKLE_EVERY,
            closed_after: None,
        });
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT + TIMEOUT_SLACK + Duration::from_secs(2);
    let mut chunk = [0u8; 64];
    while Instant::now() < deadline && sockets.iter().any(|s| s.closed_after.is_none()) {
        for socket in sockets.iter_mut().filter(|s| s.closed_after.is_none()) {
            let now = Instant::now();
            if socket.kind == Slow::Trickle
                && now >= socket.next_byte
                && socket.sent < connect.len()
            {
                // A failed write means the broker closed; the read below sees it too.
                let _ = socket.stream.write(&connect[socket.sent..socket.sent + 1]);
                socket.sent += 1;
                socket.next_byte = now + TRICKLE_EVERY;
            }
            match socket.stream.read(&mut chunk) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Ok(n) if n > 0 => fail(
                    &failures,
                    format!(
                        "slowloris {:?}: the broker sent {:02X?} before any CONNECT",
                        socket.kind,
                        &chunk[..n]
                    ),
                ),
                Ok(_) | Err(_) => socket.closed_after = Some(socket.opened.elapsed()),
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    SlowReport {
        closed_after: sockets.iter().map(|s| (s.kind, s.closed_after)).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Connect flood

#[derive(Default)]
struct FloodReport {
    connections: u64,
    /// Answered with the refusing CONNACK the bad CONNECT deserves.
    refused_connack: u64,
    /// Closed without a word: refused at accept for `connections_max`.
    refused_at_accept: u64,
    /// Time from connect to close of those refused at accept.
    refused_close: Vec<Duration>,
    /// Connections the client side could not open (ephemeral ports, backlog).
    connect_errors: u64,
}

/// Connects as fast as it can until `end`, each time with one of the bad CONNECTs.
fn flood(addr: String, worker: usize, end: Instant, failures: Failures) -> FloodReport {
    let user = Some((USER, &b"wrong-password"[..]));
    // (CONNECT, the refusing CONNACK it must get, what it is)
    let kinds: [(Vec<u8>, Vec<u8>, &str); 4] = [
        (
            connect_bytes(Protocol::V5, &format!("flood-{worker}"), user, true),
            // [MQTT-3.1.4-2]: 0x86 Bad User Name or Password.
            connack_v5(0x86),
            "5.0 wrong password",
        ),
        (
            connect_bytes(Protocol::V3_1_1, &format!("flood-{worker}"), user, true),
            // 3.1.1 return code 4: bad user name or password.
            connack_v311(0x04),
            "3.1.1 wrong password",
        ),
        (
            connect_bytes(Protocol::V3_1_1, "", None, false),
            // 3.1.1 [MQTT-3.1.3-8]: an empty client id needs Clean Session: return code 2.
            connack_v311(0x02),
            "3.1.1 empty client id without Clean Session",
        ),
        (
            [
                &[0x10, 0x0F, 0x00, 0x04][..],
                b"MQTT",
                &[0x05, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0xFF, 0xFE],
            ]
            .concat(),
            // [MQTT-1.5.4-1]: a client id that is not UTF-8 is malformed: 0x81.
            connack_v5(0x81),
            "5.0 client id not UTF-8",
        ),
    ];
    let mut report = FloodReport::default();
    while Instant::now() < end {
        let (connect, expected, what) = &kinds[report.connections as usize % kinds.len()];
        let Some(mut stream) = open(&addr, CLOSE_WITHIN) else {
            report.connect_errors += 1;
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        let opened = Instant::now();
        report.connections += 1;
        let _ = stream.write_all(connect);
        let (answer, closed) = read_until_closed_or_timeout(&mut stream);
        if !closed {
            fail(
                &failures,
                format!("flood ({what}): still open after {CLOSE_WITHIN:?}, got {answer:02X?}"),
            );
        } else if answer == *expected {
            report.refused_connack += 1;
        } else if answer.is_empty() {
            report.refused_at_accept += 1;
            report.refused_close.push(opened.elapsed());
        } else {
            fail(
                &failures,
                format!("flood ({what}): answered {answer:02X?}, want {expected:02X?} or nothing"),
            );
        }
    }
    report
}

#[derive(Default)]
struct HoldReport {
    opened: u64,
    /// Closed well before the connect timeout: refused at accept.
    refused_at_accept: u64,
    /// Closed by the connect timeout.
    timed_out: u64,
    most_open: usize,
}

/// Keeps `FLOOD_HELD_SOCKETS` silent sockets open until `end`, replacing each one the
/// broker closes, so that more than `connections_max` connections are open.
fn hold_open(addr: String, end: Instant, failures: Failures) -> HoldReport {
    let mut report = HoldReport::default();
    let mut held: Vec<(TcpStream, Instant)> = Vec::new();
    let mut chunk = [0u8; 16];
    while Instant::now() < end {
        while held.len() < FLOOD_HELD_SOCKETS {
            let Some(stream) = open(&addr, CLOSE_WITHIN) else {
                break;
            };
            stream.set_nonblocking(true).unwrap();
            held.push((stream, Instant::now()));
            report.opened += 1;
        }
        report.most_open = report.most_open.max(held.len());
        held.retain_mut(|(stream, opened)| {
            let open_for = opened.elapsed();
            match stream.read(&mut chunk) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if open_for > CONNECT_TIMEOUT + TIMEOUT_SLACK {
                        fail(
                            &failures,
                            format!("a silent socket is still open {open_for:?} after connect"),
                        );
                        return false;
                    }
                    true
                }
                Ok(n) if n > 0 => {
                    fail(
                        &failures,
                        format!("silent socket: the broker sent {:02X?}", &chunk[..n]),
                    );
                    false
                }
                Ok(_) | Err(_) => {
                    if open_for < CONNECT_TIMEOUT / 2 {
                        report.refused_at_accept += 1;
                    } else {
                        report.timed_out += 1;
                    }
                    false
                }
            }
        });
        thread::sleep(Duration::from_millis(10));
    }
    report
}

// ---------------------------------------------------------------------------------------
// Afterwards

/// GET /metrics: the value of each `ferrymq_NAME VALUE` line without labels.
fn metrics(port: u16) -> BTreeMap<String, f64> {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return BTreeMap::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .lines()
        .filter(|line| !line.starts_with('#') && !line.contains('{'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `ferrymq_NAME`, or `ferrymq_NAME_total` should the counter be renamed so.
fn metric(values: &BTreeMap<String, f64>, name: &str) -> u64 {
    values
        .get(name)
        .or_else(|| values.get(&format!("{name}_total")))
        .copied()
        .unwrap_or(0.0) as u64
}

/// A new 3.1.1 client after the attack: connects (retrying while places are still taken,
/// up to 5 s) and publishes one QoS 1 message on `topic`; the number of attempts it took.
fn fresh_client_publishes(addr: &str, topic: &str, payload: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    for attempt in 1.. {
        let stream = open(addr, CLOSE_WITHIN).expect("fresh client: connect");
        let mut client = RawClient::from_tcp(stream, Protocol::V3_1_1);
        let connect = connect_bytes(
            Protocol::V3_1_1,
            "fresh-after-attack",
            Some((USER, PASSWORD)),
            true,
        );
        client
            .try_send_raw(&connect)
            .expect("fresh client: CONNECT");
        match client.next_or_end() {
            Some(Packet::ConnAck(connack)) if connack.reason_code == ReasonCode::Success => {}
            None if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            other => panic!("fresh client after the attack: expected CONNACK 0, got {other:?}"),
        }
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        publish.packet_id = 1;
        client
            .try_send(&Packet::Publish(publish))
            .expect("fresh client: PUBLISH");
        client.set_read_timeout(Some(Duration::from_secs(15)));
        match client.next_or_end() {
            Some(Packet::PubAck(ack)) if ack.packet_id == 1 => {}
            other => panic!("fresh client after the attack: expected PUBACK 1, got {other:?}"),
        }
        let _ = client.try_send_raw(&[0xE0, 0x00]);
        return attempt;
    }
    unreachable!()
}

/// Opens `count` silent sockets at once: how many the broker closed at once (refused at
/// accept, as if `connections_max` were reached), or None when opening them took too long
/// to tell a refusal from the connect timeout.
fn refused_of(addr: &str, count: usize) -> Option<usize> {
    let first = Instant::now();
    let mut sockets: Vec<TcpStream> = (0..count)
        .filter_map(|_| open(addr, CLOSE_WITHIN))
        .collect();
    let mut refused = count - sockets.len();
    thread::sleep(Duration::from_millis(300));
    let mut chunk = [0u8; 16];
    for socket in &mut sockets {
        socket.set_nonblocking(true).unwrap();
        match socket.read(&mut chunk) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => refused += 1,
        }
    }
    (first.elapsed() < CONNECT_TIMEOUT * 8 / 10).then_some(refused)
}

// ---------------------------------------------------------------------------------------
// The test

#[test]
fn hostile_clients_do_not_hurt_a_publisher_whose_qos1_messages_all_reach_kafka() {
    let bootstrap = kafka::bootstrap();
    let topic = kafka::unique("hostile");
    kafka::create_topic(&bootstrap, &topic, 1);
    let passwd = kafka::ConfigFile {
        path: std::env::temp_dir().join(kafka::unique("ferrymq-hostile-passwd")),
    };
    let hash = PasswordHash::new(PASSWORD, DEFAULT_ITERATIONS).expect("hash a password");
    std::fs::write(&passwd.path, format!("{USER}:{hash}\n")).expect("write password file");
    let metrics_port = free_port();
    let mut broker = Broker::start_with_config(
        &format!(
            r#"
[broker]
connect_timeout_ms = {timeout}
connections_max = {max}

[auth]
password_file = "{passwd}"
allow_anonymous = true

[kafka.clusters.main]
bootstrap = "{bootstrap}"

[[kafka.mapping]]
mqtt = "good/#"
topic = "{topic}"
ack = "kafka"
"#,
            timeout = CONNECT_TIMEOUT.as_millis(),
            max = CONNECTIONS_MAX,
            passwd = passwd.path_str(),
        ),
        &["--metrics", &format!("127.0.0.1:{metrics_port}")],
    );
    let addr = broker.addr();
    let failures: Failures = Arc::default();

    // The device connects before the attack and publishes through it.
    let mut device = Device::connect(&addr, "good-device-1");
    let start = Instant::now();
    let publisher = thread::spawn(move || {
        device.publish_all(start);
        device
    });

    thread::sleep(ATTACK_START.saturating_sub(start.elapsed()));
    let attack_started = Instant::now();
    let stop_malformed = Arc::new(AtomicBool::new(false));
    let malformed: Vec<_> = (0..2)
        .map(|worker| {
            let (addr, stop, failures) = (addr.clone(), stop_malformed.clone(), failures.clone());
            let first = worker * malformed_cases().len() / 2;
            thread::spawn(move || malformed_attacker(addr, worker, first, stop, failures))
        })
        .collect();
    let slow = {
        let (addr, failures) = (addr.clone(), failures.clone());
        thread::spawn(move || slowloris(addr, failures))
    };

    thread::sleep(FLOOD_START.saturating_sub(start.elapsed()));
    // Below connections_max nothing is refused (the board is at most a second old).
    let refused_before_flood = metric(&metrics(metrics_port), "ferrymq_connections_refused_max");
    let flood_started = Instant::now();
    let flood_end = flood_started + FLOOD;
    let holder = {
        let (addr, failures) = (addr.clone(), failures.clone());
        let end = flood_started + FLOOD_HOLD;
        thread::spawn(move || hold_open(addr, end, failures))
    };
    let flooders: Vec<_> = (0..FLOOD_THREADS)
        .map(|worker| {
            let (addr, failures) = (addr.clone(), failures.clone());
            thread::spawn(move || flood(addr, worker, flood_end, failures))
        })
        .collect();

    let hold = holder.join().expect("holder thread");
    let floods: Vec<FloodReport> = flooders
        .into_iter()
        .map(|f| f.join().expect("flood thread"))
        .collect();
    let slow = slow.join().expect("slowloris thread");
    thread::sleep(ATTACK_END.saturating_sub(start.elapsed()));
    stop_malformed.store(true, Ordering::Relaxed);
    let malformed: Vec<MalformedReport> = malformed
        .into_iter()
        .map(|m| m.join().expect("malformed thread"))
        .collect();
    let attack_ended = Instant::now();

    let mut device = publisher.join().expect("publisher thread");
    device.wait_acks(Duration::from_secs(20));
    let device_alive = device.ping(Duration::from_secs(5));

    // ---- Figures.
    let cases = malformed_cases();
    let mut tallies = vec![CaseTally::default(); cases.len()];
    let mut slowest_malformed_close = Duration::ZERO;
    for report in &malformed {
        for (total, tally) in tallies.iter_mut().zip(&report.tallies) {
            total.answered += tally.answered;
            total.refused_at_accept += tally.refused_at_accept;
        }
        slowest_malformed_close = slowest_malformed_close.max(report.slowest_close);
    }
    let malformed_answered: u64 = tallies.iter().map(|t| t.answered).sum();
    let malformed_refused: u64 = tallies.iter().map(|t| t.refused_at_accept).sum();
    // Answers that are a CONNACK or DISCONNECT for a protocol error or malformed packet:
    // each is one protocol error on the broker's count.
    let protocol_errors_seen: u64 = cases
        .iter()
        .zip(&tallies)
        .filter(|(case, _)| !case.answer.is_empty())
        .map(|(_, tally)| tally.answered)
        .sum();
    let flood_connections: u64 = floods.iter().map(|f| f.connections).sum();
    let flood_refused_connack: u64 = floods.iter().map(|f| f.refused_connack).sum();
    let flood_refused_at_accept: u64 = floods.iter().map(|f| f.refused_at_accept).sum();
    let flood_connect_errors: u64 = floods.iter().map(|f| f.connect_errors).sum();
    let mut refused_close: Vec<Duration> = floods
        .iter()
        .flat_map(|f| f.refused_close.iter().copied())
        .collect();
    refused_close.sort();

    let (acked, latencies_attack, latencies_all, sent) = {
        let log = device.log.lock().unwrap();
        let mut during = Vec::new();
        let mut all = Vec::new();
        for seq in 1..=usize::from(MESSAGES) {
            if let (Some(sent), Some(acked)) = (device.sent_at[seq], log.acked_at[seq]) {
                let latency = acked.saturating_duration_since(sent);
                all.push(latency);
                if sent >= attack_started && sent <= attack_ended {
                    during.push(latency);
                }
            }
        }
        during.sort();
        all.sort();
        let acked: Vec<u16> = (1..=MESSAGES)
            .filter(|&seq| log.acked_at[usize::from(seq)].is_some())
            .collect();
        let sent = device.sent_at.iter().filter(|at| at.is_some()).count();
        (acked, during, all, sent)
    };
    let p99_attack = quantile(&latencies_attack, 0.99);

    eprintln!("--- hostile clients: figures");
    eprintln!(
        "device: {sent} QoS 1 sent, {} acknowledged; PUBACK latency during the attack \
         ({} messages): p50 {:?}, p99 {:?}, max {:?}; overall p99 {:?}",
        acked.len(),
        latencies_attack.len(),
        quantile(&latencies_attack, 0.5),
        p99_attack,
        latencies_attack.last().copied().unwrap_or_default(),
        quantile(&latencies_all, 0.99),
    );
    let closed: Vec<Duration> = slow.closed_after.iter().filter_map(|(_, c)| *c).collect();
    eprintln!(
        "slowloris: {} sockets, {} closed by the connect timeout, after {:?} ..= {:?}",
        slow.closed_after.len(),
        closed.len(),
        closed.iter().min().copied().unwrap_or_default(),
        closed.iter().max().copied().unwrap_or_default(),
    );
    eprintln!(
        "flood: {flood_connections} connections in {FLOOD:?} ({:.0}/s): {flood_refused_connack} \
         refused by CONNACK, {flood_refused_at_accept} refused at accept (closed after p50 {:?}, \
         p99 {:?}, max {:?}), {flood_connect_errors} client-side connect errors",
        flood_connections as f64 / FLOOD.as_secs_f64(),
        quantile(&refused_close, 0.5),
        quantile(&refused_close, 0.99),
        refused_close.last().copied().unwrap_or_default(),
    );
    eprintln!(
        "held silent sockets: {} opened, at most {} open at once, {} refused at accept, {} \
         closed by the connect timeout",
        hold.opened, hold.most_open, hold.refused_at_accept, hold.timed_out
    );
    eprintln!(
        "malformed: {malformed_answered} answered as the specification says, \
         {malformed_refused} refused at accept; slowest close {slowest_malformed_close:?}"
    );
    for (case, tally) in cases.iter().zip(&tallies) {
        eprintln!(
            "  {:>4} answered, {:>3} refused at accept: {} {}",
            tally.answered, tally.refused_at_accept, case.name, case.spec
        );
    }

    // ---- The attackers saw what the specification says.
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "attack failures:\n{}",
        failures.join("\n")
    );
    for (case, tally) in cases.iter().zip(&tallies) {
        assert!(
            tally.answered > 0,
            "{} ({}): never answered by the broker (only refused at accept)",
            case.name,
            case.spec
        );
    }
    for (kind, closed_after) in &slow.closed_after {
        let closed_after = closed_after.unwrap_or_else(|| {
            panic!("slowloris {kind:?}: never closed (connect timeout {CONNECT_TIMEOUT:?})")
        });
        assert!(
            closed_after >= CONNECT_TIMEOUT.mul_f64(0.9)
                && closed_after <= CONNECT_TIMEOUT + TIMEOUT_SLACK,
            "slowloris {kind:?}: closed {closed_after:?} after connect, want the connect \
             timeout {CONNECT_TIMEOUT:?} (+ up to {TIMEOUT_SLACK:?})"
        );
    }
    assert_eq!(
        refused_before_flood, 0,
        "connections refused for connections_max before the flood, with fewer open"
    );
    assert!(
        hold.most_open > CONNECTIONS_MAX && hold.refused_at_accept > 0,
        "beyond connections_max {CONNECTIONS_MAX}: {} sockets held, {} refused at accept",
        hold.most_open,
        hold.refused_at_accept
    );
    assert!(
        flood_refused_connack > 0,
        "no bad CONNECT of the flood was answered"
    );
    if let Some(slowest) = refused_close.last() {
        assert!(
            *slowest < CONNECT_TIMEOUT,
            "a connection refused at accept was closed only after {slowest:?} (not at once)"
        );
    }

    // ---- The device was not hurt.
    {
        let log = device.log.lock().unwrap();
        assert_eq!(
            log.ended, None,
            "the well-behaved device was disconnected during the attack"
        );
        assert!(
            log.bad_acks.is_empty(),
            "device PUBACKs: {:?}",
            log.bad_acks
        );
    }
    assert_eq!(device.write_error, None, "the device could not publish");
    assert!(device_alive, "the device got no PINGRESP after the attack");
    assert_eq!(
        acked.len(),
        usize::from(MESSAGES),
        "QoS 1 messages of the device acknowledged"
    );
    assert!(
        p99_attack < P99_MAX,
        "PUBACK latency p99 during the attack: {p99_attack:?} (limit {P99_MAX:?})"
    );

    // ---- The broker still serves new clients.
    assert!(broker.is_running(), "the broker process died");
    let attempts = fresh_client_publishes(&addr, "good/device-2", b"fresh-after-attack");
    eprintln!("fresh client: connected and published after {attempts} attempt(s)");
    // No place was leaked: with the device connected, connections_max - 1 more sockets
    // are all accepted (a few tries, as the last closes may still be under way).
    let mut refused_after = Vec::new();
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(500));
        let refused = refused_of(&addr, CONNECTIONS_MAX - 1);
        refused_after.push(refused);
        if refused == Some(0) {
            break;
        }
    }
    eprintln!(
        "after the attack, {} silent sockets beside the device: refused at accept per try \
         {refused_after:?}",
        CONNECTIONS_MAX - 1
    );
    assert_eq!(
        refused_after.last(),
        Some(&Some(0)),
        "after the attack, {} connections beside the device were refused: places of \
         connections_max leaked (the broker's count of open connections did not come back)",
        CONNECTIONS_MAX - 1
    );
    device.disconnect();

    // ---- Kafka has every message the device got a PUBACK for.
    let records = kafka::read_topic(&bootstrap, &topic, acked.len() + 1, Duration::from_secs(30));
    let mut found: BTreeMap<u16, usize> = BTreeMap::new();
    for record in &records {
        if let Some(seq) = seq_of(&record.payload) {
            *found.entry(seq).or_default() += 1;
        }
    }
    let missing: Vec<u16> = acked
        .iter()
        .copied()
        .filter(|seq| !found.contains_key(seq))
        .collect();
    let duplicates: usize = found.values().map(|n| n - 1).sum();
    let fresh_found = records
        .iter()
        .any(|r| r.payload.as_slice() == b"fresh-after-attack");
    eprintln!(
        "kafka: {} records, {} of {} acknowledged messages found, {} missing, {} duplicates",
        records.len(),
        acked.len() - missing.len(),
        acked.len(),
        missing.len(),
        duplicates
    );
    assert!(
        missing.is_empty(),
        "acknowledged QoS 1 messages missing from Kafka topic {topic}: {} (first {:?})",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        fresh_found,
        "the fresh client's message is not in Kafka topic {topic}"
    );

    // ---- The counters show the attack (snapshots reach the board once a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    let counters = loop {
        let values = metrics(metrics_port);
        let done = metric(&values, "ferrymq_protocol_errors") >= protocol_errors_seen
            && metric(&values, "ferrymq_connections_refused_max")
                >= flood_refused_at_accept + hold.refused_at_accept
            && metric(&values, "ferrymq_auth_failures") > 0;
        if done || Instant::now() >= deadline {
            break values;
        }
        thread::sleep(Duration::from_millis(250));
    };
    let protocol_errors = metric(&counters, "ferrymq_protocol_errors");
    let refused_max = metric(&counters, "ferrymq_connections_refused_max");
    let auth_failures = metric(&counters, "ferrymq_auth_failures");
    eprintln!(
        "broker counters: protocol_errors {protocol_errors}, connections_refused_max \
         {refused_max}, auth_failures {auth_failures}, connections_accepted {}",
        metric(&counters, "ferrymq_connections_accepted")
    );
    assert!(
        protocol_errors > 0 && protocol_errors >= protocol_errors_seen,
        "ferrymq_protocol_errors {protocol_errors}: the attackers got {protocol_errors_seen} \
         protocol-error answers"
    );
    assert!(
        refused_max > 0 && refused_max >= flood_refused_at_accept + hold.refused_at_accept,
        "ferrymq_connections_refused_max {refused_max}: the flood saw {} refused at accept",
        flood_refused_at_accept + hold.refused_at_accept
    );
    assert!(auth_failures > 0, "ferrymq_auth_failures {auth_failures}");
    let stderr = broker.stderr_text();
    assert!(
        !stderr.contains("panicked"),
        "the broker panicked:\n{stderr}"
    );
    assert!(broker.is_running(), "the broker process died");
}
