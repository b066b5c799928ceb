//! Many nodes acting as one broker through Kafka (`[cluster]`): separate ferrymq processes
//! on this machine sharing the test Kafka, reached directly and through HAProxy
//! (round-robin), with rumqttc and mosquitto clients.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Haproxy};
use common::rumqttc::{connect5_with, lossy, options5, qos5, v5};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;

fn subscriber(port: u16, id: &str, filter: &str, qos: u8) -> v5::Mqtt {
    let mut client = connect5_with(options5(port, id));
    client.client.subscribe(filter, qos5(qos)).unwrap();
    client.wait_suback();
    client
}

/// Every PUBLISH that arrives within `quiet` of the previous one, up to `count`.
fn collect(client: &mut v5::Mqtt, count: usize, first_wait: Duration) -> Vec<Publish> {
    let mut got = Vec::new();
    let mut wait = first_wait;
    while got.len() < count {
        match client.try_publish(wait) {
            Some(publish) => got.push(publish),
            None => break,
        }
        wait = Duration::from_secs(5);
    }
    got
}

fn payload(publish: &Publish) -> String {
    lossy(&publish.payload)
}

/// [MQTT-4.6.0-6]: a topic's messages reach each subscriber in the order they were
/// published; [MQTT-3.8.4-8] (5.0) / [MQTT-3.8.4-6] (3.1.1): at the lower of the published
/// QoS and the subscription's. Subscribers on two other nodes, QoS 0, 1 and 2 interleaved.
#[test]
fn a_publish_on_one_node_reaches_subscribers_on_the_others_with_its_qos_and_in_order() {
    let cluster = Cluster::start(3);
    let mut subscribers = vec![
        subscriber(cluster.port(1), "sub-1", "o/#", 2),
        subscriber(cluster.port(2), "sub-2", "o/#", 2),
    ];
    cluster.wait_remote_filters(0, 2);
    let publisher = connect5_with(options5(cluster.port(0), "pub-0"));
    let rounds = 50;
    for i in 0..rounds {
        for qos in 0..3u8 {
            publisher
                .client
                .publish(format!("o/q{qos}"), qos5(qos), false, format!("{qos}-{i}"))
                .unwrap();
        }
    }
    for subscriber in &mut subscribers {
        let got = collect(subscriber, 3 * rounds, Duration::from_secs(20));
        let mut per_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for publish in &got {
            let qos = match publish.qos {
                QoS::AtMostOnce => 0,
                QoS::AtLeastOnce => 1,
                QoS::ExactlyOnce => 2,
            };
            let topic = lossy(&publish.topic);
            assert_eq!(topic, format!("o/q{qos}"), "delivered at its published QoS");
            per_topic.entry(topic).or_default().push(payload(publish));
        }
        for qos in 0..3u8 {
            let expected: Vec<String> = (0..rounds).map(|i| format!("{qos}-{i}")).collect();
            assert_eq!(
                per_topic.get(&format!("o/q{qos}")),
                Some(&expected),
                "QoS {qos}: every message, in order"
            );
        }
    }
    assert!(cluster.metric(0, "messages_sent_total") >= 3 * rounds as u64);
    // Every record Kafka answered for gave its place back (the bound on what is in flight).
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.metric(0, "records_in_flight") > 0 {
        assert!(Instant::now() < deadline, "records still counted in flight");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cluster.metric(1, "messages_received_total") >= 3 * rounds as u64);
}

