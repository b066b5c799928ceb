//! The broker runs, answers a 3.1.1 and a 5.0 client, routes across shards and stops
//! cleanly on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::raw::RawClient;
use common::{free_port, Broker};
use ferrymq::protocol::{Connect, Protocol, ReasonCode};

#[test]
fn connack_for_311_and_5_then_clean_stop() {
    let broker = Broker::start();
    // CONNECT 3.1.1, client id "smoke", clean session: CONNACK 20 02 00 00.
    let mut client = TcpStream::connect(broker.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .write_all(&[
            0x10, 0x11, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 5, b's', b'm', b'o', b'k',
            b'e',
        ])
        .unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let status = broker.stop();
    assert!(status.success(), "exit status {status}");
}

/// A port another program listens on (not a ferrymq, and not sharing with SO_REUSEPORT)
/// stops the broker too, naming that program.
#[test]
fn a_port_another_program_listens_on_stops_the_broker_naming_it() {
    // A port below the ephemeral range, free on every address.
    let (_listener, port) = (0..100)
        .find_map(|_| {
            let port = free_port();
            std::net::TcpListener::bind(("0.0.0.0", port))
                .ok()
                .map(|other| (other, port))
        })
        .expect("a free port on 0.0.0.0");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--cores", "0"])
        .output()
        .expect("run ferrymq");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: pid {} (",
            std::process::id()
        )) && stderr.contains(&format!("listens on 0.0.0.0:{port}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Sockets on `port` in TIME-WAIT or FIN-WAIT-2 (closed connections the broker closed
/// first), from the kernel's table.
fn closed_connections_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit(':').next().unwrap();
            u16::from_str_radix(local_port, 16).unwrap() == port && matches!(fields[3], "06" | "05")
        })
        .count()
}

/// A 3.1.1 client `client_id` (clean session, keep alive 60 s), accepted.
fn connect_311(port: u16, client_id: &str) -> RawClient {
    let mut client = RawClient::open(
        ("127.0.0.1", port),
        Protocol::V3_1_1,
        Duration::from_secs(5),
    );
    let connack = client.connect(Connect::new(Protocol::V3_1_1, client_id, 60));
    assert_eq!(connack.reason_code, ReasonCode::Success);
    client
}

/// `systemctl restart` of a broker with devices connected: stopped with SIGTERM, it closes
/// their connections first, which leaves the server side of each in TIME-WAIT; started
/// again at once on the same port, it must listen, since nobody else does.
#[test]
fn restarts_at_once_on_its_port_after_stopping_with_clients_connected() {
    let first = Broker::start();
    let port = first.port;
    let mut clients: Vec<RawClient> = (0..4)
        .map(|i| connect_311(port, &format!("restart-{i}")))
        .collect();
    assert!(first.stop().success());
    for client in &mut clients {
        let mut rest = Vec::new();
        let _ = client.tcp.read_to_end(&mut rest);
    }
    drop(clients);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        closed_connections_on(port) > 0,
        "the test needs closed connections on the port"
    );
    let second = Broker::start_on(port, &[]);
    drop(connect_311(port, "restart-again"));
    assert!(second.stop().success());
}

/// A second broker on a port that is already served (by another ferrymq, whose shards bind
/// with SO_REUSEPORT, or by anything else) stops with one line naming the listener instead
/// of silently sharing the port and splitting the clients between two brokers.
#[test]
fn a_second_broker_on_a_busy_port_stops_with_one_line() {
    let first = Broker::start();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", first.port),
            "--cores",
            "0",
        ])
        .output()
        .expect("run ferrymq");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second broker ran: {stderr}");
    // The line names what it found: the first broker's process and its address.
    let expected = format!(
        "listener[0].bind: cannot listen on 127.0.0.1:{port}: pid {pid} (ferrymq) listens on \
         127.0.0.1:{port}",
        port = first.port,
        pid = first.pid()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&second.stdout).contains("listening"),
        "no listening line from a broker that does not listen"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    first.stop();
}
