//! How a shard hands a message to its subscribers: which shards have matching
//! subscriptions (`interested`), one copy per local session with the highest QoS of its
//! matching subscriptions, one member per shared group, read access checked per message.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use crate::auth::Access;
use crate::metrics::stats::ShardStats;
use crate::protocol::QoS;
use crate::topic::Match;

use super::access::refreshed;
use super::{LocalTargets, RemoteTargets, Shard};
use crate::broker::message::Message;
use crate::broker::session::{Delivery, DeliveryOutcome, SessionId, SourceAck, SubscriptionEntry};

impl Shard {
    /// Routes a message published on this shard: delivers to local subscribers and shared
    /// groups whose turn is here, and says which other shards must get it.
    pub fn route(&mut self, message: &Rc<Message>, now: Instant) -> RemoteTargets {
        let (mut local, mut targets) = self.interested(&message.topic);
        self.add_nodes(&message.topic, &mut local, &mut targets);
        if local.normal {
            self.deliver_local(message, now);
        }
        for group in local.shared_groups {
            self.deliver_shared(message, &group, now);
        }
        targets.congested = std::mem::take(&mut self.congested);
        targets
    }

    /// Who has subscriptions matching `topic`: this shard (ordinary ones, and the shared
    /// groups whose turn is here) and the other shards.
    pub(super) fn interested(&mut self, topic: &str) -> (LocalTargets, RemoteTargets) {
        let mut local = LocalTargets::default();
        let mut targets = RemoteTargets::default();
        let own_id = self.id;
        self.interest.for_each_match(topic, |m| match m {
            Match::Normal { key, .. } => {
                if *key == own_id {
                    local.normal = true;
                } else if !targets.shards.contains(key) {
                    targets.shards.push(*key);
                }
            }
            Match::Shared { group, key, .. } => {
                if *key == own_id {
                    local.shared_groups.push(group.to_string());
                } else {
                    targets.shared.push((*key, group.to_string()));
                }
            }
        });
        (local, targets)
    }

    /// Delivers to this shard's ordinary subscribers: one copy per session with the
    /// highest QoS of its matching subscriptions and all their identifiers [MQTT-3.3.4-2],
    /// [MQTT-3.3.4-3].
    pub fn deliver_local(&mut self, message: &Rc<Message>, now: Instant) {
        let merged = self.local_subscribers(message);
        self.deliver_merged(merged, message, SourceAck::default, now);
    }

    /// Delivers `message` to each session of `merged` (from [`Shard::local_subscribers`],
    /// given back to `self.scratch` after), with the source share `source` makes.
    pub(super) fn deliver_merged(
        &mut self,
        mut merged: HashMap<SessionId, (QoS, bool, Vec<u32>)>,
        message: &Rc<Message>,
        mut source: impl FnMut() -> SourceAck,
        now: Instant,
    ) {
        for (session_id, (qos, retain, subscription_ids)) in merged.drain() {
            let delivery = Delivery {
                message: message.clone(),
                qos,
                retain,
                subscription_ids,
                source: source(),
            };
            self.deliver_to(session_id, delivery, now);
        }
        self.scratch = merged;
    }

    /// This shard's sessions with ordinary subscriptions matching `message`, each with the
    /// QoS, retain flag and subscription identifiers of its copy (in `self.scratch`, taken:
    /// give it back when done).
    pub(super) fn local_subscribers(
        &mut self,
        message: &Message,
    ) -> HashMap<SessionId, (QoS, bool, Vec<u32>)> {
        let mut merged = std::mem::take(&mut self.scratch);
        let publisher = &message.publisher;
        let ids = &self.session_client_ids;
        self.subscriptions.for_each_match(&message.topic, |m| {
            let (session_id, entry) = (*m.key(), *m.value());
            if entry.options.no_local {
                // [MQTT-3.8.3-3]: not to the publisher's own connection.
                if ids.get(&session_id).is_some_and(|c| c == publisher) {
                    return;
                }
            }
            let slot = merged
                .entry(session_id)
                .or_insert((QoS::AtMostOnce, false, Vec::new()));
            slot.0 = slot.0.max(entry.options.qos.min(message.qos));
            slot.1 |= entry.options.retain_as_published && message.retain;
            if let Some(id) = entry.subscription_id {
                slot.2.push(id);
            }
        });
        merged
    }

