//! One simulated device: a small state machine over the broker's codec, with no I/O of its
//! own. The engine hands it decoded packets and the time, and it appends what it sends to
//! the shard's write buffer. What a device keeps between packets is its sequence counter,
//! its in-flight messages and, rarely, the tail of a partial packet or a blocked write: a
//! few dozen bytes, so that a shard holds many thousands of them.

use std::collections::HashMap;

use bytes::BytesMut;
use ferrymq::protocol::{
    Connect, Disconnect, Encode, Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions,
};

use crate::report::{latency_histogram, record_latency, Latency, ShardCounters};
use crate::scenario::{PayloadHeader, Scenario, PROBE_DEVICE};
use crate::verify::SeqSet;

/// Where a device is in its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No connection.
    Idle,
    /// TCP handshake under way.
    Connecting,
    /// CONNECT sent (with TLS: queued behind the TLS handshake, which is under way).
    AwaitConnAck,
    AwaitSubAck,
    Running,
    /// DISCONNECT sent; waiting for the broker to close first, so that the TIME_WAIT
    /// state stays on the broker's side and no client port is held for a minute.
    Disconnecting,
}

/// A QoS 1/2 message awaiting its PUBACK or PUBREC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    pub sent_us: u64,
    pub seq: u32,
    pub packet_id: u16,
}

/// What went wrong on a connection, by kind (the report counts each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectRefused,
    ConnectTimeout,
    ConnAckRefused,
    SubAckRefused,
    ClosedByBroker,
    DisconnectedByBroker,
    Io,
    Decode,
    Unexpected,
    AckRefused,
    AckTimeout,
    /// The TLS handshake failed (a certificate refused, an alert, not TLS).
    TlsHandshake,
    /// TLS failed after the handshake (a corrupt record, an alert).
    Tls,
}

impl Failure {
    pub const ALL: [Failure; 13] = [
        Failure::ConnectRefused,
        Failure::ConnectTimeout,
        Failure::ConnAckRefused,
        Failure::SubAckRefused,
        Failure::ClosedByBroker,
        Failure::DisconnectedByBroker,
        Failure::Io,
        Failure::Decode,
        Failure::Unexpected,
        Failure::AckRefused,
        Failure::AckTimeout,
        Failure::TlsHandshake,
        Failure::Tls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Failure::ConnectRefused => "connect_failed",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::ConnAckRefused => "connack_refused",
            Failure::SubAckRefused => "suback_refused",
            Failure::ClosedByBroker => "closed_by_broker",
            Failure::DisconnectedByBroker => "disconnect_from_broker",
            Failure::Io => "io_error",
            Failure::Decode => "decode_error",
            Failure::Unexpected => "unexpected_packet",
            Failure::AckRefused => "ack_with_error_code",
            Failure::AckTimeout => "ack_timeout",
            Failure::TlsHandshake => "tls_handshake_failed",
            Failure::Tls => "tls_error",
        }
    }

    /// Failures before the device was connected.
    pub fn is_connect(self) -> bool {
        matches!(
            self,
            Failure::ConnectRefused
                | Failure::ConnectTimeout
                | Failure::ConnAckRefused
                | Failure::TlsHandshake
        )
    }
}

/// What the devices of one shard observed: latencies, the span of the connect phase, and
/// what each subscribing device received from each publishing device.
pub struct Observed {
    pub puback: Latency,
    pub subscriber: Latency,
    /// Start of the TCP connect → CONNACK (TLS handshake included), per connection
    /// established.
    pub connect: Latency,
    /// The first connect attempt (µs since the epoch; u64::MAX: none yet).
    pub first_connect_us: u64,
    /// The last CONNACK accepted (µs since the epoch; 0: none yet).
    pub last_connack_us: u64,
    /// The first PUBLISH sent (µs since the epoch; u64::MAX: none yet).
    pub first_publish_us: u64,
    /// The last PUBACK or PUBREC accepted (µs since the epoch; 0: none yet).
    pub last_ack_us: u64,
    /// Per subscriber slot of this shard: publisher device → sequence numbers received.
    /// With `--one-to-one` only the paired publisher has an entry.
    pub sub_seen: Vec<HashMap<u64, SeqSet>>,
    /// Messages subscribers got from devices outside this process's id range.
    pub sub_foreign: u64,
    /// `--one-to-one`: messages a subscriber got that were not its own publisher's.
    pub sub_misrouted: u64,
    pub failures: [u64; Failure::ALL.len()],
    /// `commands`: Kafka produce → receipt of the devices that go offline during the run
    /// (`subscriber` holds the others'), first copies only.
    pub subscriber_offline: Latency,
    /// `commands`: commands of an earlier run (sent before this one started).
    pub sub_stale: u64,
    /// `commands`: PUBLISHes that came after a device's DISCONNECT, neither acknowledged
    /// nor counted (the broker must send them again when the session resumes).
    pub after_disconnect: u64,
    /// `commands`: devices that went offline (by plan).
    pub went_offline: u64,
    /// `commands`: reconnects that found their session (CONNACK session present).
    pub sessions_resumed: u64,
    /// `commands`: reconnects whose session was gone (the device subscribes again).
    pub sessions_lost: u64,
    /// `commands`: first receipt of a command (µs since the epoch; u64::MAX: none yet).
    pub first_delivery_us: u64,
    /// `commands`: the last first receipt of a command (µs since the epoch; 0: none yet).
    pub last_delivery_us: u64,
}

