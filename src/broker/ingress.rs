//! Records from Kafka sources arriving on a shard: each shard serves its own inbox, filled
//! by the sources' consumer threads with the records of the partitions given to it
//! (`bridge::source::shard_of`), in offset order.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bridge::source::{Receipt, SourceInbox, SourceRecord};
use crate::bridge::Publication;
use crate::protocol::QoS;
use crate::runtime::{self, WakeEnd};

use super::cluster::{self, Waiter};
use super::context::ShardRef;
use super::message::Message;
use super::shard::SourceRouting;
use super::shard_message::ShardMessage;

/// Records served before the task lets the shard's other tasks run.
const RECORDS_PER_TURN: usize = 256;

/// Serves this shard's source inbox until the consumers are gone.
pub async fn serve_sources(shard: ShardRef, inbox: Arc<SourceInbox>, wake: WakeEnd) {
    let mut woken = wake.listen();
    loop {
        let mut served = 0;
        while let Some(record) = inbox.pop() {
            on_record(&shard, record).await;
            served += 1;
            if served % RECORDS_PER_TURN == 0 {
                runtime::yield_now().await;
            }
        }
        if !woken.wait().await {
            return;
        }
    }
}

async fn on_record(shard: &ShardRef, record: SourceRecord) {
    let now = Instant::now();
    let SourceRecord {
        topic,
        payload,
        qos,
        retain,
        properties,
        publisher,
        cross_node,
        receipt,
    } = record;
    let expires_at = properties
        .message_expiry_interval_secs
        .map(|secs| now + Duration::from_secs(secs.into()));
    let message = Rc::new(Message {
        topic,
        payload,
        qos,
        retain,
        properties,
        // Empty when no MQTT client published it (a Kafka source's record): No Local
        // never applies then [MQTT-3.8.3-3].
        publisher,
        expires_at,
    });
    let routing =
        shard
            .state
            .borrow_mut()
            .route_from_source(&message, &receipt, cross_node.as_deref(), now);
    let (local, targets) = match routing {
        // Dropped unfinished: the source goes back to this record.
        SourceRouting::Refused => return,
        SourceRouting::Delivered { local, targets } => (local, targets),
    };
    // A message from another node: its retained copy comes through the state topic, and
    // a mapping wrote it to Kafka on the node it was published on.
    let from_node = cross_node.is_some();
    if message.retain && !from_node {
        if let Some(ticket) = cluster::share_retained(shard, &message).await {
            if let Some(cluster) = &shard.cluster {
                cluster.wait_for(ticket, Waiter::Source(receipt.share()));
            }
        }
        shard.state.borrow_mut().set_retained(&message);
        for other in (0..shard.count).filter(|&s| s != shard.id) {
            let _ = shard
                .senders
                .send(other, ShardMessage::Retained((*message).clone()))
                .await;
        }
    }
    for &target in &targets.shards {
        let forwarded = ShardMessage::SourcePublish {
            message: (*message).clone(),
            group: None,
            receipt: receipt.share(),
        };
        let _ = shard.senders.send(target, forwarded).await;
    }
    for (target, group) in &targets.shared {
        let target = *target;
        let forwarded = ShardMessage::SourcePublish {
            message: (*message).clone(),
            group: Some(group.clone()),
            receipt: receipt.share(),
        };
        let _ = shard.senders.send(target, forwarded).await;
    }
    if from_node {
        receipt.finish(local);
        return;
    }
    if let Some(ticket) = cluster::send_to_nodes(shard, &message, &targets).await {
        // Committed once the other nodes' copy is in Kafka.
        if let Some(cluster) = &shard.cluster {
            cluster.wait_for(ticket, Waiter::Source(receipt.share()));
        }
    }
    to_kafka(shard, &message, &receipt, now).await;
    receipt.finish(local || targets.has_nodes());
}

/// Through the mappings that take messages from sources (`from_sources`), if any: the
/// record is committed once they have it, as a publisher's PUBACK would wait.
async fn to_kafka(shard: &ShardRef, message: &Message, receipt: &Receipt, now: Instant) {
    let bridge = &shard.bridge;
    let admission = bridge.admit_from_source(&message.topic);
    if !admission.to_kafka() {
        return;
    }
    let qos = message.qos;
    if qos != QoS::AtMostOnce {
        // A full producer or spool holds this inbox (and so the consumers) back.
        bridge.wait_for_room(&admission).await;
    }
    let publication = Publication {
        topic: &message.topic,
        publisher: &message.publisher,
        username: None,
        payload: &message.payload,
        qos,
        retain: message.retain,
        properties: &message.properties,
    };
    if let Some(ticket) = bridge.submit(&admission, &publication, qos != QoS::AtMostOnce, now) {
        shard
            .source_tickets
            .borrow_mut()
            .insert(ticket, receipt.share());
    }
}
