//! A session moving between nodes of a cluster: the node that held it gives it up when its
//! client connects elsewhere (closing the old connection with 0x8E [MQTT-3.1.4-3]) and
//! writes it out; the new node installs it before its CONNACK, which then says Session
//! Present [MQTT-3.2.2-2]. What moves: subscriptions, the messages queued, the QoS 1/2
//! messages sent and not acknowledged (with their packet ids, resent with DUP
//! [MQTT-4.4.0-1]) and the QoS 2 packet ids received and not released [MQTT-4.3.3-9].
//!
//! ```text
//! u8 version (1), u8 protocol level, u32 session expiry, u16 next packet id
//! u16 subscriptions: str filter, u8 options (5.0 encoding), u32 identifier (0: none)
//! u16 QoS 2 packet ids received
//! u32 in flight: u16 packet id, u8 state, delivery
//! u32 queued: delivery
//! delivery: u8 QoS, u8 retain, u8 identifiers + u32 each, u32 length + envelope
//! ```

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::cluster::Envelope;
use crate::metrics::stats::ShardStats;
use crate::protocol::{MqttStr, Protocol, QoS, ReasonCode, SubscriptionOptions};

use super::{will_message, InterestChange, Shard};
use crate::broker::cluster::message_of;
use crate::broker::message::Message;
use crate::broker::session::{
    Delivery, Outbound, OutboundState, Session, SourceAck, SubscriptionEntry,
};

const VERSION: u8 = 1;

/// What giving up a session leaves to do.
#[derive(Default)]
pub struct GivenUp {
    /// The session as the new node installs it; None when it is not wanted (Clean Start)
    /// or there was none.
    pub session: Option<Bytes>,
    /// The will of the connection closed, when it goes now [MQTT-3.1.3-9].
    pub will_now: Option<Message>,
    pub interest_changes: Vec<InterestChange>,
}

impl Shard {
    /// Another node took `client_id`: its connection here closes with 0x8E and its session
    /// leaves, written out unless `clean` (the new connection starts afresh).
    pub fn give_up_session(&mut self, client_id: &MqttStr, clean: bool, now: Instant) -> GivenUp {
        let mut given = GivenUp::default();
        let Some(session) = self.sessions.get_mut(client_id) else {
            return given;
        };
        if let Some(old) = session.connection.take() {
            old.close(Some(ReasonCode::SessionTakenOver));
            ShardStats::decr(&self.stats.clients_connected);
            if let Some(will) = session.will.take() {
                // A delayed will is not sent when the client is back in time [MQTT-3.1.3-9].
                let delayed = will.properties.will_delay_interval_secs.unwrap_or(0) > 0;
                if !delayed || clean {
                    given.will_now = Some(will_message(will, client_id.clone(), now));
                }
            }
        }
        if !clean {
            given.session = Some(encode(session, now));
        }
        given.interest_changes = self.remove_session(client_id);
        given
    }

    /// Installs a session handed over by another node, replacing any this shard has for
    /// `client_id`; the CONNECT that follows finds it. Returns the interest it adds.
    pub fn install_session(
        &mut self,
        client_id: &MqttStr,
        data: &[u8],
        now: Instant,
    ) -> Result<Vec<InterestChange>, String> {
        let decoded = decode(data, now)?;
        let mut changes = self.remove_session(client_id);
        let id = self.next_session_id;
        self.next_session_id += 1;
        let mut session = Session::new(id, client_id.clone(), decoded.protocol);
        session.session_expiry_secs = decoded.session_expiry_secs;
        session.next_packet_id = decoded.next_packet_id;
        session.inbound_qos2 = decoded.inbound_qos2.into_iter().collect();
        session.outbound = decoded.outbound.into();
        session.pending = decoded.pending.into();
        self.sessions.insert(client_id.clone(), session);
        self.session_client_ids.insert(id, client_id.clone());
        ShardStats::incr(&self.stats.sessions);
        for (filter, entry) in decoded.subscriptions {
            self.add_subscription(client_id, &filter, entry, &mut changes);
        }
        Ok(changes)
    }
}

fn put_str(buf: &mut BytesMut, text: &str) {
    let len = text.len().min(usize::from(u16::MAX));
    buf.put_u16(len as u16);
    buf.put_slice(&text.as_bytes()[..len]);
}

fn put_delivery(buf: &mut BytesMut, delivery: &Delivery, now: Instant) {
    let message = &delivery.message;
    let mut properties = message.properties.clone();
    if let Some(at) = message.expires_at {
        let left = at.saturating_duration_since(now);
        // Expired meanwhile: it goes with no time left (1 s, the least the property says).
        properties.message_expiry_interval_secs =
            Some((left.as_secs() as u32 + u32::from(left.subsec_nanos() > 0)).max(1));
    }
    let envelope = Envelope {
        node: String::new(),
        publisher: message.publisher.clone(),
        ordinary: false,
        shared: Vec::new(),
        topic: message.topic.clone(),
        qos: message.qos,
        retain: message.retain,
        properties,
        payload: message.payload.clone(),
    }
    .encode();
    buf.put_u8(delivery.qos as u8);
    buf.put_u8(u8::from(delivery.retain));
    let ids = delivery.subscription_ids.len().min(usize::from(u8::MAX));
    buf.put_u8(ids as u8);
    for id in &delivery.subscription_ids[..ids] {
        buf.put_u32(*id);
    }
    buf.put_u32(envelope.len() as u32);
    buf.put_slice(&envelope);
}

