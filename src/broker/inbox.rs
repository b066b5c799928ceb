//! A shard's inbox: what the other shards send it (sockets handed over, messages for its
//! subscribers, interest changes, counters for `$SYS`).

use std::rc::Rc;
use std::time::Instant;

use crate::runtime;

use super::connect::serve;
use super::context::ShardRef;
use super::router;
use super::shard_message::ShardMessage;

/// Serves one inbox (from one other shard) until it closes.
pub async fn serve_inbox(shard: ShardRef, receiver: runtime::ShardReceiver<ShardMessage>) {
    while let Some(message) = receiver.recv().await {
        on_shard_message(&shard, message);
        // Subscribers here that fall behind hold this inbox (bounded): the channel from the
        // publishing shard fills and that shard stops reading its publishers, so QoS 1/2
        // wait instead of piling up.
        let congested = shard.state.borrow_mut().take_congested();
        router::slow_down_for(&shard, congested).await;
    }
}

fn on_shard_message(shard: &ShardRef, message: ShardMessage) {
    let now = Instant::now();
    match message {
        ShardMessage::Handoff {
            stream,
            connect,
            buffered,
            assigned_client_id,
            cert_identity,
            slot,
        } => {
            let stream = runtime::share(runtime::adopt_stream(stream));
            runtime::spawn(serve(
                shard.clone(),
                stream,
                connect,
                buffered,
                assigned_client_id,
                cert_identity,
                slot,
            ));
        }
        ShardMessage::Publish(message) => {
            shard
                .state
                .borrow_mut()
                .deliver_local(&Rc::new(message), now);
        }
        ShardMessage::SharedPublish { group, message } => {
            shard
                .state
                .borrow_mut()
                .deliver_shared(&Rc::new(message), &group, now);
        }
        ShardMessage::Interest {
            from,
            filter,
            added,
            ack_id,
        } => {
            shard
                .state
                .borrow_mut()
                .apply_interest(from, &filter, added);
            if let Some(ack_id) = ack_id {
                // Answer from a task of its own: the inbox loop never waits on a channel,
                // so two shards acknowledging each other cannot deadlock.
                let shard = shard.clone();
                runtime::spawn(async move {
                    let _ = shard
                        .senders
                        .send(from, ShardMessage::InterestAck { ack_id })
                        .await;
                });
            }
        }
        ShardMessage::InterestAck { ack_id } => router::interest_acked(shard, ack_id),
        ShardMessage::SourcePublish {
            message,
            group,
            receipt,
        } => {
            let delivered = shard.state.borrow_mut().deliver_from_source(
                &Rc::new(message),
                group.as_deref(),
                &receipt,
                now,
            );
            // Refused: the receipt is dropped unfinished, and the source goes back.
            if let Some(delivered) = delivered {
                receipt.finish(delivered);
            }
        }
        ShardMessage::Retained(message) => {
            shard.state.borrow_mut().set_retained(&Rc::new(message));
        }
        ShardMessage::Stats { from, snapshot } => {
            shard.remote_stats.borrow_mut()[from] = snapshot;
        }
    }
}
