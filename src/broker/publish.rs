//! PUBLISH from a client (section 3.3.4): resolve the topic alias, route, acknowledge.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use crate::auth::Access;
use crate::bridge::{Acknowledgement, Completed, Publication};
use crate::metrics::stats::ShardStats;
use crate::protocol::{MqttStr, Packet, PubAck, PubRec, Publish, QoS, ReasonCode};
use crate::runtime;

use super::connection::Connection;
use super::context::{DeferredAck, ShardContext};
use super::link::{Exit, Link};
use super::message::Message;
use super::router;

impl Link {
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
            self.answer(qos, packet_id, Verdict::Refused(ReasonCode::NotAuthorized));
            return Ok(());
        }
        if qos == QoS::ExactlyOnce {
            let mut state = self.shard.state.borrow_mut();
            let session = state.session(&self.client_id).expect("connected session");
            if session.inbound_qos2.contains(&packet_id) {
                drop(state);
                // Still waiting for Kafka: the PUBREC goes out when it answers. Otherwise a
                // resent PUBLISH whose PUBREC was lost: answer again, deliver once
                // [MQTT-4.3.3-9].
                if !is_deferred(&self.shard, &self.connection, packet_id) {
                    self.answer(qos, packet_id, Verdict::Accepted);
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
        let bridge = &self.shard.bridge;
        let admission = bridge.admit(&message.topic, qos, self.protocol.is_v5());
        if admission.refused_for_full_spool() {
            // `spool.when_full = "refuse"`: the 5.0 publisher hears at once that the message
            // was not taken, neither by Kafka nor by subscribers, and may send it again later.
            ShardStats::incr(&self.shard.stats.refused_spool_full);
            self.answer(qos, packet_id, Verdict::Refused(ReasonCode::QuotaExceeded));
            return Ok(());
        }
        let mut deferred: Option<Rc<DeferredAck>> = None;
        if admission.to_kafka() {
            if qos != QoS::AtMostOnce {
                // A full Kafka producer (or a full spool, for `durable`): stop reading this
                // publisher until it drains (backpressure, never a dropped QoS 1/2 message).
                bridge.wait_for_room(&admission).await;
            }
            let publication = Publication {
                topic: &message.topic,
                publisher: &message.publisher,
                username: self.username.as_deref(),
                payload: &message.payload,
                qos,
                retain: message.retain,
                properties: &message.properties,
            };
            let ticket = bridge.submit(&admission, &publication, qos != QoS::AtMostOnce, now);
            if let Some(ticket) = ticket {
                // With `ack = "kafka"` or `"durable"` the PUBACK/PUBREC waits for the bridge
                // (`acknowledge_deferred`). Recorded before anything awaits, so that no
                // completion can come first.
                let ack = self.deferred(&mut deferred, packet_id, qos);
                self.shard.deferred_acks.borrow_mut().insert(ticket, ack);
            }
        }
        if admission.to_subscribers() {
            for ticket in router::publish(&self.shard, message).await {
                // Subscribers on other nodes: it waits for the messages topic too.
                let ack = self.deferred(&mut deferred, packet_id, qos);
                if let Some(cluster) = &self.shard.cluster {
                    cluster.wait_for(ticket, super::cluster::Waiter::Publish(ack));
                }
            }
        }
        match deferred {
            // Releases the hold of `deferred`: due now unless something still waits.
            Some(ack) => settle_deferred(&self.shard, &ack, Verdict::Accepted),
            None => self.answer(qos, packet_id, Verdict::Accepted),
        }
        Ok(())
    }

    /// The acknowledgement of this PUBLISH, made to wait for one more thing. Made on first
    /// use with a hold of its own, released once the PUBLISH is routed, so that nothing
    /// that answers meanwhile sends it early.
    fn deferred(
        &self,
        deferred: &mut Option<Rc<DeferredAck>>,
        packet_id: u16,
        qos: QoS,
    ) -> Rc<DeferredAck> {
        let ack = deferred.get_or_insert_with(|| {
            Rc::new(DeferredAck {
                connection: self.connection.clone(),
                client_id: self.client_id.clone(),
                packet_id,
                qos,
                waits: Cell::new(1),
                failure: Cell::new(None),
            })
        });
        ack.waits.set(ack.waits.get() + 1);
        ack.clone()
    }

    fn answer(&self, qos: QoS, packet_id: u16, verdict: Verdict) {
        acknowledge(
            &self.shard,
            &self.connection,
            &self.client_id,
            qos,
            packet_id,
            verdict,
        );
    }
}

/// How a PUBLISH is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Not taken, and sending it again would not help (not authorized, a full spool, Kafka
    /// refused it for good). A 5.0 client gets the code; 3.1.1 has no way to hear it, so
    /// its acknowledgement is the normal one ([MQTT-3.3.5-2] for the ACL, as in
    /// Mosquitto), and it does not publish the same message again after every reconnect.
    Refused(ReasonCode),
    /// Failed on the way (a Kafka producer's fatal error): a 5.0 client gets the code; a
    /// 3.1.1 client is disconnected unacknowledged, so it publishes the message again.
    Failed(ReasonCode),
}

