//! The broker against a third-party client: rumqttc, through its MQTT 3.1.1 (`rumqttc::*`)
//! and 5.0 (`rumqttc::v5::*`) APIs. Each test starts its own two-shard broker and picks
//! client ids with `shard_for` so that publishers and subscribers live on different shards
//! (messages cross the inter-shard channels) or on the same one, on purpose. Spec ids are
//! MQTT 5.0 unless marked 3.1.1.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::thread;
use std::time::{Duration, Instant};

use common::raw::RawClient;
use common::rumqttc::{connect4_with, connect5_with, options4, options5, qos4, qos5, v4, v5, WAIT};
use common::{id_on, Broker};
use ferrymq::protocol::{Connect, Protocol, ReasonCode};
use rumqttc::v5::mqttbytes::v5::{
    Filter, PublishProperties, RetainForwardRule, SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS;

/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------
// 3.1.1 clients

fn connect4(broker: &Broker, id: &str, clean_session: bool) -> v4::Mqtt {
    let mut options = options4(broker.port, id);
    options.set_clean_session(clean_session);
    connect4_with(options)
}

impl v4::Mqtt {
    fn sub(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).unwrap();
        let suback = self.wait_suback();
        assert_eq!(
            suback.return_codes,
            vec![rumqttc::SubscribeReasonCode::Success(qos)]
        );
    }

    /// Publishes and waits for the broker's acknowledgement (nothing to wait for at QoS 0).
    fn pub_acked(&mut self, topic: &str, qos: QoS, retain: bool, payload: &str) {
        self.client
            .publish(topic, qos, retain, payload.as_bytes().to_vec())
            .unwrap();
        self.wait_acked(qos as u8);
    }
}

// ---------------------------------------------------------------------------------------
// 5.0 clients

/// A 5.0 client; `session_expiry` > 0 keeps its session after the connection.
fn connect5(broker: &Broker, id: &str, clean_start: bool, session_expiry: u32) -> v5::Mqtt {
    let mut options = options5(broker.port, id);
    options.set_clean_start(clean_start);
    if session_expiry > 0 {
        options.set_session_expiry_interval(Some(session_expiry));
    }
    connect5_with(options)
}

fn filter(path: &str, qos: QoS5) -> Filter {
    Filter::new(path, qos)
}

impl v5::Mqtt {
    fn sub(&mut self, filter: Filter, id: Option<usize>) {
        let qos = filter.qos;
        match id {
            Some(id) => {
                let properties = SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                };
                self.client
                    .subscribe_many_with_properties([filter], properties)
                    .unwrap()
            }
            None => self.client.subscribe_many([filter]).unwrap(),
        }
        let suback = self.wait_suback();
        assert_eq!(
            suback.return_codes,
            vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                qos
            )]
        );
    }

    fn sub_qos(&mut self, path: &str, qos: QoS5) {
        self.sub(filter(path, qos), None);
    }

    fn pub_props(
        &mut self,
        topic: &str,
        qos: QoS5,
        retain: bool,
        payload: &str,
        properties: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload.as_bytes().to_vec(), properties)
            .unwrap();
        self.wait_acked(qos as u8);
    }

    fn pub_acked(&mut self, topic: &str, qos: QoS5, retain: bool, payload: &str) {
        self.pub_props(topic, qos, retain, payload, PublishProperties::default());
    }
}

fn text(payload: &[u8]) -> &str {
    std::str::from_utf8(payload).unwrap()
}

// ---------------------------------------------------------------------------------------
// QoS and ordering

/// A subscription granted QoS s receives a message published at QoS p at min(p, s)
/// ([MQTT-3.8.4-6] in 3.1.1), every exchange completing in both directions; subscribers
/// sit on both shards.
#[test]
fn v311_qos_0_1_2_both_directions_across_shards_mqtt_3_8_4_6() {
    let broker = Broker::start();
    let mut subscribers: Vec<(u8, v4::Mqtt)> = (0..3u8)
        .map(|level| {
            let id = id_on(usize::from(level % 2) + 1, &format!("q4-sub{level}"));
            let mut sub = connect4(&broker, &id, true);
            sub.sub("q4/t", qos4(level));
            (level, sub)
        })
        .collect();
    let mut publisher = connect4(&broker, &id_on(0, "q4-pub"), true);
    for level in 0..3u8 {
        publisher.pub_acked("q4/t", qos4(level), false, &format!("p{level}"));
    }
    for (sub_level, sub) in &mut subscribers {
        for pub_level in 0..3u8 {
            let publish = sub.publish();
            assert_eq!(publish.topic, "q4/t");
            assert_eq!(text(&publish.payload), format!("p{pub_level}"));
            assert_eq!(publish.qos, qos4(pub_level.min(*sub_level)));
            assert!(!publish.dup);
        }
        sub.no_publish(QUIET);
    }
}

