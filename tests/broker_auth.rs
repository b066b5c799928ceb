//! Password files and ACLs end to end: the real `ferrymq` binary (two shards) with
//! `--password-file` / `--acl-file` / `--allow-anonymous` (and TOML `[auth]`), driven by
//! clients nobody here wrote: `mosquitto_pub` / `mosquitto_sub` (Debian mosquitto-clients
//! 2.0) and rumqttc 0.25 through its 3.1.1 (`rumqttc::*`) and 5.0 (`rumqttc::v5::*`) APIs.
//! Password files are made with `ferrymq passwd` and, once, with Mosquitto's own
//! `mosquitto_passwd -c -b`.
//!
//! What the specifications say, and what is checked here:
//! - MQTT 5.0 [MQTT-3.1.4-2]: the server MAY check that the contents of the CONNECT meet
//!   any further restrictions and SHOULD perform authentication and authorization checks;
//!   if any of these checks fail, it MUST close the network connection, after a CONNACK
//!   with a reason code >= 0x80 [MQTT-3.2.2-7]: §3.2.2.2 0x86 Bad User Name or Password,
//!   0x87 Not authorized. 3.1.1 says the same in §3.1.4 (item 2) and closes after a
//!   non-zero return code [MQTT-3.2.2-5]: §3.2.2.3 table 3.1, 4 "bad user name or
//!   password", 5 "not authorized". `mosquitto_pub` exits with that code (4, 5, 134, 135).
//! - 3.1.1 [MQTT-3.3.5-2]: if a server implementation does not authorize a PUBLISH to be
//!   performed by a client, it has no way of informing that client: it MUST either make a
//!   positive acknowledgement according to the normal QoS rules, or close the network
//!   connection. ferrymq acknowledges normally and drops the message. MQTT 5.0 §3.4.2.1 /
//!   §3.5.2.1: PUBACK / PUBREC reason code 0x87 Not authorized; a PUBREL follows only a
//!   PUBREC below 0x80 [MQTT-4.3.3-4], so a refused QoS 2 exchange ends at the PUBREC.
//! - SUBACK: 3.1.1 §3.9.3 return code 0x80 Failure (no other failure code may be used
//!   [MQTT-3.9.3-2]); MQTT 5.0 §3.9.3 reason code 0x87 Not authorized and 0x97 Quota
//!   exceeded; one code per filter, in the order of the SUBSCRIBE [MQTT-3.9.3-1].
//! - Mosquitto's acl_file semantics (see `src/auth/acl.rs`): a subscription wider than what
//!   its subscriber may read is granted, and each message delivered through it is checked
//!   for read access (retained ones too); a will is checked for write access at CONNECT.
//!
//! Every wait is bounded. Counters are read from the Prometheus endpoint (`--metrics`) and
//! from `$SYS/broker/auth/failures` (`--sys-interval-secs 1`).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::kafka;
use common::metrics::{http_get, metric};
use common::raw::{try_read_until_closed, RawClient};
use common::rumqttc::{options4, options5, qos4, qos5, v4, v5};
use common::{free_port, run_bounded, Broker};
use ferrymq::protocol::{Connect, Packet, Protocol};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as ConnectCode5, PubAckReason, PubRecReason, SubscribeReasonCode as SubCode5,
};

/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// Files

/// A temporary directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(kafka::unique(&format!("ferrymq-auth-{name}")));
        fs::create_dir_all(&path).expect("create temp dir");
        Dir(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Replaces `path` at once (a temporary file, then rename), so that a reload never reads
/// half a file.
fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).expect("write temp file");
    fs::rename(&tmp, path).expect("rename temp file");
}

/// `ferrymq passwd FILE USER --password PASSWORD` with the binary under test.
fn ferrymq_passwd(file: &Path, user: &str, password: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .arg("--password")
        .arg(password)
        .output()
        .expect("run ferrymq passwd");
    assert!(
        output.status.success(),
        "ferrymq passwd {} {user}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A password file with `users` (name, password), written by `ferrymq passwd`.
fn password_file(dir: &Dir, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.file("passwd");
    for (user, password) in users {
        ferrymq_passwd(&path, user, password);
    }
    path
}

// ---------------------------------------------------------------------------------------
// Mosquitto's clients

/// Runs `program ARGS` (a Mosquitto program), bounded by `WAIT`: (exit code, stdout, stderr).
fn run_mosquitto(program: &str, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(program);
    command.args(args);
    let (status, stdout, stderr) = run_bounded(command, None, WAIT);
    (status.code().unwrap_or(-1), stdout, stderr)
}

/// `mosquitto_pub -h 127.0.0.1 -p PORT -V VERSION [-u USER -P PASSWORD] ARGS`: (exit code,
/// stderr). mosquitto_pub exits with the CONNACK code when the broker refuses it.
fn mosquitto_pub(
    broker: &Broker,
    v: V,
    login: Option<(&str, &str)>,
    args: &[&str],
) -> (i32, String) {
    let port = broker.port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-V", v.mosquitto()];
    if let Some((user, password)) = login {
        all.extend(["-u", user, "-P", password]);
    }
    all.extend(args);
    let (code, _, stderr) = run_mosquitto("mosquitto_pub", &all);
    (code, stderr)
}

// ---------------------------------------------------------------------------------------
// Counters

/// Polls the metrics endpoint until counter `name` equals `expected` (the board is
/// refreshed periodically); returns the last value seen.
fn wait_metric(port: u16, name: &str, expected: u64) -> Option<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(&http_get(port, "/metrics"), name);
        if value == Some(expected) || Instant::now() >= deadline {
            return value;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the retained `$SYS` topic with `mosquitto_sub -C 1` until its payload is
/// `expected` (published every `--sys-interval-secs`); returns the last payload seen.
fn wait_sys(broker: &Broker, login: (&str, &str), topic: &str, expected: &str) -> String {
    let port = broker.port.to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, stdout, _) = run_mosquitto(
            "mosquitto_sub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                login.0,
                "-P",
                login.1,
                "-t",
                topic,
                "-C",
                "1",
                "-W",
                "2",
            ],
        );
        let value = stdout.trim().to_string();
        if value == expected || Instant::now() >= deadline {
            return value;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// rumqttc clients

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    V311,
    V5,
}

impl V {
    fn mosquitto(self) -> &'static str {
        match self {
            V::V311 => "mqttv311",
            V::V5 => "mqttv5",
        }
    }
}

/// A 5.0 CONNACK reason code as on the wire.
fn connack_code5(code: ConnectCode5) -> u8 {
    match code {
        ConnectCode5::Success => 0,
        ConnectCode5::BadUserNamePassword => 0x86,
        ConnectCode5::NotAuthorized => 0x87,
        ConnectCode5::QuotaExceeded => 0x97,
        other => panic!("unexpected CONNACK {other:?}"),
    }
}

fn puback_code5(reason: &PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::NotAuthorized => 0x87,
        other => panic!("unexpected PUBACK reason {other:?}"),
    }
}

fn pubrec_code5(reason: &PubRecReason) -> u8 {
    match reason {
        PubRecReason::Success => 0,
        PubRecReason::NoMatchingSubscribers => 0x10,
        PubRecReason::NotAuthorized => 0x87,
        other => panic!("unexpected PUBREC reason {other:?}"),
    }
}