impl Observed {
    pub fn new(subscriber_slots: usize) -> Observed {
        Observed {
            puback: latency_histogram(),
            subscriber: latency_histogram(),
            connect: latency_histogram(),
            first_connect_us: u64::MAX,
            last_connack_us: 0,
            first_publish_us: u64::MAX,
            last_ack_us: 0,
            sub_seen: vec![HashMap::new(); subscriber_slots],
            sub_foreign: 0,
            sub_misrouted: 0,
            failures: [0; Failure::ALL.len()],
            subscriber_offline: latency_histogram(),
            sub_stale: 0,
            after_disconnect: 0,
            went_offline: 0,
            sessions_resumed: 0,
            sessions_lost: 0,
            first_delivery_us: u64::MAX,
            last_delivery_us: 0,
        }
    }

    /// A connect attempt starts at `now_us`.
    pub fn connect_started(&mut self, now_us: u64) {
        self.first_connect_us = self.first_connect_us.min(now_us);
    }

    /// A connection attempt started at `started_us` got its CONNACK at `now_us`.
    pub fn connected(&mut self, started_us: u64, now_us: u64) {
        record_latency(&mut self.connect, now_us.saturating_sub(started_us));
        self.last_connack_us = self.last_connack_us.max(now_us);
    }

    /// A device that went offline on purpose (`commands`) is back: its connect latency
    /// counts, but its return does not stretch the connect phase.
    pub fn reconnected(&mut self, started_us: u64, now_us: u64) {
        record_latency(&mut self.connect, now_us.saturating_sub(started_us));
    }

    pub fn count(&mut self, failure: Failure) {
        self.failures[failure as usize] += 1;
    }
}

/// What a packet changed, for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None,
    /// CONNACK accepted.
    Connected,
    /// SUBACK accepted: a subscriber is ready.
    Subscribed,
}

/// The packet identifier of sequence number `seq`: ids cycle through 1..=65535, so a
/// device needs no free list while fewer than 65535 messages are in flight.
pub fn packet_id_of(seq: u32) -> u16 {
    (seq % 65_535) as u16 + 1
}

#[derive(Debug)]
pub struct Device {
    /// The device number: %i in topics, the id in payloads.
    pub number: u64,
    /// For a subscribing device, its slot in [`Observed::sub_seen`].
    pub subscriber_slot: Option<u32>,
    pub phase: Phase,
    /// Next sequence number, which is also the number of messages sent.
    pub seq_next: u32,
    pub sent_qos0: u32,
    pub acked: u32,
    pub inflight: Vec<Inflight>,
    /// QoS 1/2 sequence numbers whose connection ended before their ack.
    pub unacked: Vec<u32>,
    /// QoS 2 messages past PUBREC awaiting PUBCOMP.
    pub awaiting_pubcomp: u16,
    pub next_publish_us: u64,
    pub last_tx_us: u64,
    /// The start of a packet whose rest has not arrived.
    pub leftover: Vec<u8>,
    /// Bytes the socket did not take yet.
    pub pending_tx: Vec<u8>,
    /// A CONNACK was accepted before: a command receiver resumes its session (clean start
    /// 0) instead of starting a fresh one.
    pub reconnect: bool,
}

impl Device {
    pub fn publisher(number: u64) -> Device {
        Device {
            number,
            subscriber_slot: None,
            phase: Phase::Idle,
            seq_next: 0,
            sent_qos0: 0,
            acked: 0,
            inflight: Vec::new(),
            unacked: Vec::new(),
            awaiting_pubcomp: 0,
            next_publish_us: 0,
            last_tx_us: 0,
            leftover: Vec::new(),
            pending_tx: Vec::new(),
            reconnect: false,
        }
    }