/// The same in 5.0 ([MQTT-3.8.4-8]).
#[test]
fn v5_qos_0_1_2_both_directions_across_shards_mqtt_3_8_4_8() {
    let broker = Broker::start();
    let mut subscribers: Vec<(u8, v5::Mqtt)> = (0..3u8)
        .map(|level| {
            let id = id_on(usize::from(level % 2) + 1, &format!("q5-sub{level}"));
            let mut sub = connect5(&broker, &id, true, 0);
            sub.sub_qos("q5/t", qos5(level));
            (level, sub)
        })
        .collect();
    let mut publisher = connect5(&broker, &id_on(0, "q5-pub"), true, 0);
    for level in 0..3u8 {
        publisher.pub_acked("q5/t", qos5(level), false, &format!("p{level}"));
    }
    for (sub_level, sub) in &mut subscribers {
        for pub_level in 0..3u8 {
            let publish = sub.publish();
            assert_eq!(&publish.topic[..], b"q5/t");
            assert_eq!(text(&publish.payload), format!("p{pub_level}"));
            assert_eq!(publish.qos, qos5(pub_level.min(*sub_level)));
        }
        sub.no_publish(QUIET);
    }
}

/// 1000 QoS 1 messages from a publisher on one shard to a subscriber on the other: all
/// arrive, once each, in publish order ([MQTT-4.6.0-6] in 3.1.1, [MQTT-4.6.0-5]).
#[test]
fn v311_thousand_qos1_in_order_across_shards_mqtt_4_6_0_6() {
    const COUNT: usize = 1000;
    let broker = Broker::start();
    let mut sub = connect4(&broker, &id_on(1, "bulk-sub"), true);
    sub.sub("bulk/t", QoS::AtLeastOnce);
    let publisher = connect4(&broker, &id_on(0, "bulk-pub"), true);
    let client = publisher.client.clone();
    let sender = thread::spawn(move || {
        for i in 0..COUNT {
            client
                .publish(
                    "bulk/t",
                    QoS::AtLeastOnce,
                    false,
                    i.to_string().into_bytes(),
                )
                .unwrap();
        }
    });
    for expected in 0..COUNT {
        let publish = sub.publish();
        assert_eq!(
            text(&publish.payload),
            expected.to_string(),
            "order or loss"
        );
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        assert!(!publish.dup, "message {expected} duplicated");
    }
    sub.no_publish(QUIET);
    sender.join().unwrap();
    drop(publisher);
}

// ---------------------------------------------------------------------------------------
// Persistent sessions

/// 3.1.1 Clean Session 0: the session outlives the connection [MQTT-3.1.2-4], QoS 1 and 2
/// messages are stored for it [MQTT-3.1.2-5] and sent on reconnect with Session Present 1
/// [MQTT-3.2.2-2]; Clean Session 1 discards it [MQTT-3.1.2-6] with Session Present 0
/// [MQTT-3.2.2-1], and a later Clean Session 0 finds none [MQTT-3.2.2-3].
#[test]
fn v311_persistent_session_queues_and_clean_session_discards_mqtt_3_1_2_4_5_6() {
    let broker = Broker::start();
    let sub_id = id_on(1, "ps4-sub");
    let mut sub = connect4(&broker, &sub_id, false);
    assert!(!sub.connack.session_present);
    sub.sub("ps4/t", QoS::ExactlyOnce);
    sub.disconnect();

    let mut publisher = connect4(&broker, &id_on(0, "ps4-pub"), true);
    publisher.pub_acked("ps4/t", QoS::AtLeastOnce, false, "one");
    publisher.pub_acked("ps4/t", QoS::ExactlyOnce, false, "two");

    let mut sub = connect4(&broker, &sub_id, false);
    assert!(sub.connack.session_present, "[MQTT-3.2.2-2]");
    let got = sub.publishes(2);
    assert_eq!(
        got.iter()
            .map(|p| (text(&p.payload), p.qos))
            .collect::<Vec<_>>(),
        vec![("one", QoS::AtLeastOnce), ("two", QoS::ExactlyOnce)]
    );
    // The subscription came back with the session: live messages flow too.
    publisher.pub_acked("ps4/t", QoS::AtLeastOnce, false, "live");
    assert_eq!(text(&sub.publish().payload), "live");
    sub.disconnect();

    publisher.pub_acked("ps4/t", QoS::AtLeastOnce, false, "discarded");
    let sub = connect4(&broker, &sub_id, true);
    assert!(!sub.connack.session_present, "[MQTT-3.2.2-1]");
    sub.disconnect();

    publisher.pub_acked("ps4/t", QoS::AtLeastOnce, false, "nobody");
    let mut sub = connect4(&broker, &sub_id, false);
    assert!(!sub.connack.session_present, "[MQTT-3.2.2-3]");
    sub.no_publish(QUIET);
}

