//! `ack = "durable"`: records go to the shard's spool, the PUBLISH is acknowledged once the
//! group commit that holds them is done, and the spool then feeds Kafka, oldest first. A
//! segment is deleted (off the shard's thread) once Kafka has every record of it.

use std::cell::RefCell;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::{SpoolConfig, SpoolWhenFull};
use crate::metrics::SpoolSnapshot;
use crate::runtime;
use crate::spool::log::{self as spool_log, SpoolLog};
use crate::spool::record::SpoolRecord;
use crate::spool::SpoolStats;

use super::driver::Driver;
use super::producer::Record;
use super::records::static_header_name;
use super::state::ShardBridge;
use super::ticket::{Tag, Waiter, MAPPING_NONE};
use super::Completed;

/// Pause before retrying a failed spool write or read.
const SPOOL_RETRY: Duration = Duration::from_millis(100);
/// How often the feeder looks again when its producers were full.
const SPOOL_FEED_POLL: Duration = Duration::from_millis(5);

impl ShardBridge {
    /// Gives the bridge its durable log.
    pub fn attach_spool(
        &mut self,
        spool: Rc<RefCell<SpoolLog>>,
        max_bytes: u64,
        when_full: SpoolWhenFull,
    ) {
        self.spool = Some(spool);
        self.spool_max_bytes = max_bytes;
        self.spool_when_full = when_full;
    }

    pub(super) fn spool_append(&mut self, cluster: usize, record: Record, now: Instant) {
        let spool = self.spool.as_ref().expect("durable mappings have a spool");
        let headers = record
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        let spooled = SpoolRecord {
            seq: 0,
            mapping: record.tag.mapping,
            cluster: self.mappings.cluster_names()[cluster].clone(),
            topic: record.topic,
            key: record.key,
            headers,
            payload: record.payload,
        };
        let seq = spool.borrow_mut().append(spooled, now);
        self.counters[usize::from(record.tag.mapping)].produced += 1;
        let ticket = match record.tag.waiter {
            Waiter::Publish(ticket) => Some(ticket),
            _ => None,
        };
        self.spool_waiting.push_back((seq, ticket, now));
    }

    /// The spool's flush made every record up to `last_seq` durable: their waits end, and
    /// each one's append latency goes to `stats`.
    pub fn spool_flushed(
        &mut self,
        last_seq: u64,
        now: Instant,
        stats: &SpoolStats,
    ) -> Vec<Completed> {
        let mut completed = Vec::new();
        while let Some(&(seq, ticket, appended_at)) = self.spool_waiting.front() {
            if seq > last_seq {
                break;
            }
            self.spool_waiting.pop_front();
            stats.record_append(now.saturating_duration_since(appended_at));
            if let Some(ticket) = ticket {
                self.count_down(ticket, Ok(()), now, &mut completed, None);
            }
        }
        completed
    }

    /// Hands records read back from the spool to their producers; keeps what does not fit.
    /// Returns `false` when a producer is full (stop reading).
    pub fn feed_spooled(&mut self, records: Vec<(u64, SpoolRecord)>, now: Instant) -> bool {
        for (seq, spooled) in records {
            let Some(cluster) = self
                .mappings
                .cluster_names()
                .iter()
                .position(|name| *name == spooled.cluster)
            else {
                // The cluster left the configuration: nowhere to send it.
                self.spool_dropped_unknown_cluster += 1;
                self.spool_acked(seq);
                continue;
            };
            let record = Record {
                topic: spooled.topic,
                key: spooled.key,
                payload: spooled.payload,
                headers: spooled
                    .headers
                    .into_iter()
                    .map(|(name, value)| (static_header_name(&name), value))
                    .collect(),
                tag: Tag {
                    waiter: Waiter::Spool(seq),
                    // Counted under its mapping when that still exists.
                    mapping: if usize::from(spooled.mapping) < self.counters.len() {
                        spooled.mapping
                    } else {
                        MAPPING_NONE
                    },
                    dead_letter: false,
                },
            };
            self.spool_backlog.push_back((cluster, record));
        }
        self.drain_spool_backlog(now)
    }