    pub fn subscriber(index: u32, slot: u32) -> Device {
        Device {
            subscriber_slot: Some(slot),
            ..Device::publisher(u64::from(index))
        }
    }

    pub fn client_id(&self, scenario: &Scenario) -> String {
        match self.subscriber_slot {
            Some(_) => scenario.subscriber_client_id(self.number as u32),
            None => scenario.client_id(self.number),
        }
    }

    /// Starts a connection: appends CONNECT to `tx`.
    pub fn connect(&mut self, scenario: &Scenario, now_us: u64, tx: &mut BytesMut) {
        let mut connect = Connect::new(
            scenario.protocol,
            self.client_id(scenario),
            scenario.keep_alive_secs,
        );
        connect.clean_start = match scenario.commands {
            // A command receiver's session lives on while it is away: a fresh one at its
            // first connect (5.0; 3.1.1 has no expiry, so it never starts clean), then it
            // resumes it.
            Some(_) => scenario.protocol.is_v5() && !self.reconnect,
            None => scenario.clean_start,
        };
        connect.username = scenario.username.clone().map(Into::into);
        connect.password = scenario.password.clone().map(Into::into);
        if scenario.protocol.is_v5() {
            connect.properties.session_expiry_interval_secs = scenario.session_expiry_secs;
        }
        connect.encode(scenario.protocol, tx);
        self.phase = Phase::AwaitConnAck;
        self.last_tx_us = now_us;
    }

    /// Whether this device has messages left to publish (ignoring the run's end).
    pub fn has_messages_left(&self, scenario: &Scenario) -> bool {
        self.subscriber_slot.is_none()
            && scenario
                .messages_per_device
                .is_none_or(|n| self.seq_next < n)
    }

    fn window_open(&self, scenario: &Scenario) -> bool {
        self.inflight.len() + usize::from(self.awaiting_pubcomp)
            < usize::from(scenario.inflight_max)
    }

    /// Publishes if the device is due, has messages left and room in its window: one
    /// message, or with [`Scenario::exact_schedule`] every message due now (at most a
    /// window's worth, or 64 QoS 0 messages). Returns how many it sent.
    pub fn maybe_publish(
        &mut self,
        scenario: &Scenario,
        now_us: u64,
        tx: &mut BytesMut,
        counters: &ShardCounters,
    ) -> u32 {
        let burst = if scenario.exact_schedule {
            usize::from(scenario.inflight_max).max(64)
        } else {
            1
        };
        let mut sent = 0;
        while sent < burst
            && self.phase == Phase::Running
            && now_us >= self.next_publish_us
            && self.has_messages_left(scenario)
            && self.window_open(scenario)
        {
            self.publish(scenario, now_us, tx);
            sent += 1;
        }
        ShardCounters::add(&counters.publishes, sent as u64);
        sent as u32
    }

    fn publish(&mut self, scenario: &Scenario, now_us: u64, tx: &mut BytesMut) {
        let seq = self.seq_next;
        let qos = scenario.qos_mix.qos_of(self.number, seq);
        let header = PayloadHeader {
            device: self.number,
            seq: u64::from(seq),
            sent_us: now_us,
        };
        let topic = scenario.topic.render(self.number, &scenario.id_prefix);
        let mut publish = Publish::new(topic, qos, scenario.payload(header));
        let interval_us = scenario.publish_interval.as_micros() as u64;
        // The moment publish→ack counts from: the schedule's, or the send's.
        let since_us = if scenario.exact_schedule && interval_us > 0 {
            self.next_publish_us.min(now_us)
        } else {
            now_us
        };
        if qos == QoS::AtMostOnce {
            self.sent_qos0 += 1;
        } else {
            publish.packet_id = packet_id_of(seq);
            self.inflight.push(Inflight {
                sent_us: since_us,
                seq,
                packet_id: publish.packet_id,
            });
        }
        publish.encode(scenario.protocol, tx);
        self.seq_next += 1;
        self.last_tx_us = now_us;
        // Keep the pace of the schedule, but after a stall (a full window) start afresh
        // rather than burst to catch up; an exact schedule catches up.
        self.next_publish_us = if scenario.exact_schedule {
            self.next_publish_us + interval_us
        } else {
            (self.next_publish_us + interval_us).max(now_us)
        };
    }

