//! [`Shard`] as plain data, without a runtime or sleeps: sessions opened by CONNECT (Clean
//! Start, Session Present), a connected client id taken over by a second connection, a
//! disconnected session's queue bounded by `session_queue_messages_max`, congestion at
//! half of it, and PUBACK pumping the queue into the in-flight window.
//!
//! A [`Connection`] is plain data too (its writer task is not started): the tests read how
//! many packets it queued and whether it is closing, not what the packets hold, which only
//! the writer sees.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::BrokerConfig;
use crate::metrics::stats::ShardStats;
use crate::protocol::{Connect, MqttStr, Protocol, QoS, SubscriptionOptions};

use super::connection::Connection;
use super::message::Message;
use super::session::SubscriptionEntry;
use super::shard::{InterestChange, Shard};

/// A session queue of four messages and an in-flight window of one.
const QUEUE_MAX: usize = 4;

fn shard() -> Shard {
    let config = BrokerConfig {
        session_queue_messages_max: QUEUE_MAX,
        inflight_messages_max: 1,
        ..BrokerConfig::default()
    };
    Shard::new(0, 1, Rc::new(config), Rc::new(ShardStats::default()))
}

fn connection(shard: &mut Shard, protocol: Protocol) -> Rc<Connection> {
    Rc::new(Connection::new(
        shard.next_connection_id(),
        protocol,
        1 << 20,
        0,
    ))
}

/// CONNECTs `client_id` on a new connection; returns it, the CONNACK's Session Present
/// and the session's generation.
fn connect(
    shard: &mut Shard,
    client_id: &'static str,
    protocol: Protocol,
    clean_start: bool,
) -> (Rc<Connection>, bool, u64) {
    let mut packet = Connect::new(protocol, MqttStr::from_static(client_id), 60);
    packet.clean_start = clean_start;
    let connection = connection(shard, protocol);
    let opened = shard.open_session(&mut packet, connection.clone(), false, Instant::now());
    assert!(opened.will_to_publish.is_none());
    (
        connection,
        opened.connack.session_present,
        opened.generation,
    )
}

fn subscribe(shard: &mut Shard, client_id: &MqttStr, filter: &str, qos: QoS) {
    let entry = SubscriptionEntry {
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
        subscription_id: None,
    };
    let mut changes = Vec::new();
    assert!(shard.add_subscription(client_id, filter, entry, &mut changes));
    let changes: Vec<(String, bool)> = changes
        .into_iter()
        .map(|InterestChange { filter, added }| (filter, added))
        .collect();
    assert_eq!(
        changes,
        [(filter.to_string(), true)],
        "the first subscriber"
    );
}

fn message(topic: &'static str, qos: QoS) -> Rc<Message> {
    Rc::new(Message {
        topic: MqttStr::from_static(topic),
        payload: Bytes::from_static(b"21.5"),
        qos,
        retain: false,
        properties: Default::default(),
        publisher: MqttStr::from_static("publisher"),
        expires_at: None,
    })
}

/// The packet ids of the session's messages in flight, and how many wait in its queue.
fn in_flight_and_queued(shard: &mut Shard, client_id: &MqttStr) -> (Vec<u16>, usize) {
    let session = shard.session(client_id).expect("a session");
    let ids = session.outbound.iter().map(|o| o.packet_id).collect();
    (ids, session.pending.len())
}

#[test]
fn clean_start_opens_a_new_session_and_a_kept_one_is_present_on_return() {
    let mut shard = shard();
    let id = MqttStr::from_static("device-1");
    let now = Instant::now();

    // 3.1.1, Clean Session 0: a new session, kept after the connection.
    let (first, present, generation) = connect(&mut shard, "device-1", Protocol::V3_1_1, false);
    assert!(!present, "nothing to resume");
    assert_eq!(generation, 1);
    assert_eq!(shard.session_count(), 1);
    assert_eq!(shard.stats.sessions.get(), 1);
    assert_eq!(shard.stats.clients_connected.get(), 1);
    assert_eq!(shard.connection(&id).map(|c| c.id), Some(first.id));
    let session_id = shard.session(&id).unwrap().id;

    let closed = shard.close_connection(&id, first.id, true, now);
    assert_eq!(closed.generation, 1);
    assert!(closed.will_now.is_none());
    // 3.1.1 keeps it for ever, held to the broker's maximum.
    let max = BrokerConfig::default().session_expiry_secs_max;
    assert_eq!(closed.expire_after, Some(Duration::from_secs(max.into())));
    assert_eq!(shard.stats.clients_connected.get(), 0);
    assert_eq!(
        shard.session_count(),
        1,
        "the session outlives its connection"
    );
    assert!(shard.connection(&id).is_none());

    // Back with Clean Session 0: the same session, present, a new generation.
    let (second, present, generation) = connect(&mut shard, "device-1", Protocol::V3_1_1, false);
    assert!(present);
    assert_eq!(generation, 2);
    assert_eq!(shard.session(&id).unwrap().id, session_id);
    // The expiry timer of the first connection finds the client back: nothing goes.
    assert!(shard.expire_session(&id, 1).is_empty());
    assert_eq!(shard.session_count(), 1);
    shard.close_connection(&id, second.id, false, now);

    // Back with Clean Session 1: a new session, not present.
    let (third, present, generation) = connect(&mut shard, "device-1", Protocol::V3_1_1, true);
    assert!(!present);
    assert_eq!(generation, 3);
    assert_ne!(shard.session(&id).unwrap().id, session_id);
    assert_eq!(shard.stats.sessions.get(), 1);
    // A clean session ends with its connection.
    let closed = shard.close_connection(&id, third.id, false, now);
    assert!(closed.expire_after.is_none());
    assert_eq!(shard.session_count(), 0);
    assert_eq!(shard.stats.sessions.get(), 0);
}