fn suback_code5(code: &SubCode5) -> u8 {
    match code {
        SubCode5::Success(qos) => *qos as u8,
        SubCode5::NotAuthorized => 0x87,
        SubCode5::QuotaExceeded => 0x97,
        SubCode5::Unspecified | SubCode5::Failure => 0x80,
        other => panic!("unexpected SUBACK code {other:?}"),
    }
}

/// A connected client of either version.
enum Mqtt {
    V4(v4::Mqtt),
    V5(v5::Mqtt),
}

/// A user name and password.
type Login<'a> = Option<(&'a str, &'a str)>;

/// Connects `id` with `login` and, if given, a QoS 1 will on `will`: the client, or the
/// CONNACK code refusing it (3.1.1 return code or 5.0 reason code).
fn connect(broker: &Broker, v: V, id: &str, login: Login, will: Option<&str>) -> Result<Mqtt, u8> {
    match v {
        V::V311 => {
            let mut options = options4(broker.port, id);
            if let Some((user, password)) = login {
                options.set_credentials(user, password);
            }
            if let Some(topic) = will {
                options.set_last_will(rumqttc::LastWill::new(topic, "gone", qos4(1), false));
            }
            let (client, connection) = rumqttc::Client::new(options, 64);
            match v4::Mqtt::start(client, connection).map_err(|e| *e) {
                Ok(mqtt) => Ok(Mqtt::V4(mqtt)),
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => Err(code as u8),
                Err(error) => panic!("{id}: {error:?}"),
            }
        }
        V::V5 => {
            let mut options = options5(broker.port, id);
            if let Some((user, password)) = login {
                options.set_credentials(user, password);
            }
            if let Some(topic) = will {
                options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    topic,
                    "gone",
                    qos5(1),
                    false,
                    None,
                ));
            }
            let (client, connection) = rumqttc::v5::Client::new(options, 64);
            match v5::Mqtt::start(client, connection).map_err(|e| *e) {
                Ok(mqtt) => Ok(Mqtt::V5(mqtt)),
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                    Err(connack_code5(code))
                }
                Err(error) => panic!("{id}: {error:?}"),
            }
        }
    }
}

/// [`connect`], which must be accepted.
fn connected(broker: &Broker, v: V, id: &str, login: Login) -> Mqtt {
    connect(broker, v, id, login, None)
        .unwrap_or_else(|code| panic!("{id} {v:?} {login:?}: CONNACK refused with {code:#x}"))
}

/// [`connect`], which must be refused: the code.
fn refused(broker: &Broker, v: V, id: &str, login: Login) -> u8 {
    match connect(broker, v, id, login, None) {
        Ok(_) => panic!("{id} {v:?} {login:?}: connected, expected a refusal"),
        Err(code) => code,
    }
}

