//! The broker runs, answers a 3.1.1 and a 5.0 client, routes across shards and stops
//! cleanly on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Broker;

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
    assert!(
        stderr.contains(&format!(
            "listener[0].bind: cannot listen on 127.0.0.1:{}",
            first.port
        )) && stderr.contains("another process listens there"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&second.stdout).contains("listening"),
        "no listening line from a broker that does not listen"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    first.stop();
}
