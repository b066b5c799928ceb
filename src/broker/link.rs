//! The reading side of a client connection on its owner shard: one task per connection
//! reads the socket, decodes, and dispatches each packet to its handler (`publish.rs`,
//! `subscribe.rs`, acknowledgements here). The shard state is borrowed only inside a
//! handler's synchronous part, never across an await.

use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::protocol::{
    Decoder, Disconnect, MqttStr, Packet, Protocol, PubComp, PubRel, ReasonCode,
};
use crate::runtime::{self, SharedStream};

use super::connection::Connection;
use super::context::{ConnectionSlot, ShardRef};
use super::router;
use super::shard::granted_keep_alive;
use crate::metrics::stats::ShardStats;

/// Bytes asked of the socket per read. A read returns what has arrived, up to this.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Packets handled before the task yields to the shard's other connections, so one busy
/// publisher cannot hold the core (STYLE: bounded work per loop turn).
const PACKETS_PER_TURN_MAX: usize = 256;

/// Bytes read while a connection has nothing buffered: an idle connection waits with this
/// much on its stack instead of holding a full read chunk (most devices are idle most of
/// the time, and the chunk was most of a connection's memory).
const IDLE_READ_BYTES: usize = 512;

/// Reads what the socket has into `buf` (after what it holds). `Ok(0)` at end of stream.
pub async fn read_more(stream: &SharedStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.is_empty() {
        // Let go of the last chunk (packets decoded from it keep it alive as long as they
        // need it), then wait with a small buffer.
        if buf.capacity() > IDLE_READ_BYTES {
            *buf = BytesMut::new();
        }
        let mut first = [0u8; IDLE_READ_BYTES];
        let read = runtime::read_shared(stream, &mut first).await?;
        buf.extend_from_slice(&first[..read]);
        return Ok(read);
    }
    // Inside a packet or a burst: read a whole chunk after what is buffered.
    let filled = buf.len();
    buf.resize(filled + READ_CHUNK_BYTES, 0);
    let result = runtime::read_shared(stream, &mut buf[filled..]).await;
    let read = *result.as_ref().unwrap_or(&0);
    buf.truncate(filled + read);
    result
}

/// Why a connection's read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The client sent DISCONNECT; 5.0 reason 0x04 asks for the will anyway.
    Disconnected { publish_will: bool },
    /// A malformed packet or protocol error: close, with DISCONNECT and this code in 5.0.
    ProtocolError(ReasonCode),
    /// Nothing received for 1.5 × keep alive [MQTT-3.1.2-22].
    KeepAliveTimeout,
    /// The socket closed or failed, or the server closed it (take-over, shutdown).
    ConnectionLost,
}

pub struct Link {
    pub shard: ShardRef,
    pub connection: Rc<Connection>,
    pub client_id: MqttStr,
    pub protocol: Protocol,
    /// Topic aliases this client set on this connection [MQTT-3.3.2-10].
    pub topic_aliases: HashMap<u16, MqttStr>,
    pub keep_alive_secs: u16,
    /// The CONNECT had no (or a zero) Session Expiry Interval, whatever was granted: then a
    /// non-zero one in DISCONNECT is a Protocol Error (3.14.2.2.2).
    pub connect_session_expiry_zero: bool,
    /// From CONNECT, for Kafka key/topic templates and headers. On a listener with
    /// `use_identity_as_username`, the client certificate's identity instead.
    pub username: Option<MqttStr>,
    /// The identity of the client certificate verified in the TLS handshake, for
    /// authentication and authorization: its subject Common Name or, without one, its first
    /// DNS or email Subject Alternative Name (`crate::tls::certificate_identity`). None on
    /// plain TCP, when the client gave no certificate, or when the certificate has none of
    /// these names. A client's certificate is only asked for on listeners with
    /// `tls_client_ca`, and only a verified one gets here.
    pub cert_identity: Option<String>,
    /// Its place among `connections_max`, given back when the connection ends.
    pub slot: Option<ConnectionSlot>,
    /// `broker.publish_rate_max` for this client; `None` without a limit.
    pub publish_budget: Option<PublishBudget>,
}

