//! Sending a message on its way: local delivery through the shard state, then the other
//! shards through their bounded channels. Awaiting a full channel is the backpressure that
//! stops the publishing connection's reads.

use std::rc::Rc;
use std::time::Instant;

use super::cluster;
use super::context::ShardRef;
use super::message::Message;
use super::shard::InterestChange;
use super::shard_message::ShardMessage;
use crate::runtime::Signal;

/// Routes `message`, published by a client of this shard (or as a will, or `$SYS`).
/// Returns the tickets of its cluster records (for other nodes, a retained message) that a
/// QoS 1/2 publisher's acknowledgement must wait for.
pub async fn publish(shard: &ShardRef, message: Message) -> Vec<u64> {
    let mut tickets = Vec::new();
    let message = Rc::new(message);
    let now = Instant::now();
    let targets = {
        let mut state = shard.state.borrow_mut();
        if message.retain {
            state.set_retained(&message);
        }
        state.route(&message, now)
    };
    if message.retain {
        tickets.extend(cluster::share_retained(shard, &message).await);
        for other in (0..shard.count).filter(|&s| s != shard.id) {
            let _ = shard
                .senders
                .send(other, ShardMessage::Retained((*message).clone()))
                .await;
        }
    }
    tickets.extend(cluster::send_to_nodes(shard, &message, &targets).await);
    for target in targets.shards {
        let _ = shard
            .senders
            .send(target, ShardMessage::Publish((*message).clone()))
            .await;
    }
    for (target, group) in targets.shared {
        let message = (*message).clone();
        let _ = shard
            .senders
            .send(target, ShardMessage::SharedPublish { group, message })
            .await;
    }
    slow_down_for(shard, targets.congested).await;
    tickets
}

/// Longest a publisher is held back for slow subscribers on its shard.
const PUBLISHER_WAIT_MS_MAX: u64 = 1000;

/// Holds the publishing connection (it reads nothing meanwhile) while subscribers it feeds
/// are congested, up to `PUBLISHER_WAIT_MS_MAX`: QoS 1/2 wait rather than pile up. The
/// bound keeps two clients that publish to each other from waiting forever.
pub async fn slow_down_for(shard: &ShardRef, congested: Vec<crate::protocol::MqttStr>) {
    if congested.is_empty() {
        return;
    }
    let deadline = Instant::now() + std::time::Duration::from_millis(PUBLISHER_WAIT_MS_MAX);
    loop {
        let still = {
            let state = shard.state.borrow();
            congested
                .iter()
                .any(|client_id| state.is_congested(client_id))
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !still || left.is_zero() {
            return;
        }
        // Woken when a session's queue moves (`ShardContext::ease_congestion`).
        shard.congestion_eased.wait(left).await;
    }
}

/// Tells every other shard about interest changes; with `wait`, returns once each has
/// applied them, so that a SUBACK sent afterwards means "routed from everywhere".
pub async fn announce_interest(shard: &ShardRef, changes: Vec<InterestChange>, wait: bool) {
    cluster::share_interest(shard, &changes);
    if shard.count == 1 || changes.is_empty() {
        return;
    }
    let others = shard.count - 1;
    for change in changes {
        let ack = if wait {
            let id = shard.next_ack_id.get();
            shard.next_ack_id.set(id + 1);
            let signal = Rc::new(Signal::new());
            shard
                .interest_acks
                .borrow_mut()
                .insert(id, (others, signal.clone()));
            Some((id, signal))
        } else {
            None
        };
        for other in (0..shard.count).filter(|&s| s != shard.id) {
            let message = ShardMessage::Interest {
                from: shard.id,
                filter: change.filter.clone(),
                added: change.added,
                ack_id: ack.as_ref().map(|(id, _)| *id),
            };
            let _ = shard.senders.send(other, message).await;
        }
        if let Some((_, signal)) = ack {
            signal.wait().await;
        }
    }
}

/// An `InterestAck` arrived.
pub fn interest_acked(shard: &ShardRef, ack_id: u64) {
    let mut acks = shard.interest_acks.borrow_mut();
    if let Some((remaining, signal)) = acks.get_mut(&ack_id) {
        *remaining -= 1;
        if *remaining == 0 {
            signal.notify();
            acks.remove(&ack_id);
        }
    }
}
