//! One source's consumer: a thread of its own (not pinned: librdkafka's threads and this one
//! run beside the shards, as the producers' do) that reads records, turns each into an MQTT
//! message, hands it to a shard through that shard's bounded inbox, and commits offsets as
//! the outcomes come back ([`super::partitions`] says which).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::metrics::{SourceDropped, SourceMetrics};

use super::partitions::{Partitions, Read};
use super::receipt::{Outcomes, Receipt};
use super::record::{to_record, CompiledSource};
use super::template::Unaddressable;
use super::{shard_of, SourceInbox, SourceRecord};

/// How often delivered offsets are committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Longest a poll waits for a record before outcomes and pauses are looked at again.
const POLL_WAIT: Duration = Duration::from_millis(5);
/// How long a closing consumer waits for records already handed over to be settled.
const CLOSE_SETTLE_WAIT: Duration = Duration::from_secs(2);

/// A running source; stopping it commits what was delivered and leaves the group.
pub struct SourceThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl SourceThread {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for SourceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The consumer's context: rebalances and commits happen inside `poll`, on the thread.
struct SourceContext {
    partitions: Mutex<Partitions>,
    metrics: Arc<SourceMetrics>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let mut lag = Vec::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.push((topic.clone(), *partition, p.consumer_lag));
                }
            }
        }
        lag.sort();
        *self.metrics.lag.lock().expect("lag") = lag;
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Commit what was delivered before the partitions go to another member; what is
            // still out will be read again there (duplicates, never losses).
            let mut partitions = self.partitions.lock().expect("partitions");
            let mut last = TopicPartitionList::new();
            for element in list.elements() {
                if let Some(mut gone) = partitions.revoke(element.topic(), element.partition()) {
                    if let Some(offset) = gone.take_commit() {
                        let _ = last.add_partition_offset(
                            element.topic(),
                            element.partition(),
                            Offset::Offset(offset),
                        );
                    }
                }
            }
            drop(partitions);
            if last.count() > 0 {
                timed_commit(consumer, &last, &self.metrics);
            }
            self.metrics
                .set_assigned(self.partitions.lock().expect("partitions").len());
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut partitions = self.partitions.lock().expect("partitions");
            for element in list.elements() {
                partitions.assign(element.topic(), element.partition());
            }
            self.metrics.set_assigned(partitions.len());
            tracing::info!(
                source = %self.metrics.name,
                "assigned {} partition(s)",
                partitions.len()
            );
        }
    }
}

/// Starts the consumer of `source`; records go to `inboxes` (one per shard).
pub fn start(
    source: CompiledSource,
    client: ClientConfig,
    inboxes: Arc<Vec<Arc<SourceInbox>>>,
    metrics: Arc<SourceMetrics>,
) -> Result<SourceThread, String> {
    let context = SourceContext {
        partitions: Mutex::new(Partitions::new(source.index, source.in_flight_max)),
        metrics: metrics.clone(),
    };
    let consumer: BaseConsumer<SourceContext> = client
        .create_with_context(context)
        .map_err(|e| format!("kafka.source[{}]: {e}", source.index))?;
    if source.start_delay.is_zero() {
        subscribe(&consumer, &source)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handle = std::thread::Builder::new()
        .name(format!("source-{}", source.name))
        .spawn({
            let stop = stop.clone();
            move || run(consumer, source, inboxes, stop)
        })
        .map_err(|e| format!("source thread: {e}"))?;
    Ok(SourceThread {
        stop,
        handle: Some(handle),
    })
}

fn run(
    consumer: BaseConsumer<SourceContext>,
    source: CompiledSource,
    inboxes: Arc<Vec<Arc<SourceInbox>>>,
    stop: Arc<AtomicBool>,
) {
    if !source.start_delay.is_zero() {
        let start_at = Instant::now() + source.start_delay;
        while Instant::now() < start_at {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(POLL_WAIT.max(Duration::from_millis(20)));
        }
        if let Err(error) = subscribe(&consumer, &source) {
            tracing::error!(source = %source.name, "{error}");
            return;
        }
    }
    let outcomes = Outcomes::default();
    let metrics = consumer.context().metrics.clone();
    let mut paused: std::collections::HashSet<(String, i32)> = Default::default();
    let mut last_commit = Instant::now();
    let mut topic_buffer = String::new();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        settle(&consumer, &outcomes, &metrics);
        steer(&consumer, &mut paused, now, &metrics);
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            commit(&consumer);
            last_commit = now;
        }
        let Some(result) = consumer.poll(POLL_WAIT) else {
            continue;
        };
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                metrics.note_error(&error.to_string());
                continue;
            }
        };
        handle(
            &consumer,
            &message,
            &source,
            &inboxes,
            &outcomes,
            &stop,
            &mut topic_buffer,
        );
    }
    // Leaving: wait a little for what is out, commit it, and leave the group.
    let deadline = Instant::now() + CLOSE_SETTLE_WAIT;
    loop {
        settle(&consumer, &outcomes, &metrics);
        let out: usize = consumer
            .context()
            .partitions
            .lock()
            .expect("partitions")
            .iter()
            .map(|p| p.records_out())
            .sum();
        if out == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    commit(&consumer);
    consumer.unsubscribe();
}