/// 5.0 Clean Start 0 with a Session Expiry Interval: the session is kept
/// [MQTT-3.1.2-23], resumed with Session Present 1 [MQTT-3.1.2-5], [MQTT-3.2.2-3], and
/// its stored QoS 1/2 messages sent; Clean Start 1 discards it with what it held
/// [MQTT-3.1.2-4], Session Present 0 [MQTT-3.2.2-2].
#[test]
fn v5_persistent_session_and_clean_start_mqtt_3_1_2_4_5_23() {
    let broker = Broker::start();
    let sub_id = id_on(1, "ps5-sub");
    let mut sub = connect5(&broker, &sub_id, false, 60);
    assert!(!sub.connack.session_present);
    sub.sub_qos("ps5/t", QoS5::ExactlyOnce);
    sub.disconnect();

    let mut publisher = connect5(&broker, &id_on(0, "ps5-pub"), true, 0);
    publisher.pub_acked("ps5/t", QoS5::AtLeastOnce, false, "one");
    publisher.pub_acked("ps5/t", QoS5::ExactlyOnce, false, "two");

    let mut sub = connect5(&broker, &sub_id, false, 60);
    assert!(sub.connack.session_present, "[MQTT-3.2.2-3]");
    let got = sub.publishes(2);
    assert_eq!(
        got.iter()
            .map(|p| (text(&p.payload), p.qos))
            .collect::<Vec<_>>(),
        vec![("one", QoS5::AtLeastOnce), ("two", QoS5::ExactlyOnce)]
    );
    sub.disconnect();

    publisher.pub_acked("ps5/t", QoS5::AtLeastOnce, false, "discarded");
    let mut sub = connect5(&broker, &sub_id, true, 60);
    assert!(!sub.connack.session_present, "[MQTT-3.2.2-2]");
    sub.no_publish(QUIET);
    // The subscription went with the old session.
    publisher.pub_acked("ps5/t", QoS5::AtLeastOnce, false, "unsubscribed");
    sub.no_publish(QUIET);
}

/// A session with Session Expiry Interval 1 s is gone 2 s after its connection closed
/// [MQTT-3.1.2-23]: no Session Present, no subscription, nothing stored.
#[test]
fn v5_session_expiry_1s_gone_after_2s_mqtt_3_1_2_23() {
    let broker = Broker::start();
    let sub_id = id_on(1, "exp5-sub");
    let mut sub = connect5(&broker, &sub_id, false, 1);
    sub.sub_qos("exp5/t", QoS5::AtLeastOnce);
    sub.disconnect();
    thread::sleep(Duration::from_secs(2));

    let mut publisher = connect5(&broker, &id_on(0, "exp5-pub"), true, 0);
    publisher.pub_acked("exp5/t", QoS5::AtLeastOnce, false, "late");
    let mut sub = connect5(&broker, &sub_id, false, 60);
    assert!(!sub.connack.session_present, "session should have expired");
    sub.no_publish(QUIET);
}

/// An expiry timer belongs to the session it was armed for. Session Expiry 1 s, gone;
/// back with Clean Start and Session Expiry 10 s (a new session, subscribed), gone; 2 s
/// later, when the first timer has fired, the new session must still be there with its
/// subscription and the message queued for it [MQTT-3.1.2-23], [MQTT-4.1.0-2]. (The Paho
/// 5.0 interoperability suite's session expiry test does this with 5 s and 10 s.)
#[test]
fn v5_stale_expiry_timer_leaves_the_newer_session_mqtt_3_1_2_23_4_1_0_2() {
    let broker = Broker::start();
    let id = id_on(1, "stale5");
    connect5(&broker, &id, true, 1).disconnect();
    let mut second = connect5(&broker, &id, true, 10);
    assert!(!second.connack.session_present);
    second.sub_qos("stale5/t", QoS5::AtLeastOnce);
    second.disconnect();
    thread::sleep(Duration::from_secs(2));

    let mut publisher = connect5(&broker, &id_on(0, "stale5-pub"), true, 0);
    publisher.pub_acked("stale5/t", QoS5::AtLeastOnce, false, "kept");
    let mut third = connect5(&broker, &id, false, 10);
    assert!(
        third.connack.session_present,
        "the first connection's timer removed the second session"
    );
    assert_eq!(text(&third.publish().payload), "kept");
    third.disconnect();
}

// ---------------------------------------------------------------------------------------
// Session take-over

/// A second connection with a connected client's id takes the session over: the first
/// gets DISCONNECT 0x8E and is closed [MQTT-3.1.4-3]; the second is served with the
/// session. Each round takes over twice (a rumqttc client by a hand-written connection,
/// then back), so that whichever shard accepts each socket, the hand-off to the owner
/// shard is exercised too.
///
/// rumqttc 0.25.1 cannot decode a DISCONNECT without a Property Length (`E0 01 8E`, valid
/// by 3.14.2.2.1) and reports the end of the stream instead; the exact bytes are checked
/// on the hand-written connection.
#[test]
fn v5_session_takeover_disconnects_first_with_0x8e_mqtt_3_1_4_3() {
    let broker = Broker::start();
    let id = id_on(1, "take5");
    let mut publisher = connect5(&broker, &id_on(0, "take5-pub"), true, 0);
    let mut current = connect5(&broker, &id, false, 60);
    current.sub_qos("take5/t", QoS5::AtLeastOnce);
    for round in 0..4 {
        let (mut raw, session_present) = raw_connect_with(&broker, 5, &id, 30, false, Some(60));
        assert!(session_present, "round {round}");
        match current.closed() {
            rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
            ) => assert_eq!(
                reason_code,
                rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver
            ),
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ConnectionAborted) => {
            }
            other => panic!("round {round}: expected DISCONNECT 0x8E, got {other:?}"),
        }

        let mut next = connect5(&broker, &id, false, 60);
        assert!(next.connack.session_present, "round {round}");
        let received = raw.rest_until_closed();
        assert_eq!(
            received.first(),
            Some(&0xE0),
            "round {round}: DISCONNECT, got {received:02x?}"
        );
        assert_eq!(
            received.get(2),
            Some(&0x8E),
            "round {round}: Session taken over, got {received:02x?}"
        );
        let payload = format!("round {round}");
        publisher.pub_acked("take5/t", QoS5::AtLeastOnce, false, &payload);
        assert_eq!(text(&next.publish().payload), payload);
        current = next;
    }
}

