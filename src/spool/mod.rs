//! The durable spool: for `ack = "durable"` mappings, each shard appends records to its own
//! log on disk (direct I/O, group commit) and acknowledges the PUBLISH once the flush that
//! holds it is done; the log then feeds Kafka, and a segment goes once Kafka has all of it.

pub mod log;
pub mod record;

use std::cell::Cell;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Counters of one shard's spool.
pub struct SpoolStats {
    pub write_errors: Cell<u64>,
    /// Records read back and handed to Kafka (replay rate = its rate of change).
    pub replayed: Cell<u64>,
    /// Flush (write + fdatasync) latency, µs.
    pub flush_latency_us: std::cell::RefCell<Histogram<u64>>,
    /// Append latency, µs: from a record's append to the end of the flush that made it
    /// durable (the group-commit wait plus the flush), which is what a durable PUBACK waits.
    pub append_latency_us: std::cell::RefCell<Histogram<u64>>,
}

impl Default for SpoolStats {
    fn default() -> SpoolStats {
        SpoolStats {
            write_errors: Cell::new(0),
            replayed: Cell::new(0),
            flush_latency_us: std::cell::RefCell::new(crate::metrics::new_latency_histogram()),
            append_latency_us: std::cell::RefCell::new(crate::metrics::new_latency_histogram()),
        }
    }
}

impl SpoolStats {
    pub fn record_flush(&self, took: Duration) {
        let _ = self.flush_latency_us.borrow_mut().record(latency_us(took));
    }

    pub fn record_append(&self, took: Duration) {
        let _ = self.append_latency_us.borrow_mut().record(latency_us(took));
    }
}

/// `took` in µs within the histograms' range.
fn latency_us(took: Duration) -> u64 {
    (took.as_micros() as u64).clamp(1, crate::metrics::LATENCY_US_MAX)
}
