//! `--tls` end to end, against the real `ferrymq` broker with two TLS listeners: one that
//! verifies the broker only, one with `require_certificate = true` (mutual TLS). The
//! certificates are made here with rcgen: a CA, a server certificate for 127.0.0.1 and
//! localhost, and a client certificate. 50 devices publish 20 QoS 1 messages each over
//! TLS and one subscriber (also over TLS) must receive all 1,000; the JSON report must
//! show them acknowledged, none lost, and the connect latency measured. Also: the flags
//! that `--tls` needs are checked before anything runs.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

mod common;
use common::*;

// ---------------------------------------------------------------------------------------
// Certificates

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

/// The broker: a TLS listener (`port`) and a mutual-TLS one (`mtls_port`), with the test
/// PKI in its directory; stopped and removed when dropped.
struct Broker {
    child: Child,
    port: u16,
    mtls_port: u16,
    dir: PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let dir = std::env::temp_dir().join(unique("loadgen-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        let ca = new_ca("loadgen test CA");
        write("ca.pem", &ca.0.pem());
        let (cert, key) = new_leaf(
            &ca,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = new_leaf(&ca, "device", &[], ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", &cert);
        write("client.key", &key);

        let (port, mtls_port) = (free_port(), free_port());
        let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let config = dir.join("ferrymq.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[[listener]]
bind = "127.0.0.1:{port}"
tls_cert = "{server_pem}"
tls_key = "{server_key}"

[[listener]]
bind = "127.0.0.1:{mtls_port}"
tls_cert = "{server_pem}"
tls_key = "{server_key}"
tls_client_ca = "{ca}"
require_certificate = true
"#,
                server_pem = path("server.pem"),
                server_key = path("server.key"),
                ca = path("ca.pem"),
            ),
        )
        .unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut child = Command::new(broker_binary())
            .arg("--config")
            .arg(&config)
            .arg("--cores")
            .arg(if cpus >= 2 { "0,1" } else { "0" })
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferrymq");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            first.contains("listening"),
            "ferrymq did not start: {first:?}"
        );
        std::thread::spawn(move || for _ in lines {});
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [port, mtls_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "ferrymq does not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Every shard binds the ports; give the last a moment.
        std::thread::sleep(Duration::from_millis(200));
        Broker {
            child,
            port,
            mtls_port,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the loadgen with `args` plus `--json`; returns its exit code and the report.
fn run_loadgen(broker: &Broker, args: &[&str]) -> (i32, serde_json::Value) {
    let json = broker.dir.join(format!("{}.json", unique("report")));
    let started = Instant::now();
    let output = Command::new(loadgen())
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .expect("run ferrymq-loadgen");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the run took {:?}",
        started.elapsed()
    );
    let report = std::fs::read_to_string(&json).expect("the loadgen wrote --json");
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&report).expect("JSON report"),
    )
}

/// 50 devices × 20 QoS 1 messages and one subscriber, all over TLS on `port`, with
/// `extra` flags: everything acknowledged and received.
fn fleet_over_tls(broker: &Broker, port: u16, extra: &[&str]) -> serde_json::Value {
    let name = unique("lgtls");
    let topic = format!("{name}/%i/t");
    let port = port.to_string();
    let mut args = vec![
        "-p",
        &port,
        "-t",
        &topic,
        "--id-prefix",
        &name,
        "-c",
        "50",
        "-i",
        "1000",
        "-I",
        "20",
        "--messages",
        "20",
        "-q",
        "1",
        "--subscribers",
        "1",
        "--drain-secs",
        "10",
        // Debug-build handshakes on a loaded 2-CPU machine can take seconds; a retried
        // connect would count as a connect error below.
        "--connect-timeout-secs",
        "30",
    ];
    args.extend_from_slice(extra);
    let (code, report) = run_loadgen(broker, &args);
    assert_eq!(code, 0, "{report}");
    assert!(
        report["scenario"].as_str().unwrap().contains("over TLS"),
        "{report}"
    );
    assert_eq!(figure(&report, "messages.sent"), 1_000);
    assert_eq!(figure(&report, "messages.acknowledged"), 1_000);
    assert_eq!(figure(&report, "messages.unacknowledged"), 0);
    assert_eq!(figure(&report, "subscriptions.subscribers"), 1);
    assert_eq!(figure(&report, "subscriptions.expected"), 1_000);
    assert_eq!(figure(&report, "subscriptions.received"), 1_000);
    assert_eq!(figure(&report, "subscriptions.lost"), 0);
    assert_eq!(figure(&report, "connections.connect_errors"), 0);
    // One connect latency (TCP connect → TLS handshake → CONNACK) per connection.
    assert!(figure(&report, "latency.connect.count") > 0);
    assert_eq!(
        figure(&report, "latency.connect.count"),
        figure(&report, "connections.connects")
    );
    assert_eq!(figure(&report, "latency.puback.count"), 1_000);
    report
}

/// The broker verified with --cafile; then mutual TLS with --cert/--key on the listener
/// that requires a client certificate; and that listener refusing a device without one.
#[test]
fn devices_publish_and_subscribe_over_tls_and_mutual_tls() {
    let broker = Broker::start();
    let ca = broker.path("ca.pem");
    fleet_over_tls(&broker, broker.port, &["--tls", "--cafile", &ca]);

    let (cert, key) = (broker.path("client.pem"), broker.path("client.key"));
    fleet_over_tls(
        &broker,
        broker.mtls_port,
        &[
            "--tls",
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--tls-server-name",
            "localhost",
        ],
    );

    // --insecure: the broker's certificate is not verified, the traffic is still TLS.
    fleet_over_tls(&broker, broker.port, &["--tls", "--insecure"]);

    // Without a client certificate the mutual-TLS listener refuses the device: it never
    // connects, and the failure is counted as a connect error.
    let port = broker.mtls_port.to_string();
    let (code, report) = run_loadgen(
        &broker,
        &[
            "-p",
            &port,
            "--tls",
            "--cafile",
            &ca,
            "-c",
            "1",
            "--messages",
            "1",
            "--duration",
            "3",
            "--connect-timeout-secs",
            "2",
        ],
    );
    assert_ne!(code, 3, "{report}");
    assert_eq!(figure(&report, "connections.connects"), 0, "{report}");
    assert!(
        figure(&report, "connections.connect_errors") > 0,
        "{report}"
    );
    assert_eq!(figure(&report, "messages.acknowledged"), 0);
}

/// A server name that the broker's certificate does not hold fails the handshake.
#[test]
fn a_wrong_server_name_fails_the_handshake() {
    let broker = Broker::start();
    let ca = broker.path("ca.pem");
    let port = broker.port.to_string();
    let (_, report) = run_loadgen(
        &broker,
        &[
            "-p",
            &port,
            "--tls",
            "--cafile",
            &ca,
            "--tls-server-name",
            "broker.example",
            "-c",
            "1",
            "--messages",
            "1",
            "--duration",
            "3",
        ],
    );
    assert_eq!(figure(&report, "connections.connects"), 0, "{report}");
    assert!(
        figure(&report, "connections.errors.tls_handshake_failed") > 0,
        "{report}"
    );
}

/// `--tls` flags are checked before the run: exit 2 with a line that says what to do.
#[test]
fn tls_flags_are_checked() {
    let dir = std::env::temp_dir().join(unique("loadgen-tls-flags"));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    for (args, words) in [
        (&["--tls"][..], &["--cafile", "--insecure"][..]),
        (
            &["--cafile", "ca.pem"][..],
            &["--cafile", "needs --tls"][..],
        ),
        (
            &["--tls", "--insecure", "--cert", "c.pem"][..],
            &["--cert", "--key"][..],
        ),
        (
            &["--tls", "--cafile", missing][..],
            &["--cafile", missing][..],
        ),
    ] {
        let output = Command::new(loadgen())
            .args(["-c", "1", "--messages", "1"])
            .args(args)
            .output()
            .expect("run ferrymq-loadgen");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        for word in words {
            assert!(stderr.contains(word), "{args:?}: {stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