/// 3.1.1: the existing client is disconnected [MQTT-3.1.4-2] (3.1.1), the new one works.
#[test]
fn v311_session_takeover_closes_first_mqtt_3_1_4_2() {
    let broker = Broker::start();
    let id = id_on(0, "take4");
    let mut publisher = connect4(&broker, &id_on(1, "take4-pub"), true);
    let mut current = connect4(&broker, &id, false);
    current.sub("take4/t", QoS::AtLeastOnce);
    for round in 0..4 {
        let mut next = connect4(&broker, &id, false);
        assert!(next.connack.session_present, "round {round}");
        current.closed();
        let payload = format!("round {round}");
        publisher.pub_acked("take4/t", QoS::AtLeastOnce, false, &payload);
        assert_eq!(text(&next.publish().payload), payload);
        current = next;
    }
}

// ---------------------------------------------------------------------------------------
// Redelivery

/// Unacknowledged QoS 1 messages are resent on reconnect, with their original packet
/// ids [MQTT-4.4.0-1] and DUP set [MQTT-3.3.1-1], in order; once acknowledged they are not
/// sent again.
#[test]
fn v311_unacked_qos1_redelivered_with_dup_mqtt_4_4_0_1() {
    let broker = Broker::start();
    let sub_id = id_on(1, "dup4-sub");
    let mut options = options4(broker.port, &sub_id);
    options.set_clean_session(false).set_manual_acks(true);
    let mut sub = connect4_with(options.clone());
    sub.sub("dup4/t", QoS::AtLeastOnce);
    let mut publisher = connect4(&broker, &id_on(0, "dup4-pub"), true);
    for i in 0..3 {
        publisher.pub_acked("dup4/t", QoS::AtLeastOnce, false, &format!("m{i}"));
    }
    let first = sub.publishes(3);
    assert!(first.iter().all(|p| !p.dup));
    sub.disconnect(); // without acknowledging

    let mut sub = connect4_with(options);
    assert!(sub.connack.session_present);
    let again = sub.publishes(3);
    for (before, after) in first.iter().zip(&again) {
        assert!(after.dup, "[MQTT-3.3.1-1]: {after:?}");
        assert_eq!(after.pkid, before.pkid, "[MQTT-4.4.0-1]");
        assert_eq!(after.payload, before.payload);
    }
    sub.no_publish(QUIET);
    for publish in &again {
        sub.client.ack(publish).unwrap();
    }
    sub.disconnect();

    let mut sub = connect4(&broker, &sub_id, false);
    assert!(sub.connack.session_present);
    sub.no_publish(QUIET);
}

/// The same in 5.0, with a QoS 2 message among them (its PUBLISH resent, as no PUBREC
/// came).
#[test]
fn v5_unacked_qos1_qos2_redelivered_with_dup_mqtt_4_4_0_1() {
    let broker = Broker::start();
    let sub_id = id_on(0, "dup5-sub");
    let mut options = options5(broker.port, &sub_id);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(60))
        .set_manual_acks(true);
    let mut sub = connect5_with(options.clone());
    sub.sub_qos("dup5/t", QoS5::ExactlyOnce);
    let mut publisher = connect5(&broker, &id_on(1, "dup5-pub"), true, 0);
    publisher.pub_acked("dup5/t", QoS5::AtLeastOnce, false, "q1");
    publisher.pub_acked("dup5/t", QoS5::ExactlyOnce, false, "q2");
    let first = sub.publishes(2);
    assert!(first.iter().all(|p| !p.dup));
    sub.disconnect();

    options.set_manual_acks(false);
    let mut sub = connect5_with(options.clone());
    assert!(sub.connack.session_present);
    let again = sub.publishes(2);
    for (before, after) in first.iter().zip(&again) {
        assert!(after.dup, "[MQTT-3.3.1-1]: {after:?}");
        assert_eq!(after.pkid, before.pkid, "[MQTT-4.4.0-1]");
        assert_eq!(after.qos, before.qos);
        assert_eq!(after.payload, before.payload);
    }
    // rumqttc acknowledged both: PUBREL for the QoS 2 one shows the broker got PUBREC.
    sub.incoming("PUBREL", |p| {
        matches!(p, rumqttc::v5::mqttbytes::v5::Packet::PubRel(_))
    });
    sub.no_publish(QUIET);
    sub.disconnect();

    let mut sub = connect5_with(options);
    assert!(sub.connack.session_present);
    sub.no_publish(QUIET);
}

// ---------------------------------------------------------------------------------------
// Keep alive

fn raw_connect(broker: &Broker, level: u8, client_id: &str, keep_alive: u16) -> RawClient {
    raw_connect_with(broker, level, client_id, keep_alive, true, None).0
}

