//! One client's network connection on its owner shard: the outgoing packet queue and the
//! writer task that drains it. The reader side is in `link.rs`; sessions and routing never
//! touch the socket, they only queue packets here.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::BytesMut;

use std::collections::HashMap;

use crate::protocol::{Disconnect, MqttStr, Packet, Protocol, Publish, ReasonCode};
use crate::runtime::{self, SharedStream, Signal};

use crate::metrics::stats::ShardStats;

/// Bytes encoded before the writer hands them to the socket in one write.
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;

pub type ConnectionId = u64;

pub struct Connection {
    pub id: ConnectionId,
    pub protocol: Protocol,
    /// The client's Maximum Packet Size: larger packets are dropped, not sent
    /// [MQTT-3.1.2-24].
    pub packet_size_bytes_max: u32,
    /// The client's Topic Alias Maximum: how many aliases we may set on PUBLISHes to it
    /// (5.0 only; 0: none) [MQTT-3.3.2-11].
    pub topic_alias_maximum: u16,
    queue: RefCell<VecDeque<Packet>>,
    wake: Signal,
    closing: Cell<bool>,
}

impl Connection {
    pub fn new(
        id: ConnectionId,
        protocol: Protocol,
        packet_size_bytes_max: u32,
        topic_alias_maximum: u16,
    ) -> Connection {
        Connection {
            id,
            protocol,
            packet_size_bytes_max,
            topic_alias_maximum,
            queue: RefCell::new(VecDeque::new()),
            wake: Signal::new(),
            closing: Cell::new(false),
        }
    }

    /// Queues a packet for the writer. Callers bound what they queue: acknowledgements
    /// by the client's in-flight window, QoS 0 by `queued_len`, QoS 1/2 by the session's
    /// in-flight window.
    pub fn send(&self, packet: Packet) {
        if self.closing.get() {
            return;
        }
        self.queue.borrow_mut().push_back(packet);
        self.wake.notify();
    }

    pub fn queued_len(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Flushes what is queued, then (5.0 only, when a reason is given) a DISCONNECT with
    /// `reason`, then closes the socket; the reader then sees the end of the stream.
    pub fn close(&self, reason: Option<ReasonCode>) {
        if self.closing.get() {
            return;
        }
        if let (Some(reason), true) = (reason, self.protocol.is_v5()) {
            self.queue
                .borrow_mut()
                .push_back(Packet::Disconnect(Disconnect::new(reason)));
        }
        self.closing.set(true);
        self.wake.notify();
    }

    fn take_queue(&self, into: &mut VecDeque<Packet>) {
        std::mem::swap(&mut *self.queue.borrow_mut(), into);
    }
}

/// Drains the connection's queue into the socket, many packets per write, until the
/// connection closes.
pub async fn write_loop(connection: Rc<Connection>, stream: SharedStream, stats: Rc<ShardStats>) {
    let mut batch = VecDeque::new();
    let mut aliases = OutboundAliases::default();
    // Grows with what is written: an idle connection keeps no big buffer.
    let mut buf = BytesMut::new();
    'outer: while connection.wake.wait().await {
        loop {
            connection.take_queue(&mut batch);
            if batch.is_empty() {
                break;
            }
            for mut packet in batch.drain(..) {
                if let Packet::Publish(publish) = &mut packet {
                    aliases.apply(publish, connection.topic_alias_maximum);
                }
                let len = packet.encoded_len(connection.protocol);
                if len > connection.packet_size_bytes_max as usize {
                    // [MQTT-3.1.2-25]: discard, and behave as if it had been sent.
                    stats
                        .dropped_too_large
                        .set(stats.dropped_too_large.get() + 1);
                    continue;
                }
                if let Packet::Publish(publish) = &packet {
                    ShardStats::incr(&stats.messages_sent);
                    ShardStats::incr(&stats.messages_sent_by_qos[publish.qos as usize]);
                }
                packet.encode(connection.protocol, &mut buf);
                if buf.len() >= WRITE_BATCH_BYTES_MAX {
                    if runtime::write_all_shared(&stream, &buf).await.is_err() {
                        break 'outer;
                    }
                    stats
                        .bytes_sent
                        .set(stats.bytes_sent.get() + buf.len() as u64);
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                if runtime::write_all_shared(&stream, &buf).await.is_err() {
                    break 'outer;
                }
                stats
                    .bytes_sent
                    .set(stats.bytes_sent.get() + buf.len() as u64);
                buf.clear();
            }
        }
        if connection.closing.get() {
            break;
        }
    }
    connection.closing.set(true);
    connection.wake.close();
    // Ends the reader's pending read too: both handles share this socket.
    runtime::shutdown_shared(&stream);
}

/// Topic aliases this server set on one connection: a topic sent once with an alias goes
/// as the alias alone afterwards, up to the client's Topic Alias Maximum (3.3.2.3.4).
#[derive(Default)]
struct OutboundAliases {
    by_topic: HashMap<MqttStr, u16>,
}

impl OutboundAliases {
    fn apply(&mut self, publish: &mut Publish, maximum: u16) {
        if maximum == 0 || publish.topic.is_empty() {
            return;
        }
        match self.by_topic.get(&publish.topic) {
            Some(&alias) => {
                publish.properties.topic_alias = Some(alias);
                publish.topic = MqttStr::default();
            }
            None if self.by_topic.len() < usize::from(maximum) => {
                let alias = self.by_topic.len() as u16 + 1;
                self.by_topic.insert(publish.topic.clone(), alias);
                publish.properties.topic_alias = Some(alias);
            }
            // All aliases taken: the full topic, no alias.
            None => {}
        }
    }
}
