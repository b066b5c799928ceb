//! The broker driven by the Debian `mosquitto_pub` / `mosquitto_sub` clients (2.0.x, in
//! /usr/bin), over MQTT 3.1.1 and 5.0: QoS 0/1/2 end to end across shards, wildcards and
//! `$` topics, retained messages, wills (with 5.0 Will Delay), `$SYS`, persistent
//! sessions, shared subscriptions, SIGTERM, configuration errors and the connect timeout.
//!
//! Every wait is bounded. A subscriber runs under `stdbuf -oL` with `-d` so its debug lines
//! (CONNACK, SUBACK, PUBLISH ...) arrive as they happen; the tests publish only after the
//! subscriber has printed "received SUBACK", and the broker sends SUBACK only once every
//! shard routes to the new subscription. Client ids are chosen with the broker's own
//! client id → shard hash (FNV-1a mod shard count) so that publishers and subscribers land
//! on the shards a test wants.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{id_on, run_bounded, shard_count, shard_of, Broker};

/// How long any one client may take to do its part.
const STEP: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    V311,
    V5,
}

impl V {
    fn arg(self) -> &'static str {
        match self {
            V::V311 => "mqttv311",
            V::V5 => "mqttv5",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            V::V311 => "v311",
            V::V5 => "v5",
        }
    }
}

/// Shards the harness starts: two where this process may use two CPUs (see
/// `common::cores_arg`).

#[test]
fn id_on_picks_the_wanted_shard() {
    for shard in 0..shard_count() {
        for prefix in ["a", "sub", "publisher"] {
            assert_eq!(shard_of(&id_on(shard, prefix)), shard);
        }
    }
}

/// One line a client printed.
#[derive(Debug, Clone)]
struct Line {
    stderr: bool,
    text: String,
}

/// Lines mosquitto prints with `-d` (and on errors), as opposed to received messages.
fn is_debug(line: &Line) -> bool {
    line.stderr
        || line.text.starts_with("Client ")
        || line.text.starts_with("Subscribed (mid:")
        || line.text.starts_with("Received DISCONNECT")
}

/// Reads `child`'s stdout and stderr, line by line, into one channel.
fn collect_output(child: &mut Child) -> Receiver<Line> {
    let (tx, rx) = channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        for text in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(Line {
                stderr: false,
                text,
            });
        }
    });
    std::thread::spawn(move || {
        for text in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(Line { stderr: true, text });
        }
    });
    rx
}

/// A running `mosquitto_sub -d`, killed when dropped.
struct Sub {
    child: Child,
    rx: Receiver<Line>,
    lines: Vec<Line>,
    name: String,
}

impl Sub {
    /// `mosquitto_sub -d -V <v> -h 127.0.0.1 -p <port> <args>`, line-buffered.
    fn spawn(broker: &Broker, v: V, args: &[&str]) -> Sub {
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg("/usr/bin/mosquitto_sub")
            .args(["-d", "-V", v.arg(), "-h", "127.0.0.1", "-p"])
            .arg(broker.port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run stdbuf mosquitto_sub");
        let rx = collect_output(&mut child);
        Sub {
            child,
            rx,
            lines: Vec::new(),
            name: format!("mosquitto_sub {} {}", v.arg(), args.join(" ")),
        }
    }

    /// Spawns and waits for the SUBACK.
    fn subscribed(broker: &Broker, v: V, args: &[&str]) -> Sub {
        let mut sub = Sub::spawn(broker, v, args);
        sub.wait_subscribed();
        sub
    }

    /// Takes what arrived, waiting up to `until` for one more line.
    fn pump(&mut self, until: Instant) -> bool {
        let wait = until.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(line) => {
                self.lines.push(line);
                while let Ok(line) = self.rx.try_recv() {
                    self.lines.push(line);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                if Instant::now() < until {
                    // Output closed: nothing more will come.
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                }
                false
            }
        }
    }

    /// Waits up to `within` until a line satisfies `found`; whether one did.
    fn wait_for(&mut self, within: Duration, found: impl Fn(&Line) -> bool) -> bool {
        let until = Instant::now() + within;
        loop {
            if self.lines.iter().any(&found) {
                return true;
            }
            if Instant::now() >= until || !self.pump(until) {
                return self.lines.iter().any(&found);
            }
        }
    }

    fn wait_subscribed(&mut self) {
        let ok = self.wait_for(STEP, |l| l.text.contains("received SUBACK"));
        assert!(ok, "{}: no SUBACK; output:\n{}", self.name, self.dump());
    }

    /// Received messages: the non-debug stdout lines (`-v` or `-F` output).
    fn messages(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| !is_debug(l))
            .map(|l| l.text.clone())
            .collect()
    }

    /// Waits until `count` messages arrived (or STEP passed); returns all so far.
    fn wait_messages(&mut self, count: usize) -> Vec<String> {
        let until = Instant::now() + STEP;
        while self.messages().len() < count && Instant::now() < until {
            self.pump(until);
        }
        self.messages()
    }

    /// Collects everything that arrives within `period`.
    fn settle(&mut self, period: Duration) {
        let until = Instant::now() + period;
        while Instant::now() < until {
            self.pump(until);
        }
    }

