//! The broker and its open-files limit. Each connection holds one descriptor, so
//! RLIMIT_NOFILE, not `connections_max`, is often the real cap. The broker raises its soft
//! limit as far as `connections_max` needs, warns at start in one line when the hard limit
//! is lower, and when accepts fail for want of descriptors it counts them
//! (`accept_errors`), logs why (at most once every few seconds) and keeps retrying: the
//! clients wait in the listen backlog, and are served, not lost, once descriptors free up.
//!
//! Clients are raw sockets sending a 3.1.1 CONNECT written out byte by byte, so that a few
//! hundred of them cost this test nothing but sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::metrics::{http_get, metric};
use common::raw::encode;
use common::{free_port, Broker};
use ferrymq::protocol::{Connect, Packet, Protocol};

/// The broker's open-files limit in this test (soft and hard).
const OPEN_FILES: u64 = 200;
/// Clients that try to connect: more than `OPEN_FILES` descriptors can hold.
const CLIENTS: usize = 260;
/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(20);

/// A 3.1.1 CONNECT with clean session, keep alive 60 s and `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let connect = Connect::new(Protocol::V3_1_1, client_id, 60);
    encode(&Packet::Connect(Box::new(connect)), Protocol::V3_1_1)
}

struct Client {
    stream: TcpStream,
    connacked: bool,
}

impl Client {
    fn open(port: u16, n: usize) -> Client {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("TCP connect");
        stream
            .write_all(&connect_packet(&format!("open-files-{n}")))
            .unwrap();
        stream.set_nonblocking(true).unwrap();
        Client {
            stream,
            connacked: false,
        }
    }

    /// Reads a CONNACK if one arrived; a successful one ([MQTT-3.2.2-3]: 0x20 0x02, flags,
    /// return code 0) marks the client connected.
    fn poll_connack(&mut self) {
        if self.connacked {
            return;
        }
        let mut connack = [0u8; 4];
        if let Ok(4) = self.stream.peek(&mut connack) {
            assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK");
            self.stream.read_exact(&mut connack).unwrap();
            self.connacked = true;
        }
    }
}

/// Polls every client until `done` holds for the count of connected ones or `WAIT` passes;
/// returns that count.
fn connected_when(clients: &mut [Client], done: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        clients.iter_mut().for_each(Client::poll_connack);
        let connected = clients.iter().filter(|c| c.connacked).count();
        if done(connected) || Instant::now() >= deadline {
            return connected;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The broker's stderr once it holds `text`, or after `WAIT`.
fn log_containing(broker: &Broker, text: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = broker.stderr_text();
        if log.contains(text) || Instant::now() >= deadline {
            return log;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clients_beyond_the_open_files_limit_wait_are_counted_and_are_served_once_descriptors_free_up() {
    let metrics_port = free_port();
    let broker = Broker::start_with_open_files_limit(
        &[
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
            "--connections-max",
            "5000",
        ],
        OPEN_FILES,
    );
    let start_log = log_containing(&broker, "open files: the limit");
    assert!(
        start_log.contains("open files: the limit of 200 descriptors")
            && start_log.contains("broker.connections_max = 5000"),
        "one line at start warns that the limit holds fewer connections than the \
         connections_max asked for: {start_log}"
    );

    // More clients than descriptors: the kernel completes every TCP handshake (the listen
    // backlog), the broker accepts until it runs out of descriptors.
    let mut clients: Vec<Client> = (0..CLIENTS).map(|n| Client::open(broker.port, n)).collect();
    let mut served = 0;
    let settled = Instant::now() + WAIT;
    // Settled when no client got its CONNACK for a second.
    let mut last_change = Instant::now();
    while Instant::now() < settled && last_change.elapsed() < Duration::from_secs(1) {
        let now = connected_when(&mut clients, |_| true);
        if now != served {
            served = now;
            last_change = Instant::now();
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        served > 0 && served < CLIENTS,
        "with {OPEN_FILES} descriptors the broker serves some but not all of {CLIENTS} \
         clients: {served}"
    );
    let waiting = CLIENTS - served;

    let deadline = Instant::now() + WAIT;
    let accept_errors = loop {
        let errors = metric(&http_get(metrics_port, "/metrics"), "accept_errors").unwrap_or(0);
        if errors > 0 || Instant::now() >= deadline {
            break errors;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        accept_errors > 0,
        "failed accepts are counted in ferrymq_accept_errors"
    );
    let log = log_containing(&broker, "failed: Too many open files");
    assert!(
        log.contains("failed: Too many open files") && log.contains("tuning.md"),
        "the log says why accepts fail and where to read about it: {log}"
    );

    // Free descriptors: every waiting client is then accepted and gets its CONNACK.
    let closing = waiting + 10;
    let mut closed = 0;
    clients.retain(|client| {
        if client.connacked && closed < closing {
            closed += 1;
            false
        } else {
            true
        }
    });
    assert_eq!(closed, closing.min(served), "connected clients closed");
    let total = clients.len();
    let now_served = connected_when(&mut clients, |connected| connected == total);
    let closed_by_broker = clients
        .iter()
        .filter(|c| !c.connacked && matches!(c.stream.peek(&mut [0u8; 1]), Ok(0)))
        .count();
    assert_eq!(
        now_served, total,
        "after {closed} connections closed, the {waiting} clients that waited in the \
         backlog are served too ({closed_by_broker} of those left were closed by the broker)"
    );
    broker.stop();
}