#[test]
fn a_second_connection_takes_over_the_client_id() {
    let mut shard = shard();
    let id = MqttStr::from_static("device-1");
    let now = Instant::now();
    let (old, _, old_generation) = connect(&mut shard, "device-1", Protocol::V5, false);
    assert!(!old.is_closing());

    let (new, present, new_generation) = connect(&mut shard, "device-1", Protocol::V5, false);
    assert!(present, "the taken-over session goes on");
    assert!(old.is_closing(), "the old connection is closed");
    assert_eq!(
        old.queued_len(),
        1,
        "5.0: DISCONNECT 0x8E Session taken over"
    );
    assert!(!new.is_closing());
    assert_ne!(new_generation, old_generation);
    assert_eq!(shard.session(&id).unwrap().generation, new_generation);
    assert_eq!(shard.connection(&id).map(|c| c.id), Some(new.id));
    assert_eq!(shard.stats.clients_connected.get(), 1);
    assert_eq!(shard.session_count(), 1);

    // The old connection's end, seen later by its reader, no longer owns the session.
    let closed = shard.close_connection(&id, old.id, true, now);
    assert_eq!(closed.generation, 0, "nothing to do");
    assert_eq!(shard.connection(&id).map(|c| c.id), Some(new.id));
    assert_eq!(shard.stats.clients_connected.get(), 1);
    // Nor do timers armed for the old generation.
    assert!(!shard.will_still_due(&id, old_generation));

    // 3.1.1 has no DISCONNECT from the server: the old connection is only closed.
    let (v3_old, _, _) = connect(&mut shard, "device-2", Protocol::V3_1_1, false);
    connect(&mut shard, "device-2", Protocol::V3_1_1, false);
    assert!(v3_old.is_closing());
    assert_eq!(v3_old.queued_len(), 0);
    assert_eq!(shard.stats.clients_connected.get(), 2);
}

#[test]
fn a_disconnected_session_keeps_qos1_messages_up_to_its_queue_maximum() {
    let mut shard = shard();
    let id = MqttStr::from_static("device-1");
    let now = Instant::now();
    let (first, _, _) = connect(&mut shard, "device-1", Protocol::V3_1_1, false);
    subscribe(&mut shard, &id, "sensors/#", QoS::AtLeastOnce);
    shard.close_connection(&id, first.id, false, now);

    for _ in 0..QUEUE_MAX + 2 {
        let targets = shard.route(&message("sensors/t1", QoS::AtLeastOnce), now);
        assert!(targets.shards.is_empty());
        assert!(
            targets.congested.is_empty(),
            "a disconnected session is not congestion"
        );
    }
    // QoS 0 is not kept for an absent client.
    shard.route(&message("sensors/t1", QoS::AtMostOnce), now);

    assert_eq!(in_flight_and_queued(&mut shard, &id), (vec![], QUEUE_MAX));
    assert_eq!(shard.stats.dropped_session_queue_full.get(), 2);
    assert_eq!(shard.stats.dropped_qos0_queue_full.get(), 1);
    assert!(!shard.is_congested(&id), "not connected");
    assert_eq!(shard.queue_totals(), (QUEUE_MAX as u64, 0, 0));

    // Back: one message in flight (the window is one), the rest queued.
    let (second, present, _) = connect(&mut shard, "device-1", Protocol::V3_1_1, false);
    assert!(present);
    shard.resume_session(&id, now);
    assert_eq!(
        in_flight_and_queued(&mut shard, &id),
        (vec![1], QUEUE_MAX - 1)
    );
    assert_eq!(second.queued_len(), 1, "one PUBLISH written");
    assert!(shard.is_congested(&id), "3 queued of 4");

    // Each PUBACK lets the next one go.
    shard.on_puback(&id, 1, now);
    assert_eq!(
        in_flight_and_queued(&mut shard, &id),
        (vec![2], QUEUE_MAX - 2)
    );
    assert_eq!(second.queued_len(), 2);
    // A PUBACK for a packet id not in flight changes nothing.
    shard.on_puback(&id, 1, now);
    assert_eq!(
        in_flight_and_queued(&mut shard, &id),
        (vec![2], QUEUE_MAX - 2)
    );
    for packet_id in 2..=3 {
        shard.on_puback(&id, packet_id, now);
    }
    assert_eq!(in_flight_and_queued(&mut shard, &id), (vec![4], 0));
    shard.on_puback(&id, 4, now);
    assert_eq!(in_flight_and_queued(&mut shard, &id), (vec![], 0));
    assert_eq!(second.queued_len(), QUEUE_MAX);
}