/// [MQTT-3.3.1-6]: a new subscription gets the retained message of a matching topic, on
/// whichever node it subscribes; [MQTT-3.3.1-10]: an empty retained PUBLISH clears it, on
/// every node.
#[test]
fn retained_messages_are_cluster_wide() {
    let cluster = Cluster::start(3);
    let mut publisher = connect5_with(options5(cluster.port(0), "r-pub"));
    publisher
        .client
        .publish("r/lamp", QoS::AtLeastOnce, true, "on")
        .unwrap();
    publisher.wait_acked(1);
    for node in [1, 2] {
        let mut late = subscriber(cluster.port(node), &format!("r-sub-{node}"), "r/#", 1);
        let publish = late.publish();
        assert_eq!(payload(&publish), "on");
        assert!(publish.retain, "sent for a new subscription: RETAIN set");
    }
    let mut other = connect5_with(options5(cluster.port(1), "r-clear"));
    other
        .client
        .publish("r/lamp", QoS::AtLeastOnce, true, "")
        .unwrap();
    other.wait_acked(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.metric(2, "retained_messages") > 0 {
        assert!(Instant::now() < deadline, "the clear did not reach node 2");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut after = subscriber(cluster.port(2), "r-after", "r/#", 1);
    after.no_publish(Duration::from_millis(500));
}

/// A cluster of one is how a single broker keeps its state across restarts: a retained
/// message acknowledged (PUBACK) before a kill -9 is there after it.
#[test]
fn a_cluster_of_one_keeps_its_retained_messages_through_kill_9() {
    let mut cluster = Cluster::start(1);
    let mut publisher = connect5_with(options5(cluster.port(0), "k-pub"));
    for i in 0..20 {
        publisher
            .client
            .publish(format!("k/{i}"), QoS::AtLeastOnce, true, format!("v{i}"))
            .unwrap();
    }
    for _ in 0..20 {
        publisher.wait_acked(1);
    }
    drop(publisher);
    cluster.kill9(0);
    cluster.restart(0);
    let mut subscriber = subscriber(cluster.port(0), "k-sub", "k/#", 1);
    let got: HashSet<String> = subscriber.publishes(20).iter().map(payload).collect();
    let expected: HashSet<String> = (0..20).map(|i| format!("v{i}")).collect();
    assert_eq!(got, expected);
}

/// [MQTT-4.8.2-2]: each message of a shared subscription goes to one member: members on
/// three nodes, none gets a message twice, none is left out.
#[test]
fn shared_subscriptions_give_each_message_to_one_member_in_the_cluster() {
    let cluster = Cluster::start(3);
    let mut members: Vec<v5::Mqtt> = (0..3)
        .map(|node| {
            subscriber(
                cluster.port(node),
                &format!("member-{node}"),
                "$share/workers/jobs/#",
                1,
            )
        })
        .collect();
    for node in 0..3 {
        cluster.wait_remote_filters(node, 2);
    }
    let publisher = connect5_with(options5(cluster.port(0), "jobs-pub"));
    let count = 90;
    for i in 0..count {
        publisher
            .client
            .publish("jobs/a", QoS::AtLeastOnce, false, format!("job-{i}"))
            .unwrap();
    }
    let mut seen = HashSet::new();
    let mut per_member = Vec::new();
    for member in &mut members {
        let got = collect(member, count, Duration::from_secs(10));
        per_member.push(got.len());
        for publish in got {
            assert!(seen.insert(payload(&publish)), "delivered twice");
        }
    }
    assert_eq!(seen.len(), count, "per member: {per_member:?}");
    assert!(
        per_member.iter().all(|&n| n > 0),
        "per member: {per_member:?}"
    );
}

/// [MQTT-3.1.2-8]: the will of a client that went away without DISCONNECT is published,
/// and subscribers on every node get it.
#[test]
fn a_will_reaches_subscribers_on_other_nodes() {
    let cluster = Cluster::start(2);
    let mut listener = subscriber(cluster.port(0), "will-listener", "wills/#", 1);
    cluster.wait_remote_filters(1, 1);
    let mut device = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &cluster.port(1).to_string()])
        .args(["-i", "will-device", "-t", "nothing", "-k", "60"])
        .args(["--will-topic", "wills/device", "--will-payload", "gone"])
        .args(["--will-qos", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    // Gone without DISCONNECT.
    device.kill().unwrap();
    let _ = device.wait();
    assert!(listener.got("gone", Duration::from_secs(10)));
}

/// Clients spread round-robin over three nodes by HAProxy publish to each other as on one
/// broker.
#[test]
fn clients_spread_by_haproxy_reach_each_other() {
    let cluster = Cluster::start(3);
    let haproxy = Haproxy::start(&[cluster.port(0), cluster.port(1), cluster.port(2)]);
    let mut subscribers: Vec<v5::Mqtt> = (0..3)
        .map(|i| subscriber(haproxy.port, &format!("lb-sub-{i}"), "lb/#", 1))
        .collect();
    for node in 0..3 {
        cluster.wait_remote_filters(node, 2);
    }
    let publisher = connect5_with(options5(haproxy.port, "lb-pub"));
    for i in 0..20 {
        publisher
            .client
            .publish("lb/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .unwrap();
    }
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for subscriber in &mut subscribers {
        let got: Vec<String> = collect(subscriber, 20, Duration::from_secs(10))
            .iter()
            .map(payload)
            .collect();
        assert_eq!(got, expected);
    }
    cluster.wait_members(3);
}

/// A persistent session follows its client round-robin through HAProxy, to another node on
/// every reconnect: its subscription stays, and what was published while it was away
/// comes with it, in order [MQTT-3.1.2-4], [MQTT-3.2.2-2], [MQTT-4.6.0-6].
#[test]
fn a_session_follows_its_client_from_node_to_node_and_misses_nothing() {
    let cluster = Cluster::start(3);
    let haproxy = Haproxy::start(&[cluster.port(0), cluster.port(1), cluster.port(2)]);
    let persistent = || {
        let mut options = options5(haproxy.port, "roamer");
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(300));
        options
    };
    let mut device = connect5_with(persistent());
    assert!(!device.connack.session_present);
    device.client.subscribe("roam/#", QoS::AtLeastOnce).unwrap();
    device.wait_suback();
    let mut publisher = connect5_with(options5(cluster.port(0), "roam-pub"));
    let mut sent = 0;
    for round in 0..6 {
        // Wherever the session is, node 0 must know it before publishing to it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.metric(0, "remote_filters") + node0_local(&cluster) != 1 {
            assert!(
                Instant::now() < deadline,
                "round {round}: interest not settled"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        device.disconnect();
        for _ in 0..10 {
            publisher
                .client
                .publish("roam/x", QoS::AtLeastOnce, false, format!("m{sent}"))
                .unwrap();
            publisher.wait_acked(1);
            sent += 1;
        }
        device = connect5_with(persistent());
        assert!(
            device.connack.session_present,
            "round {round}: [MQTT-3.2.2-2]"
        );
        let mut got: Vec<String> = Vec::new();
        while got.len() < 10 {
            let publish = device.publish();
            let text = payload(&publish);
            // QoS 1 may repeat one [MQTT-4.3.2]; never lose or reorder.
            if got.last() != Some(&text) {
                got.push(text);
            }
        }
        let expected: Vec<String> = (sent - 10..sent).map(|i| format!("m{i}")).collect();
        assert_eq!(got, expected, "round {round}");
    }
    let moved: u64 = (0..3)
        .map(|node| cluster.metric(node, "sessions_moved_in_total"))
        .sum();
    assert!(moved >= 5, "sessions moved: {moved}");
}

/// Whether node 0 itself holds a session subscribed to `roam/#` (then no other node is
/// meant to).
fn node0_local(cluster: &Cluster) -> u64 {
    let body = common::metrics::http_get(cluster.nodes[0].metrics_port, "/metrics");
    common::metrics::metric(&body, "subscriptions")
        .unwrap_or(0)
        .min(1)
}

/// [MQTT-3.1.4-3]: one connection per client id in the whole cluster. A CONNECT on node 1
/// closes the connection of the same client id on node 0 with DISCONNECT 0x8E within a
/// second, and its will goes out [MQTT-3.1.2-8].
#[test]
fn a_client_id_connected_on_one_node_is_taken_over_from_another() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, LastWill};
    use rumqttc::v5::{ConnectionError, StateError};
    let cluster = Cluster::start(3);
    let mut watcher = subscriber(cluster.port(2), "to-watcher", "to/#", 1);
    cluster.wait_remote_filters(0, 1);
    let mut options = options5(cluster.port(0), "twin");
    options.set_last_will(LastWill::new(
        "to/will",
        "taken",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let mut old = connect5_with(options);
    let started = Instant::now();
    let new = connect5_with(options5(cluster.port(1), "twin"));
    let closed = old.closed();
    let took = started.elapsed();
    assert!(
        matches!(
            &closed,
            ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code: DisconnectReasonCode::SessionTakenOver,
                ..
            })
        ),
        "{closed:?}"
    );
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert!(watcher.got("taken", Duration::from_secs(10)));
    assert!(!new.connack.session_present);
}

/// When a node dies (kill -9), the wills of its connected clients are published by the
/// cluster [MQTT-3.1.2-8]: the first living node notices the missing heartbeats (10 s)
/// and publishes them.
#[test]
fn the_wills_of_a_dead_nodes_clients_are_published_by_the_cluster() {
    let mut cluster = Cluster::start(2);
    let mut listener = subscriber(cluster.port(0), "dead-listener", "dead/#", 1);
    cluster.wait_remote_filters(1, 1);
    let mut device = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &cluster.port(1).to_string()])
        .args(["-i", "dead-device", "-t", "nothing", "-k", "600"])
        .args(["--will-topic", "dead/device", "--will-payload", "node gone"])
        .args(["--will-qos", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    cluster.kill9(1);
    assert!(listener.got("node gone", Duration::from_secs(30)));
    eprintln!("will published {:?} after the kill", killed.elapsed());
    let _ = device.kill();
    let _ = device.wait();
}

/// [MQTT-3.1.3-9]: a delayed will is not published when its client is back in time, on
/// another node too: the session moved with it.
#[test]
fn a_delayed_will_stays_unpublished_when_its_client_is_back_on_another_node() {
    let cluster = Cluster::start(3);
    let mut watcher = subscriber(cluster.port(2), "delay-watcher", "delay/#", 1);
    cluster.wait_remote_filters(0, 1);
    let device = |port: u16| {
        Command::new("mosquitto_sub")
            .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-i",
                "delay-device",
                "-c",
                "-x",
                "60",
                "-t",
                "nothing",
                "-k",
                "60",
            ])
            .args(["--will-topic", "delay/device", "--will-payload", "late"])
            .args(["-D", "will", "will-delay-interval", "3"])
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto_sub")
    };
    let mut first = device(cluster.port(0));
    std::thread::sleep(Duration::from_millis(500));
    // Gone without DISCONNECT: the will waits 3 s.
    first.kill().unwrap();
    let _ = first.wait();
    let mut second = device(cluster.port(1));
    watcher.no_publish(Duration::from_secs(5));
    let _ = second.kill();
    let _ = second.wait();
}

