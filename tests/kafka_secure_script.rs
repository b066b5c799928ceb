//! `scripts/kafka start --secure` gives a test Kafka with TLS, SASL_SSL and mTLS listeners
//! and makes the certificates itself (openssl). These tests check the script, not ferrymq:
//! the configuration it writes (no Java), `env` refusing an instance that is not running
//! with --secure, and a real secure start checked with `openssl s_client` (TLS handshakes
//! only; SCRAM and PLAIN logins need a Kafka client and are left to the tests that use one).
//!
//! The real start is skipped when no `scripts/kafka` Kafka answers (`scripts/kafka status`),
//! as on a machine without Java or the Kafka jars.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::kafka::start_on_free_ports;

fn script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
}

fn kafka(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .env_remove("FERRYMQ_KAFKA_SECURE")
        .env_remove("FERRYMQ_KAFKA_SSL_PORT")
        .env_remove("FERRYMQ_KAFKA_SASL_PORT")
        .env_remove("FERRYMQ_KAFKA_MTLS_PORT")
        .env_remove("FERRYMQ_KAFKA_CONTROLLER_PORT")
        .env_remove("FERRYMQ_KAFKA_SCRAM_PASSWORD")
        .output()
        .expect("run scripts/kafka")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of `key=` in a properties text.
fn property<'a>(properties: &'a str, key: &str) -> Option<&'a str> {
    properties
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn secure_config_adds_three_listeners_and_plain_config_has_none() {
    let name = "secure-config-test";
    let out = kafka(&["config", "--name", name, "--port", "19092", "--secure"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secure = text(&out.stdout);
    assert_eq!(
        property(&secure, "listeners"),
        Some(
            "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,SSL://127.0.0.1:19094,\
             SASL_SSL://127.0.0.1:19095,MTLS://127.0.0.1:19096"
        ),
        "{secure}"
    );
    assert_eq!(
        property(&secure, "inter.broker.listener.name"),
        Some("PLAINTEXT")
    );
    assert_eq!(property(&secure, "ssl.keystore.type"), Some("PEM"));
    assert_eq!(property(&secure, "ssl.truststore.type"), Some("PEM"));
    assert!(
        property(&secure, "ssl.truststore.location").is_some_and(|p| p.ends_with("/tls/ca.pem")),
        "{secure}"
    );
    assert_eq!(
        property(&secure, "listener.name.mtls.ssl.client.auth"),
        Some("required")
    );
    assert_eq!(
        property(&secure, "listener.name.sasl_ssl.sasl.enabled.mechanisms"),
        Some("SCRAM-SHA-512,SCRAM-SHA-256,PLAIN")
    );

    let out = kafka(&["config", "--name", name, "--port", "19092"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plain = text(&out.stdout);
    assert_eq!(
        property(&plain, "listeners"),
        Some("PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093")
    );
    assert!(
        !plain.contains("ssl.") && !plain.contains("sasl"),
        "{plain}"
    );

    // The controller port may not land on a secure listener's port.
    let out = kafka(&[
        "config",
        "--name",
        name,
        "--port",
        "19092",
        "--secure",
        "--controller-port",
        "19094",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
}

#[test]
fn env_fails_in_one_line_unless_running_with_secure() {
    let out = kafka(&["env", "--name", "secure-env-never-started"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not running"), "{err}");
}

/// `openssl s_client` to `addr` with `args`, stdin closed: true when the handshake
/// (and, with -verify_return_error, the verification) succeeded.
fn handshake(addr: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args([
            "30",
            "openssl",
            "s_client",
            "-connect",
            addr,
            "-verify_return_error",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

struct Instance {
    name: &'static str,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = kafka(&["stop", "--name", self.name]);
    }
}

#[test]
fn secure_start_serves_tls_and_requires_client_certificates_on_mtls() {
    let status = kafka(&["status"]);
    if !status.status.success() {
        eprintln!(
            "skipped: no scripts/kafka Kafka answers: {}",
            text(&status.stdout)
        );
        return;
    }
    let instance = Instance {
        name: "secure-script-test",
    };
    // Its port and the 4 after it (controller, SSL, SASL_SSL, mTLS); new ones if one was
    // taken.
    let (port, out) = start_on_free_ports(5, "scripts/kafka start --secure", |port| {
        let port = port.to_string();
        let args = ["--name", instance.name, "--port", &port];
        let _ = kafka(&[&["stop"], &args[..]].concat());
        kafka(&[&["start"], &args[..], &["--secure"]].concat())
    });
    let port_arg = port.to_string();
    let args = ["--name", instance.name, "--port", &port_arg];
    assert!(
        out.status.success(),
        "scripts/kafka start --secure: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("secure listeners: SSL"),
        "{}",
        text(&out.stdout)
    );

    let out = kafka(&[&["env"], &args[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = text(&out.stdout);
    let var = |key: &str| -> String {
        env.lines()
            .find_map(|line| line.strip_prefix(&format!("export {key}=")))
            .unwrap_or_else(|| panic!("no {key} in:\n{env}"))
            .to_string()
    };
    assert_eq!(
        var("FERRYMQ_KAFKA_SSL_BOOTSTRAP"),
        format!("127.0.0.1:{}", port + 2)
    );
    assert_eq!(
        var("FERRYMQ_KAFKA_SASL_BOOTSTRAP"),
        format!("127.0.0.1:{}", port + 3)
    );
    assert_eq!(
        var("FERRYMQ_KAFKA_MTLS_BOOTSTRAP"),
        format!("127.0.0.1:{}", port + 4)
    );
    assert_eq!(var("FERRYMQ_KAFKA_SCRAM_USER"), "ferrymq");
    assert!(!var("FERRYMQ_KAFKA_SCRAM_PASSWORD").is_empty());
    let (ca, other_ca) = (var("FERRYMQ_KAFKA_CA"), var("FERRYMQ_KAFKA_OTHER_CA"));
    let (cert, key) = (
        var("FERRYMQ_KAFKA_CLIENT_CERT"),
        var("FERRYMQ_KAFKA_CLIENT_KEY"),
    );
    for file in [&ca, &other_ca, &cert, &key] {
        assert!(Path::new(file).is_file(), "{file}");
    }
    let password_file = Path::new(&ca).with_file_name("scram-password");
    let mode = std::fs::metadata(&password_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", password_file.display());
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));

    let ssl = var("FERRYMQ_KAFKA_SSL_BOOTSTRAP");
    let (ok, log) = handshake(&ssl, &["-CAfile", &ca, "-verify_ip", "127.0.0.1"]);
    assert!(ok, "SSL listener with ca.pem:\n{log}");
    let (ok, log) = handshake(&ssl, &["-CAfile", &ca, "-verify_hostname", "localhost"]);
    assert!(ok, "SSL listener as localhost:\n{log}");
    let (ok, log) = handshake(&ssl, &["-CAfile", &other_ca]);
    assert!(!ok, "SSL listener verified against other-ca.pem:\n{log}");
    let (ok, log) = handshake(&var("FERRYMQ_KAFKA_SASL_BOOTSTRAP"), &["-CAfile", &ca]);
    assert!(ok, "SASL_SSL listener's TLS:\n{log}");

    // TLS 1.2: the server refuses a missing client certificate inside the handshake
    // (with TLS 1.3 the refusal comes after it, which s_client may not wait for).
    let mtls = var("FERRYMQ_KAFKA_MTLS_BOOTSTRAP");
    let (ok, log) = handshake(&mtls, &["-CAfile", &ca, "-tls1_2"]);
    assert!(
        !ok,
        "mTLS listener accepted a client without a certificate:\n{log}"
    );
    let (ok, log) = handshake(
        &mtls,
        &["-CAfile", &ca, "-tls1_2", "-cert", &cert, "-key", &key],
    );
    assert!(ok, "mTLS listener with client.pem:\n{log}");
}