#[test]
fn a_connected_session_is_congested_at_half_its_queue_maximum() {
    let mut shard = shard();
    let id = MqttStr::from_static("device-1");
    let now = Instant::now();
    let (connection, _, _) = connect(&mut shard, "device-1", Protocol::V5, true);
    subscribe(&mut shard, &id, "sensors/+", QoS::AtLeastOnce);

    // The first goes out at once, into the window of one.
    let targets = shard.route(&message("sensors/t1", QoS::AtLeastOnce), now);
    assert!(targets.congested.is_empty());
    assert_eq!(in_flight_and_queued(&mut shard, &id), (vec![1], 0));
    assert_eq!(connection.queued_len(), 1);

    // One queued: below half of four.
    let targets = shard.route(&message("sensors/t1", QoS::AtLeastOnce), now);
    assert!(targets.congested.is_empty());
    assert!(!shard.is_congested(&id));

    // Two queued: half. The publisher hears whom it waits for.
    let targets = shard.route(&message("sensors/t1", QoS::AtLeastOnce), now);
    assert_eq!(targets.congested.as_slice(), std::slice::from_ref(&id));
    assert!(shard.is_congested(&id));
    assert_eq!(in_flight_and_queued(&mut shard, &id), (vec![1], 2));
    assert!(shard.take_congested().is_empty(), "handed over by route");

    // A PUBACK moves one into flight: one queued, no longer congested.
    shard.on_puback(&id, 1, now);
    assert_eq!(in_flight_and_queued(&mut shard, &id), (vec![2], 1));
    assert!(!shard.is_congested(&id));
    assert_eq!(connection.queued_len(), 2);
    assert_eq!(shard.queue_totals(), (1, 1, 2));
}

/// Records from a Kafka source: their receipt settles as the delivery table says
/// (queued for an absent client: at once; in flight to a connected one: at its PUBACK), a
/// record for a full session is refused, and so is every later record of its partition
/// until the source comes back to the refused one.
#[test]
fn source_records_settle_when_delivered_and_a_full_session_refuses_its_partition() {
    use crate::bridge::source::receipt::{Outcome, Outcomes};
    use crate::bridge::source::{Position, Receipt};

    let mut shard = shard();
    let id = MqttStr::from_static("device-9");
    let now = Instant::now();
    let (first, _, _) = connect(&mut shard, "device-9", Protocol::V3_1_1, false);
    subscribe(&mut shard, &id, "cmd/#", QoS::AtLeastOnce);
    shard.close_connection(&id, first.id, false, now);

    let outcomes = Outcomes::default();
    let taken = |outcomes: &Outcomes| -> Vec<(i64, bool)> {
        std::iter::from_fn(|| outcomes.pop())
            .map(|o: Outcome| (o.position.offset, o.refused))
            .collect()
    };
    let record = |shard: &mut Shard, offset: i64| -> bool {
        let position = Position {
            partition: 7,
            generation: 1,
            offset,
        };
        let receipt = Receipt::new(position, outcomes.clone());
        match shard.route_from_source(
            &message("cmd/device-9", QoS::AtLeastOnce),
            &receipt,
            None,
            now,
        ) {
            super::shard::SourceRouting::Delivered { local, targets } => {
                assert!(targets.shards.is_empty());
                receipt.finish(local);
                true
            }
            super::shard::SourceRouting::Refused => false,
        }
    };
    // The client is away: each is delivered once queued, up to the queue's bound.
    for offset in 0..QUEUE_MAX as i64 {
        assert!(record(&mut shard, offset));
    }
    assert_eq!(
        taken(&outcomes),
        [(0, false), (1, false), (2, false), (3, false)]
    );
    // Full: refused, and the next one too, though the queue does not move.
    assert!(!record(&mut shard, 4));
    assert!(!record(&mut shard, 5));
    assert_eq!(taken(&outcomes), [(4, true), (5, true)]);

    // The client is back and takes one message: room for the refused record, read again.
    let (second, present, _) = connect(&mut shard, "device-9", Protocol::V3_1_1, false);
    assert!(present);
    shard.resume_session(&id, now);
    let (in_flight, queued) = in_flight_and_queued(&mut shard, &id);
    assert_eq!((in_flight.len(), queued), (1, QUEUE_MAX - 1));
    assert!(record(&mut shard, 4));
    // Queued for a connected client: not delivered until it acknowledges it.
    assert!(taken(&outcomes).is_empty());
    for _ in 0..QUEUE_MAX {
        let (in_flight, _) = in_flight_and_queued(&mut shard, &id);
        shard.on_puback(&id, in_flight[0], now);
    }
    let (in_flight, queued) = in_flight_and_queued(&mut shard, &id);
    assert_eq!((in_flight.len(), queued), (1, 0));
    assert!(taken(&outcomes).is_empty(), "offset 4 is still in flight");
    shard.on_puback(&id, in_flight[0], now);
    assert_eq!(taken(&outcomes), [(4, false)]);
    drop(second);
}
