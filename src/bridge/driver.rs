//! The bridge of one shard as the broker holds it ([`Bridge`]): it starts and runs its own
//! machinery (the producers' reports, the linger timer, the spool's group commit and
//! feed) and tells the broker only "acknowledge ticket T with this outcome".

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{BatchingConfig, Config, SpoolConfig};
use crate::metrics::{ClusterSnapshot, MappingCounters, SpoolSnapshot};
use crate::protocol::QoS;
use crate::runtime::{self, Signal, WaitList};
use crate::spool::SpoolStats;

use super::durable;
use super::mapping::Mappings;
use super::producer::KafkaProducer;
use super::settings::ClusterSettings;
use super::state::ShardBridge;
use super::ticket::Ticket;
use super::{Admission, Completed, Publication};

/// The producers of one shard (one per cluster) and the wake-up their delivery reports use.
pub struct ShardProducers {
    producers: Vec<KafkaProducer>,
    reports: runtime::WakeEnd,
}

/// Makes one producer per (shard, cluster), on this unpinned thread so that librdkafka's
/// threads are not pinned to a shard's CPU. A configuration librdkafka refuses is an error
/// naming the cluster's key.
pub fn start_producers(
    config: &Config,
    settings: &ClusterSettings,
    shard_count: usize,
) -> io::Result<Vec<ShardProducers>> {
    let mut sets = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let (wake, wake_end) = runtime::cross_thread_wake()?;
        let mut producers = Vec::new();
        for (index, name) in config.kafka.clusters.keys().enumerate() {
            let client = settings.producer_config(index);
            let producer =
                KafkaProducer::create(format!("kafka-{name}-{shard}"), client, wake.try_clone()?)
                    .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("kafka.clusters.{name}.config: {}", settings.scrub(&e)),
                    )
                })?;
            producers.push(producer);
        }
        sets.push(ShardProducers {
            producers,
            reports: wake_end,
        });
    }
    Ok(sets)
}

/// What a shard's bridge is made of.
pub struct BridgeParts {
    pub shard_id: usize,
    pub shard_count: usize,
    pub mappings: Mappings,
    pub producers: ShardProducers,
    pub batching: BatchingConfig,
    pub settings: Arc<ClusterSettings>,
    pub spool: SpoolConfig,
}

/// Counters and gauges of one shard's bridge, for the metrics board.
pub struct BridgeSnapshot {
    pub mappings: Vec<MappingCounters>,
    pub clusters: Vec<ClusterSnapshot>,
    pub spool: Option<SpoolSnapshot>,
    pub dropped_qos0_ring_full: u64,
    pub pending_acks: u64,
}

type Acknowledge = Box<dyn Fn(Vec<Completed>)>;

pub(super) struct Driver {
    pub(super) shard_id: usize,
    pub(super) state: RefCell<ShardBridge>,
    /// Wakes the linger loop: a batch opened, or one is held by a full producer.
    linger: Signal,
    /// QoS 1/2 publishers held back by a full producer or spool; woken when there is room.
    room: WaitList,
    /// Wakes the spool's group commit: records were appended.
    pub(super) spool_appended: Signal,
    /// Wakes the spool's feeder: a flush made records durable.
    pub(super) spool_flushed: Signal,
    pub(super) spool_stats: SpoolStats,
    acknowledge: RefCell<Acknowledge>,
}

/// One shard's bridge. Cheap to clone: every clone is the same bridge.
#[derive(Clone)]
pub struct Bridge(Rc<Driver>);

/// The longest a publisher held back by a full Kafka producer or spool waits before it
/// looks again without being woken (the bridge wakes held publishers when it has room; this
/// covers a producer that drains while another cluster's stays full). Polling every 200 µs
/// instead cost thousands of held publishers a wake-up each, 5,000 times a second.
const BACKLOG_RECHECK: Duration = Duration::from_millis(100);

/// The finest linger timer we run: below this, timer wake-ups cost more than they save.
const LINGER_TICK_MIN: Duration = Duration::from_micros(100);

impl Bridge {
    /// Builds the bridge of one shard, opens its spool when a mapping is `durable`
    /// (replaying what an earlier run left), and starts its tasks on this shard.
    pub async fn start(parts: BridgeParts) -> io::Result<Bridge> {
        let mut state = ShardBridge::new(
            parts.mappings,
            parts.producers.producers,
            parts.batching,
            parts.settings,
        );
        let spool = if state.has_durable_mappings() {
            let log = durable::open(&parts.spool, parts.shard_id, parts.shard_count).await?;
            state.attach_spool(log.clone(), parts.spool.max_bytes, parts.spool.when_full);
            Some(log)
        } else {
            None
        };
        let bridge = Bridge(Rc::new(Driver {
            shard_id: parts.shard_id,
            state: RefCell::new(state),
            linger: Signal::new(),
            room: WaitList::default(),
            spool_appended: Signal::new(),
            spool_flushed: Signal::new(),
            spool_stats: SpoolStats::default(),
            acknowledge: RefCell::new(Box::new(|_| {})),
        }));
        if let Some(log) = spool {
            runtime::spawn(durable::flush_loop(
                bridge.0.clone(),
                log.clone(),
                parts.spool,
            ));
            runtime::spawn(durable::feed_loop(bridge.0.clone(), log));
        }
        runtime::spawn(reports_loop(
            bridge.0.clone(),
            parts.producers.reports.listen(),
        ));
        runtime::spawn(linger_loop(bridge.0.clone()));
        Ok(bridge)
    }