    /// Waits for the process to exit by itself (within STEP), reading all its output.
    fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Drain what the reader threads still hold.
                while self.pump(Instant::now() + Duration::from_millis(200)) {}
                return status;
            }
            assert!(
                Instant::now() < until,
                "{} did not exit; output:\n{}",
                self.name,
                self.dump()
            );
            self.pump((Instant::now() + Duration::from_millis(20)).min(until));
        }
    }

    /// SIGKILL: the client vanishes without DISCONNECT.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn dump(&self) -> String {
        self.lines
            .iter()
            .map(|l| format!("{}{}\n", if l.stderr { "E: " } else { "" }, l.text))
            .collect()
    }

    /// Lines such as "Client x received PUBLISH (d0, q1, r0, m1, 'topic', ...".
    fn received_publishes(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| l.text.contains(" received PUBLISH ("))
            .map(|l| l.text.clone())
            .collect()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub -V <v> -h 127.0.0.1 -p <port> -i <id> <args>`; must succeed.
fn publish(broker: &Broker, v: V, id: &str, args: &[&str]) {
    publish_lines(broker, v, id, args, None);
}

/// As `publish`; with `lines`, `-l` sends each line as one message on one connection.
fn publish_lines(broker: &Broker, v: V, id: &str, args: &[&str], lines: Option<&str>) {
    let mut command = Command::new("/usr/bin/mosquitto_pub");
    command
        .args(["-V", v.arg(), "-h", "127.0.0.1", "-p"])
        .arg(broker.port.to_string())
        .args(["-i", id])
        .args(args);
    if lines.is_some() {
        command.arg("-l");
    }
    let (status, out, err) = run_bounded(command, lines, STEP);
    assert!(
        status.success(),
        "mosquitto_pub {} {args:?} failed: {status}\n{out}{err}",
        v.arg()
    );
}

// ---------------------------------------------------------------------------------------
// Publish / subscribe, QoS 0, 1, 2.

/// For every (subscriber shard, publisher shard) pair and every QoS: three messages on one
/// connection arrive once each, in order, with topic and payload as sent, at the QoS
/// published (the subscription grants QoS 2).
///
/// [MQTT-4.3.1-1], [MQTT-4.3.2-1], [MQTT-4.3.3-1]: the QoS 0/1/2 flows; the delivered QoS
/// is min(published, granted) — 3.1.1 [MQTT-3.8.4-6], 5.0 [MQTT-3.8.4-8]; [MQTT-4.6.0-6]:
/// topics are ordered; [MQTT-3.3.2-3]: the topic name is the one published.
fn pubsub_all_qos_across_shards(v: V) {
    let broker = Broker::start();
    for sub_shard in 0..2 {
        for pub_shard in 0..2 {
            for qos in 0..=2u8 {
                let topic = format!("pubsub/{}/q{qos}/s{sub_shard}p{pub_shard}", v.tag());
                let sub_id = id_on(sub_shard, &format!("sub-{}-{qos}", v.tag()));
                let pub_id = id_on(pub_shard, &format!("pub-{}-{qos}", v.tag()));
                let mut sub = Sub::subscribed(
                    &broker,
                    v,
                    &[
                        "-i", &sub_id, "-t", &topic, "-q", "2", "-v", "-C", "3", "-W", "5",
                    ],
                );
                let payloads = [
                    format!("first message qos {qos}"),
                    "second: ünïcödé / + # $".to_string(),
                    format!("third {}", "x".repeat(300)),
                ];
                let qos_arg = qos.to_string();
                publish_lines(
                    &broker,
                    v,
                    &pub_id,
                    &["-t", &topic, "-q", &qos_arg],
                    Some(&format!("{}\n", payloads.join("\n"))),
                );
                let status = sub.wait_exit();
                assert!(status.success(), "{}: {status}\n{}", sub.name, sub.dump());
                let expected: Vec<String> =
                    payloads.iter().map(|p| format!("{topic} {p}")).collect();
                assert_eq!(sub.messages(), expected, "output:\n{}", sub.dump());
                let publishes = sub.received_publishes();
                assert_eq!(publishes.len(), 3, "output:\n{}", sub.dump());
                for line in publishes {
                    assert!(
                        line.contains(&format!("(d0, q{qos}, r0,")),
                        "delivered at another QoS than {qos}: {line}"
                    );
                }
            }
        }
    }
    assert!(broker.stop().success());
}

#[test]
fn pubsub_qos_0_1_2_across_shards_v311() {
    pubsub_all_qos_across_shards(V::V311);
}

#[test]
fn pubsub_qos_0_1_2_across_shards_v5() {
    pubsub_all_qos_across_shards(V::V5);
}

/// A subscription granted QoS 0 or 1 gets a QoS 2 publication downgraded, and a QoS 0
/// subscriber and a QoS 2 subscriber on the other shard each get one copy at their QoS:
/// 3.1.1 [MQTT-3.8.4-6], 5.0 [MQTT-3.8.4-8].
fn downgrade_to_granted_qos(v: V) {
    let broker = Broker::start();
    let topic = format!("grant/{}", v.tag());
    let mut subs: Vec<(u8, Sub)> = (0..=2u8)
        .map(|qos| {
            let id = id_on(qos as usize, &format!("grant-{}-{qos}", v.tag()));
            let q = qos.to_string();
            let args = [
                "-i", &id, "-t", &topic, "-q", &q, "-v", "-C", "1", "-W", "5",
            ];
            (qos, Sub::subscribed(&broker, v, &args))
        })
        .collect();
    publish(
        &broker,
        v,
        &id_on(1, "grant-pub"),
        &["-t", &topic, "-q", "2", "-m", "m"],
    );
    for (qos, sub) in &mut subs {
        assert!(sub.wait_exit().success(), "{}", sub.dump());
        assert_eq!(sub.messages(), [format!("{topic} m")]);
        let publishes = sub.received_publishes();
        assert_eq!(publishes.len(), 1, "{}", sub.dump());
        assert!(
            publishes[0].contains(&format!("(d0, q{qos}, r0,")),
            "{publishes:?}"
        );
    }
}

#[test]
fn qos_downgraded_to_granted_v311() {
    downgrade_to_granted_qos(V::V311);
}

#[test]
fn qos_downgraded_to_granted_v5() {
    downgrade_to_granted_qos(V::V5);
}

// ---------------------------------------------------------------------------------------
// Wildcards and `$` topics.

/// `+` matches one level [MQTT-4.7.1-3], `#` any number including the parent level
/// [MQTT-4.7.1-2]; a message matching two subscriptions of one client is sent once
/// (5.0 [MQTT-3.3.4-2]; 3.1.1 lets a server send it once too).
fn wildcards(v: V) {
    let broker = Broker::start();
    let t = v.tag();
    let plus = format!("wild/{t}/+/temp");
    let hash = format!("wild/{t}/#");
    let all_plus = format!("+/{t}/+/+");
    let both = format!("wild/{t}/room1/#");
    let mut s_plus = Sub::subscribed(&broker, v, &["-i", &id_on(0, "w-plus"), "-t", &plus, "-v"]);
    let mut s_hash = Sub::subscribed(&broker, v, &["-i", &id_on(1, "w-hash"), "-t", &hash, "-v"]);
    let mut s_all = Sub::subscribed(
        &broker,
        v,
        &["-i", &id_on(1, "w-all"), "-t", &all_plus, "-v"],
    );
    // One client, two overlapping filters.
    let mut s_two = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id_on(0, "w-two"),
            "-t",
            &both,
            "-t",
            &plus,
            "-v",
            "-q",
            "1",
        ],
    );
    // One publisher id: one shard, so the messages keep their order everywhere.
    let publisher = id_on(0, "w-pub");
    let topics = [
        format!("wild/{t}/room1/temp"),
        format!("wild/{t}/room1/temp/raw"),
        format!("wild/{t}/room2/temp"),
        format!("wild/{t}"),
        format!("wild/{t}/"),
        format!("wild/{t}//temp"),
        format!("other/{t}/room1/temp"),
        format!("wild/{t}/end"),
    ];
    for (n, topic) in topics.iter().enumerate() {
        publish(
            &broker,
            v,
            &publisher,
            &["-t", topic, "-q", "1", "-m", &format!("m{n}")],
        );
    }
    let expect = |indexes: &[usize]| -> Vec<String> {
        indexes
            .iter()
            .map(|&n| format!("{} m{n}", topics[n]))
            .collect()
    };
    // `+` matches an empty level too ("wild/t//temp").
    let cases = [
        (&mut s_plus, expect(&[0, 2, 5])),
        (&mut s_hash, expect(&[0, 1, 2, 3, 4, 5, 7])),
        (&mut s_all, expect(&[0, 2, 5, 6])),
        (&mut s_two, expect(&[0, 1, 2, 5])),
    ];
    for (sub, expected) in cases {
        sub.wait_messages(expected.len());
        sub.settle(Duration::from_millis(300));
        assert_eq!(sub.messages(), expected, "{}:\n{}", sub.name, sub.dump());
    }
    assert!(broker.stop().success());
}

#[test]
fn wildcards_plus_and_hash_v311() {
    wildcards(V::V311);
}