    /// Sends backlogged spool records while their producers take them. Returns `false`
    /// while a producer is full and records are held (the caller wakes the linger loop,
    /// which retries them, and reads no more): the last batch of a replay can be held.
    pub fn drain_spool_backlog(&mut self, now: Instant) -> bool {
        while let Some((cluster, _)) = self.spool_backlog.front() {
            let cluster = *cluster;
            if self.lanes[cluster].held.is_some() {
                return false;
            }
            let (_, record) = self.spool_backlog.pop_front().expect("front exists");
            self.append(cluster, record, now);
        }
        for cluster in 0..self.lanes.len() {
            self.flush(cluster);
        }
        self.lanes.iter().all(|lane| lane.held.is_none())
    }

    pub(super) fn spool_acked(&mut self, seq: u64) {
        if let Some(spool) = &self.spool {
            let done = spool.borrow_mut().acked(seq);
            self.spool_done_segments.extend(done);
        }
    }
}

/// The spool's gauges for the metrics board; None without a spool.
pub(super) fn snapshot(state: &ShardBridge, stats: &SpoolStats) -> Option<SpoolSnapshot> {
    let log = state.spool.as_ref()?.borrow();
    Some(SpoolSnapshot {
        bytes: log.bytes(),
        records_unacked: log.records_unacked(),
        oldest_unacked_secs: log
            .oldest_unacked_age(Instant::now())
            .map_or(0.0, |age| age.as_secs_f64()),
        flush_latency_us: stats.flush_latency_us.borrow().clone(),
        append_latency_us: stats.append_latency_us.borrow().clone(),
        replayed: stats.replayed.get(),
        write_errors: stats.write_errors.get(),
    })
}

/// Opens this shard's spool, replaying its own segments and those of shards that no
/// longer exist (`shard-J` with J ≥ the shard count goes to shard J mod count).
pub(super) async fn open(
    config: &SpoolConfig,
    shard_id: usize,
    shard_count: usize,
) -> io::Result<Rc<RefCell<SpoolLog>>> {
    let own = config.data_dir.join(format!("shard-{shard_id}"));
    std::fs::create_dir_all(&own)?;
    lock_directory(&own)?;
    let mut replay = vec![own.clone()];
    if let Ok(entries) = std::fs::read_dir(&config.data_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_prefix("shard-"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if number >= shard_count && number % shard_count == shard_id {
                replay.push(entry.path());
            }
        }
    }
    let (log, cuts) = spool_log::open(&own, &replay, config.segment_bytes).await?;
    for cut in &cuts {
        let path = cut.path.display();
        warn!(
            shard = shard_id,
            path = %path,
            offset = cut.offset,
            bytes_cut = cut.bytes_cut,
            reason = %cut.reason,
            "spool: cut {} damaged bytes at offset {} of {path} ({}); the records before it are kept",
            cut.bytes_cut,
            cut.offset,
            cut.reason
        );
    }
    let unacked = log.records_unacked();
    if unacked > 0 {
        info!(
            shard = shard_id,
            records = unacked,
            "spool of shard {shard_id}: replaying {unacked} records to Kafka"
        );
    }
    Ok(Rc::new(RefCell::new(log)))
}

/// Takes an exclusive lock on `dir` for the life of the process: two brokers appending to
/// one spool would corrupt it.
fn lock_directory(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is locked: another ferrymq uses this spool",
                path.display()
            ),
        ));
    }
    // Held until the process exits.
    std::mem::forget(file);
    Ok(())
}

/// Counts a failed spool write and says so, one line per retry (at most every
/// `SPOOL_RETRY`).
fn write_failed(driver: &Driver, what: &str, error: &io::Error) {
    let stats = &driver.spool_stats;
    stats.write_errors.set(stats.write_errors.get() + 1);
    let shard = driver.shard_id;
    error!(shard, error = %error, "spool of shard {shard}: {what} failed: {error}; retrying");
}

