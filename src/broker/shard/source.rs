//! Records from Kafka sources on a shard: delivered only when every QoS 1/2 session they
//! go to has room, each session's copy carrying a share of the record's receipt that it
//! settles once the client acknowledged it (see `session::SourceAck`), so that a record committed to Kafka is never one a full session dropped
//! (see `bridge::source`). A refused record holds back the later records of its partition
//! on this shard until the source comes back to it, so a subscriber never gets a later
//! record of a partition before an earlier one the first time round.

use std::rc::Rc;
use std::time::Instant;

use crate::bridge::source::{CrossNode, Position, Receipt};
use crate::protocol::QoS;

use super::delivery::shared_delivery;
use super::{RemoteTargets, Shard};
use crate::broker::message::Message;
use crate::broker::session::SourceAck;

/// What the shard that takes a record from its source does with it.
pub enum SourceRouting {
    /// Not delivered here, nor anywhere: the partition goes back to this record.
    Refused,
    /// Delivered to this shard's subscribers (`local`: there were some); the other shards
    /// in `targets` must get it too.
    Delivered { local: bool, targets: RemoteTargets },
}

impl Shard {
    /// Routes a record read from Kafka on the shard its partition is given to: delivers it
    /// here when every session it goes to has room, and says which shards get it next.
    /// A message from another node of the cluster (`cross_node`) goes to the subscribers
    /// it names here and to no other node; a Kafka source's record goes to other nodes'
    /// subscribers too.
    pub fn route_from_source(
        &mut self,
        message: &Rc<Message>,
        receipt: &Receipt,
        cross_node: Option<&CrossNode>,
        now: Instant,
    ) -> SourceRouting {
        let position = receipt.position();
        if self.source_blocked(position) {
            return SourceRouting::Refused;
        }
        let (mut local, mut targets) = self.interested(&message.topic);
        match cross_node {
            Some(cross) => {
                if !cross.ordinary {
                    local.normal = false;
                    targets.shards.clear();
                }
                local.shared_groups.retain(|g| cross.groups.contains(g));
                targets.shared.retain(|(_, g)| cross.groups.contains(g));
            }
            None => self.add_nodes(&message.topic, &mut local, &mut targets),
        }
        let groups: Vec<&str> = local.shared_groups.iter().map(String::as_str).collect();
        match self.deliver_if_room(message, local.normal, &groups, receipt, now) {
            Some(delivered) => SourceRouting::Delivered {
                local: delivered,
                targets,
            },
            None => SourceRouting::Refused,
        }
    }

    /// A record from Kafka forwarded by the shard that took it: to this shard's ordinary
    /// subscribers (`group` None) or to the member of one shared group. `Some(delivered
    /// to anyone)`, or None when refused.
    pub fn deliver_from_source(
        &mut self,
        message: &Rc<Message>,
        group: Option<&str>,
        receipt: &Receipt,
        now: Instant,
    ) -> Option<bool> {
        if self.source_blocked(receipt.position()) {
            return None;
        }
        let groups: Vec<&str> = group.into_iter().collect();
        self.deliver_if_room(message, group.is_none(), &groups, receipt, now)
    }

    fn deliver_if_room(
        &mut self,
        message: &Rc<Message>,
        normal: bool,
        groups: &[&str],
        receipt: &Receipt,
        now: Instant,
    ) -> Option<bool> {
        let position = receipt.position();
        let mut merged = if normal {
            self.local_subscribers(message)
        } else {
            std::mem::take(&mut self.scratch)
        };
        let shared: Vec<_> = groups
            .iter()
            .filter_map(|group| self.shared_member(message, group))
            .collect();
        let session_max = self.config.session_queue_messages_max;
        let full = merged
            .iter()
            .map(|(id, (qos, _, _))| (*id, *qos))
            .chain(
                shared
                    .iter()
                    .map(|(id, entry)| (*id, entry.options.qos.min(message.qos))),
            )
            .any(|(session_id, qos)| {
                qos != QoS::AtMostOnce
                    && self
                        .session_client_ids
                        .get(&session_id)
                        .and_then(|client_id| self.sessions.get(client_id))
                        .is_some_and(|session| session.pending.len() >= session_max)
            });
        if full {
            merged.clear();
            self.scratch = merged;
            self.source_blocks
                .insert(position.partition, position.offset);
            return None;
        }
        let delivered = !merged.is_empty() || !shared.is_empty();
        self.deliver_merged(merged, message, || SourceAck::new(receipt.share()), now);
        for (session_id, entry) in shared {
            let source = SourceAck::new(receipt.share());
            self.deliver_to(session_id, shared_delivery(message, entry, source), now);
        }
        // Sources are held back by refusals, not by waiting on slow subscribers.
        self.congested.clear();
        Some(delivered)
    }

    /// Whether records of this partition are refused here: one before it was, and the
    /// source has not come back to that one yet. The record it comes back with (an offset
    /// at or before the refused one) lifts the block.
    fn source_blocked(&mut self, position: Position) -> bool {
        match self.source_blocks.get(&position.partition) {
            Some(&refused) if position.offset > refused => true,
            Some(_) => {
                self.source_blocks.remove(&position.partition);
                false
            }
            None => false,
        }
    }
}