/// A Kafka source read by the nodes of a cluster in one consumer group: each record is read
/// by one node, and reaches the subscribers of every node.
#[test]
fn records_of_a_kafka_source_reach_subscribers_on_every_node() {
    use common::kafka::{bootstrap, create_topic, produce, unique, Outgoing};
    let topic = unique("cl-commands");
    create_topic(&bootstrap(), &topic, 2);
    let cluster = Cluster::start_with(
        2,
        &format!(
            "[[kafka.source]]\nname = \"commands\"\ntopics = [\"{topic}\"]\n\
             group = \"{topic}\"\nmqtt = \"cmd/{{key}}\"\nstart = \"earliest\"\n"
        ),
    );
    let mut subscribers: Vec<v5::Mqtt> = (0..2)
        .map(|node| subscriber(cluster.port(node), &format!("cmd-sub-{node}"), "cmd/#", 1))
        .collect();
    for node in 0..2 {
        cluster.wait_remote_filters(node, 1);
    }
    let records: Vec<Outgoing> = (0..20)
        .map(|i| Outgoing {
            partition: Some(i % 2),
            key: Some(format!("dev{i}").into_bytes()),
            payload: format!("c{i}").into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    produce(&bootstrap(), &topic, &records);
    for subscriber in &mut subscribers {
        let got: HashSet<String> = collect(subscriber, 20, Duration::from_secs(30))
            .iter()
            .map(payload)
            .collect();
        let expected: HashSet<String> = (0..20).map(|i| format!("c{i}")).collect();
        assert_eq!(got, expected);
    }
}

/// [MQTT-3.1.2-23]: a session lives for its Session Expiry Interval after its connection
/// closes, on whichever node the client comes back to: back in time on another node, it is
/// there (Session Present 1); back later, it is gone (Session Present 0).
#[test]
fn session_expiry_holds_across_nodes() {
    let cluster = Cluster::start(2);
    let connect = |node: usize, id: &str| {
        let mut options = options5(cluster.port(node), id);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(2));
        connect5_with(options)
    };
    for id in ["expiry-early", "expiry-late"] {
        let mut first = connect(0, id);
        first.client.subscribe("exp/#", QoS::AtLeastOnce).unwrap();
        first.wait_suback();
        first.disconnect();
    }
    std::thread::sleep(Duration::from_millis(500));
    let early = connect(1, "expiry-early");
    assert!(early.connack.session_present, "back within the interval");
    std::thread::sleep(Duration::from_secs(3));
    let late = connect(1, "expiry-late");
    assert!(!late.connack.session_present, "back after the interval");
}

/// Local traffic stays cheap: a message whose subscribers are all on the publishing node
/// never goes to Kafka (nor waits for it); one that another node wants does.
#[test]
fn only_messages_other_nodes_want_go_through_kafka() {
    let cluster = Cluster::start(2);
    let _remote = subscriber(cluster.port(1), "far-sub", "far/#", 1);
    cluster.wait_remote_filters(0, 1);
    let mut near = subscriber(cluster.port(0), "near-sub", "near/#", 1);
    let mut publisher = connect5_with(options5(cluster.port(0), "near-pub"));
    for i in 0..10 {
        publisher
            .client
            .publish("near/x", QoS::AtLeastOnce, false, format!("n{i}"))
            .unwrap();
        publisher.wait_acked(1);
    }
    assert_eq!(near.publishes(10).len(), 10);
    assert_eq!(cluster.metric(0, "messages_sent_total"), 0, "local only");
    publisher
        .client
        .publish("far/x", QoS::AtLeastOnce, false, "f")
        .unwrap();
    publisher.wait_acked(1);
    assert_eq!(cluster.metric(0, "messages_sent_total"), 1, "for node 1");
}