/// A CONNECT on a raw connection (for what rumqttc cannot show); returns the client and
/// Session Present.
fn raw_connect_with(
    broker: &Broker,
    level: u8,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
    session_expiry: Option<u32>,
) -> (RawClient, bool) {
    let protocol = if level == 5 {
        Protocol::V5
    } else {
        Protocol::V3_1_1
    };
    let mut connect = Connect::new(protocol, client_id, keep_alive);
    connect.clean_start = clean;
    connect.properties.session_expiry_interval_secs = session_expiry;
    let mut client = RawClient::open(broker.addr(), protocol, WAIT);
    let connack = client.connect(connect);
    assert_eq!(
        connack.reason_code,
        ReasonCode::Success,
        "CONNACK return code"
    );
    (client, connack.session_present)
}

/// Keep Alive 1 s and silence after CONNECT: closed after 1.5 s ([MQTT-3.1.2-24] in
/// 3.1.1, [MQTT-3.1.2-22] in 5.0, which also says why: DISCONNECT 0x8D). A client that
/// pings stays.
#[test]
fn keep_alive_closes_silent_client_after_one_and_a_half_mqtt_3_1_2_22() {
    let broker = Broker::start();
    for level in [4u8, 5] {
        let mut silent = raw_connect(&broker, level, &format!("ka-silent-{level}"), 1);
        let since = Instant::now();
        let received = silent.rest_until_closed();
        let at = Instant::now();
        let after = at - since;
        assert!(
            after >= Duration::from_millis(1200) && after <= Duration::from_millis(3000),
            "level {level}: closed after {after:?}"
        );
        if level == 5 {
            assert_eq!(received.first(), Some(&0xE0), "DISCONNECT: {received:02x?}");
            assert_eq!(
                received.get(2),
                Some(&0x8D),
                "Keep Alive timeout: {received:02x?}"
            );
        } else {
            assert!(
                received.is_empty(),
                "3.1.1 has no DISCONNECT from the server"
            );
        }
    }
    // Pinging every 500 ms keeps a connection with Keep Alive 1 s open past 2.5 s.
    let mut pinging = raw_connect(&broker, 4, "ka-pinging", 1);
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(500));
        pinging.send_raw(&[0xC0, 0x00]);
        let mut pingresp = [0u8; 2];
        pinging.tcp.read_exact(&mut pingresp).unwrap();
        assert_eq!(pingresp, [0xD0, 0x00]);
    }
}

// ---------------------------------------------------------------------------------------
// 5.0 features

/// An empty client id gets a unique one, returned as Assigned Client Identifier
/// [MQTT-3.1.3-6], [MQTT-3.1.3-7]; the client is served under it.
#[test]
fn v5_assigned_client_identifier_mqtt_3_1_3_6_7() {
    let broker = Broker::start();
    let mut assigned = BTreeSet::new();
    for _ in 0..4 {
        let mut client = connect5(&broker, "", true, 0);
        let id = client
            .connack
            .properties
            .as_ref()
            .and_then(|p| p.assigned_client_identifier.clone())
            .expect("Assigned Client Identifier");
        assert!(!id.is_empty());
        assert!(assigned.insert(id.clone()), "{id} assigned twice");
        let topic = format!("assigned/{}", assigned.len());
        client.sub_qos(&topic, QoS5::AtLeastOnce);
        client.pub_acked(&topic, QoS5::AtLeastOnce, false, "self");
        assert_eq!(text(&client.publish().payload), "self");
    }
    // 5.0 allows an empty id with Clean Start 0: the session lives on under the assigned
    // id, whichever shard the reconnection lands on.
    let mut client = connect5(&broker, "", false, 60);
    let id = client
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("Assigned Client Identifier");
    client.sub_qos("assigned/kept", QoS5::AtLeastOnce);
    client.disconnect();
    let mut publisher = connect5(&broker, &id_on(0, "assigned-pub"), true, 0);
    publisher.pub_acked("assigned/kept", QoS5::AtLeastOnce, false, "stored");
    for round in 0..3 {
        let mut client = connect5(&broker, &id, false, 60);
        assert!(client.connack.session_present, "session of {id}");
        let properties = client.connack.properties.as_ref();
        assert_eq!(
            properties.and_then(|p| p.assigned_client_identifier.as_ref()),
            None
        );
        if round == 0 {
            assert_eq!(text(&client.publish().payload), "stored");
        }
        client.disconnect();
    }
}

/// Subscription Identifiers come with the messages they matched [MQTT-3.3.4-3]; with
/// overlapping subscriptions the one copy carries all of them [MQTT-3.3.4-4] at the
/// highest QoS among them [MQTT-3.3.4-2].
#[test]
fn v5_subscription_identifiers_and_overlap_mqtt_3_3_4_2_3_4() {
    let broker = Broker::start();
    let mut sub = connect5(&broker, &id_on(1, "sid-sub"), true, 0);
    sub.sub(filter("sid/a", QoS5::AtMostOnce), Some(3));
    sub.sub(filter("sid/+", QoS5::ExactlyOnce), Some(7));
    sub.sub(filter("sid/#", QoS5::AtLeastOnce), None);
    let mut publisher = connect5(&broker, &id_on(0, "sid-pub"), true, 0);

    publisher.pub_acked("sid/a", QoS5::ExactlyOnce, false, "a");
    let publish = sub.publish();
    assert_eq!(text(&publish.payload), "a");
    assert_eq!(publish.qos, QoS5::ExactlyOnce, "[MQTT-3.3.4-2]");
    let mut ids = publish.properties.unwrap().subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![3, 7], "[MQTT-3.3.4-4]");
    sub.no_publish(QUIET); // one copy

    publisher.pub_acked("sid/b", QoS5::AtLeastOnce, false, "b");
    let publish = sub.publish();
    assert_eq!(text(&publish.payload), "b");
    assert_eq!(publish.qos, QoS5::AtLeastOnce);
    assert_eq!(
        publish.properties.unwrap().subscription_identifiers,
        vec![7]
    );

    publisher.pub_acked("sid/c/d", QoS5::ExactlyOnce, false, "c");
    let publish = sub.publish();
    assert_eq!(publish.qos, QoS5::AtLeastOnce);
    let ids = publish
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert!(ids.is_empty(), "no identifier on sid/#: {ids:?}");
    sub.no_publish(QUIET);
}