/// A token bucket of PUBLISHes: `rate` per second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct PublishBudget {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl PublishBudget {
    pub fn new(rate: u32, now: Instant) -> PublishBudget {
        let rate = f64::from(rate.max(1));
        PublishBudget {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    /// Takes one PUBLISH from the budget: how long to wait first (zero while within it).
    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl Link {
    pub fn new(
        shard: ShardRef,
        connection: Rc<Connection>,
        client_id: MqttStr,
        protocol: Protocol,
        requested_keep_alive_secs: u16,
    ) -> Link {
        let keep_alive_secs = granted_keep_alive(requested_keep_alive_secs, &shard.config)
            .unwrap_or(requested_keep_alive_secs);
        let shard_rate = shard.config.publish_rate_max;
        Link {
            shard,
            connection,
            client_id,
            protocol,
            topic_aliases: HashMap::new(),
            keep_alive_secs,
            connect_session_expiry_zero: true,
            username: None,
            cert_identity: None,
            slot: None,
            publish_budget: (shard_rate > 0)
                .then(|| PublishBudget::new(shard_rate, Instant::now())),
        }
    }

    /// Reads and handles packets until the connection ends.
    pub async fn run(
        &mut self,
        stream: &SharedStream,
        decoder: &mut Decoder,
        buf: &mut BytesMut,
    ) -> Exit {
        // 1.5 times the keep alive [MQTT-3.1.2-22]; 0 means no keep alive.
        let idle_limit = (self.keep_alive_secs > 0)
            .then(|| Duration::from_millis(u64::from(self.keep_alive_secs) * 1500));
        loop {
            let mut handled = 0;
            loop {
                match decoder.decode(buf) {
                    Ok(Some(packet)) => {
                        // Taken over (or shut down) meanwhile: the session is no longer
                        // this connection's to act on [MQTT-3.1.4-3].
                        if self.connection.is_closing() {
                            return Exit::ConnectionLost;
                        }
                        // Boxed: a task's future is as large as its largest state for
                        // the connection's whole life, and handling a PUBLISH is the
                        // largest (~3 KiB) while an idle connection only waits for data.
                        // One short-lived allocation per packet keeps that off every
                        // idle connection (tuning.md, "Memory per connection").
                        if let Err(exit) = Box::pin(self.handle(packet)).await {
                            return exit;
                        }
                        handled += 1;
                        if handled % PACKETS_PER_TURN_MAX == 0 {
                            runtime::yield_now().await;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return Exit::ProtocolError(error.reason_code()),
                }
            }
            if self.connection.is_closing() {
                return Exit::ConnectionLost;
            }
            let read = match idle_limit {
                Some(limit) => runtime::timeout(limit, read_more(stream, buf)).await,
                None => Some(read_more(stream, buf).await),
            };
            match read {
                None => return Exit::KeepAliveTimeout,
                Some(Ok(0)) | Some(Err(_)) => return Exit::ConnectionLost,
                Some(Ok(read)) => {
                    let stats = &self.shard.stats;
                    stats
                        .bytes_received
                        .set(stats.bytes_received.get() + read as u64);
                }
            }
        }
    }

    /// The one dispatch from packet type to handler.
    async fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        let now = Instant::now();
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(ack) => {
                self.shard
                    .state
                    .borrow_mut()
                    .on_puback(&self.client_id, ack.packet_id, now);
                self.shard.ease_congestion();
                Ok(())
            }
            Packet::PubRec(rec) => {
                let known = self.shard.state.borrow_mut().on_pubrec(
                    &self.client_id,
                    rec.packet_id,
                    rec.reason_code,
                    now,
                );
                self.shard.ease_congestion();
                if known {
                    self.connection
                        .send(Packet::PubRel(PubRel::new(rec.packet_id)));
                } else if !rec.reason_code.is_error() {
                    // Unknown id: still answer so the client can finish [MQTT-4.3.3-?].
                    let reason = if self.protocol.is_v5() {
                        ReasonCode::PacketIdentifierNotFound
                    } else {
                        ReasonCode::Success
                    };
                    self.connection
                        .send(Packet::PubRel(PubRel::with_reason(rec.packet_id, reason)));
                }
                Ok(())
            }
            Packet::PubRel(rel) => {
                let known = self
                    .shard
                    .state
                    .borrow_mut()
                    .session(&self.client_id)
                    .is_some_and(|s| s.inbound_qos2.remove(&rel.packet_id));
                let reason = if known || !self.protocol.is_v5() {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.connection
                    .send(Packet::PubComp(PubComp::with_reason(rel.packet_id, reason)));
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.shard
                    .state
                    .borrow_mut()
                    .on_pubcomp(&self.client_id, comp.packet_id, now);
                self.shard.ease_congestion();
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                self.on_subscribe(subscribe).await;
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe).await;
                Ok(())
            }
            Packet::PingReq => {
                self.connection.send(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(self.on_disconnect(disconnect)),
            // No Authentication Method was agreed in CONNECT (we refuse those), so any AUTH
            // is a Protocol Error [MQTT-4.12.0-?].
            Packet::Auth(_) => Err(Exit::ProtocolError(ReasonCode::ProtocolError)),
            // The decoder lets only client packets through and refuses a second CONNECT.
            other => unreachable!("decoder passed a {:?} to the server", other.packet_type()),
        }
    }

    fn on_disconnect(&mut self, disconnect: Disconnect) -> Exit {
        if let Some(secs) = disconnect.properties.session_expiry_interval_secs {
            let mut state = self.shard.state.borrow_mut();
            // "If the Session Expiry Interval in the CONNECT packet was zero, then it is a
            // Protocol Error to set a non-zero Session Expiry Interval in the DISCONNECT
            // packet sent by the Client" (3.14.2.2.2).
            if self.connect_session_expiry_zero && secs != 0 {
                return Exit::ProtocolError(ReasonCode::ProtocolError);
            }
            state.set_session_expiry(&self.client_id, secs);
        }
        Exit::Disconnected {
            publish_will: disconnect.reason_code == ReasonCode::DisconnectWithWillMessage,
        }
    }

    /// Closes the connection as `exit` says and settles the session: will, expiry, and
    /// the interest of other shards.
    pub async fn finish(mut self, exit: Exit) {
        let stats = &self.shard.stats;
        match exit {
            Exit::ProtocolError(reason) => {
                ShardStats::incr(&stats.protocol_errors);
                self.connection.close(Some(reason));
            }
            Exit::KeepAliveTimeout => self.connection.close(Some(ReasonCode::KeepAliveTimeout)),
            Exit::Disconnected { .. } | Exit::ConnectionLost => self.connection.close(None),
        }
        let publish_will = !matches!(
            exit,
            Exit::Disconnected {
                publish_will: false
            }
        );
        let closed = self.shard.state.borrow_mut().close_connection(
            &self.client_id,
            self.connection.id,
            publish_will,
            Instant::now(),
        );
        self.slot = None;
        self.shard.ease_congestion();
        super::cluster::session_closed(&self.shard, &self.client_id);
        router::announce_interest(&self.shard, closed.interest_changes, false).await;
        if let Some(will) = closed.will_now {
            router::publish(&self.shard, will).await;
        }
        if let Some((delay, will)) = closed.will_later {
            let shard = self.shard.clone();
            let client_id = self.client_id.clone();
            let generation = closed.generation;
            runtime::spawn(async move {
                runtime::sleep(delay).await;
                let due = shard.state.borrow().will_still_due(&client_id, generation);
                // A session that moved to another node went with its client, back in time.
                if due && !super::cluster::moved_away(&shard, &client_id) {
                    router::publish(&shard, will).await;
                }
            });
        }
        if let Some(after) = closed.expire_after {
            let shard = self.shard.clone();
            let client_id = self.client_id.clone();
            let generation = closed.generation;
            runtime::spawn(async move {
                runtime::sleep(after).await;
                let changes = shard
                    .state
                    .borrow_mut()
                    .expire_session(&client_id, generation);
                super::cluster::session_closed(&shard, &client_id);
                router::announce_interest(&shard, changes, false).await;
            });
        }
    }
}