    /// Where the acknowledgements that fall due go (the broker sends the PUBACK/PUBREC).
    /// Called once, before the first PUBLISH.
    pub fn on_acknowledged(&self, acknowledge: impl Fn(Vec<Completed>) + 'static) {
        *self.0.acknowledge.borrow_mut() = Box::new(acknowledge);
    }

    /// See [`ShardBridge::admit`]: the one walk of the mapping trie per PUBLISH.
    pub fn admit(&self, topic: &str, qos: QoS, v5: bool) -> Admission {
        self.0.state.borrow_mut().admit(topic, qos, v5)
    }

    /// See [`ShardBridge::admit_from_source`].
    pub fn admit_from_source(&self, topic: &str) -> Admission {
        self.0.state.borrow_mut().admit_from_source(topic)
    }

    /// Waits while a producer or the spool this admitted message goes to is full
    /// (backpressure: the publisher is not read meanwhile, never a dropped QoS 1/2 record).
    pub async fn wait_for_room(&self, admission: &Admission) {
        while self.0.state.borrow().is_backlogged_for(admission) {
            self.0.room.wait(BACKLOG_RECHECK).await;
        }
    }

    /// Hands an admitted message to its mappings; see [`ShardBridge::submit`].
    pub fn submit(
        &self,
        admission: &Admission,
        message: &Publication<'_>,
        wants_ack: bool,
        now: Instant,
    ) -> Option<Ticket> {
        let (ticket, timer_wanted) = {
            let mut state = self.0.state.borrow_mut();
            let ticket = state.submit(admission, message, wants_ack, now);
            (ticket, state.take_timer_wanted())
        };
        if timer_wanted {
            // Only a batch left waiting, or held by a full producer, needs the linger timer.
            self.0.linger.notify();
        }
        if admission.durable {
            self.0.spool_appended.notify();
        }
        ticket
    }

    /// Walks of the mapping trie so far (one per admitted PUBLISH).
    pub fn trie_walks(&self) -> u64 {
        self.0.state.borrow().trie_walks()
    }

    /// Puts new cluster settings (SIGHUP) in force.
    pub fn follow_settings(&self) {
        self.0.state.borrow_mut().follow_settings();
    }

    pub fn snapshot(&self) -> BridgeSnapshot {
        let state = self.0.state.borrow();
        let (mappings, clusters) = state.snapshot();
        BridgeSnapshot {
            mappings,
            clusters,
            spool: durable::snapshot(&state, &self.0.spool_stats),
            dropped_qos0_ring_full: state.dropped_qos0_ring_full,
            pending_acks: state.pending_count() as u64,
        }
    }

    /// Delivers what the producers hold, for at most `timeout` each, and gives them up: the
    /// shard is stopping.
    pub fn close(&self, timeout: Duration) {
        let producers = self.0.state.borrow_mut().take_producers();
        for producer in producers {
            producer.close(timeout);
        }
    }
}

impl Driver {
    /// Hands due acknowledgements to the broker.
    pub(super) fn acknowledge(&self, completed: Vec<Completed>) {
        if !completed.is_empty() {
            (self.acknowledge.borrow())(completed);
        }
    }

    /// Wakes the linger loop when the state asked for it (a batch opened or is held).
    pub(super) fn linger_if_wanted(&self) {
        if self.state.borrow_mut().take_timer_wanted() {
            self.linger.notify();
        }
    }

    /// Wakes the publishers held back by a full producer or spool once neither is full. (One
    /// whose topic's producer has room while another cluster's is still full finds out at
    /// its next look, within `BACKLOG_RECHECK`.)
    pub(super) fn wake_held_publishers(&self) {
        if self.room.waiting() > 0 && !self.state.borrow().is_backlogged() {
            self.room.wake_all();
        }
    }
}

/// Turns Kafka delivery reports into acknowledgements as they arrive.
async fn reports_loop(driver: Rc<Driver>, mut reports: runtime::WakeListener) {
    while reports.wait().await {
        let completed = driver.state.borrow_mut().drain_reports(Instant::now());
        // A dead letter or a record handed back may have opened a batch.
        driver.linger_if_wanted();
        driver.acknowledge(completed);
        driver.wake_held_publishers();
    }
}

/// Sends each Kafka batch when its lane's linger has passed since its first record (at
/// most `linger_us`), and retries records that found their producer full. Sleeps while no
/// batch is open or held: the state asks for it (`take_timer_wanted`) when one opens.
async fn linger_loop(driver: Rc<Driver>) {
    while driver.linger.wait().await {
        loop {
            let now = Instant::now();
            // Bound here, not in a `while let`: that borrow would last across the sleep.
            let due = driver.state.borrow_mut().tick(now);
            driver.wake_held_publishers();
            let Some(due) = due else { break };
            runtime::sleep(due.saturating_duration_since(now).max(LINGER_TICK_MIN)).await;
        }
    }
}

impl Driver {
    /// Wakes the linger loop (records are held and only it retries them).
    pub(super) fn wake_linger(&self) {
        self.linger.notify();
    }
}