    /// Appends PINGREQ when nothing was sent for half the keep alive.
    pub fn maybe_ping(&mut self, scenario: &Scenario, now_us: u64, tx: &mut BytesMut) {
        let keep_alive_us = u64::from(scenario.keep_alive_secs) * 1_000_000;
        if keep_alive_us > 0 && now_us >= self.last_tx_us + keep_alive_us / 2 {
            Packet::PingReq.encode(scenario.protocol, tx);
            self.last_tx_us = now_us;
        }
    }

    /// Appends DISCONNECT; with `end_session` a 5.0 session that would outlive the
    /// connection ends with it (Session Expiry Interval 0), so that a run leaves none.
    pub fn disconnect(&mut self, scenario: &Scenario, tx: &mut BytesMut, end_session: bool) {
        let mut disconnect = Disconnect::new(ReasonCode::Success);
        if end_session && scenario.session_expiry_secs.is_some_and(|secs| secs > 0) {
            disconnect.properties.session_expiry_interval_secs = Some(0);
        }
        disconnect.encode(scenario.protocol, tx);
        self.phase = Phase::Disconnecting;
    }

    /// The connection ended: whatever is in flight will not be acknowledged.
    pub fn abandon_inflight(&mut self) {
        self.phase = Phase::Idle;
        self.unacked.extend(self.inflight.drain(..).map(|m| m.seq));
        self.awaiting_pubcomp = 0;
        self.leftover = Vec::new();
        self.pending_tx = Vec::new();
    }

    /// When the device next has something to do by itself: publish (while `publishing`)
    /// or ping.
    pub fn next_wake_us(&self, scenario: &Scenario, publishing: bool) -> u64 {
        let mut wake = u64::MAX;
        if publishing
            && self.phase == Phase::Running
            && self.has_messages_left(scenario)
            && self.window_open(scenario)
        {
            wake = self.next_publish_us;
        }
        let keep_alive_us = u64::from(scenario.keep_alive_secs) * 1_000_000;
        if keep_alive_us > 0 {
            wake = wake.min(self.last_tx_us + keep_alive_us / 2);
        }
        wake
    }

