//! PUBLISH from a client (section 3.3.4): resolve the topic alias, route, acknowledge.

use std::time::{Duration, Instant};

use crate::auth::Access;
use crate::bridge::shard_bridge::Submitted;
use crate::protocol::{Packet, PubAck, PubRec, Publish, QoS, ReasonCode};
use crate::runtime;

use super::link::{Exit, Link};
use super::message::Message;
use super::router;
use super::stats::ShardStats;

impl Link {
    /// Answers a PUBLISH the ACL refused and drops it. A 5.0 client learns why from the
    /// reason code 0x87 Not authorized in its PUBACK or PUBREC; 3.1.1 has no way to say it,
    /// so the acknowledgement is the normal one [MQTT-3.3.5-2], as in Mosquitto.
    fn refuse_publish(&mut self, qos: QoS, packet_id: u16) {
        let v5 = self.protocol.is_v5();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce if v5 => self.connection.send(Packet::PubAck(PubAck::with_reason(
                packet_id,
                ReasonCode::NotAuthorized,
            ))),
            QoS::AtLeastOnce => self.connection.send(Packet::PubAck(PubAck::new(packet_id))),
            // A PUBREC with a failure code ends the exchange: no PUBREL follows.
            QoS::ExactlyOnce if v5 => self.connection.send(Packet::PubRec(PubRec::with_reason(
                packet_id,
                ReasonCode::NotAuthorized,
            ))),
            QoS::ExactlyOnce => {
                // The PUBREL that follows gets its PUBCOMP like any other.
                if let Some(session) = self.shard.state.borrow_mut().session(&self.client_id) {
                    session.inbound_qos2.insert(packet_id);
                }
                self.connection.send(Packet::PubRec(PubRec::new(packet_id)));
            }
        }
    }

    pub(super) async fn on_publish(&mut self, publish: Publish) -> Result<(), Exit> {
        ShardStats::incr(&self.shard.stats.messages_received);
        ShardStats::incr(&self.shard.stats.messages_received_by_qos[publish.qos as usize]);
        if let Some(budget) = &mut self.publish_budget {
            // Over its rate: this client is not read for a while (backpressure).
            let wait = budget.take(Instant::now());
            if !wait.is_zero() {
                runtime::sleep(wait).await;
            }
        }
        let config = self.shard.config.clone();
        let topic = match publish.properties.topic_alias {
            Some(alias) => {
                // [MQTT-3.3.2-9]: 0 < alias <= the Topic Alias Maximum we announced.
                if alias > config.topic_alias_maximum {
                    return Err(Exit::ProtocolError(ReasonCode::TopicAliasInvalid));
                }
                if publish.topic.is_empty() {
                    // An alias the client never set is a Protocol Error [MQTT-3.3.2-?].
                    match self.topic_aliases.get(&alias) {
                        Some(topic) => topic.clone(),
                        None => return Err(Exit::ProtocolError(ReasonCode::ProtocolError)),
                    }
                } else {
                    self.topic_aliases.insert(alias, publish.topic.clone());
                    publish.topic.clone()
                }
            }
            None => publish.topic.clone(),
        };
        if publish.retain && !config.retain_available {
            // [MQTT-3.3.1-?]: Retain not supported is answered with DISCONNECT 0x9A.
            return Err(Exit::ProtocolError(ReasonCode::RetainNotSupported));
        }
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        // The ACL, before anything else sees the message: neither subscribers nor Kafka
        // mappings get what a client may not publish.
        let allowed = self.shard.state.borrow_mut().authorized(
            &self.client_id,
            topic.as_str(),
            Access::Write,
        );
        if !allowed {
            ShardStats::incr(&self.shard.stats.dropped_not_authorized);
            self.refuse_publish(qos, packet_id);
            return Ok(());
        }
        if qos == QoS::ExactlyOnce {
            let mut state = self.shard.state.borrow_mut();
            let session = state.session(&self.client_id).expect("connected session");
            if session.inbound_qos2.contains(&packet_id) {
                drop(state);
                // Still waiting for Kafka: the PUBREC goes out when it answers.
                let waiting = self
                    .shard
                    .bridge
                    .borrow()
                    .is_pending(self.connection.id, packet_id);
                if !waiting {
                    // A resent PUBLISH whose PUBREC was lost: answer again, deliver once
                    // [MQTT-4.3.3-9].
                    self.connection.send(Packet::PubRec(PubRec::new(packet_id)));
                }
                return Ok(());
            }
            // [MQTT-3.3.4-9]: more unacknowledged QoS 2 PUBLISHes than Receive Maximum.
            if session.inbound_qos2.len() >= usize::from(config.receive_maximum) {
                return Err(Exit::ProtocolError(ReasonCode::ReceiveMaximumExceeded));
            }
            session.inbound_qos2.insert(packet_id);
        }
        let now = Instant::now();
        let message = Message::from_publish(publish, topic, self.client_id.clone(), now);
        let (to_subscribers, to_kafka) = self.shard.bridge.borrow_mut().plan(&message.topic);
        if to_kafka
            && qos != QoS::AtMostOnce
            && self.protocol.is_v5()
            && self
                .shard
                .bridge
                .borrow_mut()
                .refuses_for_full_spool(&message.topic)
        {
            // `spool.when_full = "refuse"`: the 5.0 publisher hears at once that the message
            // was not taken, neither by Kafka nor by subscribers, and may send it again later.
            ShardStats::incr(&self.shard.stats.refused_spool_full);
            self.refuse_for_quota(qos, packet_id);
            return Ok(());
        }
        let mut deferred = false;
        if to_kafka {
            if qos != QoS::AtMostOnce {
                // A full Kafka producer (or a full spool, for `durable`): stop reading this
                // publisher until it drains (backpressure, never a dropped QoS 1/2 message).
                while self
                    .shard
                    .bridge
                    .borrow_mut()
                    .is_backlogged_for(&message.topic)
                {
                    self.shard.backlog_waiters.wait(BACKLOG_RECHECK).await;
                }
            }
            let ack = (qos != QoS::AtMostOnce).then(|| (self.connection.clone(), packet_id));
            let username = self.username.as_deref();
            let (submitted, timer_wanted) = {
                let mut bridge = self.shard.bridge.borrow_mut();
                let submitted = bridge.submit(&message, username, ack, now);
                (submitted, bridge.take_timer_wanted())
            };
            if timer_wanted {
                // Only a batch left waiting, or held by a full producer, needs the linger
                // timer.
                self.shard.bridge_activity.notify();
            }
            self.shard.spool_activity.notify();
            // With `ack = "kafka"` the PUBACK/PUBREC waits for Kafka (report loop).
            deferred = matches!(submitted, Submitted::Deferred(_));
        }
        if to_subscribers {
            router::publish(&self.shard, message).await;
        }
        if !deferred {
            self.acknowledge(qos, packet_id);
        }
        Ok(())
    }

    /// PUBACK/PUBREC 0x97 Quota exceeded (5.0 only). A PUBREC with a code of 0x80 or more
    /// ends a QoS 2 exchange (the sender sends PUBREL only for codes below 0x80,
    /// [MQTT-4.3.3-4]), so the packet identifier is free again.
    fn refuse_for_quota(&mut self, qos: QoS, packet_id: u16) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.connection.send(Packet::PubAck(PubAck::with_reason(
                packet_id,
                ReasonCode::QuotaExceeded,
            ))),
            QoS::ExactlyOnce => {
                if let Some(session) = self.shard.state.borrow_mut().session(&self.client_id) {
                    session.inbound_qos2.remove(&packet_id);
                }
                self.connection.send(Packet::PubRec(PubRec::with_reason(
                    packet_id,
                    ReasonCode::QuotaExceeded,
                )));
            }
        }
    }

    fn acknowledge(&self, qos: QoS, packet_id: u16) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.connection.send(Packet::PubAck(PubAck::new(packet_id))),
            QoS::ExactlyOnce => self.connection.send(Packet::PubRec(PubRec::new(packet_id))),
        }
    }
}

/// The longest a publisher held back by a full Kafka producer or spool waits before it
/// looks again without being woken (the bridge wakes held publishers when it has room; this
/// covers a producer that drains while another cluster's stays full). Polling every 200 µs
/// instead cost thousands of held publishers a wake-up each, 5,000 times a second.
const BACKLOG_RECHECK: Duration = Duration::from_millis(100);
