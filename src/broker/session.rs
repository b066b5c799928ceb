//! A client's session (section 4.1): subscriptions, QoS 1/2 state in both directions and
//! the messages queued for it, kept by the shard that owns its client id, connected or not.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use crate::auth::ClientAcl;
use crate::protocol::{MqttStr, Packet, Protocol, PubRel, QoS, SubscriptionOptions, Will};

use super::connection::Connection;
use super::message::Message;
use crate::bridge::source::Receipt;

pub type SessionId = u64;

/// One message on its way to this session's client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Rc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// For a record from a Kafka source: settled when this delivery is done.
    pub source: SourceAck,
}

/// A Kafka source record's share ([`Receipt`]) riding with one delivery. Settled (the
/// record may be committed, as far as this session goes) when the client acknowledged it
/// (PUBACK, PUBREC), when it was written at QoS 0 or dropped by rule (expired, too large,
/// a QoS 0 overflow), when it waits in a session whose client is away, or when the session
/// ends. Dropped unsettled (the broker stopping with it unacknowledged), the record is not
/// committed and is read again.
#[derive(Clone, Default)]
pub struct SourceAck(Option<Rc<RefCell<Option<Receipt>>>>);

impl SourceAck {
    pub fn new(receipt: Receipt) -> SourceAck {
        SourceAck(Some(Rc::new(RefCell::new(Some(receipt)))))
    }

    pub fn settle(&self) {
        if let Some(receipt) = self.0.as_ref().and_then(|cell| cell.borrow_mut().take()) {
            receipt.finish(true);
        }
    }
}

impl std::fmt::Debug for SourceAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SourceAck(record)"
        } else {
            "SourceAck(none)"
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// QoS 1 PUBLISH sent, PUBACK expected.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, PUBREC expected.
    AwaitingPubRec,
    /// PUBREL sent, PUBCOMP expected.
    AwaitingPubComp,
}

#[derive(Debug)]
pub struct Outbound {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub state: OutboundState,
}

/// A subscription as the session remembers it (for re-subscribes and clean-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionEntry {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

pub struct Session {
    pub id: SessionId,
    pub client_id: MqttStr,
    pub protocol: Protocol,
    pub connection: Option<Rc<Connection>>,
    /// Filter (as subscribed, `$share/...` included) → options.
    pub subscriptions: HashMap<String, SubscriptionEntry>,
    /// QoS 1/2 messages sent and not yet fully acknowledged, oldest first; resent with DUP
    /// on reconnect [MQTT-4.4.0-1].
    pub outbound: VecDeque<Outbound>,
    /// Messages waiting for room in the in-flight window or for the client to come back.
    pub pending: VecDeque<Delivery>,
    /// QoS 2 packet ids received and answered with PUBREC, awaiting PUBREL: a resent
    /// PUBLISH with one of these ids is not delivered again [MQTT-4.3.3-9].
    pub inbound_qos2: HashSet<u16>,
    pub(super) next_packet_id: u16,
    /// The client's Receive Maximum capped by our in-flight limit [MQTT-3.3.4-9].
    pub inflight_max: usize,
    pub session_expiry_secs: u32,
    pub will: Option<Will>,
    /// Set from the shard's counter at each connect, unique among every session the shard
    /// ever held: timers for wills and expiry check it to know whether the client came
    /// back meanwhile, and a session recreated by a Clean Start must not look like the one
    /// a stale timer was armed for [MQTT-3.1.2-23], [MQTT-4.1.0-2].
    pub generation: u64,
    pub disconnected_at: Option<Instant>,
    /// The ACL's view of this client (identity of its latest CONNECT, cached decisions);
    /// `None` until the connection that opened the session set it.
    pub acl: Option<ClientAcl>,
}

impl Session {
    pub fn new(id: SessionId, client_id: MqttStr, protocol: Protocol) -> Session {
        Session {
            id,
            client_id,
            protocol,
            connection: None,
            subscriptions: HashMap::new(),
            outbound: VecDeque::new(),
            pending: VecDeque::new(),
            inbound_qos2: HashSet::new(),
            next_packet_id: 0,
            inflight_max: 1,
            session_expiry_secs: 0,
            will: None,
            generation: 0,
            disconnected_at: None,
            acl: None,
        }
    }