/// No Local: not forwarded to the publishing client's own subscription [MQTT-3.8.3-3];
/// others' messages still are.
#[test]
fn v5_no_local_mqtt_3_8_3_3() {
    let broker = Broker::start();
    let mut local = connect5(&broker, &id_on(0, "nl-a"), true, 0);
    let mut no_local = filter("nl/t", QoS5::AtLeastOnce);
    no_local.nolocal = true;
    local.sub(no_local, None);
    let mut other = connect5(&broker, &id_on(1, "nl-b"), true, 0);
    other.sub_qos("nl/t", QoS5::AtLeastOnce);

    local.pub_acked("nl/t", QoS5::AtLeastOnce, false, "from a");
    assert_eq!(text(&other.publish().payload), "from a");
    local.no_publish(QUIET);

    other.pub_acked("nl/t", QoS5::AtLeastOnce, false, "from b");
    assert_eq!(text(&local.publish().payload), "from b");
    assert_eq!(text(&other.publish().payload), "from b");
}

/// Retain As Published 1 keeps the RETAIN flag of the PUBLISH, 0 clears it
/// [MQTT-3.3.1-12], [MQTT-3.3.1-13]; a 3.1.1 subscriber always gets 0 for an established
/// subscription ([MQTT-3.3.1-9] in 3.1.1).
#[test]
fn v5_retain_as_published_mqtt_3_3_1_12_13() {
    let broker = Broker::start();
    let mut rap = filter("rap/t", QoS5::AtLeastOnce);
    rap.preserve_retain = true;
    let mut keeps = connect5(&broker, &id_on(1, "rap-keep"), true, 0);
    keeps.sub(rap, None);
    let mut clears = connect5(&broker, &id_on(0, "rap-clear"), true, 0);
    clears.sub_qos("rap/t", QoS5::AtLeastOnce);
    let mut old = connect4(&broker, &id_on(1, "rap-v311"), true);
    old.sub("rap/t", QoS::AtLeastOnce);

    let mut publisher = connect5(&broker, &id_on(0, "rap-pub"), true, 0);
    publisher.pub_acked("rap/t", QoS5::AtLeastOnce, true, "retained");
    publisher.pub_acked("rap/t", QoS5::AtLeastOnce, false, "plain");

    let got: Vec<_> = keeps
        .publishes(2)
        .into_iter()
        .map(|p| (text(&p.payload).to_string(), p.retain))
        .collect();
    assert_eq!(
        got,
        vec![("retained".into(), true), ("plain".into(), false)],
        "[MQTT-3.3.1-13]"
    );
    let got: Vec<_> = clears
        .publishes(2)
        .into_iter()
        .map(|p| (text(&p.payload).to_string(), p.retain))
        .collect();
    assert_eq!(
        got,
        vec![("retained".into(), false), ("plain".into(), false)],
        "[MQTT-3.3.1-12]"
    );
    let got: Vec<_> = old
        .publishes(2)
        .into_iter()
        .map(|p| (text(&p.payload).to_string(), p.retain))
        .collect();
    assert_eq!(
        got,
        vec![("retained".into(), false), ("plain".into(), false)]
    );
}

/// Retain Handling 0 sends retained messages at every subscribe [MQTT-3.3.1-9], 1 only
/// when the subscription is new [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11]; they come with
/// RETAIN 1 [MQTT-3.3.1-8]. Subscribers on both shards.
#[test]
fn v5_retain_handling_0_1_2_mqtt_3_3_1_9_10_11() {
    let broker = Broker::start();
    let mut publisher = connect5(&broker, &id_on(0, "rh-pub"), true, 0);
    publisher.pub_acked("rh/t", QoS5::AtLeastOnce, true, "kept");
    // The retained copy reaches the other shard over its channel; give it a moment.
    thread::sleep(Duration::from_millis(100));

    for shard in 0..2 {
        let with = |rule: RetainForwardRule| {
            let mut f = filter("rh/t", QoS5::AtLeastOnce);
            f.retain_forward_rule = rule;
            f
        };
        let mut every = connect5(&broker, &id_on(shard, "rh-0"), true, 0);
        for round in 0..2 {
            every.sub(with(RetainForwardRule::OnEverySubscribe), None);
            let publish = every.publish();
            assert_eq!(text(&publish.payload), "kept", "round {round}");
            assert!(publish.retain, "[MQTT-3.3.1-8]");
        }
        every.no_publish(QUIET);

        let mut new_only = connect5(&broker, &id_on(shard, "rh-1"), true, 0);
        new_only.sub(with(RetainForwardRule::OnNewSubscribe), None);
        assert_eq!(text(&new_only.publish().payload), "kept");
        new_only.sub(with(RetainForwardRule::OnNewSubscribe), None);
        new_only.no_publish(QUIET);

        let mut never = connect5(&broker, &id_on(shard, "rh-2"), true, 0);
        never.sub(with(RetainForwardRule::Never), None);
        never.no_publish(QUIET);
    }
}