fn encode(session: &Session, now: Instant) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(VERSION);
    buf.put_u8(session.protocol.level());
    buf.put_u32(session.session_expiry_secs);
    buf.put_u16(session.next_packet_id);
    buf.put_u16(session.subscriptions.len() as u16);
    for (filter, entry) in &session.subscriptions {
        put_str(&mut buf, filter);
        buf.put_u8(entry.options.encode(Protocol::V5));
        buf.put_u32(entry.subscription_id.unwrap_or(0));
    }
    buf.put_u16(session.inbound_qos2.len() as u16);
    for id in &session.inbound_qos2 {
        buf.put_u16(*id);
    }
    buf.put_u32(session.outbound.len() as u32);
    for outbound in &session.outbound {
        buf.put_u16(outbound.packet_id);
        buf.put_u8(match outbound.state {
            OutboundState::AwaitingPubAck => 0,
            OutboundState::AwaitingPubRec => 1,
            OutboundState::AwaitingPubComp => 2,
        });
        put_delivery(&mut buf, &outbound.delivery, now);
    }
    buf.put_u32(session.pending.len() as u32);
    for delivery in &session.pending {
        put_delivery(&mut buf, delivery, now);
    }
    buf.freeze()
}

struct Decoded {
    protocol: Protocol,
    session_expiry_secs: u32,
    next_packet_id: u16,
    subscriptions: Vec<(String, SubscriptionEntry)>,
    inbound_qos2: Vec<u16>,
    outbound: Vec<Outbound>,
    pending: Vec<Delivery>,
}

/// Reads what [`encode`] wrote; an error says what is wrong.
fn decode(data: &[u8], now: Instant) -> Result<Decoded, String> {
    let mut buf = data;
    let short = || "session hand-over: truncated".to_string();
    macro_rules! need {
        ($n:expr) => {
            if buf.remaining() < $n {
                return Err(short());
            }
        };
    }
    need!(8);
    if buf.get_u8() != VERSION {
        return Err("session hand-over: unknown version".to_string());
    }
    let protocol = match buf.get_u8() {
        3 => Protocol::V3_1,
        4 => Protocol::V3_1_1,
        _ => Protocol::V5,
    };
    let session_expiry_secs = buf.get_u32();
    need!(4);
    let next_packet_id = buf.get_u16();
    let mut subscriptions = Vec::new();
    for _ in 0..buf.get_u16() {
        need!(2);
        let len = usize::from(buf.get_u16());
        need!(len + 5);
        let filter = String::from_utf8(buf[..len].to_vec()).map_err(|_| short())?;
        buf.advance(len);
        let options = SubscriptionOptions::decode(buf.get_u8(), Protocol::V5)
            .map_err(|e| format!("session hand-over: {e}"))?;
        let id = buf.get_u32();
        let entry = SubscriptionEntry {
            options,
            subscription_id: (id != 0).then_some(id),
        };
        subscriptions.push((filter, entry));
    }
    need!(2);
    let mut inbound_qos2 = Vec::new();
    for _ in 0..buf.get_u16() {
        need!(2);
        inbound_qos2.push(buf.get_u16());
    }
    need!(4);
    let mut outbound = Vec::new();
    for _ in 0..buf.get_u32() {
        need!(3);
        let packet_id = buf.get_u16();
        let state = match buf.get_u8() {
            0 => OutboundState::AwaitingPubAck,
            1 => OutboundState::AwaitingPubRec,
            _ => OutboundState::AwaitingPubComp,
        };
        let delivery = get_delivery(&mut buf, now)?;
        outbound.push(Outbound {
            packet_id,
            delivery,
            state,
        });
    }
    need!(4);
    let mut pending = Vec::new();
    for _ in 0..buf.get_u32() {
        pending.push(get_delivery(&mut buf, now)?);
    }
    Ok(Decoded {
        protocol,
        session_expiry_secs,
        next_packet_id,
        subscriptions,
        inbound_qos2,
        outbound,
        pending,
    })
}

fn get_delivery(buf: &mut &[u8], now: Instant) -> Result<Delivery, String> {
    let short = || "session hand-over: truncated".to_string();
    if buf.remaining() < 3 {
        return Err(short());
    }
    let qos = QoS::from_bits(buf.get_u8()).map_err(|_| short())?;
    let retain = buf.get_u8() != 0;
    let ids = usize::from(buf.get_u8());
    if buf.remaining() < ids * 4 + 4 {
        return Err(short());
    }
    let subscription_ids = (0..ids).map(|_| buf.get_u32()).collect();
    let len = buf.get_u32() as usize;
    if buf.remaining() < len {
        return Err(short());
    }
    let envelope = Envelope::decode(&buf[..len])?;
    buf.advance(len);
    Ok(Delivery {
        message: std::rc::Rc::new(message_of(envelope, now)),
        qos,
        retain,
        subscription_ids,
        source: SourceAck::default(),
    })
}