#[test]
fn wildcards_plus_and_hash_v5() {
    wildcards(V::V5);
}

/// [MQTT-4.7.2-1]: filters starting with `#` or `+` do not match topics starting with
/// `$` ($SYS, published by the broker, and a client's `$app/...`), while `$SYS/#` and
/// `$app/#` do.
#[test]
fn dollar_topics_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let broker = Broker::start_with(&["--sys-interval-secs", "1"]);
    let mut hash = Sub::subscribed(
        &broker,
        V::V311,
        &["-i", &id_on(0, "d-hash"), "-t", "#", "-v"],
    );
    let mut plus = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(1, "d-plus"),
            "-t",
            "+/broker/#",
            "-t",
            "+/x",
            "-v",
        ],
    );
    let mut sys = Sub::subscribed(
        &broker,
        V::V5,
        &["-i", &id_on(1, "d-sys"), "-t", "$SYS/#", "-v"],
    );
    let mut app = Sub::subscribed(
        &broker,
        V::V311,
        &["-i", &id_on(0, "d-app"), "-t", "$app/#", "-v"],
    );
    publish(
        &broker,
        V::V5,
        &id_on(1, "d-pub"),
        &["-t", "$app/x", "-q", "1", "-m", "dollar"],
    );
    assert_eq!(app.wait_messages(1), ["$app/x dollar"], "{}", app.dump());
    // Two $SYS rounds reach `$SYS/#`, so the broker did publish them meanwhile.
    let rounds = |s: &Sub| {
        s.messages()
            .iter()
            .filter(|m| m.starts_with("$SYS/broker/uptime "))
            .count()
    };
    let until = Instant::now() + STEP;
    while rounds(&sys) < 2 && Instant::now() < until {
        sys.pump(until);
    }
    assert!(rounds(&sys) >= 2, "no $SYS rounds:\n{}", sys.dump());
    publish(
        &broker,
        V::V5,
        &id_on(1, "d-pub"),
        &["-t", "plain/x", "-q", "1", "-m", "end"],
    );
    hash.wait_messages(1);
    plus.wait_messages(1);
    hash.settle(Duration::from_millis(200));
    plus.settle(Duration::from_millis(200));
    assert_eq!(hash.messages(), ["plain/x end"], "{}", hash.dump());
    assert_eq!(plus.messages(), ["plain/x end"], "{}", plus.dump());
    assert!(broker.stop().success());
}

// ---------------------------------------------------------------------------------------
// Retained messages.

/// Set, replace, and delete (empty payload) retained messages from a publisher on shard
/// 0; subscribers on either shard then get the latest one with RETAIN 1 and nothing for
/// the deleted topic, and live messages with RETAIN 0.
///
/// 3.1.1: [MQTT-3.3.1-5] store, [MQTT-3.3.1-6] sent on subscribe, [MQTT-3.3.1-8] RETAIN 1
/// then, [MQTT-3.3.1-9] RETAIN 0 to established subscriptions, [MQTT-3.3.1-10] an empty
/// retained message is delivered and removes the stored one, [MQTT-3.3.1-11] and is not
/// stored. 5.0: [MQTT-3.3.1-5] store/replace, [MQTT-3.3.1-6] empty removes,
/// [MQTT-3.3.1-7] not stored, [MQTT-3.3.1-9] sent on subscribe (Retain Handling 0),
/// [MQTT-3.3.1-12] RETAIN 0 when Retain As Published is 0.
fn retained(v: V) {
    let broker = Broker::start();
    let t = v.tag();
    let filter = format!("ret/{t}/#");
    let a = format!("ret/{t}/a");
    let b = format!("ret/{t}/b");
    let c = format!("ret/{t}/c");
    let format = ["-F", "%r %t %p"];
    // Established before anything is retained: sees every publication, RETAIN 0.
    let mut live = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id_on(1, "r-live"),
            "-t",
            &filter,
            "-q",
            "1",
            format[0],
            format[1],
        ],
    );
    let publisher = id_on(0, "r-pub");
    publish(
        &broker,
        v,
        &publisher,
        &["-t", &a, "-q", "1", "-r", "-m", "one"],
    );
    publish(
        &broker,
        v,
        &publisher,
        &["-t", &a, "-q", "1", "-r", "-m", "two"],
    );
    publish(
        &broker,
        v,
        &publisher,
        &["-t", &b, "-q", "1", "-r", "-m", "bee"],
    );
    publish(&broker, v, &publisher, &["-t", &b, "-q", "1", "-r", "-n"]);
    publish(
        &broker,
        v,
        &publisher,
        &["-t", &c, "-q", "0", "-r", "-m", "sea"],
    );
    let expected_live = [
        format!("0 {a} one"),
        format!("0 {a} two"),
        format!("0 {b} bee"),
        format!("0 {b} "),
        format!("0 {c} sea"),
    ];
    assert_eq!(live.wait_messages(5), expected_live, "{}", live.dump());

    // New subscribers on both shards: the retained messages right after SUBACK, then a live
    // message published after the SUBACK.
    for shard in 0..2 {
        let mut sub = Sub::subscribed(
            &broker,
            v,
            &[
                "-i",
                &id_on(shard, &format!("r-new-{t}")),
                "-t",
                &filter,
                "-q",
                "1",
                "-C",
                "3",
                "-W",
                "5",
                format[0],
                format[1],
            ],
        );
        publish(&broker, v, &publisher, &["-t", &a, "-q", "1", "-m", "live"]);
        assert!(sub.wait_exit().success(), "{}", sub.dump());
        let messages = sub.messages();
        assert_eq!(messages.len(), 3, "{}", sub.dump());
        let mut retained = messages[..2].to_vec();
        retained.sort();
        assert_eq!(
            retained,
            [format!("1 {a} two"), format!("1 {c} sea")],
            "shard {shard}:\n{}",
            sub.dump()
        );
        assert_eq!(messages[2], format!("0 {a} live"), "{}", sub.dump());
    }
    // A filter matching only the deleted topic gets nothing but the live message.
    let mut only_b = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id_on(1, "r-b"),
            "-t",
            &b,
            "-C",
            "1",
            "-W",
            "5",
            format[0],
            format[1],
        ],
    );
    publish(&broker, v, &publisher, &["-t", &b, "-m", "after"]);
    assert!(only_b.wait_exit().success(), "{}", only_b.dump());
    assert_eq!(only_b.messages(), [format!("0 {b} after")]);
    assert!(broker.stop().success());
}

#[test]
fn retained_set_replace_delete_across_shards_v311() {
    retained(V::V311);
}

#[test]
fn retained_set_replace_delete_across_shards_v5() {
    retained(V::V5);
}

// ---------------------------------------------------------------------------------------
// Wills.