fn subscribe(
    consumer: &BaseConsumer<SourceContext>,
    source: &CompiledSource,
) -> Result<(), String> {
    let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("kafka.source[{}].topics: {e}", source.index))
}

/// One record read: skipped, settled at once (no MQTT topic), or handed to its shard.
fn handle(
    consumer: &BaseConsumer<SourceContext>,
    message: &BorrowedMessage<'_>,
    source: &CompiledSource,
    inboxes: &[Arc<SourceInbox>],
    outcomes: &Outcomes,
    stop: &AtomicBool,
    topic_buffer: &mut String,
) {
    let context = consumer.context();
    let metrics = &context.metrics;
    let read = context.partitions.lock().expect("partitions").read(
        message.topic(),
        message.partition(),
        message.offset(),
    );
    let Read::Hand(position) = read else {
        return;
    };
    metrics.consumed.fetch_add(1, Ordering::Relaxed);
    let receipt = Receipt::new(position, outcomes.clone());
    if let Some(reader) = &source.reader {
        let Some(read) = (reader.0)(message) else {
            receipt.finish(false);
            return;
        };
        let record = SourceRecord {
            topic: read.topic,
            payload: read.payload,
            qos: read.qos,
            retain: read.retain,
            properties: read.properties,
            publisher: read.publisher,
            cross_node: read.cross_node,
            receipt,
        };
        push(consumer, record, position, inboxes, outcomes, stop);
        return;
    }
    let record = match to_record(source, message, receipt, topic_buffer) {
        Ok(record) => record,
        Err((reason, receipt)) => {
            // No MQTT topic for it: counted, and settled as delivered (nothing can take it).
            metrics.count_dropped(match reason {
                Unaddressable::Missing => SourceDropped::TopicValueMissing,
                Unaddressable::Invalid => SourceDropped::TopicValueInvalid,
                Unaddressable::TopicInvalid => SourceDropped::TopicInvalid,
            });
            receipt.finish(false);
            return;
        }
    };
    push(consumer, record, position, inboxes, outcomes, stop);
}