/// A Topic Alias set by the client with a topic, then used with an empty topic, resolves
/// to that topic (3.3.2.3.4): subscribers get the full topic name.
#[test]
fn v5_topic_alias_from_client_delivered_with_full_topic() {
    let broker = Broker::start();
    let mut sub = connect5(&broker, &id_on(1, "ta-sub"), true, 0);
    sub.sub_qos("ta/#", QoS5::AtLeastOnce);
    let mut publisher = connect5(&broker, &id_on(0, "ta-pub"), true, 0);
    let alias = |n| PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    };
    publisher.pub_props("ta/x", QoS5::AtLeastOnce, false, "set", alias(1));
    publisher.pub_props("", QoS5::AtLeastOnce, false, "used", alias(1));
    publisher.pub_props("ta/y", QoS5::AtLeastOnce, false, "set 2", alias(2));
    publisher.pub_props("", QoS5::AtMostOnce, false, "used 2", alias(2));
    publisher.pub_props("", QoS5::AtLeastOnce, false, "used again", alias(1));
    let got: Vec<_> = sub
        .publishes(5)
        .into_iter()
        .map(|p| {
            let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
            assert_eq!(alias, None, "aliases belong to one connection");
            (text(&p.topic).to_string(), text(&p.payload).to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("ta/x", "set"),
        ("ta/x", "used"),
        ("ta/y", "set 2"),
        ("ta/y", "used 2"),
        ("ta/x", "used again"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, expected);
}

/// Message Expiry Interval: a stored message whose interval passed is not delivered
/// [MQTT-3.3.2-5]; one still valid goes out with the interval minus its time waiting
/// [MQTT-3.3.2-6]; one without it is kept indefinitely.
#[test]
fn v5_message_expiry_interval_mqtt_3_3_2_5_6() {
    let broker = Broker::start();
    let sub_id = id_on(1, "mei-sub");
    let mut sub = connect5(&broker, &sub_id, false, 60);
    sub.sub_qos("mei/+", QoS5::AtLeastOnce);
    sub.disconnect();

    let mut publisher = connect5(&broker, &id_on(0, "mei-pub"), true, 0);
    let expiry = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    publisher.pub_props("mei/short", QoS5::AtLeastOnce, false, "short", expiry(1));
    publisher.pub_props("mei/long", QoS5::AtLeastOnce, false, "long", expiry(30));
    publisher.pub_acked("mei/none", QoS5::AtLeastOnce, false, "none");
    thread::sleep(Duration::from_millis(2000));

    let mut sub = connect5(&broker, &sub_id, false, 60);
    assert!(sub.connack.session_present);
    let long = sub.publish();
    assert_eq!(text(&long.payload), "long", "[MQTT-3.3.2-5]: short expired");
    let left = long.properties.and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(27..=29)),
        "[MQTT-3.3.2-6]: expiry left {left:?}"
    );
    let none = sub.publish();
    assert_eq!(text(&none.payload), "none");
    assert_eq!(
        none.properties.and_then(|p| p.message_expiry_interval),
        None
    );
    sub.no_publish(QUIET);
}

/// A QoS 1 message sent and not acknowledged has started onward delivery: when its
/// Message Expiry Interval passes before the client comes back, it is still resent with
/// its packet id [MQTT-4.4.0-1]; only copies not yet sent may be deleted [MQTT-3.3.2-5].
#[test]
fn v5_expired_in_flight_message_still_resent_mqtt_4_4_0_1_3_3_2_5() {
    let broker = Broker::start();
    let sub_id = id_on(1, "mei-inflight");
    let mut options = options5(broker.port, &sub_id);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(60))
        .set_manual_acks(true);
    let mut sub = connect5_with(options.clone());
    sub.sub_qos("mei-inflight/t", QoS5::AtLeastOnce);
    let mut publisher = connect5(&broker, &id_on(0, "mei-inflight-pub"), true, 0);
    let expiry = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher.pub_props("mei-inflight/t", QoS5::AtLeastOnce, false, "sent", expiry);
    let first = sub.publish();
    assert_eq!(text(&first.payload), "sent");
    sub.disconnect(); // without PUBACK
    thread::sleep(Duration::from_millis(1500));

    options.set_manual_acks(false);
    let mut sub = connect5_with(options);
    assert!(sub.connack.session_present);
    let again = sub.publish();
    assert_eq!(text(&again.payload), "sent");
    assert!(again.dup);
    assert_eq!(again.pkid, first.pkid);
    publisher.pub_acked("mei-inflight/t", QoS5::AtLeastOnce, false, "next");
    assert_eq!(text(&sub.publish().payload), "next");
}