/// Group commit: waits up to `sync_us` (or until `sync_bytes` wait), writes and syncs, then
/// acknowledges the records the flush made durable and wakes the feeder.
pub(super) async fn flush_loop(
    driver: Rc<Driver>,
    spool: Rc<RefCell<SpoolLog>>,
    config: SpoolConfig,
) {
    let window = Duration::from_micros(config.sync_us);
    while driver.spool_appended.wait().await {
        loop {
            let pending = spool.borrow().pending_bytes();
            if pending == 0 {
                break;
            }
            if pending < config.sync_bytes && !window.is_zero() {
                runtime::sleep(window).await;
            }
            let started = Instant::now();
            match spool_log::flush(&spool).await {
                Ok(Some(flushed)) => {
                    driver.spool_stats.record_flush(started.elapsed());
                    let completed = driver.state.borrow_mut().spool_flushed(
                        flushed.last_seq,
                        Instant::now(),
                        &driver.spool_stats,
                    );
                    driver.acknowledge(completed);
                    driver.spool_flushed.notify();
                }
                Ok(None) => {}
                Err(error) => {
                    // Disk full or failing: say so, count it, hold the acknowledgements
                    // (publishers wait) and try again.
                    write_failed(&driver, "write", &error);
                    runtime::sleep(SPOOL_RETRY).await;
                }
            }
            if let Err(error) = spool_log::rotate_if_full(&spool).await {
                write_failed(&driver, "new segment", &error);
                runtime::sleep(SPOOL_RETRY).await;
            }
        }
    }
}

/// Deletes segment files on a thread of their own: unlinking a large file can block for a
/// while, and the shard's thread serves sockets. Once per segment (megabytes of records),
/// so a thread each time costs nothing that matters. Not awaited: with the deletion
/// awaited on glommio's blocking pool, 2 of 13 runs of spool_faults' kill -9 test left a
/// segment that was never deleted (the feeder stopped there, it seems), never seen before.
fn remove_off_shard(paths: Vec<std::path::PathBuf>) {
    let remove = |paths: Vec<std::path::PathBuf>| {
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
    };
    let on_thread = paths.clone();
    if std::thread::Builder::new()
        .name("ferrymq-spool-rm".into())
        .spawn(move || remove(on_thread))
        .is_err()
    {
        remove(paths);
    }
}

/// Reads durable records back from the spool, oldest first, into the Kafka producers;
/// stops while one is full. Deletes segments Kafka has every record of.
pub(super) async fn feed_loop(driver: Rc<Driver>, spool: Rc<RefCell<SpoolLog>>) {
    loop {
        // Woken by flushes; polls while producers are full or segments wait for deletion.
        let _ = runtime::timeout(SPOOL_FEED_POLL * 20, driver.spool_flushed.wait()).await;
        loop {
            let done = std::mem::take(&mut driver.state.borrow_mut().spool_done_segments);
            if !done.is_empty() {
                let paths: Vec<_> = done
                    .into_iter()
                    .map(|segment| {
                        drop(segment.file);
                        segment.path
                    })
                    .collect();
                remove_off_shard(paths);
                driver.wake_held_publishers();
            }
            if !driver
                .state
                .borrow_mut()
                .drain_spool_backlog(Instant::now())
            {
                // A producer is full and records are held: only the linger loop retries, and
                // with no publisher left to wake that loop nothing else would.
                driver.wake_linger();
                runtime::sleep(SPOOL_FEED_POLL).await;
                continue;
            }
            match spool_log::read_back(&spool).await {
                Ok(read) if read.records.is_empty() => break,
                Ok(read) => {
                    let stats = &driver.spool_stats;
                    stats
                        .replayed
                        .set(stats.replayed.get() + read.records.len() as u64);
                    driver
                        .state
                        .borrow_mut()
                        .feed_spooled(read.records, Instant::now());
                    // A replayed batch that found its producer full: the linger loop retries.
                    driver.linger_if_wanted();
                }
                Err(error) => {
                    let shard = driver.shard_id;
                    error!(shard, error = %error, "spool of shard {shard}: read failed: {error}");
                    runtime::sleep(SPOOL_RETRY).await;
                    break;
                }
            }
        }
    }
}
