//! A (shard, cluster) lane: the batch being gathered for one cluster, the records its full
//! producer did not take, and the linger that decides when a batch leaves.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tracing::warn;

use crate::config::ClusterConfig;

use super::producer::{Batch, KafkaProducer, Sent};

pub(super) struct ClusterLane {
    pub(super) producer: KafkaProducer,
    /// The settings `producer` was made with.
    pub(super) applied: ClusterConfig,
    pub(super) batch: Batch,
    pub(super) batch_bytes: usize,
    /// Records librdkafka had no room for (its queue holds `queue.buffering.max.messages`),
    /// in order; publishers of QoS 1/2 wait while they are here.
    pub(super) held: Option<Batch>,
    /// When the current batch got its first record.
    pub(super) batch_started: Option<Instant>,
    /// How long a batch of this lane waits for more records now: see [`LingerGauge`].
    pub(super) linger: LingerGauge,
    pub(super) latency_us: Histogram<u64>,
}

/// Records per batch the adaptive linger aims at: enough that the per-batch costs (a shard
/// timer, a Produce request, a delivery-report wake-up) are
/// shared, few enough that a batch leaves within about a millisecond under load.
const LINGER_TARGET_RECORDS: f64 = 16.0;
/// The shortest adaptive linger: what a lane gets under load.
const LINGER_FLOOR: Duration = Duration::from_millis(1);
/// How often a lane's record rate is measured.
const LINGER_RATE_WINDOW: Duration = Duration::from_millis(100);

/// The linger of one lane, set from its record rate: the time it takes to gather
/// [`LINGER_TARGET_RECORDS`], between [`LINGER_FLOOR`] (or `linger_us` if that is lower)
/// and `linger_us`. At device rates (a record now and then) batches wait up to
/// `linger_us`, so their fixed costs are shared by several records; under load, or when
/// publishers pipeline (who are held to their in-flight windows and so need short
/// lingers), the linger falls to the floor.
pub(super) struct LingerGauge {
    pub(super) current: Duration,
    floor: Duration,
    ceiling: Duration,
    window_started: Instant,
    window_records: u64,
}

impl LingerGauge {
    pub(super) fn new(linger_us: u64, now: Instant) -> LingerGauge {
        let ceiling = Duration::from_micros(linger_us);
        LingerGauge {
            current: ceiling,
            floor: LINGER_FLOOR.min(ceiling),
            ceiling,
            window_started: now,
            window_records: 0,
        }
    }

    /// Counts one record; at the end of a window, sets the linger from the window's rate.
    pub(super) fn record(&mut self, now: Instant) {
        self.window_records += 1;
        let elapsed = now.saturating_duration_since(self.window_started);
        if elapsed >= LINGER_RATE_WINDOW {
            let per_second = self.window_records as f64 / elapsed.as_secs_f64();
            let gather = Duration::from_secs_f64(LINGER_TARGET_RECORDS / per_second);
            self.current = gather.clamp(self.floor, self.ceiling);
            self.window_started = now;
            self.window_records = 0;
        }
    }
}

impl ClusterLane {
    /// Hands `batch` to librdkafka in order; holds what its full queue did not take.
    pub(super) fn push(&mut self, mut batch: Batch) {
        let taken = batch
            .iter()
            .position(|record| self.producer.send(record) == Sent::QueueFull)
            .unwrap_or(batch.len());
        if taken < batch.len() {
            batch.drain(..taken);
            self.held = Some(batch);
        }
        if self.producer.has_fatal_error() {
            self.replace_producer();
        }
    }

    pub(super) fn replace_producer(&mut self) {
        warn!("kafka producer had a fatal error: replacing it; what it held is reported failed");
        if let Err(error) = self.producer.replace() {
            warn!(%error, "kafka producer: replacing it failed; trying again with the next batch");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `gauge` records at `per_second` for a little more than one rate window.
    fn feed(gauge: &mut LingerGauge, start: Instant, per_second: u64) -> Instant {
        let gap = Duration::from_nanos(1_000_000_000 / per_second);
        let mut now = start;
        while now.duration_since(start) <= LINGER_RATE_WINDOW {
            now += gap;
            gauge.record(now);
        }
        now
    }

    #[test]
    fn linger_is_the_time_to_gather_sixteen_records_within_its_bounds() {
        let start = Instant::now();
        let mut gauge = LingerGauge::new(5000, start);
        assert_eq!(
            gauge.current,
            Duration::from_millis(5),
            "starts at the ceiling"
        );
        // Devices: 1,500 records/s take 10.7 ms to gather 16: the ceiling.
        let now = feed(&mut gauge, start, 1_500);
        assert_eq!(gauge.current, Duration::from_millis(5));
        // 8,000 records/s: 2 ms.
        let now = feed(&mut gauge, now, 8_000);
        let ms = gauge.current.as_secs_f64() * 1e3;
        assert!((1.9..2.1).contains(&ms), "{ms} ms");
        // Under load: the 1 ms floor.
        feed(&mut gauge, now, 100_000);
        assert_eq!(gauge.current, LINGER_FLOOR);
    }

    #[test]
    fn a_linger_below_the_floor_is_kept_as_it_is() {
        let start = Instant::now();
        let mut gauge = LingerGauge::new(200, start);
        feed(&mut gauge, start, 1_000);
        assert_eq!(gauge.current, Duration::from_micros(200));
        feed(&mut gauge, start + Duration::from_secs(1), 1_000_000);
        assert_eq!(gauge.current, Duration::from_micros(200));
    }
}
