//! Ports for the programs the tests start (ferrymq, Mosquitto, Kafka): free ones on
//! 127.0.0.1, below Linux's ephemeral range (32768-60999), never the same twice in a process.

use std::net::TcpListener;

/// A free port on 127.0.0.1, below Linux's ephemeral range (32768..), each call of this
/// process a different one: [`free_ports`] of one.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` free consecutive ports on 127.0.0.1, below Linux's ephemeral range
/// (32768..), never handed out twice by this process. Not from `bind(0)`: librdkafka's mock cluster gives its brokers
/// ephemeral ports and, when a test takes a mock broker down and up again, binds the same
/// port again (and aborts if it is taken); an ephemeral port handed to a ferrymq broker
/// meanwhile was seen taking it.
pub fn free_ports(count: u32) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_700;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        // A different start per process, so that test binaries run one after another do
        // not retry the ports the previous one left in TIME-WAIT.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let _ = NEXT.compare_exchange(
            u32::MAX,
            (std::process::id() ^ nanos) % SPAN,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..SPAN {
        let first = LOW + NEXT.fetch_add(count, Ordering::Relaxed) % (SPAN - count);
        if (first..first + count).all(|port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok())
        {
            return first as u16;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN)
}