/// Payload Format Indicator, Content Type, Response Topic, Correlation Data and User
/// Properties (in order) reach subscribers unaltered [MQTT-3.3.2-4], [MQTT-3.3.2-20],
/// [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-18]; on both shards.
#[test]
fn v5_publish_properties_forwarded_unaltered_mqtt_3_3_2_4_15_16_17_18_20() {
    let broker = Broker::start();
    let mut subs: Vec<v5::Mqtt> = (0..2)
        .map(|shard| {
            let mut sub = connect5(&broker, &id_on(shard, "props-sub"), true, 0);
            sub.sub_qos("props/t", QoS5::ExactlyOnce);
            sub
        })
        .collect();
    let mut publisher = connect5(&broker, &id_on(0, "props-pub"), true, 0);
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    };
    for qos in 0..3 {
        publisher.pub_props("props/t", qos5(qos), false, "{}", sent.clone());
    }
    for sub in &mut subs {
        for qos in 0..3 {
            let publish = sub.publish();
            assert_eq!(publish.qos, qos5(qos));
            assert_eq!(publish.properties.as_ref(), Some(&sent));
        }
    }
}

/// Receive Maximum 2 from the client: at most 2 unacknowledged QoS 1 PUBLISHes in flight
/// [MQTT-3.3.4-9]; each PUBACK lets the next one go.
#[test]
fn v5_client_receive_maximum_respected_mqtt_3_3_4_9() {
    let broker = Broker::start();
    let mut options = options5(broker.port, &id_on(1, "rm-sub"));
    options.set_receive_maximum(Some(2)).set_manual_acks(true);
    let mut sub = connect5_with(options);
    sub.sub_qos("rm/t", QoS5::AtLeastOnce);
    let mut publisher = connect5(&broker, &id_on(0, "rm-pub"), true, 0);
    for i in 0..5 {
        publisher.pub_acked("rm/t", QoS5::AtLeastOnce, false, &format!("m{i}"));
    }
    let mut in_flight: VecDeque<_> = sub.publishes(2).into();
    sub.no_publish(QUIET);
    let mut received = 2;
    while let Some(oldest) = in_flight.pop_front() {
        sub.client.ack(&oldest).unwrap();
        if received < 5 {
            let next = sub.publish();
            assert_eq!(text(&next.payload), format!("m{received}"));
            received += 1;
            in_flight.push_back(next);
            sub.no_publish(Duration::from_millis(200));
        }
    }
    assert_eq!(received, 5);
}

/// Maximum Packet Size from the client: a PUBLISH larger than it is not sent
/// [MQTT-3.1.2-24], and the broker goes on as if it had been [MQTT-3.1.2-25]: smaller
/// messages after it are delivered, even with a Receive Maximum of 1.
#[test]
fn v5_client_maximum_packet_size_mqtt_3_1_2_24_25() {
    let broker = Broker::start();
    let mut options = options5(broker.port, &id_on(1, "mps-sub"));
    options
        .set_max_packet_size(Some(128))
        .set_receive_maximum(Some(1));
    let mut sub = connect5_with(options);
    sub.sub_qos("mps/t", QoS5::AtLeastOnce);
    let mut publisher = connect5(&broker, &id_on(0, "mps-pub"), true, 0);
    let big = "x".repeat(500);
    for qos in [QoS5::AtMostOnce, QoS5::AtLeastOnce] {
        publisher.pub_acked("mps/t", qos, false, &big);
        publisher.pub_acked("mps/t", qos, false, "small");
        let publish = sub.publish();
        assert_eq!(text(&publish.payload), "small", "{qos:?}");
        sub.no_publish(Duration::from_millis(200));
    }
    // The client was never sent anything it would have to refuse.
    publisher.pub_acked("mps/t", QoS5::AtLeastOnce, false, "still here");
    assert_eq!(text(&sub.publish().payload), "still here");
}

// ---------------------------------------------------------------------------------------
// Shared subscriptions

/// A shared subscription's members on both shards (one 5.0, one 3.1.1 client) share the
/// messages: each goes to exactly one member, and both get some (section 4.8.2).
#[test]
fn shared_subscription_spreads_over_members_on_both_shards() {
    const COUNT: usize = 20;
    let broker = Broker::start();
    let mut first = connect5(&broker, &id_on(0, "share-a"), true, 0);
    first.sub_qos("$share/g/share/t", QoS5::AtLeastOnce);
    let mut second = connect4(&broker, &id_on(1, "share-b"), true);
    second.sub("$share/g/share/t", QoS::AtLeastOnce);
    let mut publisher = connect5(&broker, &id_on(0, "share-pub"), true, 0);
    for i in 0..COUNT {
        publisher.pub_acked("share/t", QoS5::AtLeastOnce, false, &i.to_string());
    }
    let mut got_first = Vec::new();
    let mut got_second = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got_first.len() + got_second.len() < COUNT && Instant::now() < deadline {
        if let Some(p) = first.try_publish(Duration::from_millis(20)) {
            got_first.push(text(&p.payload).parse::<usize>().unwrap());
        }
        if let Some(p) = second.try_publish(Duration::from_millis(20)) {
            got_second.push(text(&p.payload).parse::<usize>().unwrap());
        }
    }
    first.no_publish(QUIET);
    second.no_publish(Duration::from_millis(50));
    let mut all: Vec<usize> = got_first.iter().chain(&got_second).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..COUNT).collect::<Vec<_>>(),
        "each message exactly once"
    );
    assert!(
        !got_first.is_empty() && !got_second.is_empty(),
        "both members: {got_first:?} / {got_second:?}"
    );
}