/// A client killed without DISCONNECT has its will published [MQTT-3.1.2-8]; one that
/// sends DISCONNECT has its will discarded [MQTT-3.1.2-10] (same ids in 3.1.1 and 5.0).
/// The will's client and the watcher are on different shards.
fn will_on_abnormal_close_only(v: V) {
    let broker = Broker::start();
    let t = v.tag();
    let mut watcher = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id_on(1, "will-watch"),
            "-t",
            &format!("will/{t}/#"),
            "-q",
            "1",
            "-v",
        ],
    );
    let abnormal_topic = format!("will/{t}/abnormal");
    let mut doomed = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id_on(0, "will-doomed"),
            "-t",
            "nothing/here",
            "--will-topic",
            &abnormal_topic,
            "--will-payload",
            "gone away",
            "--will-qos",
            "1",
        ],
    );
    doomed.kill9();
    assert_eq!(
        watcher.wait_messages(1),
        [format!("{abnormal_topic} gone away")],
        "{}",
        watcher.dump()
    );

    // -E: exit (with DISCONNECT) once subscribed.
    let polite_id = id_on(0, "will-polite");
    let mut polite = Sub::spawn(
        &broker,
        v,
        &[
            "-i",
            &polite_id,
            "-t",
            "nothing/here",
            "-E",
            "--will-topic",
            &format!("will/{t}/normal"),
            "--will-payload",
            "must not be sent",
        ],
    );
    assert!(polite.wait_exit().success(), "{}", polite.dump());
    assert!(polite
        .lines
        .iter()
        .any(|l| l.text.contains("sending DISCONNECT")));
    // Give the broker time to settle the closed connection, then a marker from the same
    // shard as the polite client.
    std::thread::sleep(Duration::from_millis(300));
    let end = format!("will/{t}/end");
    publish(
        &broker,
        v,
        &id_on(0, "will-pub"),
        &["-t", &end, "-q", "1", "-m", "end"],
    );
    watcher.wait_messages(2);
    watcher.settle(Duration::from_millis(200));
    assert_eq!(
        watcher.messages(),
        [format!("{abnormal_topic} gone away"), format!("{end} end")],
        "{}",
        watcher.dump()
    );
    assert!(broker.stop().success());
}

#[test]
fn will_on_abnormal_close_not_after_disconnect_v311() {
    will_on_abnormal_close_only(V::V311);
}

#[test]
fn will_on_abnormal_close_not_after_disconnect_v5() {
    will_on_abnormal_close_only(V::V5);
}

/// A delayed will belongs to the connection that left it. The client is killed with a
/// 2 s Will Delay, comes back at once with Clean Start (a new session, no will) and leaves
/// again with DISCONNECT, its new session kept (-x 60): it reconnected within the delay,
/// so the will must never go [MQTT-3.1.3-9], also when the old delay passes while the new
/// session sits without a connection.
#[test]
fn will_delay_of_a_replaced_session_never_goes_v5_mqtt_3_1_3_9() {
    let broker = Broker::start();
    let mut watcher = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(0, "wds-watch"),
            "-t",
            "wdstale/#",
            "-q",
            "1",
            "-v",
        ],
    );
    let id = id_on(1, "wds-client");
    let mut willing = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id,
            "-c",
            "-x",
            "60",
            "-t",
            "nothing/here",
            "--will-topic",
            "wdstale/will",
            "--will-payload",
            "stale",
            "-D",
            "will",
            "will-delay-interval",
            "2",
        ],
    );
    willing.kill9();
    let mut again = Sub::spawn(
        &broker,
        V::V5,
        &["-i", &id, "-x", "60", "-t", "nothing/here", "-E"],
    );
    assert!(again.wait_exit().success(), "{}", again.dump());
    watcher.settle(Duration::from_secs(3));
    assert_eq!(
        watcher.messages(),
        Vec::<String>::new(),
        "{}",
        watcher.dump()
    );
    assert!(broker.stop().success());
}

/// 5.0 Will Delay Interval: the will goes out after the delay, not at the close
/// (3.1.3.2.2), and not at all when the client reconnects to its session within the
/// delay [MQTT-3.1.3-9].
#[test]
fn will_delay_interval_v5_mqtt_3_1_3_9() {
    let broker = Broker::start();
    let mut watcher = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(0, "wd-watch"),
            "-t",
            "wdelay/#",
            "-q",
            "1",
            "-v",
        ],
    );
    let willing = |id: &str, topic: &str| {
        Sub::subscribed(
            &broker,
            V::V5,
            &[
                "-i",
                id,
                "-c",
                "-x",
                "60",
                "-t",
                "nothing/here",
                "--will-topic",
                topic,
                "--will-payload",
                "late",
                "-D",
                "will",
                "will-delay-interval",
                "2",
            ],
        )
    };
    let delayed_id = id_on(1, "wd-delayed");
    let back_id = id_on(0, "wd-back");
    let mut delayed = willing(&delayed_id, "wdelay/delayed");
    let mut back = willing(&back_id, "wdelay/back");
    delayed.kill9();
    back.kill9();
    let killed = Instant::now();
    // Back within the delay, to the kept session (-c), without a will.
    let mut again = Sub::spawn(
        &broker,
        V::V5,
        &["-i", &back_id, "-c", "-x", "60", "-t", "nothing/here", "-E"],
    );
    assert!(again.wait_exit().success(), "{}", again.dump());
    // Nothing in the first second.
    watcher.settle(Duration::from_secs(1));
    assert_eq!(
        watcher.messages(),
        Vec::<String>::new(),
        "{}",
        watcher.dump()
    );
    assert_eq!(
        watcher.wait_messages(1),
        ["wdelay/delayed late"],
        "{}",
        watcher.dump()
    );
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(1800) && after < Duration::from_millis(4000),
        "will sent {after:?} after the close, delay 2 s"
    );
    // The reconnected client's will never comes: wait past its delay, then a marker.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(killed.elapsed()));
    publish(
        &broker,
        V::V5,
        &id_on(0, "wd-pub"),
        &["-t", "wdelay/end", "-q", "1", "-m", "end"],
    );
    watcher.wait_messages(2);
    watcher.settle(Duration::from_millis(200));
    assert_eq!(
        watcher.messages(),
        ["wdelay/delayed late", "wdelay/end end"],
        "{}",
        watcher.dump()
    );
    assert!(broker.stop().success());
}

// ---------------------------------------------------------------------------------------
// $SYS.