impl From<Acknowledgement> for Verdict {
    fn from(outcome: Acknowledgement) -> Verdict {
        match outcome {
            Acknowledgement::Stored => Verdict::Accepted,
            Acknowledgement::Refused(code) => Verdict::Refused(code),
            Acknowledgement::Failed(code) => Verdict::Failed(code),
        }
    }
}

/// Sends the PUBACK (QoS 1) or PUBREC (QoS 2) of a PUBLISH, whatever decided it and
/// whenever: the one place both are built.
pub(super) fn acknowledge(
    shard: &ShardContext,
    connection: &Connection,
    client_id: &MqttStr,
    qos: QoS,
    packet_id: u16,
    verdict: Verdict,
) {
    let v5 = connection.protocol.is_v5();
    let reason = match verdict {
        Verdict::Accepted => ReasonCode::Success,
        Verdict::Refused(code) if v5 => code,
        Verdict::Refused(_) => ReasonCode::Success,
        Verdict::Failed(code) if v5 => code,
        Verdict::Failed(_) => {
            connection.close(None);
            return;
        }
    };
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => connection.send(Packet::PubAck(PubAck::with_reason(packet_id, reason))),
        QoS::ExactlyOnce => {
            if let Some(session) = shard.state.borrow_mut().session(client_id) {
                if reason.is_error() {
                    // A PUBREC with a code of 0x80 or more ends the exchange: no PUBREL
                    // follows [MQTT-4.3.3-4], and the packet identifier is free again.
                    session.inbound_qos2.remove(&packet_id);
                } else {
                    // The PUBREL that follows gets its PUBCOMP.
                    session.inbound_qos2.insert(packet_id);
                }
            }
            connection.send(Packet::PubRec(PubRec::with_reason(packet_id, reason)));
        }
    }
}

/// Sends the acknowledgements the bridge says are due (their records are in Kafka or the
/// spool, or were refused).
pub fn acknowledge_deferred(shard: &ShardContext, completed: Vec<Completed>) {
    for done in completed {
        if let Some(receipt) = shard.source_tickets.borrow_mut().remove(&done.ticket) {
            // Stored, or refused for good and handled as the mapping says: done. A failure
            // that may pass leaves the record uncommitted, to be read again.
            if !matches!(done.outcome, Acknowledgement::Failed(_)) {
                receipt.finish(true);
            }
            continue;
        }
        let Some(ack) = shard.deferred_acks.borrow_mut().remove(&done.ticket) else {
            continue;
        };
        settle_deferred(shard, &ack, done.outcome.into());
    }
}

/// One of the things `ack` waits for ended with `verdict`: the acknowledgement goes once
/// nothing is left, with the first failure if there was one.
pub fn settle_deferred(shard: &ShardContext, ack: &DeferredAck, verdict: Verdict) {
    if verdict != Verdict::Accepted && ack.failure.get().is_none() {
        ack.failure.set(Some(verdict));
    }
    let left = ack.waits.get().saturating_sub(1);
    ack.waits.set(left);
    if left > 0 {
        return;
    }
    acknowledge(
        shard,
        &ack.connection,
        &ack.client_id,
        ack.qos,
        ack.packet_id,
        ack.failure.get().unwrap_or(Verdict::Accepted),
    );
}

/// Whether the QoS 2 PUBLISH `packet_id` of this connection still waits for the bridge (a
/// resent one must then not be acknowledged yet).
fn is_deferred(shard: &ShardContext, connection: &Connection, packet_id: u16) -> bool {
    let this =
        |ack: &Rc<DeferredAck>| ack.connection.id == connection.id && ack.packet_id == packet_id;
    shard.deferred_acks.borrow().values().any(this)
        || shard
            .cluster
            .as_ref()
            .is_some_and(|cluster| cluster.is_waiting(this))
}
