//! TLS listeners end to end, against the real `ferrymq` binary (two shards where the machine
//! has two CPUs). The certificates are made here with rcgen: a CA, a server certificate for
//! 127.0.0.1 and localhost, a client certificate with CN "device-42", and the same client
//! name under another CA that the broker does not trust.
//!
//! Clients: `mosquitto_pub` / `mosquitto_sub` (OpenSSL), rumqttc with a rustls
//! configuration, a raw rustls client speaking the broker's own codec (exact packets,
//! pipelining), plain TCP, and `openssl s_client` for TLS 1.1.
//!
//! Every broker here also has a plain listener (the harness's listener[0]); the TLS
//! listener is listener[1].

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{encode, qos1_publish, try_read_until_closed, RawClient};
use common::{free_port, id_on, kafka, run_bounded, shard_count, Broker};
use ferrymq::protocol::{
    Connect, Packet, Protocol, PubAck, Publish, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Longest wait for anything that must happen.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Certificates

/// The test PKI, as PEM files in a directory of its own, removed when dropped.
struct Pki {
    dir: PathBuf,
}

type Issuer = (rcgen::Certificate, KeyPair);

fn new_ca(name: &str) -> Issuer {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let certificate = params.self_signed(&key).unwrap();
    (certificate, key)
}

/// A certificate signed by `issuer`: its PEM and its key's PEM.
fn new_leaf(
    issuer: &Issuer,
    common_name: &str,
    alternative_names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = alternative_names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let certificate = params.signed_by(&key, &issuer.0, &issuer.1).unwrap();
    (certificate.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(kafka::unique("ferrymq-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();

        let ca = new_ca("ferrymq test CA");
        write("ca.pem", &ca.0.pem());
        let (cert, key) = new_leaf(
            &ca,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = new_leaf(&ca, "device-42", &[], ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", &cert);
        write("client.key", &key);

        // The same name under a CA the broker does not know.
        let rogue_ca = new_ca("rogue CA");
        let (cert, key) = new_leaf(
            &rogue_ca,
            "device-42",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("rogue.pem", &cert);
        write("rogue.key", &key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// A `[[listener]]` table for TLS on `port`, plus `extra` keys.
    fn listener(&self, port: u16, extra: &str) -> String {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
            self.path("server.pem"),
            self.path("server.key"),
        )
    }

    /// `tls_client_ca = "…/ca.pem"`
    fn client_ca(&self) -> String {
        format!("tls_client_ca = \"{}\"", self.path("ca.pem"))
    }

    /// A rustls client configuration trusting the test CA, with the client certificate
    /// `identity` ("client" or "rogue") if given, speaking `versions`.
    fn client_config(
        &self,
        identity: Option<&str>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const BOTH_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A broker with a TLS listener on a port of its own: (broker, TLS port). `tls_extra` goes
/// into the TLS listener's table, `config` after it.
fn start(pki: &Pki, tls_extra: &str, config: &str, args: &[&str]) -> (Broker, u16) {
    let tls_port = free_port();
    let broker = Broker::start_with_config(
        &format!("{}\n{config}", pki.listener(tls_port, tls_extra)),
        args,
    );
    (broker, tls_port)
}

// ---------------------------------------------------------------------------------------
// A raw MQTT client over rustls (or plain TCP)

/// A TLS connection to `port` with `config` (the handshake runs with the first write).
fn tls_client(port: u16, config: Arc<ClientConfig>, protocol: Protocol) -> RawClient {
    let tcp = common::raw::open(("127.0.0.1", port), WAIT);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let session = ClientConnection::new(config, name).unwrap();
    let socket = tcp.try_clone().unwrap();
    RawClient::over(tcp, StreamOwned::new(session, socket), protocol)
}

fn plain_client(port: u16, protocol: Protocol) -> RawClient {
    RawClient::open(("127.0.0.1", port), protocol, WAIT)
}

fn subscription(filter: &str) -> Subscribe {
    Subscribe::new(
        1,
        vec![Subscription {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    )
}

/// Subscribes to `topic`, publishes `payload` at QoS 1 to it and gets both the PUBACK and
/// the message back (acknowledging it), in either order.
fn round_trip(client: &mut RawClient, topic: &str, payload: &[u8]) {
    client
        .try_send(&Packet::Subscribe(subscription(topic)))
        .unwrap();
    match client.expect() {
        Packet::SubAck(suback) => assert_eq!(suback.reason_codes, [ReasonCode::GrantedQos1]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    client.try_send(&qos1_publish(topic, 2, payload)).unwrap();
    expect_acked_and_delivered(client, topic, payload);
}

fn expect_acked_and_delivered(client: &mut RawClient, topic: &str, payload: &[u8]) {
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match client.expect() {
            Packet::PubAck(ack) if !acked => {
                assert_eq!(ack.packet_id, 2);
                acked = true;
            }
            Packet::Publish(publish) if !delivered => {
                assert_eq!(&publish.topic[..], topic);
                assert_eq!(publish.payload.len(), payload.len());
                assert!(&publish.payload[..] == payload, "payload of {topic}");
                assert_eq!(publish.qos, QoS::AtLeastOnce);
                client
                    .try_send(&Packet::PubAck(PubAck::new(publish.packet_id)))
                    .unwrap();
                delivered = true;
            }
            other => panic!("expected PUBACK and PUBLISH, got {other:?}"),
        }
    }
}

/// Waits until the broker's `$SYS/broker/<name>` (published every second; the broker must
/// run with `--sys-interval-secs 1`) is at least `at_least`.
fn wait_sys_at_least(broker: &Broker, name: &str, at_least: u64) {
    let mut watcher = plain_client(broker.port, Protocol::V5).connected("");
    let topic = format!("$SYS/broker/{name}");
    watcher
        .try_send(&Packet::Subscribe(subscription(&topic)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "{topic} stayed below {at_least} (last seen {last:?})"
        );
        if let Packet::Publish(publish) = watcher.expect() {
            // $SYS goes out at QoS 0: nothing to acknowledge.
            let value: u64 = std::str::from_utf8(&publish.payload)
                .unwrap()
                .parse()
                .unwrap();
            last = Some(value);
            if value >= at_least {
                return;
            }
        }
    }
}

/// Waits until the broker's stderr has a line containing every one of `parts`.
fn wait_log_line(broker: &Broker, parts: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = broker.stderr_text();
        if let Some(line) = text
            .lines()
            .find(|line| parts.iter().all(|part| line.contains(part)))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// External programs

/// `mosquitto_pub` over TLS to `port`, trusting the test CA, with `args`.
fn mosquitto_pub(pki: &Pki, port: u16, args: &[&str]) -> (ExitStatus, String) {
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["--cafile", &pki.path("ca.pem")])
        .args(args);
    let (status, out, err) = run_bounded(command, None, WAIT);
    (status, format!("{out}{err}"))
}

/// A running `mosquitto_sub -d` whose output lines arrive on a channel as printed.
struct Subscriber {
    child: Child,
    lines: Receiver<String>,
}

impl Subscriber {
    fn start(args: &[&str]) -> Subscriber {
        // Line-buffered, so that "received SUBACK" arrives when it happens.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        Subscriber { child, lines }
    }

    /// Lines until one contains `wanted` (returned), failing after `WAIT`.
    fn wait_for(&self, wanted: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("mosquitto_sub never printed {wanted:?}; it printed {seen:#?}"),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// mosquitto_sub (with the client certificate) and mosquitto_pub (with none: the listener
/// asks for one but does not require it) on ids owned by different shards: a QoS 1 message
/// goes from one to the other over TLS, both ways of hand-off included.
#[test]
fn mosquitto_clients_publish_and_subscribe_qos1_over_tls() {
    let pki = Pki::new();
    let (_broker, tls_port) = start(&pki, &pki.client_ca(), "", &[]);
    let port = tls_port.to_string();
    for (sub_shard, pub_shard) in [(0, 1), (1, 0)] {
        let sub_id = id_on(sub_shard, "tls-sub");
        let pub_id = id_on(pub_shard, "tls-pub");
        let topic = format!("tls/mosquitto/{sub_shard}");
        let subscriber = Subscriber::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            &pki.path("ca.pem"),
            "--cert",
            &pki.path("client.pem"),
            "--key",
            &pki.path("client.key"),
            "-V",
            "mqttv311",
            "-i",
            &sub_id,
            "-q",
            "1",
            "-t",
            &topic,
            "-C",
            "1",
            "-W",
            "10",
        ]);
        subscriber.wait_for("received SUBACK");
        let (status, output) = mosquitto_pub(
            &pki,
            tls_port,
            &[
                "-V", "mqttv5", "-i", &pub_id, "-q", "1", "-t", &topic, "-m", "over TLS", "-d",
            ],
        );
        assert!(status.success(), "mosquitto_pub failed: {output}");
        assert!(output.contains("received PUBACK"), "{output}");
        let delivery = subscriber.wait_for("received PUBLISH");
        assert!(delivery.contains("q1"), "{delivery}");
        assert!(delivery.contains(&topic), "{delivery}");
        assert_eq!(subscriber.wait_for("over TLS"), "over TLS");
    }
}

/// rumqttc (MQTT 3.1.1) given a rustls client configuration, with the client certificate:
/// subscribes, publishes at QoS 1 and gets its own message; then 400 more of 4 KB, so that
/// the broker reads PUBLISHes and PUBACKs while it writes PUBACKs and PUBLISHes on the same
/// TLS session. (Fewer than half of `broker.session_queue_messages_max`: a client that
/// publishes to itself faster than it reads would otherwise be held back by the broker,
/// up to 1 s per message, with or without TLS.)
#[test]
fn rumqttc_over_tls_round_trip() {
    use rumqttc::{Event, Incoming, QoS as QoS4};
    let pki = Pki::new();
    let (broker, tls_port) = start(&pki, &pki.client_ca(), "", &[]);
    let mut options = rumqttc::MqttOptions::new(id_on(1, "tls-rumqttc"), "127.0.0.1", tls_port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(pki.client_config(Some("client"), BOTH_VERSIONS)),
        ));
    let (client, mut connection) = rumqttc::Client::new(options, 16);
    client.subscribe("tls/rumqttc", QoS4::AtLeastOnce).unwrap();
    client
        .publish("tls/rumqttc", QoS4::AtLeastOnce, false, "hello over rustls")
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let (mut connected, mut acked, mut delivered) = (false, false, false);
    while !(connected && acked && delivered) {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(connack)))) => {
                assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
                connected = true;
            }
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked = true,
            Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                assert_eq!(publish.topic, "tls/rumqttc");
                assert_eq!(&publish.payload[..], b"hello over rustls");
                assert_eq!(publish.qos, QoS4::AtLeastOnce);
                delivered = true;
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("rumqttc: {error}"),
            Err(_) => panic!(
                "rumqttc over TLS: connected {connected}, acked {acked}, delivered {delivered}"
            ),
        }
    }

    const N: usize = 400;
    let publisher = client.clone();
    let feeder = std::thread::spawn(move || {
        for i in 0..N {
            let mut payload = format!("{i:06}").into_bytes();
            payload.resize(4096, b'.');
            publisher
                .publish("tls/rumqttc", QoS4::AtLeastOnce, false, payload)
                .unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut acked, mut delivered) = (0, 0);
    while acked < N || delivered < N {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                assert_eq!(&publish.payload[..6], format!("{delivered:06}").as_bytes());
                assert_eq!(publish.payload.len(), 4096);
                delivered += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("rumqttc: {error}"),
            Err(_) => panic!("rumqttc over TLS: {acked} of {N} acked, {delivered} delivered"),
        }
    }
    feeder.join().unwrap();
    client.disconnect().unwrap();
    drop(broker);
}

/// Plain MQTT to the TLS port, and a socket that says nothing there: each is closed (the
/// silent one at the connect timeout), counted and logged, and the broker serves TLS and
/// plain clients as before.
#[test]
fn plain_tcp_to_the_tls_port_is_closed_without_harm() {
    let pki = Pki::new();
    let (mut broker, tls_port) = start(
        &pki,
        "",
        "",
        &["--sys-interval-secs", "1", "--connect-timeout-ms", "500"],
    );

    let mut plain = plain_client(tls_port, Protocol::V3_1_1);
    let _ = plain.try_send(&Packet::Connect(Box::new(Connect::new(
        Protocol::V3_1_1,
        "plain-on-tls",
        0,
    ))));
    // At most a TLS alert comes back, then the end of the connection; never a CONNACK.
    let got = try_read_until_closed(&mut plain.tcp, Vec::new())
        .unwrap_or_else(|(_, e)| panic!("the TLS port kept a plain connection open: {e}"));
    assert!(
        got.is_empty() || got[0] == 0x15,
        "expected nothing or a TLS alert, got {got:02X?}"
    );
    wait_log_line(&broker, &["listener[1]", "does not speak TLS"]);

    let silent = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let since = Instant::now();
    let mut chunk = [0u8; 1024];
    assert_eq!((&silent).read(&mut chunk).unwrap_or(0), 0);
    assert!(
        since.elapsed() < Duration::from_secs(3),
        "{:?}",
        since.elapsed()
    );
    wait_log_line(&broker, &["listener[1]", "no handshake within"]);

    assert!(broker.is_running());
    let config = pki.client_config(None, BOTH_VERSIONS);
    let mut tls = tls_client(tls_port, config, Protocol::V5).connected("after-plain");
    round_trip(&mut tls, "tls/after-plain", b"still fine");
    let mut plain = plain_client(broker.port, Protocol::V5).connected("plain-listener");
    round_trip(&mut plain, "plain/after", b"plain too");
    wait_sys_at_least(&broker, "tls/handshake_failures", 2);
    wait_sys_at_least(&broker, "tls/handshakes", 1);
}

/// TLS 1.2 and 1.3 are served; a client that offers only TLS 1.1 is refused in the
/// handshake (protocol_version alert) and the broker says why.
#[test]
fn tls_1_2_and_1_3_accepted_tls_1_1_refused() {
    let pki = Pki::new();
    let (broker, tls_port) = start(&pki, "", "", &[]);
    for (name, version) in [
        ("1.3", &rustls::version::TLS13),
        ("1.2", &rustls::version::TLS12),
    ] {
        let config = pki.client_config(None, &[version]);
        let mut client =
            tls_client(tls_port, config, Protocol::V3_1_1).connected(&format!("tls-{name}"));
        round_trip(&mut client, &format!("tls/version/{name}"), name.as_bytes());
    }

    // rustls has no TLS 1.1 client: OpenSSL's, where installed. OPENSSL_CONF=/dev/null
    // drops Debian's system minimum of TLS 1.2, SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1.
    let s_client = |version: &str| {
        let mut command = Command::new("openssl");
        command
            .env("OPENSSL_CONF", "/dev/null")
            .args(["s_client", "-connect", &format!("127.0.0.1:{tls_port}")])
            .args([version, "-cipher", "DEFAULT:@SECLEVEL=0"])
            .args(["-CAfile", &pki.path("ca.pem")]);
        run_bounded(command, None, WAIT)
    };
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped the TLS 1.1 client: no openssl command here");
        return;
    }
    let (status, out, err) = s_client("-tls1_2");
    assert!(status.success(), "openssl -tls1_2 failed:\n{out}{err}");
    assert!(out.contains("TLSv1.2"), "{out}");
    let (status, out, err) = s_client("-tls1_1");
    if err.contains("no protocols available") {
        eprintln!("skipped the TLS 1.1 client: this OpenSSL cannot offer TLS 1.1\n{err}");
        return;
    }
    assert!(!status.success(), "TLS 1.1 accepted:\n{out}{err}");
    let line = wait_log_line(
        &broker,
        &["listener[1]", "no TLS version or cipher suite in common"],
    );
    assert!(line.contains("127.0.0.1:"), "{line}");
}

/// `require_certificate = true`: no certificate, or one from a CA the broker does not
/// trust, fails the handshake; the client certificate signed by `tls_client_ca` is let in.
#[test]
fn require_certificate_refuses_clients_without_a_trusted_one() {
    let pki = Pki::new();
    let extra = format!("{}\nrequire_certificate = true", pki.client_ca());
    let (broker, tls_port) = start(&pki, &extra, "", &["--sys-interval-secs", "1"]);
    for identity in [None, Some("rogue")] {
        let config = pki.client_config(identity, BOTH_VERSIONS);
        let mut client = tls_client(tls_port, config, Protocol::V5);
        let answer = client.try_connect(Connect::new(Protocol::V5, "no-cert", 0));
        assert!(answer.is_err(), "{identity:?} got CONNACK {answer:?}");
    }
    wait_log_line(&broker, &["listener[1]", "certificate refused"]);
    let config = pki.client_config(Some("client"), BOTH_VERSIONS);
    let mut client = tls_client(tls_port, config, Protocol::V5).connected("with-cert");
    round_trip(&mut client, "tls/required", b"certified");
    wait_sys_at_least(&broker, "tls/handshake_failures", 2);
}

/// `use_identity_as_username = true`: the CN of the client certificate ("device-42") is the
/// user name, whatever the CONNECT says. Seen through a Kafka mapping keyed by
/// `{username}` (with the username header too); a client without a certificate is refused
/// with 0x86 Bad User Name or Password.
#[test]
fn use_identity_as_username_makes_the_certificate_cn_the_user_name() {
    let pki = Pki::new();
    let bootstrap = kafka::bootstrap();
    let topic = kafka::unique("tls-identity");
    let extra = format!("{}\nuse_identity_as_username = true", pki.client_ca());
    let config = format!(
        r#"
[kafka.clusters.main]
bootstrap = "{bootstrap}"

[[kafka.mapping]]
mqtt = "identity/#"
topic = "{topic}"
key = "{{username}}"
headers = ["username", "client_id"]
"#
    );
    let (broker, tls_port) = start(&pki, &extra, &config, &[]);

    // The CONNECT says "mallory"; the certificate says "device-42".
    let id = id_on(1, "tls-identity");
    let (status, output) = mosquitto_pub(
        &pki,
        tls_port,
        &[
            "--cert",
            &pki.path("client.pem"),
            "--key",
            &pki.path("client.key"),
            "-V",
            "mqttv311",
            "-i",
            &id,
            "-u",
            "mallory",
            "-P",
            "secret",
            "-q",
            "1",
            "-t",
            "identity/reading",
            "-m",
            "42",
        ],
    );
    assert!(status.success(), "mosquitto_pub failed: {output}");

    // No certificate, no user name: refused, whatever the CONNECT says.
    let mut anonymous = tls_client(
        tls_port,
        pki.client_config(None, BOTH_VERSIONS),
        Protocol::V5,
    );
    let mut connect = Connect::new(Protocol::V5, "no-identity", 0);
    connect.username = Some("device-42".into());
    assert_eq!(
        anonymous.try_connect(connect).map(|c| c.reason_code),
        Ok(ReasonCode::BadUserNameOrPassword)
    );

    let records = kafka::read_topic(&bootstrap, &topic, 1, Duration::from_secs(30));
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(&b"device-42"[..]));
    assert_eq!(record.payload_str(), "42");
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    };
    assert_eq!(header("username").as_deref(), Some("device-42"));
    assert_eq!(header("client_id").as_deref(), Some(id.as_str()));
    drop(broker);
}

/// Connections accepted by one shard and owned by the other carry their TLS session with
/// them: CONNECT, SUBSCRIBE and a 3 KB PUBLISH in one TLS record (more than the first read
/// takes, so decrypted bytes wait in the session when it moves), then a 200 KB message
/// (many records) each way. The broker's own count shows hand-offs happened.
#[test]
fn tls_connections_handed_to_the_owner_shard_keep_working() {
    let pki = Pki::new();
    let (broker, tls_port) = start(&pki, "", "", &["--sys-interval-secs", "1"]);
    let config = pki.client_config(None, BOTH_VERSIONS);
    // The accepting shard is the kernel's choice; 16 connections with ids owned by either
    // shard leave about 2^-16 odds that none was handed off.
    for n in 0..16 {
        let protocol = if n % 2 == 0 {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        };
        let id = id_on((n / 2) % 2, &format!("tls-handoff-{n}"));
        let topic = format!("tls/handoff/{n}");
        let payload: Vec<u8> = (0..3000usize).map(|i| (i * 7 + n) as u8).collect();
        let mut bytes = encode(
            &Packet::Connect(Box::new(Connect::new(protocol, id.as_str(), 0))),
            protocol,
        );
        bytes.extend(encode(&Packet::Subscribe(subscription(&topic)), protocol));
        bytes.extend(encode(&qos1_publish(&topic, 2, &payload), protocol));
        let mut client = tls_client(tls_port, config.clone(), protocol);
        client.try_send_raw(&bytes).unwrap();
        match client.expect() {
            Packet::ConnAck(connack) => assert_eq!(connack.reason_code, ReasonCode::Success),
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
        match client.expect() {
            Packet::SubAck(suback) => assert_eq!(suback.reason_codes, [ReasonCode::GrantedQos1]),
            other => panic!("{id}: expected SUBACK, got {other:?}"),
        }
        expect_acked_and_delivered(&mut client, &topic, &payload);
        let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        client.try_send(&qos1_publish(&topic, 2, &large)).unwrap();
        expect_acked_and_delivered(&mut client, &topic, &large);
        client.try_send_raw(&[0xE0, 0x00]).unwrap();
    }
    if shard_count() == 2 {
        wait_sys_at_least(&broker, "connections/handed_off", 1);
    }
    wait_sys_at_least(&broker, "tls/handshakes", 16);
}

/// A TLS subscriber that does not read while 13 MB are published to it (more than the
/// socket buffers hold, so the broker's writer waits on the socket), then reads: every
/// message arrives, in order, and the connection still answers.
#[test]
fn slow_tls_reader_gets_every_message_once_it_reads() {
    let pki = Pki::new();
    let (broker, tls_port) = start(&pki, "", "", &[]);
    let config = pki.client_config(None, BOTH_VERSIONS);
    let mut subscriber =
        tls_client(tls_port, config, Protocol::V5).connected(&id_on(0, "tls-slow-reader"));
    subscriber
        .try_send(&Packet::Subscribe(Subscribe::new(
            1,
            vec![Subscription {
                filter: "tls/slow".into(),
                options: SubscriptionOptions::default(),
            }],
        )))
        .unwrap();
    assert!(matches!(subscriber.expect(), Packet::SubAck(_)));
    const N: usize = 400;
    let message = |i: usize| {
        let mut payload = format!("{i:06}").into_bytes();
        payload.resize(32 * 1024, b'x');
        payload
    };
    let mut publisher =
        plain_client(broker.port, Protocol::V5).connected(&id_on(1, "plain-fast-writer"));
    for i in 0..N {
        let publish = Publish::new("tls/slow", QoS::AtMostOnce, message(i));
        publisher.try_send(&Packet::Publish(publish)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..N {
        match subscriber.expect() {
            Packet::Publish(publish) => assert!(publish.payload[..] == message(i), "#{i}"),
            other => panic!("expected PUBLISH #{i}, got {other:?}"),
        }
    }
    subscriber.try_send(&Packet::PingReq).unwrap();
    assert!(matches!(subscriber.expect(), Packet::PingResp));
}

/// Runs `ferrymq --config FILE` (no `--listen`): exit status and stderr, if it exits
/// within `WAIT`.
fn run_refused(config: &str) -> (ExitStatus, String) {
    let file = kafka::write_config(config);
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferrymq"));
    command.args(["--cores", "0", "--config", file.path_str()]);
    let (status, _, err) = run_bounded(command, None, WAIT);
    (status, err)
}

/// Unusable TLS files stop the broker with exit 2 and one line naming the key, the file and
/// the problem.
#[test]
fn unusable_tls_files_are_config_errors_naming_key_and_file() {
    let pki = Pki::new();
    let port = free_port();
    let plain = format!("[[listener]]\nbind = \"127.0.0.1:{}\"\n", free_port());
    let tls = |cert: &str, key: &str, extra: &str| {
        format!(
            "{plain}[[listener]]\nbind = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
            pki.path(cert),
            pki.path(key)
        )
    };
    let cases = [
        (
            tls("server.pem", "missing.key", ""),
            format!(
                "listener[1].tls_key: {}: cannot read: No such file or directory",
                pki.path("missing.key")
            ),
        ),
        (
            tls("server.pem", "server.pem", ""),
            format!(
                "listener[1].tls_key: {}: no private key found",
                pki.path("server.pem")
            ),
        ),
        (
            tls("server.key", "server.key", ""),
            format!(
                "listener[1].tls_cert: {}: no certificate found",
                pki.path("server.key")
            ),
        ),
        (
            tls("server.pem", "client.key", ""),
            format!(
                "listener[1].tls_key: {}: does not match the certificate in {}",
                pki.path("client.key"),
                pki.path("server.pem")
            ),
        ),
        (
            tls(
                "server.pem",
                "server.key",
                &format!("tls_client_ca = \"{}\"", pki.path("nowhere.pem")),
            ),
            format!(
                "listener[1].tls_client_ca: {}: cannot read",
                pki.path("nowhere.pem")
            ),
        ),
        (
            format!(
                "{plain}[[listener]]\nbind = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\n",
                pki.path("server.pem")
            ),
            "listener[1].tls_key: missing".to_string(),
        ),
        (
            tls("server.pem", "server.key", "require_certificate = true"),
            "listener[1].require_certificate: needs tls_client_ca".to_string(),
        ),
    ];
    for (config, expected) in cases {
        let (status, stderr) = run_refused(&config);
        assert_eq!(status.code(), Some(2), "{config}\n{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {config}: {stderr:?}");
        assert!(
            lines[0].starts_with("ferrymq: config error: ") && lines[0].contains(&expected),
            "expected {expected:?} in {:?}",
            lines[0]
        );
    }
}