/// With `--sys-interval-secs 1` the broker publishes `$SYS/broker/...` every second, as
/// retained messages: a subscriber that comes later gets them at once with RETAIN 1.
#[test]
fn sys_topics_are_published_and_retained() {
    const TOPICS: [&str; 5] = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/shards",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
    ];
    let broker = Broker::start_with(&["--sys-interval-secs", "1"]);
    let mut early = Sub::subscribed(
        &broker,
        V::V311,
        &["-i", &id_on(0, "sys-early"), "-t", "$SYS/broker/#", "-v"],
    );
    // A whole round published while `early` is subscribed: RETAIN 0 [MQTT-3.3.1-9].
    let live_round = |s: &Sub| {
        let publishes = s.received_publishes();
        TOPICS.iter().all(|topic| {
            publishes
                .iter()
                .any(|l| l.contains(", r0,") && l.contains(&format!("'{topic}'")))
        })
    };
    let until = Instant::now() + STEP;
    while !live_round(&early) && Instant::now() < until {
        early.pump(until);
    }
    assert!(live_round(&early), "{}", early.dump());
    let messages = early.messages();
    let value = |topic: &str| {
        messages
            .iter()
            .rev()
            .find_map(|m| m.strip_prefix(&format!("{topic} ")))
            .map(str::to_string)
    };
    assert_eq!(
        value("$SYS/broker/version").as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "{}",
        early.dump()
    );
    assert_eq!(value("$SYS/broker/shards"), Some(shard_count().to_string()));
    assert!(value("$SYS/broker/uptime").is_some_and(|u| u.ends_with(" seconds")));
    // `early` itself is connected.
    let connected: u64 = value("$SYS/broker/clients/connected")
        .unwrap()
        .parse()
        .unwrap();
    assert!(connected >= 1, "{}", early.dump());

    // A 5.0 subscriber on the other shard gets the retained copies, RETAIN 1
    // [MQTT-3.3.1-9] (5.0), right after its SUBACK.
    let mut late = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(1, "sys-late"),
            "-t",
            "$SYS/broker/#",
            "-F",
            "%r %t %p",
        ],
    );
    let retained_all = |s: &Sub| {
        let messages = s.messages();
        TOPICS.iter().all(|topic| {
            messages
                .iter()
                .any(|m| m.starts_with(&format!("1 {topic} ")))
        })
    };
    let until = Instant::now() + STEP;
    while !retained_all(&late) && Instant::now() < until {
        late.pump(until);
    }
    assert!(retained_all(&late), "{}", late.dump());
    let version = format!("1 $SYS/broker/version {}", env!("CARGO_PKG_VERSION"));
    assert!(late.messages().contains(&version), "{}", late.dump());
    assert!(broker.stop().success());
}

// ---------------------------------------------------------------------------------------
// Persistent sessions.

/// Clean Session 0 / Clean Start 0: the subscription and the QoS 1/2 messages published
/// while the client was away are kept and delivered, in order, when it comes back
/// (3.1.1 [MQTT-3.1.2-4], [MQTT-3.1.2-5]; 5.0 [MQTT-3.1.2-5], [MQTT-4.1.0-1]). A clean
/// connect discards the session (3.1.1 [MQTT-3.1.2-6]; 5.0 [MQTT-3.1.2-4]).
fn persistent_session(v: V) {
    let broker = Broker::start();
    let t = v.tag();
    let topic = format!("sess/{t}");
    let sub_id = id_on(1, &format!("sess-{t}"));
    let mut first = Sub::spawn(
        &broker,
        v,
        &["-i", &sub_id, "-c", "-q", "1", "-t", &topic, "-E"],
    );
    assert!(first.wait_exit().success(), "{}", first.dump());
    let publisher = id_on(0, "sess-pub");
    publish_lines(
        &broker,
        v,
        &publisher,
        &["-t", &topic, "-q", "1"],
        Some("one\ntwo\n"),
    );
    publish(
        &broker,
        v,
        &publisher,
        &["-t", &topic, "-q", "2", "-m", "three"],
    );
    // QoS 0 messages for an absent client may be dropped; not asserted either way, so
    // none is sent here.
    let mut back = Sub::spawn(
        &broker,
        v,
        &[
            "-i", &sub_id, "-c", "-q", "1", "-t", &topic, "-v", "-C", "3", "-W", "5",
        ],
    );
    assert!(back.wait_exit().success(), "{}", back.dump());
    assert_eq!(
        back.messages(),
        [
            format!("{topic} one"),
            format!("{topic} two"),
            format!("{topic} three")
        ],
        "{}",
        back.dump()
    );
    // Queued messages come at the subscription's QoS 1, even the QoS 2 one.
    assert!(back
        .received_publishes()
        .iter()
        .all(|l| l.contains(", q1,")));

    // Away again with one message waiting, then a clean connect: the message is gone
    // with the session; only what is published after the new SUBACK arrives.
    publish(
        &broker,
        v,
        &publisher,
        &["-t", &topic, "-q", "1", "-m", "stale"],
    );
    let mut clean = Sub::subscribed(
        &broker,
        v,
        &[
            "-i", &sub_id, "-q", "1", "-t", &topic, "-v", "-C", "1", "-W", "5",
        ],
    );
    publish(
        &broker,
        v,
        &publisher,
        &["-t", &topic, "-q", "1", "-m", "fresh"],
    );
    assert!(clean.wait_exit().success(), "{}", clean.dump());
    assert_eq!(
        clean.messages(),
        [format!("{topic} fresh")],
        "{}",
        clean.dump()
    );
    assert!(broker.stop().success());
}

#[test]
fn persistent_session_queues_while_away_v311() {
    persistent_session(V::V311);
}

#[test]
fn persistent_session_queues_while_away_v5() {
    persistent_session(V::V5);
}

// ---------------------------------------------------------------------------------------
// Shared subscriptions.

/// `$share/g/...` with one member on each shard (5.0 section 4.8.2, [MQTT-4.8.2-1]): 20
/// QoS 1 messages are split between them, none lost, none twice; an ordinary subscription
/// to the same topic still gets all 20.
fn shared_subscription(v: V) {
    let broker = Broker::start();
    let t = v.tag();
    let topic = format!("shr/{t}/jobs");
    let shared = format!("$share/g/{topic}");
    let mut members: Vec<Sub> = (0..2)
        .map(|shard| {
            let id = id_on(shard, &format!("shr-{t}"));
            Sub::subscribed(&broker, v, &["-i", &id, "-t", &shared, "-q", "1", "-v"])
        })
        .collect();
    let mut plain = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id_on(1, "shr-plain"),
            "-t",
            &topic,
            "-q",
            "1",
            "-v",
            "-C",
            "20",
            "-W",
            "5",
        ],
    );
    let lines: String = (1..=20).map(|n| format!("job {n}\n")).collect();
    publish_lines(
        &broker,
        v,
        &id_on(0, "shr-pub"),
        &["-t", &topic, "-q", "1"],
        Some(&lines),
    );
    let expected: Vec<String> = (1..=20).map(|n| format!("{topic} job {n}")).collect();
    assert!(plain.wait_exit().success(), "{}", plain.dump());
    assert_eq!(plain.messages(), expected);

    let until = Instant::now() + STEP;
    while members.iter().map(|m| m.messages().len()).sum::<usize>() < 20 && Instant::now() < until {
        for member in &mut members {
            member.pump((Instant::now() + Duration::from_millis(20)).min(until));
        }
    }
    for member in &mut members {
        member.settle(Duration::from_millis(200));
    }
    let mut all: Vec<String> = members.iter().flat_map(Sub::messages).collect();
    all.sort_by_key(|m| m.rsplit(' ').next().unwrap().parse::<u32>().unwrap());
    assert_eq!(
        all,
        expected,
        "member 0:\n{}member 1:\n{}",
        members[0].dump(),
        members[1].dump()
    );
    if shard_count() == 2 {
        for member in &members {
            assert!(!member.messages().is_empty(), "{} got none", member.name);
        }
    }
    assert!(broker.stop().success());
}

#[test]
fn shared_subscription_split_across_shards_v5() {
    shared_subscription(V::V5);
}

#[test]
fn shared_subscription_split_across_shards_v311() {
    shared_subscription(V::V311);
}

// ---------------------------------------------------------------------------------------
// Shutdown, configuration, connect timeout.

