//! SUBSCRIBE and UNSUBSCRIBE from a client (sections 3.8.4 and 3.10.4).

use std::time::Instant;

use crate::protocol::{Packet, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe};

use super::link::Link;
use super::router;
use super::session::SubscriptionEntry;
use crate::metrics::stats::ShardStats;

impl Link {
    pub(super) async fn on_subscribe(&mut self, subscribe: Subscribe) {
        let subscription_id = subscribe.properties.subscription_identifier;
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut accepted = Vec::with_capacity(subscribe.filters.len());
        let mut changes = Vec::new();
        {
            let mut state = self.shard.state.borrow_mut();
            for subscription in &subscribe.filters {
                // The ACL judges the filter without its `$share/GROUP/` prefix.
                let filter = unshared(&subscription.filter);
                if !state.may_subscribe(&self.client_id, filter) {
                    ShardStats::incr(&self.shard.stats.subscriptions_not_authorized);
                    reason_codes.push(ReasonCode::NotAuthorized);
                    continue;
                }
                if state.subscription_quota_reached(&self.client_id, &subscription.filter) {
                    reason_codes.push(ReasonCode::QuotaExceeded);
                    continue;
                }
                let entry = SubscriptionEntry {
                    options: subscription.options,
                    subscription_id,
                };
                // A repeated filter replaces the subscription [MQTT-3.8.4-3].
                let is_new = state.add_subscription(
                    &self.client_id,
                    &subscription.filter,
                    entry,
                    &mut changes,
                );
                // We support every QoS: the granted QoS is the one asked for [MQTT-3.8.4-6].
                reason_codes.push(match subscription.options.qos as u8 {
                    0 => ReasonCode::GRANTED_QOS_0,
                    1 => ReasonCode::GrantedQos1,
                    _ => ReasonCode::GrantedQos2,
                });
                accepted.push((subscription.filter.clone(), entry, is_new));
            }
        }
        // Every shard routes to the new subscriptions before the SUBACK goes out.
        router::announce_interest(&self.shard, changes, true).await;
        self.connection.send(Packet::SubAck(SubAck::new(
            subscribe.packet_id,
            reason_codes,
        )));
        // Retained messages follow the SUBACK [MQTT-3.8.4-4].
        let now = Instant::now();
        let mut state = self.shard.state.borrow_mut();
        for (filter, entry, is_new) in accepted {
            state.deliver_retained(&self.client_id, &filter, entry, is_new, now);
        }
    }

    pub(super) async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        let mut changes = Vec::new();
        {
            let mut state = self.shard.state.borrow_mut();
            for filter in &unsubscribe.filters {
                let existed = state.unsubscribe(&self.client_id, filter, &mut changes);
                reason_codes.push(if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                });
            }
        }
        router::announce_interest(&self.shard, changes, false).await;
        if !self.protocol.is_v5() {
            reason_codes.clear();
        }
        self.connection.send(Packet::UnsubAck(UnsubAck::new(
            unsubscribe.packet_id,
            reason_codes,
        )));
    }
}

/// A filter without the `$share/GROUP/` of a shared subscription.
fn unshared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_group, filter)| filter)
}