    /// Acts on one packet from the broker; answers go to `tx`.
    pub fn handle(
        &mut self,
        packet: Packet,
        scenario: &Scenario,
        now_us: u64,
        tx: &mut BytesMut,
        observed: &mut Observed,
        counters: &ShardCounters,
    ) -> Result<Event, Failure> {
        match packet {
            Packet::ConnAck(connack) if self.phase == Phase::AwaitConnAck => {
                if connack.reason_code.is_error() {
                    return Err(Failure::ConnAckRefused);
                }
                let reconnect = std::mem::replace(&mut self.reconnect, true);
                if scenario.commands.is_some() && reconnect {
                    if connack.session_present {
                        // Its subscription is in the session: the queued commands follow.
                        observed.sessions_resumed += 1;
                        self.phase = Phase::Running;
                        return Ok(Event::Connected);
                    }
                    observed.sessions_lost += 1;
                }
                match self.subscriber_slot {
                    Some(_) => {
                        let options = SubscriptionOptions {
                            qos: scenario.sub_qos,
                            ..Default::default()
                        };
                        Subscribe::new(
                            1,
                            vec![Subscription {
                                filter: scenario.subscriber_filter(self.number).into(),
                                options,
                            }],
                        )
                        .encode(scenario.protocol, tx);
                        self.last_tx_us = now_us;
                        self.phase = Phase::AwaitSubAck;
                    }
                    None => self.phase = Phase::Running,
                }
                Ok(Event::Connected)
            }
            Packet::SubAck(suback) if self.phase == Phase::AwaitSubAck => {
                if suback.reason_codes.iter().any(|code| code.is_error()) {
                    return Err(Failure::SubAckRefused);
                }
                self.phase = Phase::Running;
                Ok(Event::Subscribed)
            }
            Packet::PubAck(ack) => {
                self.acknowledge(ack.packet_id, ack.reason_code, now_us, observed, counters)?;
                Ok(Event::None)
            }
            Packet::PubRec(rec) => {
                self.acknowledge(rec.packet_id, rec.reason_code, now_us, observed, counters)?;
                PubRel::new(rec.packet_id).encode(scenario.protocol, tx);
                self.awaiting_pubcomp += 1;
                Ok(Event::None)
            }
            Packet::PubComp(_) => {
                self.awaiting_pubcomp = self.awaiting_pubcomp.saturating_sub(1);
                Ok(Event::None)
            }
            Packet::Publish(publish) => {
                let Some(slot) = self.subscriber_slot else {
                    return Err(Failure::Unexpected);
                };
                if scenario.commands.is_some() && self.phase == Phase::Disconnecting {
                    // Gone, as far as this device is concerned: not acknowledged, so the
                    // broker owes it again when the session resumes.
                    observed.after_disconnect += 1;
                    return Ok(Event::None);
                }
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        PubAck::new(publish.packet_id).encode(scenario.protocol, tx)
                    }
                    QoS::ExactlyOnce => {
                        PubRec::new(publish.packet_id).encode(scenario.protocol, tx)
                    }
                }
                ShardCounters::add(&counters.sub_received, 1);
                let paired = scenario.paired_publisher(self.number);
                let header = PayloadHeader::decode(&publish.payload);
                if let (Some(commands), Some(header)) = (&scenario.commands, header) {
                    if header.device == PROBE_DEVICE {
                        counters.probe_arrived(header.seq);
                        return Ok(Event::None);
                    }
                    if header.sent_us < commands.since_us {
                        observed.sub_stale += 1;
                        return Ok(Event::None);
                    }
                }
                match header {
                    Some(header)
                        if scenario.owns_device(header.device)
                            && paired.is_none_or(|p| p == header.device) =>
                    {
                        let seen = observed.sub_seen[slot as usize]
                            .entry(header.device)
                            .or_default();
                        if seen.record(header.seq) != crate::verify::Seen::Duplicate {
                            let latency = match &scenario.commands {
                                Some(commands) => {
                                    ShardCounters::add(&counters.commands_received, 1);
                                    observed.first_delivery_us =
                                        observed.first_delivery_us.min(now_us);
                                    observed.last_delivery_us =
                                        observed.last_delivery_us.max(now_us);
                                    if commands.leaves_after_us(header.device).is_some() {
                                        &mut observed.subscriber_offline
                                    } else {
                                        &mut observed.subscriber
                                    }
                                }
                                None => &mut observed.subscriber,
                            };
                            record_latency(latency, now_us.saturating_sub(header.sent_us));
                        }
                    }
                    // One-to-one: nothing but the paired publisher's messages may come.
                    _ if paired.is_some() => observed.sub_misrouted += 1,
                    _ => observed.sub_foreign += 1,
                }
                Ok(Event::None)
            }
            Packet::PubRel(rel) => {
                PubComp::new(rel.packet_id).encode(scenario.protocol, tx);
                Ok(Event::None)
            }
            Packet::PingResp => Ok(Event::None),
            Packet::Disconnect(_) => Err(Failure::DisconnectedByBroker),
            _ => Err(Failure::Unexpected),
        }
    }

    fn acknowledge(
        &mut self,
        packet_id: u16,
        reason_code: ReasonCode,
        now_us: u64,
        observed: &mut Observed,
        counters: &ShardCounters,
    ) -> Result<(), Failure> {
        // Acks come in publish order [MQTT-4.6.0-2], so the match is nearly always first.
        let Some(at) = self.inflight.iter().position(|m| m.packet_id == packet_id) else {
            return Err(Failure::Unexpected);
        };
        let message = self.inflight.remove(at);
        if reason_code.is_error() {
            self.unacked.push(message.seq);
            observed.count(Failure::AckRefused);
            return Ok(());
        }
        self.acked += 1;
        observed.last_ack_us = observed.last_ack_us.max(now_us);
        record_latency(&mut observed.puback, now_us.saturating_sub(message.sent_us));
        ShardCounters::add(&counters.acks, 1);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scenario::{QosMix, Template};
    use ferrymq::protocol::{ConnAck, Decoder, Protocol, SubAck};
    use std::time::Duration;

    pub fn scenario() -> Scenario {
        Scenario {
            targets: vec!["127.0.0.1:1883".parse().unwrap()],
            source_ips: vec![],
            cores: vec![0],
            devices: 1,
            subscribers: 0,
            one_to_one: false,
            connect_rate: 100,
            connect_timeout: Duration::from_secs(5),
            publish_interval: Duration::from_millis(100),
            topic: Template::parse("d/%i/t"),
            sub_topic: "d/+/t".into(),
            sub_qos: QoS::AtLeastOnce,
            payload_size_bytes: 32,
            qos_mix: QosMix::only(QoS::AtLeastOnce),
            inflight_max: 2,
            protocol: Protocol::V5,
            keep_alive_secs: 60,
            clean_start: true,
            session_expiry_secs: None,
            username: None,
            password: None,
            id_start: 10,
            id_prefix: "lg-".into(),
            duration: None,
            messages_per_device: Some(3),
            churn_total: None,
            drain: Duration::from_secs(1),
            verify: None,
            json: None,
            per_device_csv: None,
            broker_pids: Vec::new(),
            child: false,
            tls: None,
            commands: None,
            exact_schedule: false,
        }
    }

    fn observed() -> Observed {
        Observed::new(1)
    }

    /// What the broker would decode from `tx`.
    fn sent(tx: &mut BytesMut) -> Vec<Packet> {
        let mut decoder = if tx.first() == Some(&0x10) {
            Decoder::server(1 << 20)
        } else {
            Decoder::server_connected(Protocol::V5, 1 << 20)
        };
        let mut packets = Vec::new();
        while let Some(packet) = decoder.decode(tx).unwrap() {
            packets.push(packet);
        }
        packets
    }

    #[test]
    fn publisher_connects_publishes_in_window_and_counts_acks() {
        let sc = scenario();
        let counters = ShardCounters::default();
        let mut seen = observed();
        let mut device = Device::publisher(10);
        let mut tx = BytesMut::new();
        device.connect(&sc, 1_000, &mut tx);
        let packets = sent(&mut tx);
        let Packet::Connect(connect) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert_eq!(&*connect.client_id, "lg-10");
        let connack = Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::Success)));
        assert_eq!(
            device.handle(connack, &sc, 1_000, &mut tx, &mut seen, &counters),
            Ok(Event::Connected)
        );
        // Three messages are due, the window holds two.
        for now in [2_000, 200_000, 400_000] {
            device.maybe_publish(&sc, now, &mut tx, &counters);
        }
        let publishes: Vec<Publish> = sent(&mut tx)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(publishes.len(), 2);
        assert_eq!(&*publishes[1].topic, "d/10/t");
        assert_eq!(publishes[1].packet_id, 2);
        let header = PayloadHeader::decode(&publishes[1].payload).unwrap();
        assert_eq!((header.device, header.seq), (10, 1));
        assert_eq!(publishes[1].payload.len(), 32);
        let ack = |id| Packet::PubAck(PubAck::new(id));
        device
            .handle(ack(1), &sc, 402_000, &mut tx, &mut seen, &counters)
            .unwrap();
        assert_eq!((device.acked, device.inflight.len()), (1, 1));
        assert!((399_000..=401_000).contains(&seen.puback.max()));
        device.maybe_publish(&sc, 402_000, &mut tx, &counters);
        assert_eq!(device.seq_next, 3);
        assert!(!device.has_messages_left(&sc));
        // An ack for an id not in flight is the broker's error.
        assert_eq!(
            device.handle(ack(9), &sc, 403_000, &mut tx, &mut seen, &counters),
            Err(Failure::Unexpected)
        );
        device.abandon_inflight();
        assert_eq!(device.unacked, vec![1, 2]);
        assert!(device.inflight.is_empty());
    }

    #[test]
    fn an_exact_schedule_catches_up_and_counts_latency_from_the_schedule() {
        let sc = Scenario {
            exact_schedule: true,
            inflight_max: 4,
            messages_per_device: Some(100),
            ..scenario()
        };
        let counters = ShardCounters::default();
        let mut seen = observed();
        let mut device = Device::publisher(10);
        let mut tx = BytesMut::new();
        device.connect(&sc, 0, &mut tx);
        let connack = Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::Success)));
        device
            .handle(connack, &sc, 0, &mut tx, &mut seen, &counters)
            .unwrap();
        tx.clear();
        // Due at 0, 100 and 200 ms; the step comes at 250 ms: all three go at once.
        assert_eq!(device.maybe_publish(&sc, 250_000, &mut tx, &counters), 3);
        assert_eq!(device.next_publish_us, 300_000, "the schedule holds");
        let ack = |id| Packet::PubAck(PubAck::new(id));
        device
            .handle(ack(1), &sc, 260_000, &mut tx, &mut seen, &counters)
            .unwrap();
        // From its scheduled send at 0, not the late one at 250 ms.
        assert!((259_000..=261_000).contains(&seen.puback.max()));
        assert_eq!(seen.last_ack_us, 260_000);
        // No interval: the window fills in one step.
        let sc = Scenario {
            publish_interval: std::time::Duration::ZERO,
            ..sc
        };
        assert_eq!(device.maybe_publish(&sc, 300_000, &mut tx, &counters), 2);
        assert_eq!(device.inflight.len(), 4);
    }

    #[test]
    fn subscriber_subscribes_acks_and_tracks_sequences() {
        let sc = scenario();
        let counters = ShardCounters::default();
        let mut seen = observed();
        let mut device = Device::subscriber(0, 0);
        let mut tx = BytesMut::new();
        device.connect(&sc, 0, &mut tx);
        let connack = Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::Success)));
        device
            .handle(connack, &sc, 0, &mut tx, &mut seen, &counters)
            .unwrap();
        assert_eq!(device.phase, Phase::AwaitSubAck);
        let suback = Packet::SubAck(SubAck::new(1, vec![ReasonCode::GrantedQos1]));
        assert_eq!(
            device.handle(suback, &sc, 0, &mut tx, &mut seen, &counters),
            Ok(Event::Subscribed)
        );
        for (seq, device_number) in [(0, 10), (1, 10), (1, 10), (0, 99)] {
            let header = PayloadHeader {
                device: device_number,
                seq,
                sent_us: 100,
            };
            let mut publish = Publish::new("d/10/t", QoS::AtLeastOnce, sc.payload(header));
            publish.packet_id = 7;
            device
                .handle(
                    Packet::Publish(publish),
                    &sc,
                    600,
                    &mut tx,
                    &mut seen,
                    &counters,
                )
                .unwrap();
        }
        let set = &seen.sub_seen[0][&10];
        assert_eq!((set.received, set.duplicated), (2, 1));
        assert_eq!(seen.sub_foreign, 1);
        assert_eq!(seen.subscriber.len(), 2);
        let packets = sent(&mut tx);
        assert!(matches!(packets[1], Packet::Subscribe(_)), "{packets:?}");
    }

    #[test]
    fn one_to_one_subscriber_takes_only_its_publishers_topic_and_messages() {
        let mut sc = scenario();
        sc.devices = 2;
        sc.subscribers = 2;
        sc.one_to_one = true;
        let counters = ShardCounters::default();
        let mut seen = observed();
        // Subscriber 1 is paired with publisher id_start + 1 = 11.
        let mut device = Device::subscriber(1, 0);
        let mut tx = BytesMut::new();
        device.connect(&sc, 0, &mut tx);
        let connack = Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::Success)));
        device
            .handle(connack, &sc, 0, &mut tx, &mut seen, &counters)
            .unwrap();
        let packets = sent(&mut tx);
        let Packet::Subscribe(subscribe) = &packets[1] else {
            panic!("{packets:?}")
        };
        assert_eq!(subscribe.filters.len(), 1);
        assert_eq!(&*subscribe.filters[0].filter, "d/11/t");
        let suback = Packet::SubAck(SubAck::new(1, vec![ReasonCode::GrantedQos1]));
        device
            .handle(suback, &sc, 0, &mut tx, &mut seen, &counters)
            .unwrap();
        // Its own publisher twice (one duplicate), the other publisher of the process and
        // a device outside the process: both misrouted.
        for device_number in [11, 11, 10, 99] {
            let header = PayloadHeader {
                device: device_number,
                seq: 0,
                sent_us: 100,
            };
            let publish = Publish::new("d/11/t", QoS::AtMostOnce, sc.payload(header));
            device
                .handle(
                    Packet::Publish(publish),
                    &sc,
                    600,
                    &mut tx,
                    &mut seen,
                    &counters,
                )
                .unwrap();
        }
        assert_eq!(seen.sub_seen[0].len(), 1);
        let set = &seen.sub_seen[0][&11];
        assert_eq!((set.received, set.duplicated), (1, 1));
        assert_eq!((seen.sub_misrouted, seen.sub_foreign), (2, 0));
        assert_eq!(seen.subscriber.len(), 1);
    }

    #[test]
    fn a_command_receiver_keeps_its_session_and_tells_probes_and_stale_commands_apart() {
        let sc = Scenario {
            devices: 0,
            subscribers: 2,
            session_expiry_secs: Some(300),
            commands: Some(crate::scenario::CommandDevices {
                since_us: 1_000,
                offline_fraction: 0.0,
                offline: std::time::Duration::from_secs(1),
                offline_drop: false,
                offline_window: std::time::Duration::from_secs(1),
            }),
            ..scenario()
        };
        let counters = ShardCounters::default();
        let mut seen = observed();
        // Subscriber 1 is device id_start + 1 = 11, with its plain client id.
        let mut device = Device::subscriber(1, 0);
        let mut tx = BytesMut::new();
        let connack =
            |present| Packet::ConnAck(Box::new(ConnAck::new(present, ReasonCode::Success)));
        device.connect(&sc, 0, &mut tx);
        let packets = sent(&mut tx);
        let Packet::Connect(connect) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert_eq!(&*connect.client_id, "lg-11");
        assert!(connect.clean_start, "a fresh session at the first connect");
        assert_eq!(connect.properties.session_expiry_interval_secs, Some(300));
        device
            .handle(connack(false), &sc, 0, &mut tx, &mut seen, &counters)
            .unwrap();
        let packets = sent(&mut tx);
        let Packet::Subscribe(subscribe) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert_eq!(&*subscribe.filters[0].filter, "d/11/t");
        let suback = Packet::SubAck(SubAck::new(1, vec![ReasonCode::GrantedQos1]));
        device
            .handle(suback, &sc, 0, &mut tx, &mut seen, &counters)
            .unwrap();
        let command = |device: u64, seq: u64, sent_us: u64| {
            let header = PayloadHeader {
                device,
                seq,
                sent_us,
            };
            let mut publish = Publish::new("d/11/t", QoS::AtLeastOnce, sc.payload(header));
            publish.packet_id = 1;
            Packet::Publish(publish)
        };
        // A probe of partition 3, a stale command, its own, another device's.
        for (number, seq, sent_us) in [
            (PROBE_DEVICE, 3, 2_000),
            (11, 0, 500),
            (11, 0, 2_000),
            (10, 0, 2_000),
        ] {
            device
                .handle(
                    command(number, seq, sent_us),
                    &sc,
                    3_000,
                    &mut tx,
                    &mut seen,
                    &counters,
                )
                .unwrap();
        }
        assert!(counters.probe_seen(3) && !counters.probe_seen(2));
        assert_eq!((seen.sub_stale, seen.sub_misrouted), (1, 1));
        assert_eq!(seen.sub_seen[0][&11].received, 1);
        assert_eq!(seen.subscriber.len(), 1);
        assert_eq!(
            counters
                .commands_received
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            (seen.first_delivery_us, seen.last_delivery_us),
            (3_000, 3_000)
        );
        assert_eq!(sent(&mut tx).len(), 4, "every PUBLISH acknowledged");
        // Going offline: what comes after the DISCONNECT is neither acknowledged nor counted.
        device.disconnect(&sc, &mut tx, false);
        let packets = sent(&mut tx);
        let Packet::Disconnect(disconnect) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert_eq!(disconnect.properties.session_expiry_interval_secs, None);
        device
            .handle(
                command(11, 1, 2_000),
                &sc,
                3_000,
                &mut tx,
                &mut seen,
                &counters,
            )
            .unwrap();
        assert!(tx.is_empty());
        assert_eq!(
            (seen.after_disconnect, seen.sub_seen[0][&11].received),
            (1, 1)
        );
        // Back: the session is resumed, no SUBSCRIBE.
        device.abandon_inflight();
        device.connect(&sc, 4_000, &mut tx);
        let packets = sent(&mut tx);
        let Packet::Connect(connect) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert!(!connect.clean_start, "resumes its session");
        assert_eq!(
            device.handle(connack(true), &sc, 4_000, &mut tx, &mut seen, &counters),
            Ok(Event::Connected)
        );
        assert_eq!((device.phase, seen.sessions_resumed), (Phase::Running, 1));
        assert!(tx.is_empty());
        // A session gone: counted, and the device subscribes again.
        device.abandon_inflight();
        device.connect(&sc, 5_000, &mut tx);
        tx.clear();
        device
            .handle(connack(false), &sc, 5_000, &mut tx, &mut seen, &counters)
            .unwrap();
        assert_eq!((device.phase, seen.sessions_lost), (Phase::AwaitSubAck, 1));
        // Leaving at the end ends the session.
        device.phase = Phase::Running;
        tx.clear();
        device.disconnect(&sc, &mut tx, true);
        let packets = sent(&mut tx);
        let Packet::Disconnect(disconnect) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert_eq!(disconnect.properties.session_expiry_interval_secs, Some(0));
    }

    #[test]
    fn connect_latency_and_phase() {
        let mut seen = observed();
        seen.connect_started(5_000);
        seen.connect_started(1_000);
        seen.connected(1_000, 3_500);
        seen.connected(5_000, 5_200);
        assert_eq!(seen.connect.len(), 2);
        assert!((2_490..=2_510).contains(&seen.connect.max()));
        assert_eq!(
            (seen.first_connect_us, seen.last_connack_us),
            (1_000, 5_200)
        );
    }
}