/// SIGTERM: the broker exits 0 and 5.0 clients on both shards get DISCONNECT 0x8B Server
/// shutting down (3.14.2.1) first; a 3.1.1 client, which has no server DISCONNECT, just
/// sees the connection close.
#[test]
fn sigterm_sends_disconnect_0x8b_and_exits_0() {
    let broker = Broker::start();
    let mut v5: Vec<Sub> = (0..2)
        .map(|shard| {
            let id = id_on(shard, "term5");
            Sub::subscribed(&broker, V::V5, &["-i", &id, "-t", "t/#", "-W", "8"])
        })
        .collect();
    let mut v311 = Sub::subscribed(&broker, V::V311, &["-i", "term311", "-t", "t/#", "-W", "8"]);
    let status = broker.stop();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    for sub in &mut v5 {
        let seen = sub.wait_for(Duration::from_secs(2), |l| {
            l.text.contains("Received DISCONNECT (139)")
        });
        assert!(seen, "{}:\n{}", sub.name, sub.dump());
    }
    v311.settle(Duration::from_millis(300));
    assert!(
        !v311
            .lines
            .iter()
            .any(|l| l.text.contains("Received DISCONNECT")),
        "{}",
        v311.dump()
    );
}

/// `ferrymq --config FILE` with a bad value: exit code 2 and one line on stderr that
/// names the key.
#[test]
fn config_file_errors_exit_2_with_one_line_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("ferrymq-mosq-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[broker]\nreceive_maximum = 0\n", "receive_maximum"),
        ("[broker]\nconnections_max = \"many\"\n", "connections_max"),
        (
            "[broker]\npacket_size_bytes_max = 3\n",
            "packet_size_bytes_max",
        ),
        ("[broker]\nsys_interval_secs = -1\n", "sys_interval_secs"),
        ("[broker]\nno_such_key = 1\n", "no_such_key"),
        ("[[listener]]\nbind = \"not an address\"\n", "bind"),
    ];
    for (n, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferrymq"));
        command
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", common::free_port()))
            .args(["--cores", "0"]);
        let (status, out, err) = run_bounded(command, None, STEP);
        assert_eq!(status.code(), Some(2), "{text:?}: {status}\n{out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{text:?}: stderr {err:?}");
        assert!(
            lines[0].contains(key),
            "{text:?}: {:?} lacks {key}",
            lines[0]
        );
        assert!(!out.contains("listening"), "{text:?}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--connect-timeout-ms 300`: a socket that sends nothing is closed by the broker
/// (the first packet must be CONNECT [MQTT-3.1.0-1], and a server closes a connection
/// that sends none in reasonable time, 3.1.4 / 4.x non-normative); a client that did
/// connect is not affected by the timeout.
#[test]
fn connect_timeout_closes_silent_socket() {
    let broker = Broker::start_with(&["--connect-timeout-ms", "300"]);
    let mut silent = TcpStream::connect(broker.addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let opened = Instant::now();
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte);
    let after = opened.elapsed();
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected the broker to close the socket, got {read:?} after {after:?}"
    );
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1000),
        "closed after {after:?}, timeout 300 ms"
    );

    // A connected client outlives the connect timeout.
    let mut sub = Sub::subscribed(
        &broker,
        V::V5,
        &["-i", "ct-sub", "-t", "ct/t", "-v", "-C", "1", "-W", "5"],
    );
    std::thread::sleep(Duration::from_millis(700));
    publish(
        &broker,
        V::V311,
        "ct-pub",
        &["-t", "ct/t", "-q", "1", "-m", "still here"],
    );
    assert!(sub.wait_exit().success(), "{}", sub.dump());
    assert_eq!(sub.messages(), ["ct/t still here"]);
    assert!(broker.stop().success());
}

// ---------------------------------------------------------------------------------------
// Take-over, unsubscribe, large payloads, 5.0 properties and message expiry.

/// A second connection with the same client id takes the session over: the first is
/// closed (5.0: DISCONNECT 0x8E Session taken over) and, having sent no DISCONNECT, its
/// will is published (3.1.1 [MQTT-3.1.4-2], [MQTT-3.1.2-8]; 5.0 [MQTT-3.1.4-3]).
fn takeover(v: V) {
    let broker = Broker::start();
    let t = v.tag();
    let mut watcher = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id_on(1, "to-watch"),
            "-t",
            &format!("to/{t}/#"),
            "-q",
            "1",
            "-v",
        ],
    );
    let id = id_on(0, &format!("to-dup-{t}"));
    let will = format!("to/{t}/will");
    let mut old = Sub::subscribed(
        &broker,
        v,
        &[
            "-i",
            &id,
            "-t",
            "nothing/here",
            "--will-topic",
            &will,
            "--will-payload",
            "taken",
        ],
    );
    let mut new = Sub::spawn(&broker, v, &["-i", &id, "-t", "nothing/here", "-E"]);
    assert!(new.wait_exit().success(), "{}", new.dump());
    assert_eq!(
        watcher.wait_messages(1),
        [format!("{will} taken")],
        "{}",
        watcher.dump()
    );
    if v == V::V5 {
        let seen = old.wait_for(STEP, |l| l.text.contains("Received DISCONNECT (142)"));
        assert!(seen, "{}", old.dump());
    }
    // The old client would reconnect after a second and take the session back.
    old.kill9();
    assert!(broker.stop().success());
}

#[test]
fn takeover_closes_old_connection_and_sends_its_will_v311() {
    takeover(V::V311);
}

#[test]
fn takeover_closes_old_connection_and_sends_its_will_v5() {
    takeover(V::V5);
}

/// UNSUBSCRIBE deletes the subscription: no more messages for it, the others stay
/// (3.1.1 [MQTT-3.10.4-1], [MQTT-3.10.4-2]; 5.0 [MQTT-3.10.4-1], [MQTT-3.10.4-2]).
fn unsubscribe(v: V) {
    let broker = Broker::start();
    let t = v.tag();
    let (a, b, c) = (format!("u/{t}/a"), format!("u/{t}/b"), format!("u/{t}/c"));
    let id = id_on(1, &format!("unsub-{t}"));
    let mut first = Sub::spawn(
        &broker,
        v,
        &["-i", &id, "-c", "-q", "1", "-t", &a, "-t", &b, "-E"],
    );
    assert!(first.wait_exit().success(), "{}", first.dump());
    // Back to the session: subscribes to c, then unsubscribes from a (-U).
    let mut sub = Sub::spawn(
        &broker,
        v,
        &[
            "-i", &id, "-c", "-q", "1", "-t", &c, "-U", &a, "-v", "-C", "2", "-W", "5",
        ],
    );
    let unsubscribed = sub.wait_for(STEP, |l| l.text.contains("received UNSUBACK"));
    assert!(unsubscribed, "{}", sub.dump());
    sub.wait_subscribed();
    let publisher = id_on(0, "unsub-pub");
    for topic in [&a, &b, &c] {
        publish(&broker, v, &publisher, &["-t", topic, "-q", "1", "-m", "m"]);
    }
    assert!(sub.wait_exit().success(), "{}", sub.dump());
    assert_eq!(
        sub.messages(),
        [format!("{b} m"), format!("{c} m")],
        "{}",
        sub.dump()
    );
    assert!(broker.stop().success());
}