/// Hands `record` to the shard of its partition, waiting while that shard's inbox is full.
fn push(
    consumer: &BaseConsumer<SourceContext>,
    mut record: SourceRecord,
    position: super::Position,
    inboxes: &[Arc<SourceInbox>],
    outcomes: &Outcomes,
    stop: &AtomicBool,
) {
    let metrics = &consumer.context().metrics;
    let inbox = &inboxes[shard_of(position.partition, inboxes.len())];
    loop {
        match inbox.push(record) {
            Ok(()) => return,
            Err(back) => {
                // The shard's inbox is full: the shard is behind. Wait here (bounded
                // memory); outcomes keep being settled meanwhile.
                record = back;
                metrics.inbox_full_waits.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Acquire) {
                    return; // dropped unfinished: not delivered, not committed
                }
                settle(consumer, outcomes, metrics);
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// Applies the outcomes that came back.
fn settle(consumer: &BaseConsumer<SourceContext>, outcomes: &Outcomes, metrics: &SourceMetrics) {
    if outcomes.is_empty() {
        return;
    }
    let mut partitions = consumer.context().partitions.lock().expect("partitions");
    while let Some(outcome) = outcomes.pop() {
        if !partitions.settle(outcome.position, outcome.refused) {
            continue;
        }
        if outcome.refused {
            metrics.redelivered.fetch_add(1, Ordering::Relaxed);
        } else if outcome.routed {
            metrics.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            metrics.unrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Pauses, resumes and rewinds partitions as their state asks.
fn steer(
    consumer: &BaseConsumer<SourceContext>,
    paused: &mut std::collections::HashSet<(String, i32)>,
    now: Instant,
    metrics: &SourceMetrics,
) {
    let mut to_pause = TopicPartitionList::new();
    let mut to_resume = TopicPartitionList::new();
    let mut rewinds = Vec::new();
    {
        let mut partitions = consumer.context().partitions.lock().expect("partitions");
        paused.retain(|(topic, partition)| partitions.get(topic, *partition).is_some());
        for p in partitions.iter_mut() {
            if let Some(offset) = p.due_rewind() {
                rewinds.push((p.topic.clone(), p.partition, offset));
                p.rewound(now);
            }
            let name = (p.topic.clone(), p.partition);
            let should = p.should_pause(now);
            if should && !paused.contains(&name) {
                to_pause.add_partition(&p.topic, p.partition);
                paused.insert(name);
            } else if !should && paused.contains(&name) {
                to_resume.add_partition(&p.topic, p.partition);
                paused.remove(&name);
            }
        }
    }
    if to_pause.count() > 0 {
        if let Err(error) = consumer.pause(&to_pause) {
            metrics.note_error(&format!("pause: {error}"));
        }
    }
    for (topic, partition, offset) in rewinds {
        // The partition is paused: seeking moves where it reads from once resumed.
        if let Err(error) = consumer.seek(
            &topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(1),
        ) {
            metrics.note_error(&format!("seek {topic}[{partition}] to {offset}: {error}"));
        }
    }
    if to_resume.count() > 0 {
        if let Err(error) = consumer.resume(&to_resume) {
            metrics.note_error(&format!("resume: {error}"));
        }
    }
    metrics.set_paused(paused.len());
}

/// Commits each partition's delivered offset that moved.
fn commit(consumer: &BaseConsumer<SourceContext>) {
    let mut list = TopicPartitionList::new();
    {
        let mut partitions = consumer.context().partitions.lock().expect("partitions");
        for p in partitions.iter_mut() {
            if let Some(offset) = p.take_commit() {
                let _ = list.add_partition_offset(&p.topic, p.partition, Offset::Offset(offset));
            }
        }
    }
    if list.count() == 0 {
        return;
    }
    if !timed_commit(consumer, &list, &consumer.context().metrics) {
        // Sent again next time, moved or not.
        let mut partitions = consumer.context().partitions.lock().expect("partitions");
        for p in partitions.iter_mut() {
            p.commit_failed();
        }
    }
}

/// Commits `list` and waits for Kafka's answer, timed. Synchronous on purpose: a round
/// trip every [`COMMIT_INTERVAL`] at most, while librdkafka keeps fetching meanwhile, and
/// the answer (its latency, a failure) is known here rather than lost among events.
fn timed_commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &TopicPartitionList,
    metrics: &SourceMetrics,
) -> bool {
    let started = Instant::now();
    match consumer.commit(list, CommitMode::Sync) {
        Ok(()) => {
            metrics.record_commit(started.elapsed());
            true
        }
        Err(error) => {
            metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
            metrics.note_error(&format!("offset commit failed: {error}"));
            false
        }
    }
}