    /// Delivers to the member of shared group `group` whose turn it is on this shard.
    pub fn deliver_shared(&mut self, message: &Rc<Message>, group: &str, now: Instant) {
        if let Some((session_id, entry)) = self.shared_member(message, group) {
            let delivery = shared_delivery(message, entry, SourceAck::default());
            self.deliver_to(session_id, delivery, now);
        }
    }

    /// The member of shared group `group` on this shard that gets `message`.
    pub(super) fn shared_member(
        &mut self,
        message: &Message,
        group: &str,
    ) -> Option<(SessionId, SubscriptionEntry)> {
        let mut chosen = None;
        self.shared_subscriptions
            .for_each_match(&message.topic, |m| {
                if let Match::Shared {
                    group: g,
                    key,
                    value,
                } = m
                {
                    if g == group && chosen.is_none() {
                        chosen = Some((*key, *value));
                    }
                }
            });
        chosen
    }

    /// Hands `delivery` to a session of this shard, if its client may read the topic.
    /// What goes nowhere by rule settles its Kafka source share (see [`SourceAck`]).
    pub(super) fn deliver_to(&mut self, session_id: SessionId, delivery: Delivery, now: Instant) {
        let Some(client_id) = self.session_client_ids.get(&session_id) else {
            delivery.source.settle();
            return;
        };
        let Some(session) = self.sessions.get_mut(client_id) else {
            delivery.source.settle();
            return;
        };
        // Read access, per message: a subscription may be wider than what its subscriber
        // may read (Mosquitto grants `devices/#` to a device held to `devices/%c/#` and
        // filters what it delivers the same way).
        let snapshot = refreshed(&self.auth, &mut self.auth_snapshot);
        if snapshot.acl().is_some()
            && !session
                .acl
                .as_mut()
                .is_some_and(|acl| acl.check(snapshot, &delivery.message.topic, Access::Read))
        {
            ShardStats::incr(&self.stats.dropped_not_authorized);
            delivery.source.settle();
            return;
        }
        let qos = delivery.qos;
        let outcome = session.deliver(
            delivery,
            self.config.session_queue_messages_max,
            self.config.outgoing_queue_messages_max,
            now,
        );
        if outcome == DeliveryOutcome::Queued && self.is_congested(client_id) {
            self.congested.push(client_id.clone());
        }
        let stats = &self.stats;
        match outcome {
            DeliveryOutcome::Dropped if qos == QoS::AtMostOnce => {
                ShardStats::incr(&stats.dropped_qos0_queue_full)
            }
            DeliveryOutcome::Dropped => ShardStats::incr(&stats.dropped_session_queue_full),
            DeliveryOutcome::Expired => ShardStats::incr(&stats.dropped_expired),
            DeliveryOutcome::TooLarge => ShardStats::incr(&stats.dropped_too_large),
            DeliveryOutcome::Sent | DeliveryOutcome::Queued => {}
        }
    }
}

/// The copy of `message` for a shared subscription's member: its own QoS and identifier,
/// and the retain flag only with Retain As Published.
pub(super) fn shared_delivery(
    message: &Rc<Message>,
    entry: SubscriptionEntry,
    source: SourceAck,
) -> Delivery {
    Delivery {
        message: message.clone(),
        qos: entry.options.qos.min(message.qos),
        retain: entry.options.retain_as_published && message.retain,
        subscription_ids: entry.subscription_id.into_iter().collect(),
        source,
    }
}