#[test]
fn unsubscribe_stops_delivery_v311() {
    unsubscribe(V::V311);
}

#[test]
fn unsubscribe_stops_delivery_v5() {
    unsubscribe(V::V5);
}

/// A 200 KB binary payload crosses shards byte for byte, at QoS 1 and 2, in 3.1.1 and
/// 5.0 ([MQTT-3.3.2-3] topic as published; the payload is opaque application data).
#[test]
fn large_binary_payload_across_shards() {
    let broker = Broker::start();
    let payload: Vec<u8> = (0..200_000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let file = std::env::temp_dir().join(format!("ferrymq-mosq-large-{}", std::process::id()));
    std::fs::write(&file, &payload).unwrap();
    for v in [V::V311, V::V5] {
        for qos in ["1", "2"] {
            let topic = format!("big/{}/q{qos}", v.tag());
            let mut sub = Sub::subscribed(
                &broker,
                v,
                &[
                    "-i",
                    &id_on(1, "big-sub"),
                    "-t",
                    &topic,
                    "-q",
                    "2",
                    "-F",
                    "%t %l %x",
                    "-C",
                    "1",
                    "-W",
                    "5",
                ],
            );
            publish(
                &broker,
                v,
                &id_on(0, "big-pub"),
                &["-t", &topic, "-q", qos, "-f", file.to_str().unwrap()],
            );
            assert!(sub.wait_exit().success(), "{}", sub.name);
            let messages = sub.messages();
            assert_eq!(messages.len(), 1, "{}", sub.name);
            assert!(
                messages[0] == format!("{topic} {} {hex}", payload.len()),
                "{}: payload differs (got {} chars)",
                sub.name,
                messages[0].len()
            );
        }
    }
    let _ = std::fs::remove_file(&file);
    assert!(broker.stop().success());
}

/// 5.0 PUBLISH properties reach the subscriber on the other shard unaltered: Payload
/// Format Indicator [MQTT-3.3.2-4], Response Topic [MQTT-3.3.2-15], Correlation Data
/// [MQTT-3.3.2-16], User Properties in order [MQTT-3.3.2-17], [MQTT-3.3.2-18], Content
/// Type [MQTT-3.3.2-20]; the Message Expiry Interval is passed on reduced by the time
/// waited [MQTT-3.3.2-6]; the Subscription Identifier of the matching subscription is
/// added (3.3.2.3.8); a retained copy carries the same properties.
#[test]
fn v5_publish_properties_forwarded_across_shards() {
    let broker = Broker::start();
    let format = "%r|%t|%p|%C|%R|%D|%F|%P|%S|%E";
    let mut live = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(1, "prop-sub"),
            "-t",
            "prop/#",
            "-q",
            "1",
            "-F",
            format,
            "-D",
            "subscribe",
            "subscription-identifier",
            "7",
        ],
    );
    publish(
        &broker,
        V::V5,
        &id_on(0, "prop-pub"),
        &[
            "-t",
            "prop/x",
            "-q",
            "1",
            "-r",
            "-m",
            "payload",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-D",
            "publish",
            "user-property",
            "k",
            "v2",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "reply/here",
            "-D",
            "publish",
            "correlation-data",
            "corr-1",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
            "-D",
            "publish",
            "message-expiry-interval",
            "100",
        ],
    );
    let expected_prefix = "prop/x|payload|text/plain|reply/here|corr-1|1|k:v k:v2|";
    let messages = live.wait_messages(1);
    assert_eq!(messages.len(), 1, "{}", live.dump());
    let check = |line: &str, retain: &str, sub_id: &str| {
        let rest = line
            .strip_prefix(&format!("{retain}|{expected_prefix}{sub_id}|"))
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        let expiry: u32 = rest.parse().unwrap();
        assert!((95..=100).contains(&expiry), "expiry {expiry} in {line:?}");
    };
    check(&messages[0], "0", "7");
    // A new subscriber, without subscription identifier, gets the retained copy.
    let mut late = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(0, "prop-late"),
            "-t",
            "prop/x",
            "-F",
            format,
            "-C",
            "1",
            "-W",
            "5",
        ],
    );
    assert!(late.wait_exit().success(), "{}", late.dump());
    check(&late.messages()[0], "1", "");
    assert!(broker.stop().success());
}

/// 5.0 Message Expiry Interval: a message whose interval ran out is not delivered, whether
/// retained or queued for an absent session [MQTT-3.3.2-5].
#[test]
fn v5_message_expiry_drops_retained_and_queued() {
    let broker = Broker::start();
    let id = id_on(1, "exp-sub");
    let mut first = Sub::spawn(
        &broker,
        V::V5,
        &["-i", &id, "-c", "-x", "60", "-q", "1", "-t", "exp/q", "-E"],
    );
    assert!(first.wait_exit().success(), "{}", first.dump());
    let publisher = id_on(0, "exp-pub");
    let expiring = ["-D", "publish", "message-expiry-interval", "1"];
    let retained_args = [
        &["-t", "exp/r", "-q", "1", "-r", "-m", "old"][..],
        &expiring[..],
    ]
    .concat();
    publish(&broker, V::V5, &publisher, &retained_args);
    let queued_args = [
        &["-t", "exp/q", "-q", "1", "-m", "short"][..],
        &expiring[..],
    ]
    .concat();
    publish(&broker, V::V5, &publisher, &queued_args);
    publish(
        &broker,
        V::V5,
        &publisher,
        &[
            "-t",
            "exp/q",
            "-q",
            "1",
            "-m",
            "long",
            "-D",
            "publish",
            "message-expiry-interval",
            "100",
        ],
    );
    std::thread::sleep(Duration::from_millis(2200));
    let mut back = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i", &id, "-c", "-x", "60", "-q", "1", "-t", "exp/#", "-F", "%t %p %E",
        ],
    );
    publish(
        &broker,
        V::V5,
        &publisher,
        &["-t", "exp/end", "-q", "1", "-m", "end"],
    );
    let messages = back.wait_messages(2);
    back.settle(Duration::from_millis(200));
    assert_eq!(back.messages().len(), 2, "{}", back.dump());
    let long = messages[0]
        .strip_prefix("exp/q long ")
        .unwrap_or_else(|| panic!("{}", back.dump()));
    let left: u32 = long.parse().unwrap();
    assert!((95..=98).contains(&left), "expiry left {left}");
    assert_eq!(messages[1], "exp/end end ", "{}", back.dump());
    assert!(broker.stop().success());
}

// ---------------------------------------------------------------------------------------
// 5.0 flow control, packet size, session expiry; retained wills; shared and retained.