impl Mqtt {
    /// PUBLISHes and waits for the end of the exchange: `None` at QoS 0, else the code of
    /// the PUBACK (QoS 1) or of the PUBREC (QoS 2; a successful one is followed by the
    /// PUBCOMP, waited for too). A 3.1.1 acknowledgement carries no code: 0.
    fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &str) -> Option<u8> {
        self.publish_aliased(topic, None, qos, retain, payload)
    }

    /// [`Mqtt::publish`] with a 5.0 Topic Alias (§3.3.2.3.4): the topic name is set, or
    /// with an empty `topic`, the one the alias was set to.
    fn publish_aliased(
        &mut self,
        topic: &str,
        alias: Option<u16>,
        qos: u8,
        retain: bool,
        payload: &str,
    ) -> Option<u8> {
        let payload = payload.as_bytes().to_vec();
        match self {
            Mqtt::V4(_) if alias.is_some() => panic!("no topic aliases in 3.1.1"),
            Mqtt::V4(m) => {
                use rumqttc::Packet;
                m.client.publish(topic, qos4(qos), retain, payload).unwrap();
                match qos {
                    0 => None,
                    1 => {
                        m.incoming("PUBACK", |p| matches!(p, Packet::PubAck(_)));
                        Some(0)
                    }
                    _ => {
                        m.incoming("PUBREC", |p| matches!(p, Packet::PubRec(_)));
                        m.incoming("PUBCOMP", |p| matches!(p, Packet::PubComp(_)));
                        Some(0)
                    }
                }
            }
            Mqtt::V5(m) => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    topic_alias: alias,
                    ..Default::default()
                };
                m.client
                    .publish_with_properties(topic, qos5(qos), retain, payload, properties)
                    .unwrap();
                match qos {
                    0 => None,
                    1 => match m.incoming("PUBACK", |p| matches!(p, Packet::PubAck(_))) {
                        Packet::PubAck(ack) => Some(puback_code5(&ack.reason)),
                        _ => unreachable!(),
                    },
                    _ => {
                        let code = match m.incoming("PUBREC", |p| matches!(p, Packet::PubRec(_))) {
                            Packet::PubRec(rec) => pubrec_code5(&rec.reason),
                            _ => unreachable!(),
                        };
                        if code < 0x80 {
                            m.incoming("PUBCOMP", |p| matches!(p, Packet::PubComp(_)));
                        }
                        Some(code)
                    }
                }
            }
        }
    }

    /// SUBSCRIBEs to `filters` (QoS 1) in one packet: the SUBACK's codes, in order.
    fn subscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        match self {
            Mqtt::V4(m) => {
                use rumqttc::{Packet, SubscribeFilter, SubscribeReasonCode};
                let filters = filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.to_string(), qos4(1)));
                m.client.subscribe_many(filters).unwrap();
                match m.incoming("SUBACK", |p| matches!(p, Packet::SubAck(_))) {
                    Packet::SubAck(ack) => ack
                        .return_codes
                        .iter()
                        .map(|code| match code {
                            SubscribeReasonCode::Success(qos) => *qos as u8,
                            SubscribeReasonCode::Failure => 0x80,
                        })
                        .collect(),
                    _ => unreachable!(),
                }
            }
            Mqtt::V5(m) => {
                use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
                let filters = filters.iter().map(|f| Filter::new(*f, qos5(1)));
                m.client.subscribe_many(filters).unwrap();
                match m.incoming("SUBACK", |p| matches!(p, Packet::SubAck(_))) {
                    Packet::SubAck(ack) => ack.return_codes.iter().map(suback_code5).collect(),
                    _ => unreachable!(),
                }
            }
        }
    }

    /// Whether a PUBLISH with `payload` arrived, waiting up to `timeout` for it.
    fn got(&mut self, payload: &str, timeout: Duration) -> bool {
        match self {
            Mqtt::V4(m) => m.got(payload, timeout),
            Mqtt::V5(m) => m.got(payload, timeout),
        }
    }

    fn received(&mut self) -> &[(String, String)] {
        match self {
            Mqtt::V4(m) => {
                m.drain(Duration::ZERO);
                &m.received
            }
            Mqtt::V5(m) => {
                m.drain(Duration::ZERO);
                &m.received
            }
        }
    }

    fn is_open(&mut self) -> bool {
        match self {
            Mqtt::V4(m) => m.is_open(),
            Mqtt::V5(m) => m.is_open(),
        }
    }

    fn disconnect(self) {
        match self {
            Mqtt::V4(m) => m.disconnect_quietly(),
            Mqtt::V5(m) => m.disconnect_quietly(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Credentials

/// A CONNECT with a user name and password (clean session, keep alive 30 s), over a plain
/// socket: every byte the broker answers with until it closes the connection; `None` if it
/// does not close it within `WAIT`.
fn raw_connect(broker: &Broker, v: V, user: &str, password: &str) -> Option<Vec<u8>> {
    let protocol = if v == V::V5 {
        Protocol::V5
    } else {
        Protocol::V3_1_1
    };
    let mut connect = Connect::new(protocol, "raw-connect", 30);
    connect.username = Some(user.into());
    connect.password = Some(password.as_bytes().to_vec().into());
    let mut client = RawClient::open(broker.addr(), protocol, WAIT);
    client.send(&Packet::Connect(Box::new(connect)));
    try_read_until_closed(&mut client.tcp, Vec::new()).ok()
}

/// The CONNACK for right, wrong and unknown credentials and for anonymous clients, from
/// rumqttc (the CONNACK code it reports) and mosquitto_pub (its exit status is the CONNACK
/// code; its stderr says why), over 3.1.1 and 5.0 [MQTT-3.1.4-2]; then the auth_failures
/// counter, from Prometheus and from `$SYS/broker/auth/failures`, counts every refusal.
#[test]
fn credentials_are_checked_and_refusals_counted() {
    let dir = Dir::new("credentials");
    let passwd = password_file(&dir, &[("alice", "s3cret"), ("bob", "hunter2 with spaces")]);
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let broker = Broker::start_with(&[
        "--password-file",
        text(&passwd),
        "--metrics",
        &metrics,
        "--sys-interval-secs",
        "1",
    ]);
    let alice = Some(("alice", "s3cret"));
    let mut refusals = 0;

    for v in [V::V311, V::V5] {
        // The right password connects, for every user in the file.
        connected(&broker, v, "creds-alice", alice).disconnect();
        connected(
            &broker,
            v,
            "creds-bob",
            Some(("bob", "hunter2 with spaces")),
        )
        .disconnect();

        // 3.1.1 return code 4 / 5.0 reason code 0x86: bad user name or password, for a
        // wrong password and for a user the file does not have (they look the same).
        let bad = if v == V::V5 { 0x86 } else { 4 };
        assert_eq!(
            refused(&broker, v, "creds-wrong", Some(("alice", "S3cret"))),
            bad,
            "{v:?}"
        );
        assert_eq!(
            refused(&broker, v, "creds-unknown", Some(("mallory", "s3cret"))),
            bad,
            "{v:?}"
        );
        // Another user's password is a wrong password.
        assert_eq!(
            refused(&broker, v, "creds-swap", Some(("bob", "s3cret"))),
            bad,
            "{v:?}"
        );
        // 3.1.1 return code 5 / 5.0 reason code 0x87: not authorized, for a client without
        // a user name where a password file is set and allow_anonymous is not given.
        let not_authorized = if v == V::V5 { 0x87 } else { 5 };
        assert_eq!(
            refused(&broker, v, "creds-anonymous", None),
            not_authorized,
            "{v:?}"
        );
        refusals += 4;
    }

    // mosquitto_pub: exit 0 when accepted; else its exit status is the CONNACK code.
    let message = ["-q", "1", "-t", "creds/topic", "-m", "x"];
    for v in [V::V311, V::V5] {
        let (code, stderr) = mosquitto_pub(&broker, v, alice, &message);
        assert_eq!(code, 0, "{v:?}: {stderr}");
    }
    let (code, stderr) = mosquitto_pub(&broker, V::V311, Some(("alice", "nope")), &message);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("bad user name or password"), "{stderr}");
    let (code, stderr) = mosquitto_pub(&broker, V::V5, Some(("alice", "nope")), &message);
    assert_eq!(code, 0x86, "{stderr}");
    assert!(stderr.contains("Bad User Name or Password"), "{stderr}");
    let (code, stderr) = mosquitto_pub(&broker, V::V5, Some(("nobody", "nope")), &message);
    assert_eq!(code, 0x86, "{stderr}");
    let (code, stderr) = mosquitto_pub(&broker, V::V311, None, &message);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("not authorised"), "{stderr}");
    let (code, stderr) = mosquitto_pub(&broker, V::V5, None, &message);
    assert_eq!(code, 0x87, "{stderr}");
    assert!(stderr.contains("Not authorized"), "{stderr}");
    // A user name without a password is bad credentials too.
    let no_password = ["-u", "alice", "-t", "creds/topic", "-m", "x"];
    let (code, stderr) = mosquitto_pub(&broker, V::V311, None, &no_password);
    assert_eq!(code, 4, "{stderr}");
    let (code, stderr) = mosquitto_pub(&broker, V::V5, None, &no_password);
    assert_eq!(code, 0x86, "{stderr}");
    refusals += 7;

    // On the wire: the refusing CONNACK, then the broker closes the connection
    // [MQTT-3.2.2-5] (3.1.1) / [MQTT-3.2.2-7] (5.0).
    let answer = raw_connect(&broker, V::V311, "alice", "wrong");
    assert_eq!(
        answer,
        Some(vec![0x20, 0x02, 0x00, 0x04]),
        "3.1.1 CONNACK 4, then closed"
    );
    let answer = raw_connect(&broker, V::V5, "nobody", "wrong").expect("closed after CONNACK");
    assert!(
        answer.len() >= 4 && answer[0] == 0x20 && answer[3] == 0x86,
        "{answer:x?}"
    );
    refusals += 2;

    // Every refusal is counted, and nothing else is: the Prometheus counter and the
    // retained $SYS topic (no ACL here, so alice may read $SYS).
    assert_eq!(
        wait_metric(metrics_port, "auth_failures", refusals),
        Some(refusals),
        "ferrymq_auth_failures"
    );
    assert_eq!(
        wait_sys(
            &broker,
            ("alice", "s3cret"),
            "$SYS/broker/auth/failures",
            &refusals.to_string()
        ),
        refusals.to_string(),
        "$SYS/broker/auth/failures"
    );
    assert_eq!(
        metric(
            &http_get(metrics_port, "/metrics"),
            "connections_refused_max"
        ),
        Some(0)
    );
}

/// TOML `[auth] allow_anonymous = true` lets clients without a user name in while the
/// password file (written by Mosquitto's own `mosquitto_passwd -c -b`, PBKDF2-SHA512
/// `$7$`) still refuses wrong credentials; `--allow-anonymous false` without a password
/// file refuses everyone with "not authorized" (Mosquitto 2.0's behaviour).
#[test]
fn allow_anonymous_and_a_mosquitto_passwd_file() {
    let dir = Dir::new("anonymous");
    let passwd = dir.file("mosquitto.passwd");
    let (code, stdout, stderr) = run_mosquitto(
        "mosquitto_passwd",
        &["-c", "-b", text(&passwd), "carol", "c4rol's pw"],
    );
    assert_eq!(code, 0, "mosquitto_passwd: {stdout}{stderr}");
    let file = fs::read_to_string(&passwd).unwrap();
    assert!(file.starts_with("carol:$7$"), "{file}");

    let broker = Broker::start_with_config(
        &format!(
            "[auth]\npassword_file = \"{}\"\nallow_anonymous = true\n",
            text(&passwd)
        ),
        &[],
    );
    let carol = Some(("carol", "c4rol's pw"));
    for v in [V::V311, V::V5] {
        connected(&broker, v, "anon-1", None).disconnect();
        connected(&broker, v, "anon-carol", carol).disconnect();
        let bad = if v == V::V5 { 0x86 } else { 4 };
        // allow_anonymous is about clients without a user name: wrong credentials are
        // still refused.
        assert_eq!(
            refused(&broker, v, "anon-wrong", Some(("carol", "c4rol"))),
            bad
        );
        let (code, stderr) = mosquitto_pub(&broker, v, None, &["-t", "anon/t", "-m", "x"]);
        assert_eq!(code, 0, "{v:?}: {stderr}");
        let (code, stderr) = mosquitto_pub(&broker, v, carol, &["-q", "1", "-t", "a", "-m", "x"]);
        assert_eq!(code, 0, "{v:?}: {stderr}");
    }
    drop(broker);

    let closed = Broker::start_with(&["--allow-anonymous", "false"]);
    for v in [V::V311, V::V5] {
        let not_authorized = if v == V::V5 { 0x87 } else { 5 };
        assert_eq!(refused(&closed, v, "closed-anon", None), not_authorized);
        assert_eq!(refused(&closed, v, "closed-named", carol), not_authorized);
    }
}

// ---------------------------------------------------------------------------------------
// 2. The ACL matrix

/// Every user of the matrix, with the password `USER-pw`.
const MATRIX_USERS: [&str; 6] = ["monitor", "admin", "alice", "bob", "eve", "dev"];

/// One ACL for all the rows (each row names the line that decides it).
const MATRIX_ACL: &str = "\
# Anonymous clients (allow_anonymous = true on this broker).
topic read public/#

user monitor
topic read #
topic read $SYS/#

user admin
topic readwrite #
topic readwrite $SYS/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic read news/+
topic write reports/alice

user bob
topic read bob/in
topic write bob/out

user eve
topic deny devices/#

pattern readwrite devices/%c/#
pattern deny devices/%c/locked
pattern write users/%u/up
pattern read users/%u/down/#
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Publish rows: accepted (5.0: PUBACK/PUBREC 0x00) and the monitor, which may read
    /// everything, receives it. Subscribe rows: the SUBACK grants the filter and the message
    /// the admin publishes to the row's topic is received.
    Delivered,
    /// Publish rows: dropped (5.0: PUBACK/PUBREC 0x87; 3.1.1: the normal acknowledgement
    /// [MQTT-3.3.5-2]), so the monitor does not receive it. Subscribe rows: the SUBACK
    /// refuses the filter (5.0: 0x87, 3.1.1: 0x80).
    Refused,
    /// Subscribe rows: the SUBACK grants the filter, but this message is not delivered
    /// (read access is checked per message).
    Withheld,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    /// PUBLISH at QoS .0 to topic .1.
    Pub(u8, &'static str),
    /// PUBLISH at QoS .0 to topic .1 with RETAIN; a subscriber that comes later (allowed to
    /// read it) gets it only if it was accepted.
    PubRetained(u8, &'static str),
    /// 5.0: PUBLISH at QoS .0 to topic .1 setting Topic Alias 1 (payload `…-named`), then
    /// with an empty topic and the alias: both must be decided alike.
    PubAlias(u8, &'static str),
    /// SUBSCRIBE (QoS 1) to filter .0; then the admin publishes to topic .1.
    Sub(&'static str, &'static str),
    /// The admin publishes a retained message to topic .1; then SUBSCRIBE to filter .0.
    SubRetained(&'static str, &'static str),
}

struct Row {
    /// The ACL lines that decide the row ("; " between lines).
    acl: &'static str,
    /// "" for an anonymous client.
    user: &'static str,
    client_id: &'static str,
    v: V,
    action: Action,
    expect: Expect,
    why: &'static str,
}

const fn row(
    acl: &'static str,
    user: &'static str,
    client_id: &'static str,
    v: V,
    action: Action,
    expect: Expect,
    why: &'static str,
) -> Row {
    Row {
        acl,
        user,
        client_id,
        v,
        action,
        expect,
        why,
    }
}

impl Row {
    fn is_publish(&self) -> bool {
        matches!(self.action, Pub(..) | PubRetained(..) | PubAlias(..))
    }
}

use Action::{Pub, PubAlias, PubRetained, Sub, SubRetained};
use Expect::{Delivered, Refused, Withheld};
use V::{V311, V5};

#[rustfmt::skip]
const MATRIX: &[Row] = &[
    // ---- PUBLISH (write access), observed by the monitor subscribed to `#` and `$SYS/test/#`.
    row("topic readwrite alice/#", "alice", "alice-p", V5, Pub(1, "alice/a"), Delivered, "a user's readwrite rule"),
    row("topic readwrite alice/#", "alice", "alice-p", V311, Pub(1, "alice/b/c"), Delivered, "'#' covers several levels"),
    row("topic readwrite alice/#", "alice", "alice-p", V5, Pub(1, "alice"), Delivered, "'a/#' also matches the parent level 'a'"),
    row("topic deny alice/secret", "alice", "alice-p", V5, Pub(1, "alice/secret"), Refused, "deny is tried before readwrite: PUBACK 0x87"),
    row("topic deny alice/secret", "alice", "alice-p", V311, Pub(1, "alice/secret"), Refused, "3.1.1: a normal PUBACK [MQTT-3.3.5-2], not delivered"),
    row("topic deny alice/secret", "alice", "alice-p", V5, Pub(2, "alice/secret"), Refused, "QoS 2: PUBREC 0x87 ends the exchange"),
    row("topic deny alice/secret", "alice", "alice-p", V311, Pub(2, "alice/secret"), Refused, "3.1.1 QoS 2: normal PUBREC/PUBCOMP, not delivered"),
    row("topic deny alice/secret", "alice", "alice-p", V5, Pub(0, "alice/secret"), Refused, "QoS 0: nothing to answer, dropped"),
    row("topic read news/+", "alice", "alice-p", V5, Pub(1, "news/today"), Refused, "a read rule does not grant write"),
    row("topic write reports/alice", "alice", "alice-p", V5, Pub(1, "reports/alice"), Delivered, "a write-only rule grants write"),
    row("topic write bob/out", "alice", "alice-p", V5, Pub(1, "bob/out"), Refused, "another user's rule is not alice's"),
    row("topic write bob/out", "bob", "bob-p", V5, Pub(1, "bob/out"), Delivered, "bob's own write rule"),
    row("topic read bob/in", "bob", "bob-p", V311, Pub(1, "bob/in"), Refused, "read-only, 3.1.1: normal PUBACK, dropped"),
    row("pattern readwrite devices/%c/#", "dev", "dev-7", V5, Pub(1, "devices/dev-7/temp"), Delivered, "%c is the client id"),
    row("pattern readwrite devices/%c/#", "dev", "dev-7", V311, Pub(1, "devices/dev-8/temp"), Refused, "%c does not cover another device"),
    row("pattern deny devices/%c/locked", "dev", "dev-7", V5, Pub(1, "devices/dev-7/locked"), Refused, "deny patterns come before grants"),
    row("pattern write users/%u/up", "dev", "dev-7", V5, Pub(1, "users/dev/up"), Delivered, "%u is the user name"),
    row("pattern write users/%u/up", "dev", "dev-7", V5, Pub(1, "users/alice/up"), Refused, "%u does not cover another user"),
    row("pattern read users/%u/down/#", "dev", "dev-7", V5, Pub(1, "users/dev/down/cmd"), Refused, "a read pattern does not grant write"),
    row("topic deny devices/#; pattern readwrite devices/%c/#", "eve", "eve-1", V5, Pub(1, "devices/eve-1/x"), Refused, "the user's own deny decides before patterns"),
    row("pattern readwrite devices/%c/#", "alice", "alice-dev", V5, Pub(1, "devices/alice-dev/x"), Delivered, "no user rule matches: patterns decide"),
    row("pattern write users/%u/up", "dev", "dev+1", V5, Pub(1, "users/dev/up"), Refused, "a wildcard in the client id: patterns refuse all"),
    row("topic readwrite $SYS/#", "admin", "admin-p", V5, Pub(1, "$SYS/test/x"), Refused, "$SYS is never writable, whatever the rules"),
    row("topic readwrite alice/#", "alice", "alice-p", V311, PubRetained(1, "alice/kept"), Delivered, "an accepted retained message is kept"),
    row("topic deny alice/secret", "alice", "alice-p", V5, PubRetained(1, "alice/secret"), Refused, "a refused retained message is not kept"),
    row("topic deny alice/secret", "alice", "alice-p", V311, PubRetained(1, "alice/secret"), Refused, "nor from 3.1.1 (normal PUBACK)"),
    row("topic readwrite alice/#", "alice", "alice-p", V5, PubAlias(1, "alice/aliased"), Delivered, "a topic alias is resolved, then judged"),
    row("topic deny alice/secret", "alice", "alice-p", V5, PubAlias(1, "alice/secret"), Refused, "an alias of a denied topic: 0x87 again"),
    row("topic read public/#", "", "anon-p", V5, Pub(1, "public/x"), Refused, "anonymous rules: read only"),
    row("pattern readwrite devices/%c/#", "", "anon-dev", V311, Pub(1, "devices/anon-dev/x"), Delivered, "%c patterns apply to anonymous clients"),
    row("pattern write users/%u/up", "", "anon-p", V5, Pub(1, "users/anon-p/up"), Refused, "%u patterns never apply to anonymous clients"),
    // ---- SUBSCRIBE (filter granted or refused) and per-message read access.
    row("topic readwrite alice/#", "alice", "alice-s1", V5, Sub("alice/#", "alice/x"), Delivered, "a filter the user may read"),
    row("topic deny alice/secret", "alice", "alice-s2", V311, Sub("alice/#", "alice/secret"), Withheld, "granted filter, a denied topic in it"),
    row("topic write bob/out; topic read bob/in", "alice", "alice-s3", V5, Sub("bob/#", "bob/in"), Refused, "nothing under bob/ readable: SUBACK 0x87"),
    row("topic write bob/out; topic read bob/in", "alice", "alice-s4", V311, Sub("bob/#", "bob/in"), Refused, "3.1.1: SUBACK 0x80"),
    row("topic read news/+", "alice", "alice-s5", V5, Sub("news/#", "news/a/b"), Withheld, "wider filter: news/a/b is not news/+"),
    row("topic read news/+", "alice", "alice-s6", V311, Sub("news/#", "news/a"), Delivered, "wider filter: news/a is news/+"),
    row("topic read news/+", "alice", "alice-s7", V5, Sub("news/+", "news/b"), Delivered, "exactly the read rule"),
    row("topic write bob/out", "bob", "bob-s8", V5, Sub("bob/out", "bob/out"), Refused, "write-only: SUBACK 0x87"),
    row("topic read bob/in", "bob", "bob-s9", V311, Sub("bob/in", "bob/in"), Delivered, "read-only rule"),
    row("pattern readwrite devices/%c/#", "dev", "dev-10", V5, Sub("devices/#", "devices/dev-10/t"), Delivered, "devices/# wider than allowed: own topic arrives"),
    row("pattern readwrite devices/%c/#", "dev", "dev-11", V5, Sub("devices/#", "devices/dev-99/t"), Withheld, "devices/# wider than allowed: others' withheld"),
    row("pattern readwrite devices/%c/#", "dev", "dev-12", V311, SubRetained("devices/+/state", "devices/dev-12/state"), Delivered, "retained, readable"),
    row("pattern readwrite devices/%c/#", "dev", "dev-13", V5, SubRetained("devices/+/state", "devices/dev-98/state"), Withheld, "retained messages are checked for read too"),
    row("pattern read users/%u/down/#", "dev", "dev-14", V5, Sub("users/dev/down/#", "users/dev/down/cmd"), Delivered, "%u read pattern"),
    row("pattern read users/%u/down/#", "dev", "dev-15", V311, Sub("users/alice/down/#", "users/alice/down/cmd"), Refused, "%u of another user: 0x80"),
    row("topic deny devices/#", "eve", "eve-16", V5, Sub("devices/eve-16/#", "devices/eve-16/x"), Refused, "own deny covers the filter: 0x87"),
    row("topic readwrite alice/#", "alice", "alice-s17", V5, Sub("$share/g/alice/#", "alice/shared"), Delivered, "shared: decided on the filter"),
    row("topic write bob/out; topic read bob/in", "alice", "alice-s18", V5, Sub("$share/g/bob/#", "bob/in"), Refused, "shared, unreadable filter: 0x87"),
    row("topic readwrite alice/#", "alice", "alice-s19", V5, Sub("#", "alice/wide"), Delivered, "'#' granted: alice's topics arrive"),
    row("topic read bob/in", "alice", "alice-s20", V311, Sub("#", "bob/in"), Withheld, "'#' granted: bob's topics withheld"),
    row("topic read public/#", "", "anon-s21", V5, Sub("public/#", "public/news"), Delivered, "the anonymous read rule"),
    row("topic readwrite alice/#", "", "anon-s22", V311, Sub("alice/#", "alice/anon"), Refused, "user rules are not for anonymous clients: 0x80"),
];

/// The matrix through one broker: each publish row connects its client (3.1.1 or 5.0),
/// publishes and checks the acknowledgement; a monitor allowed to read everything shows
/// which messages got through. Each subscribe row connects a subscriber, checks the SUBACK
/// code and whether the message the admin publishes reaches it (retained ones first).
/// Then the will: its write check at CONNECT, and its delivery to readers only; and the
/// counters.
#[test]
fn acl_matrix_through_the_broker() {
    // Each row's ACL lines are in the file.
    let acl_lines: Vec<&str> = MATRIX_ACL.lines().collect();
    for (i, r) in MATRIX.iter().enumerate() {
        for line in r.acl.split("; ") {
            assert!(
                acl_lines.contains(&line),
                "row {i}: {line:?} is not in the ACL"
            );
        }
    }
    let dir = Dir::new("matrix");
    let passwords: Vec<(String, String)> = MATRIX_USERS
        .iter()
        .map(|u| (u.to_string(), format!("{u}-pw")))
        .collect();
    let users: Vec<(&str, &str)> = passwords
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let passwd = password_file(&dir, &users);
    let acl = dir.file("acl");
    fs::write(&acl, MATRIX_ACL).unwrap();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let broker = Broker::start_with(&[
        "--password-file",
        text(&passwd),
        "--acl-file",
        text(&acl),
        "--allow-anonymous",
        "true",
        "--metrics",
        &metrics,
    ]);
    // "" is anonymous: no user name, no password.
    let login = |user: &str| users.iter().find(|(u, _)| *u == user).map(|&(u, p)| (u, p));
    let payload = |i: usize| format!("matrix-row-{i}");
    let named = |i: usize| format!("matrix-row-{i}-named");
    let mut failures: Vec<String> = Vec::new();

    let mut monitor = connected(&broker, V5, "monitor", login("monitor"));
    assert_eq!(monitor.subscribe(&["#", "$SYS/test/#"]), vec![1, 1]);
    let mut admin = connected(&broker, V5, "admin", login("admin"));

    // PUBLISH rows, one client at a time.
    for (i, r) in MATRIX.iter().enumerate() {
        let (qos, topic, retain, alias) = match r.action {
            Pub(qos, topic) => (qos, topic, false, false),
            PubRetained(qos, topic) => (qos, topic, true, false),
            PubAlias(qos, topic) => (qos, topic, false, true),
            _ => continue,
        };
        let mut client = connected(&broker, r.v, r.client_id, login(r.user));
        let code = if alias {
            let named = client.publish_aliased(topic, Some(1), qos, false, &named(i));
            let aliased = client.publish_aliased("", Some(1), qos, false, &payload(i));
            if named != aliased {
                failures.push(format!(
                    "row {i} ({}): {named:?} with the topic name, {aliased:?} with its alias",
                    r.why
                ));
            }
            aliased
        } else {
            client.publish(topic, qos, retain, &payload(i))
        };
        let expected = match (qos, r.v, r.expect) {
            (0, _, _) => None,
            // 5.0 says why; 3.1.1 cannot [MQTT-3.3.5-2].
            (_, V5, Refused) => Some(0x87),
            _ => Some(0),
        };
        if code != expected {
            failures.push(format!(
                "row {i} ({}): ack code {code:?}, expected {expected:?}",
                r.why
            ));
        }
        client.disconnect();
    }
    let delivered: Vec<usize> = (0..MATRIX.len())
        .filter(|&i| MATRIX[i].is_publish() && MATRIX[i].expect == Delivered)
        .collect();
    for &i in &delivered {
        if !monitor.got(&payload(i), WAIT) {
            failures.push(format!(
                "row {i} ({}): not delivered to the monitor",
                MATRIX[i].why
            ));
        }
    }
    thread::sleep(QUIET);
    let seen: Vec<(String, String)> = monitor.received().to_vec();
    for &i in &delivered {
        // Aliased messages reach the monitor under their topic name.
        if let PubAlias(_, topic) = MATRIX[i].action {
            for p in [named(i), payload(i)] {
                if !seen.contains(&(topic.to_string(), p.clone())) {
                    failures.push(format!("row {i}: {p} not delivered on {topic}"));
                }
            }
        }
    }
    for (i, r) in MATRIX.iter().enumerate() {
        if r.is_publish() && r.expect == Refused {
            let sent = |p: &String| *p == payload(i) || *p == named(i);
            if let Some((topic, _)) = seen.iter().find(|(_, p)| sent(p)) {
                failures.push(format!(
                    "row {i} ({}): refused, yet delivered on {topic}",
                    r.why
                ));
            }
        }
    }

    // Retained messages as a subscriber that comes later gets them [MQTT-3.3.1-6]: the
    // accepted ones only (a refused PUBLISH must not replace or set one either).
    let mut late = connected(&broker, V311, "admin-late", login("admin"));
    assert_eq!(late.subscribe(&["alice/#"]), vec![1]);
    for (i, r) in MATRIX.iter().enumerate() {
        let PubRetained(_, topic) = r.action else {
            continue;
        };
        let got = late.got(
            &payload(i),
            if r.expect == Delivered { WAIT } else { QUIET },
        );
        let on_topic = late.received().iter().any(|(t, _)| t == topic);
        match r.expect {
            Delivered if !got => {
                failures.push(format!("row {i} ({}): retained message missing", r.why))
            }
            Refused if got || on_topic => failures.push(format!(
                "row {i} ({}): refused, yet retained on {topic}",
                r.why
            )),
            _ => {}
        }
    }
    late.disconnect();

    // SUBSCRIBE rows: retained messages first, then every subscriber, then the messages.
    for (i, r) in MATRIX.iter().enumerate() {
        if let SubRetained(_, topic) = r.action {
            assert_eq!(
                admin.publish(topic, 1, true, &payload(i)),
                Some(0),
                "retained row {i}"
            );
        }
    }
    let mut subscribers: Vec<(usize, Mqtt)> = Vec::new();
    for (i, r) in MATRIX.iter().enumerate() {
        let (Sub(filter, _) | SubRetained(filter, _)) = r.action else {
            continue;
        };
        let mut client = connected(&broker, r.v, r.client_id, login(r.user));
        let code = client.subscribe(&[filter])[0];
        let expected = match (r.expect, r.v) {
            (Refused, V5) => 0x87,
            (Refused, V311) => 0x80,
            _ => 1,
        };
        if code != expected {
            failures.push(format!(
                "row {i} ({}): SUBACK {code:#x}, expected {expected:#x}",
                r.why
            ));
        }
        subscribers.push((i, client));
    }
    for (i, r) in MATRIX.iter().enumerate() {
        if let Sub(_, topic) = r.action {
            assert_eq!(
                admin.publish(topic, 1, false, &payload(i)),
                Some(0),
                "row {i}"
            );
        }
    }
    for (i, client) in &mut subscribers {
        if MATRIX[*i].expect == Delivered && !client.got(&payload(*i), WAIT) {
            failures.push(format!("row {i} ({}): not delivered", MATRIX[*i].why));
        }
    }
    thread::sleep(QUIET);
    for (i, client) in &mut subscribers {
        if MATRIX[*i].expect != Delivered && client.got(&payload(*i), Duration::ZERO) {
            failures.push(format!("row {i} ({}): delivered", MATRIX[*i].why));
        }
    }
    for (_, client) in subscribers {
        client.disconnect();
    }

    // The will is checked for write access at CONNECT: a will alice could not publish
    // herself is refused with CONNACK 0x87 / 5 [MQTT-3.1.4-2]; her own topic is fine.
    let alice = login("alice");
    for v in [V5, V311] {
        let not_authorized = if v == V5 { 0x87 } else { 5 };
        match connect(&broker, v, "alice-will", alice, Some("bob/out")) {
            Err(code) if code == not_authorized => {}
            Err(code) => failures.push(format!("{v:?} will on bob/out: CONNACK {code:#x}")),
            Ok(_) => failures.push(format!("{v:?} will on bob/out: accepted")),
        }
        match connect(&broker, v, "alice-will", alice, Some("alice/will")) {
            Ok(client) => client.disconnect(),
            Err(code) => failures.push(format!("{v:?} will on alice/will: CONNACK {code:#x}")),
        }
    }
    // An accepted will, published when alice's connection drops without DISCONNECT, goes
    // to the subscribers that may read it: the monitor, not bob (his `#` is granted for
    // bob/in only).
    let mut bob_all = connected(&broker, V5, "bob-all", login("bob"));
    assert_eq!(bob_all.subscribe(&["#"]), vec![1]);
    // mosquitto_sub with a will, killed with SIGKILL once subscribed: no DISCONNECT.
    let port = broker.port.to_string();
    let mut willer = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-d",
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .args([&port, "-i", "alice-willer"])
        .args(["-u", "alice", "-P", "alice-pw", "-t", "alice/inbox"])
        .args(["--will-topic", "alice/will", "--will-payload", "gone"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mosquitto_sub");
    let (tx, rx) = mpsc::channel();
    let stdout = willer.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("received SUBACK") {
                let _ = tx.send(());
            }
        }
    });
    let subscribed = rx.recv_timeout(WAIT).is_ok();
    let _ = willer.kill();
    let _ = willer.wait();
    if !subscribed {
        failures.push("mosquitto_sub with a will on alice/will: no SUBACK".into());
    }
    let will = ("alice/will".to_string(), "gone".to_string());
    let deadline = Instant::now() + WAIT;
    while !monitor.received().contains(&will) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if !monitor.received().contains(&will) {
        failures.push("alice's will did not reach the monitor".into());
    }
    thread::sleep(QUIET);
    if bob_all.received().contains(&will) {
        failures.push("alice's will reached bob, who may not read alice/will".into());
    }
    // bob's `#` does deliver what he may read.
    assert_eq!(admin.publish("bob/in", 1, false, "for-bob"), Some(0));
    if !bob_all.got("for-bob", WAIT) {
        failures.push("bob's # subscription got nothing he may read".into());
    }
    bob_all.disconnect();
    assert!(monitor.is_open(), "the monitor stays connected");
    assert!(failures.is_empty(), "ACL matrix:\n{}", failures.join("\n"));

    // Counters: each refused filter, and at least each refused publish (deliveries a
    // subscriber may not read count too); the two refused wills are CONNECT refusals.
    let refused_filters = MATRIX
        .iter()
        .filter(|r| !r.is_publish() && r.expect == Refused)
        .count() as u64;
    assert_eq!(
        wait_metric(
            metrics_port,
            "subscriptions_not_authorized",
            refused_filters
        ),
        Some(refused_filters)
    );
    let refused_publishes = MATRIX
        .iter()
        .filter(|r| r.is_publish() && r.expect == Refused)
        .count() as u64;
    let body = http_get(metrics_port, "/metrics");
    let dropped = metric(&body, "dropped_not_authorized").unwrap_or(0);
    assert!(
        dropped >= refused_publishes,
        "dropped_not_authorized {dropped}"
    );
    assert_eq!(wait_metric(metrics_port, "auth_failures", 2), Some(2));
    println!(
        "ACL matrix: {} rows ({} publish, {} subscribe) + 5 will checks",
        MATRIX.len(),
        MATRIX.iter().filter(|r| r.is_publish()).count(),
        MATRIX.iter().filter(|r| !r.is_publish()).count()
    );
}

// ---------------------------------------------------------------------------------------
// 3. Kafka

/// A publish the ACL refuses never reaches a Kafka mapping: of four publishes on a mapped
/// topic (5.0 and 3.1.1, allowed and denied), exactly the two allowed are records.
#[test]
fn a_denied_publish_never_reaches_kafka() {
    let bootstrap = kafka::bootstrap();
    let topic = kafka::unique("auth-denied");
    kafka::create_topic(&bootstrap, &topic, 1);
    let dir = Dir::new("kafka");
    let passwd = password_file(&dir, &[("sensor", "sensor-pw")]);
    let acl = dir.file("acl");
    fs::write(&acl, "user sensor\ntopic write plant/allowed/#\n").unwrap();
    let broker = Broker::start_with_config(
        &format!(
            "[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\n\n\
             [kafka.clusters.main]\nbootstrap = \"{bootstrap}\"\n\n\
             [[kafka.mapping]]\nmqtt = \"plant/#\"\ntopic = \"{topic}\"\n",
            text(&passwd),
            text(&acl)
        ),
        &[],
    );
    let sensor = Some(("sensor", "sensor-pw"));
    let mut v5 = connected(&broker, V5, "sensor-5", sensor);
    let mut v4 = connected(&broker, V311, "sensor-4", sensor);
    assert_eq!(
        v5.publish("plant/denied/1", 1, false, "denied-v5"),
        Some(0x87)
    );
    assert_eq!(
        v4.publish("plant/denied/2", 1, false, "denied-v311"),
        Some(0)
    );
    // ack = "kafka" (the default): these PUBACKs come once Kafka has the records.
    assert_eq!(
        v5.publish("plant/allowed/1", 1, false, "allowed-v5"),
        Some(0)
    );
    assert_eq!(
        v4.publish("plant/allowed/2", 1, false, "allowed-v311"),
        Some(0)
    );
    let records = kafka::read_topic(&bootstrap, &topic, 2, Duration::from_secs(30));
    let mut payloads: Vec<&str> = records.iter().map(|r| r.payload_str()).collect();
    payloads.sort();
    assert_eq!(payloads, ["allowed-v311", "allowed-v5"]);
    v5.disconnect();
    v4.disconnect();
}

// ---------------------------------------------------------------------------------------
// 4. SIGHUP

/// `kill -HUP` reloads both files without dropping anyone: a user added to the password
/// file connects; an already connected client gets the new ACL (a topic it could not
/// publish to is delivered, a topic another client read is withheld); a broken ACL file
/// on the next reload is logged with its line and the rules loaded before stay in force.
#[test]
fn sighup_reloads_password_and_acl_files() {
    let dir = Dir::new("sighup");
    let passwd = password_file(&dir, &[("monitor", "monitor-pw"), ("alice", "alice-pw")]);
    let acl = dir.file("acl");
    let before = "user monitor\ntopic read #\n\nuser alice\ntopic readwrite alice/#\n";
    fs::write(&acl, before).unwrap();
    let broker = Broker::start_capturing_stderr(&[
        "--password-file",
        text(&passwd),
        "--acl-file",
        text(&acl),
    ]);
    let (monitor_login, alice) = (Some(("monitor", "monitor-pw")), Some(("alice", "alice-pw")));
    let mut monitor = connected(&broker, V5, "hup-monitor", monitor_login);
    assert_eq!(monitor.subscribe(&["#"]), vec![1]);
    let mut writer = connected(&broker, V5, "hup-alice", alice);
    let mut reader = connected(&broker, V311, "hup-alice-reader", alice);
    assert_eq!(reader.subscribe(&["alice/#"]), vec![1]);

    // Before: extra/ is refused, alice/ is read by the reader; dave is unknown.
    assert_eq!(writer.publish("extra/1", 1, false, "extra-1"), Some(0x87));
    assert_eq!(writer.publish("alice/1", 1, false, "alice-1"), Some(0));
    assert!(reader.got("alice-1", WAIT));
    assert!(monitor.got("alice-1", WAIT));
    assert_eq!(
        refused(&broker, V5, "hup-dave", Some(("dave", "dave-pw"))),
        0x86
    );

    // A user added, alice may write extra/ and no longer read alice/, dave has his own.
    ferrymq_passwd(&passwd, "dave", "dave-pw");
    let after =
        "user monitor\ntopic read #\n\nuser alice\ntopic write alice/#\ntopic write extra/#\n\n\
                 user dave\ntopic readwrite dave/#\n";
    write_atomic(&acl, after);
    broker.signal("HUP");
    // Both files are read in one reload: once dave gets in, the new ACL is in force.
    let deadline = Instant::now() + WAIT;
    let mut dave = loop {
        match connect(&broker, V5, "hup-dave", Some(("dave", "dave-pw")), None) {
            Ok(client) => break client,
            Err(code) => {
                assert!(
                    Instant::now() < deadline,
                    "dave still refused ({code:#x}) after SIGHUP"
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(dave.publish("dave/1", 1, false, "dave-1"), Some(0));
    assert!(monitor.got("dave-1", WAIT));

    // The clients connected before the reload are still connected and judged by the new
    // rules.
    assert!(
        monitor.is_open() && writer.is_open() && reader.is_open(),
        "dropped by SIGHUP"
    );
    assert_eq!(writer.publish("extra/2", 1, false, "extra-2"), Some(0));
    assert!(monitor.got("extra-2", WAIT), "now allowed: delivered");
    assert_eq!(writer.publish("alice/2", 1, false, "alice-2"), Some(0));
    assert!(monitor.got("alice-2", WAIT));
    thread::sleep(QUIET);
    assert!(
        !reader.got("alice-2", Duration::ZERO),
        "read revoked: withheld"
    );
    assert!(
        !monitor.got("extra-1", Duration::ZERO),
        "refused before the reload"
    );

    // A broken ACL file: the reload fails, the log says which line, and the rules loaded
    // before stay (here the broken file would have taken extra/ away again).
    let broken =
        "user monitor\ntopic read #\nuser alice\ntopic write alice/#\ntopic sideways extra/#\n";
    write_atomic(&acl, broken);
    broker.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while !broker.stderr_text().contains("reload failed") {
        assert!(
            Instant::now() < deadline,
            "no log line for the failed reload"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let log = broker.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap()
        .to_string();
    assert!(line.contains(&format!("{}:5", acl.display())), "{line}");
    assert_eq!(
        writer.publish("extra/3", 1, false, "extra-3"),
        Some(0),
        "old rules kept"
    );
    assert!(monitor.got("extra-3", WAIT));
    assert_eq!(dave.publish("dave/2", 1, false, "dave-2"), Some(0));
    assert!(monitor.is_open() && writer.is_open() && reader.is_open() && dave.is_open());
    // A new connection is judged by the kept rules too.
    let mut late = connected(&broker, V311, "hup-late", alice);
    assert_eq!(late.publish("extra/4", 1, false, "extra-4"), Some(0));
    assert!(monitor.got("extra-4", WAIT));
    for client in [monitor, writer, reader, dave, late] {
        client.disconnect();
    }
}

// ---------------------------------------------------------------------------------------
// 5. Limits

/// `--subscriptions-per-client-max 2`: a third filter gets SUBACK 0x97 Quota exceeded
/// (5.0 §3.9.3) and 0x80 Failure in 3.1.1 (§3.9.3), while re-subscribing a filter the
/// client has replaces it and is granted. `--publish-rate-max 50`: a client sending 200
/// QoS 1 messages as fast as it can is read at 50 a second (after a burst of 50), so it
/// takes at least ~3 s, and every message arrives: nothing is dropped.
#[test]
fn subscription_quota_and_publish_rate() {
    let broker = Broker::start_with(&[
        "--subscriptions-per-client-max",
        "2",
        "--publish-rate-max",
        "50",
    ]);
    let mut v5 = connected(&broker, V5, "quota-5", None);
    // One code per filter, in order [MQTT-3.9.3-1].
    assert_eq!(v5.subscribe(&["q/1", "q/2", "q/3"]), vec![1, 1, 0x97]);
    assert_eq!(v5.subscribe(&["q/4"]), vec![0x97]);
    assert_eq!(
        v5.subscribe(&["q/1"]),
        vec![1],
        "replacing a filter is not a new one"
    );
    let mut v4 = connected(&broker, V311, "quota-4", None);
    assert_eq!(v4.subscribe(&["q/1", "q/2"]), vec![1, 1]);
    assert_eq!(v4.subscribe(&["q/3"]), vec![0x80]);
    // The refused filters receive nothing; the granted ones do.
    let mut publisher = connected(&broker, V5, "quota-pub", None);
    // No subscriber has q/3: 0x00, or 0x10 No matching subscribers.
    let code = publisher.publish("q/3", 1, false, "to-q3");
    assert!(matches!(code, Some(0) | Some(0x10)), "{code:?}");
    assert_eq!(publisher.publish("q/2", 1, false, "to-q2"), Some(0));
    assert!(v5.got("to-q2", WAIT) && v4.got("to-q2", WAIT));
    thread::sleep(QUIET);
    assert!(!v5.got("to-q3", Duration::ZERO) && !v4.got("to-q3", Duration::ZERO));
    v5.disconnect();
    v4.disconnect();

    const N: usize = 200;
    let mut subscriber = connected(&broker, V311, "rate-sub", None);
    assert_eq!(subscriber.subscribe(&["rate/#"]), vec![1]);
    let mut fast = connected(&broker, V311, "rate-pub", None);
    let Mqtt::V4(m) = &mut fast else {
        unreachable!()
    };
    let started = Instant::now();
    // Queued as fast as rumqttc takes them (up to 100 in flight): the broker decides the pace.
    for i in 0..N {
        m.client
            .publish("rate/x", qos4(1), false, format!("rate-{i}").into_bytes())
            .unwrap();
    }
    for _ in 0..N {
        m.incoming("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_)));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed > Duration::from_millis(2500),
        "{N} QoS 1 messages at 50/s took {elapsed:?}: not limited"
    );
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    // The last one was acknowledged; the copies to the subscriber follow.
    subscriber.got(&format!("rate-{}", N - 1), WAIT);
    let payloads: Vec<String> = subscriber
        .received()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("rate-{i}")).collect();
    assert_eq!(payloads, expected, "every message, in order, none dropped");
    println!("{N} QoS 1 messages at --publish-rate-max 50: {elapsed:?}");
    fast.disconnect();
    subscriber.disconnect();
    publisher.disconnect();
}