    /// The next packet id not used by a message in flight [MQTT-2.2.1-2].
    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                continue;
            }
            let id = self.next_packet_id;
            if !self.outbound.iter().any(|o| o.packet_id == id) {
                return id;
            }
        }
    }

    fn connected(&self) -> Option<&Rc<Connection>> {
        self.connection.as_ref().filter(|c| !c.is_closing())
    }

    /// Sends `delivery` now if the in-flight window allows, else queues it. Returns
    /// `false` when it had to be dropped (queue full, or QoS 0 for an absent client).
    pub fn deliver(
        &mut self,
        delivery: Delivery,
        session_queue_max: usize,
        outgoing_queue_max: usize,
        now: Instant,
    ) -> DeliveryOutcome {
        if delivery.qos == QoS::AtMostOnce {
            // Written, or dropped by rule (counted as for MQTT publishers): done either way.
            delivery.source.settle();
            let Some(connection) = self.connected() else {
                // QoS 0 messages are not kept for absent clients.
                return DeliveryOutcome::Dropped;
            };
            if connection.queued_len() >= outgoing_queue_max {
                return DeliveryOutcome::Dropped;
            }
            return match delivery.message.to_publish(
                QoS::AtMostOnce,
                delivery.retain,
                0,
                &delivery.subscription_ids,
                now,
            ) {
                Some(publish) if too_large(&publish, connection) => DeliveryOutcome::TooLarge,
                Some(publish) => {
                    connection.send(Packet::Publish(publish));
                    DeliveryOutcome::Sent
                }
                None => DeliveryOutcome::Expired,
            };
        }
        if self.connected().is_some()
            && self.outbound.len() < self.inflight_max
            && self.pending.is_empty()
        {
            return self.send_outbound(delivery, now);
        }
        if self.pending.len() >= session_queue_max {
            return DeliveryOutcome::Dropped;
        }
        if self.connection.is_none() {
            // Kept for a client that is away: as far as a Kafka source goes, delivered.
            delivery.source.settle();
        }
        self.pending.push_back(delivery);
        DeliveryOutcome::Queued
    }

    fn send_outbound(&mut self, delivery: Delivery, now: Instant) -> DeliveryOutcome {
        let packet_id = self.allocate_packet_id();
        let Some(publish) = delivery.message.to_publish(
            delivery.qos,
            delivery.retain,
            packet_id,
            &delivery.subscription_ids,
            now,
        ) else {
            delivery.source.settle();
            return DeliveryOutcome::Expired;
        };
        if let Some(connection) = self.connected() {
            if too_large(&publish, connection) {
                // [MQTT-3.1.2-25]: discarded as if sent; it must not hold an in-flight slot.
                delivery.source.settle();
                return DeliveryOutcome::TooLarge;
            }
        }
        let state = if delivery.qos == QoS::AtLeastOnce {
            OutboundState::AwaitingPubAck
        } else {
            OutboundState::AwaitingPubRec
        };
        if let Some(connection) = self.connected() {
            connection.send(Packet::Publish(publish));
        }
        self.outbound.push_back(Outbound {
            packet_id,
            delivery,
            state,
        });
        DeliveryOutcome::Sent
    }

    /// Moves queued messages into the in-flight window while it has room. Returns how many
    /// expired or were too large for the client on the way.
    pub fn pump(&mut self, now: Instant) -> u64 {
        let mut expired = 0;
        while self.connected().is_some() && self.outbound.len() < self.inflight_max {
            let Some(delivery) = self.pending.pop_front() else {
                break;
            };
            if matches!(
                self.send_outbound(delivery, now),
                DeliveryOutcome::Expired | DeliveryOutcome::TooLarge
            ) {
                expired += 1;
            }
        }
        expired
    }

    /// PUBACK or PUBCOMP: the message is done. `false` if no such message was in flight.
    pub fn complete(&mut self, packet_id: u16, expected: OutboundState) -> bool {
        match self
            .outbound
            .iter()
            .position(|o| o.packet_id == packet_id && o.state == expected)
        {
            Some(index) => {
                if let Some(done) = self.outbound.remove(index) {
                    done.delivery.source.settle();
                }
                true
            }
            None => false,
        }
    }

    /// The client went away with the session kept: what waits for it is, as far as Kafka
    /// sources go, delivered (see [`SourceAck`]).
    pub fn settle_sources(&mut self) {
        for outbound in &self.outbound {
            outbound.delivery.source.settle();
        }
        for delivery in &self.pending {
            delivery.source.settle();
        }
    }

    /// PUBREC: answer with PUBREL and wait for PUBCOMP [MQTT-4.3.3-3].
    pub fn received(&mut self, packet_id: u16) -> bool {
        match self
            .outbound
            .iter_mut()
            .find(|o| o.packet_id == packet_id && o.state != OutboundState::AwaitingPubAck)
        {
            Some(outbound) => {
                // The client has it; the rest of the exchange is about its packet id.
                outbound.delivery.source.settle();
                outbound.state = OutboundState::AwaitingPubComp;
                true
            }
            None => false,
        }
    }

    /// After a reconnect with a kept session: resend unacknowledged PUBLISHes with DUP set
    /// and PUBRELs, in their original order [MQTT-4.4.0-1], then queued messages.
    pub fn resume(&mut self, now: Instant) -> u64 {
        let Some(connection) = self.connection.clone() else {
            return 0;
        };
        for outbound in &self.outbound {
            if outbound.state == OutboundState::AwaitingPubComp {
                connection.send(Packet::PubRel(PubRel::new(outbound.packet_id)));
                continue;
            }
            let delivery = &outbound.delivery;
            let resend = |message: &Message| {
                message.to_publish(
                    delivery.qos,
                    delivery.retain,
                    outbound.packet_id,
                    &delivery.subscription_ids,
                    now,
                )
            };
            // Onward delivery has started, so a message that expired since is resent all
            // the same, with no time left [MQTT-3.3.2-5], [MQTT-4.4.0-1]: dropping it
            // would free a packet id the client may still hold for QoS 2.
            let mut publish = resend(&delivery.message).unwrap_or_else(|| {
                let mut message = (*delivery.message).clone();
                message.expires_at = None;
                message.properties.message_expiry_interval_secs = Some(0);
                resend(&message).expect("a message without expiry")
            });
            publish.dup = true;
            connection.send(Packet::Publish(publish));
        }
        self.pump(now)
    }
}

impl Drop for Session {
    /// A session that ends (Clean Start, expiry, the broker stopping once its sources have
    /// committed) settles what it held: MQTT discards it with the session.
    fn drop(&mut self) {
        self.settle_sources();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Sent,
    Queued,
    Dropped,
    Expired,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
}

fn too_large(publish: &crate::protocol::Publish, connection: &Connection) -> bool {
    use crate::protocol::Encode;
    publish.encoded_len(connection.protocol) > connection.packet_size_bytes_max as usize
}