/// Receive Maximum 1 [MQTT-3.3.4-9]: the broker keeps one QoS 1/2 PUBLISH in flight to
/// the client at a time, and still delivers all 30, in order [MQTT-4.6.0-6]. Maximum
/// Packet Size 200: a larger message is dropped as if sent [MQTT-3.1.2-25] and does not
/// hold the only in-flight slot.
#[test]
fn v5_receive_maximum_and_maximum_packet_size() {
    let broker = Broker::start();
    let mut sub = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(1, "flow-sub"),
            "-t",
            "flow/#",
            "-q",
            "2",
            "-v",
            "-D",
            "connect",
            "receive-maximum",
            "1",
            "-D",
            "connect",
            "maximum-packet-size",
            "200",
        ],
    );
    let publisher = id_on(0, "flow-pub");
    let big = "x".repeat(400);
    publish(
        &broker,
        V::V5,
        &publisher,
        &["-t", "flow/big", "-q", "1", "-m", &big],
    );
    publish(
        &broker,
        V::V5,
        &publisher,
        &["-t", "flow/big", "-q", "2", "-m", &big],
    );
    let lines: String = (1..=15).map(|n| format!("m{n}\n")).collect();
    publish_lines(
        &broker,
        V::V5,
        &publisher,
        &["-t", "flow/a", "-q", "1"],
        Some(&lines),
    );
    let lines: String = (16..=30).map(|n| format!("m{n}\n")).collect();
    publish_lines(
        &broker,
        V::V5,
        &publisher,
        &["-t", "flow/b", "-q", "2"],
        Some(&lines),
    );
    let expected: Vec<String> = (1..=30)
        .map(|n| format!("flow/{} m{n}", if n <= 15 { "a" } else { "b" }))
        .collect();
    sub.wait_messages(30);
    sub.settle(Duration::from_millis(200));
    assert_eq!(sub.messages(), expected, "{}", sub.dump());
    assert!(broker.stop().success());
}

/// 5.0 Session Expiry Interval 1: the session, its subscription and its queued messages
/// are gone two seconds after the client left (3.1.2.11.2, [MQTT-3.1.2-23] only while the
/// interval runs); with 60 they are kept.
#[test]
fn v5_session_expiry_interval() {
    let broker = Broker::start();
    let publisher = id_on(0, "sx-pub");
    let short = id_on(1, "sx-short");
    let long = id_on(0, "sx-long");
    for (id, expiry) in [(&short, "1"), (&long, "60")] {
        let mut sub = Sub::spawn(
            &broker,
            V::V5,
            &["-i", id, "-c", "-x", expiry, "-q", "1", "-t", "sx/t", "-E"],
        );
        assert!(sub.wait_exit().success(), "{}", sub.dump());
    }
    publish(
        &broker,
        V::V5,
        &publisher,
        &["-t", "sx/t", "-q", "1", "-m", "queued"],
    );
    std::thread::sleep(Duration::from_millis(2200));
    // The short session is gone: back without subscribing, nothing arrives from sx/t.
    // The long one still has its subscription and the message queued meanwhile (and the
    // one published while the short client was back).
    for (n, (id, expected)) in [
        (&short, vec![]),
        (&long, vec!["sx/t queued", "sx/t live 0", "sx/t live 1"]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut sub = Sub::subscribed(
            &broker,
            V::V5,
            &[
                "-i",
                id,
                "-c",
                "-x",
                "60",
                "-q",
                "1",
                "-t",
                "sx/marker",
                "-v",
            ],
        );
        let live = format!("live {n}");
        publish(
            &broker,
            V::V5,
            &publisher,
            &["-t", "sx/t", "-q", "1", "-m", &live],
        );
        publish(
            &broker,
            V::V5,
            &publisher,
            &["-t", "sx/marker", "-q", "1", "-m", "end"],
        );
        let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
        expected.push("sx/marker end".into());
        sub.wait_messages(expected.len());
        sub.settle(Duration::from_millis(200));
        assert_eq!(sub.messages(), expected, "{id}:\n{}", sub.dump());
    }
    assert!(broker.stop().success());
}

/// A will with the retain flag is stored as a retained message [MQTT-3.1.2-17] (3.1.1
/// and 5.0), and a 5.0 will whose delay outlasts the session goes when the session ends
/// [MQTT-3.1.3-9].
#[test]
fn retained_will_and_will_delay_capped_by_session_expiry() {
    let broker = Broker::start();
    for v in [V::V311, V::V5] {
        let topic = format!("rwill/{}", v.tag());
        let mut doomed = Sub::subscribed(
            &broker,
            v,
            &[
                "-i",
                &id_on(0, &format!("rwill-{}", v.tag())),
                "-t",
                "nothing/here",
                "--will-topic",
                &topic,
                "--will-payload",
                "last words",
                "--will-retain",
                "--will-qos",
                "1",
            ],
        );
        doomed.kill9();
        // Later subscribers on either shard find it retained.
        let deadline = Instant::now() + STEP;
        let mut found = false;
        while !found && Instant::now() < deadline {
            for shard in 0..2 {
                let mut sub = Sub::spawn(
                    &broker,
                    v,
                    &[
                        "-i",
                        &id_on(shard, "rwill-read"),
                        "-t",
                        &topic,
                        "-F",
                        "%r %t %p",
                        "-C",
                        "1",
                        "-W",
                        "1",
                    ],
                );
                sub.wait_exit();
                found = sub.messages() == [format!("1 {topic} last words")];
                if !found {
                    break;
                }
            }
        }
        assert!(found, "retained will of {topic} not found");
    }
    // Will Delay 30 s, Session Expiry 1 s: the will goes when the session ends.
    let mut watcher = Sub::subscribed(
        &broker,
        V::V5,
        &["-i", &id_on(1, "cap-watch"), "-t", "cap/#", "-q", "1", "-v"],
    );
    let mut doomed = Sub::subscribed(
        &broker,
        V::V5,
        &[
            "-i",
            &id_on(0, "cap-doomed"),
            "-x",
            "1",
            "-t",
            "nothing/here",
            "--will-topic",
            "cap/will",
            "--will-payload",
            "session over",
            "-D",
            "will",
            "will-delay-interval",
            "30",
        ],
    );
    doomed.kill9();
    let killed = Instant::now();
    assert_eq!(
        watcher.wait_messages(1),
        ["cap/will session over"],
        "{}",
        watcher.dump()
    );
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(3000),
        "will sent {after:?} after the close; session expiry 1 s"
    );
    assert!(broker.stop().success());
}

/// Retained messages are not sent for a new shared subscription (5.0 section 4.8.2:
/// "retained messages are not sent"), but are for an ordinary one.
#[test]
fn shared_subscription_gets_no_retained_messages() {
    let broker = Broker::start();
    for v in [V::V311, V::V5] {
        let topic = format!("shret/{}", v.tag());
        let publisher = id_on(0, "shret-pub");
        publish(
            &broker,
            v,
            &publisher,
            &["-t", &topic, "-q", "1", "-r", "-m", "kept"],
        );
        let mut shared = Sub::subscribed(
            &broker,
            v,
            &[
                "-i",
                &id_on(1, "shret-sub"),
                "-t",
                &format!("$share/g/{topic}"),
                "-F",
                "%r %t %p",
                "-C",
                "1",
                "-W",
                "5",
            ],
        );
        publish(
            &broker,
            v,
            &publisher,
            &["-t", &topic, "-q", "1", "-m", "live"],
        );
        assert!(shared.wait_exit().success(), "{}", shared.dump());
        assert_eq!(
            shared.messages(),
            [format!("0 {topic} live")],
            "{}",
            shared.dump()
        );
    }
    assert!(broker.stop().success());
}
