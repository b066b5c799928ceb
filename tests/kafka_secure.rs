//! ferrymq against a secured Apache Kafka made by `scripts/kafka start --secure` (a real
//! broker with SSL, SASL_SSL/SCRAM and mTLS listeners, certificates made by the script):
//! - records through SASL_SSL with SCRAM-SHA-512 (the password from the environment,
//!   `${env:}`) and zstd, and through SSL with a client certificate (mTLS), each read back
//!   exactly (through the instance's PLAINTEXT listener);
//! - a wrong password and an untrusted CA: the clusters are not ready (`/readyz` 503 naming
//!   them, a log line with librdkafka's reason), no PUBACK with `ack = "kafka"`; the password
//!   file and the CA fixed, SIGHUP: ready, and every record delivered;
//! - no password ever appears in the broker's output.
//!
//! The MQTT client is `mosquitto_pub` (Debian's). Every wait is bounded.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka::{self, ExtraKafka, Record};
use common::metrics::http_get;
use common::{free_port, mosquitto_pub_within, pubacks_in, Broker};

const READ: Duration = Duration::from_secs(30);
/// How long a cluster may take to show as (not) ready: the probe asks every 2 s, and a TLS
/// or SASL failure takes librdkafka a round or two to report.
const READY: Duration = Duration::from_secs(30);

fn port_of(broker: &Broker) -> u16 {
    broker.addr().rsplit_once(':').unwrap().1.parse().unwrap()
}

/// QoS 1 publish with mosquitto_pub (3.1.1), stopped after `wait` seconds if its PUBACK has
/// not come. Returns the number of PUBACKs it saw.
fn publish(port: u16, client_id: &str, topic: &str, payload: &str, wait: u64) -> usize {
    let (_, output) = mosquitto_pub_within(
        port,
        &[
            "-V", "mqttv311", "-i", client_id, "-q", "1", "-d", "-t", topic, "-m", payload,
        ],
        &[],
        Duration::from_secs(wait),
    );
    pubacks_in(&output)
}

fn payloads(records: &[Record]) -> Vec<&str> {
    records.iter().map(Record::payload_str).collect()
}

/// `/readyz`'s body, once `wanted(body)` holds (or after [`READY`]).
fn readyz_until(metrics_port: u16, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + READY;
    loop {
        let response = http_get(metrics_port, "/readyz");
        if wanted(&response) || Instant::now() >= deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

struct Secured {
    kafka: ExtraKafka,
    env: HashMap<String, String>,
}

impl Secured {
    fn start(name: &str) -> Secured {
        let kafka = ExtraKafka::start_secure(name);
        let env = kafka.env();
        Secured { kafka, env }
    }

    fn get(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("scripts/kafka env has no {name}: {:?}", self.env.keys()))
    }
}

#[test]
fn records_reach_kafka_through_sasl_ssl_scram_with_zstd_and_through_mtls() {
    let secure = Secured::start("secure-e2e");
    let plaintext = secure.kafka.bootstrap();
    let scram_topic = kafka::unique("secure-scram");
    let mtls_topic = kafka::unique("secure-mtls");
    kafka::create_topic(&plaintext, &scram_topic, 1);
    kafka::create_topic(&plaintext, &mtls_topic, 1);
    let password = secure.get("FERRYMQ_KAFKA_SCRAM_PASSWORD").to_string();
    let config = kafka::write_config(&format!(
        r#"
[kafka.clusters.scram]
bootstrap = "{sasl}"
config = {{ "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "{user}", "sasl.password" = "${{env:TEST_KAFKA_PASSWORD}}", "ssl.ca.location" = "{ca}", "compression.type" = "zstd" }}

[kafka.clusters.mtls]
bootstrap = "{mtls}"
config = {{ "security.protocol" = "SSL", "ssl.ca.location" = "{ca}", "ssl.certificate.location" = "{cert}", "ssl.key.location" = "{key}" }}

[[kafka.mapping]]
mqtt = "scram/#"
cluster = "scram"
topic = "{scram_topic}"

[[kafka.mapping]]
mqtt = "mtls/#"
cluster = "mtls"
topic = "{mtls_topic}"
"#,
        sasl = secure.get("FERRYMQ_KAFKA_SASL_BOOTSTRAP"),
        mtls = secure.get("FERRYMQ_KAFKA_MTLS_BOOTSTRAP"),
        user = secure.get("FERRYMQ_KAFKA_SCRAM_USER"),
        ca = secure.get("FERRYMQ_KAFKA_CA"),
        cert = secure.get("FERRYMQ_KAFKA_CLIENT_CERT"),
        key = secure.get("FERRYMQ_KAFKA_CLIENT_KEY"),
    ));
    let broker = Broker::start_with_env(
        &["--config", config.path_str(), "--log-level", "debug"],
        &[("TEST_KAFKA_PASSWORD", &password)],
    );
    let port = port_of(&broker);
    let mut expected_scram = Vec::new();
    let mut expected_mtls = Vec::new();
    for i in 0..5 {
        let text = format!("scram-{i}");
        assert_eq!(
            publish(port, "sec-scram", "scram/x", &text, 20),
            1,
            "{text}"
        );
        expected_scram.push(text);
        let text = format!("mtls-{i}");
        assert_eq!(publish(port, "sec-mtls", "mtls/x", &text, 20), 1, "{text}");
        expected_mtls.push(text);
    }
    let scram = kafka::read_topic(&plaintext, &scram_topic, 5, READ);
    assert_eq!(
        payloads(&scram),
        expected_scram,
        "through SASL_SSL/SCRAM, zstd"
    );
    let mtls = kafka::read_topic(&plaintext, &mtls_topic, 5, READ);
    assert_eq!(payloads(&mtls), expected_mtls, "through mTLS");
    let output = broker.stderr_text();
    assert!(
        !output.contains(&password),
        "the SCRAM password appears in the broker's output"
    );
    drop(broker);
}

#[test]
fn wrong_password_and_untrusted_ca_hold_pubacks_until_sighup_puts_fixed_settings_in_force() {
    let secure = Secured::start("secure-fix");
    let plaintext = secure.kafka.bootstrap();
    let scram_topic = kafka::unique("secure-fix-scram");
    let tls_topic = kafka::unique("secure-fix-tls");
    kafka::create_topic(&plaintext, &scram_topic, 1);
    kafka::create_topic(&plaintext, &tls_topic, 1);
    let password = secure.get("FERRYMQ_KAFKA_SCRAM_PASSWORD").to_string();
    let wrong_password = format!("wrong-{password}");
    let password_file = kafka::write_config(&format!("{wrong_password}\n"));
    let metrics_port = free_port();
    let write = |ca: &str| {
        format!(
            r#"
[broker]
metrics_bind = "127.0.0.1:{metrics_port}"

[kafka.clusters.scram]
bootstrap = "{sasl}"
config = {{ "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "{user}", "sasl.password" = "${{file:{password_file}}}", "ssl.ca.location" = "{good_ca}" }}

[kafka.clusters.tls]
bootstrap = "{ssl}"
config = {{ "security.protocol" = "SSL", "ssl.ca.location" = "{ca}" }}

[[kafka.mapping]]
mqtt = "scram/#"
cluster = "scram"
topic = "{scram_topic}"

[[kafka.mapping]]
mqtt = "tls/#"
cluster = "tls"
topic = "{tls_topic}"
"#,
            sasl = secure.get("FERRYMQ_KAFKA_SASL_BOOTSTRAP"),
            ssl = secure.get("FERRYMQ_KAFKA_SSL_BOOTSTRAP"),
            user = secure.get("FERRYMQ_KAFKA_SCRAM_USER"),
            good_ca = secure.get("FERRYMQ_KAFKA_CA"),
            password_file = password_file.path_str(),
        )
    };
    let config = kafka::write_config(&write(secure.get("FERRYMQ_KAFKA_OTHER_CA")));
    let broker = Broker::start_capturing_stderr(&["--config", config.path_str()]);
    let port = port_of(&broker);

    // Not ready, naming both clusters; librdkafka's reasons in the log.
    let readyz = readyz_until(metrics_port, |r| r.contains("scram") && r.contains("tls"));
    assert!(
        readyz.starts_with("Kafka unavailable:")
            && readyz.contains("scram")
            && readyz.contains("tls"),
        "/readyz names both: {readyz}"
    );
    // No PUBACK while the settings are wrong.
    assert_eq!(publish(port, "fix-scram", "scram/x", "held-scram", 3), 0);
    assert_eq!(publish(port, "fix-tls", "tls/x", "held-tls", 3), 0);
    // librdkafka's own reasons, not only "no answer".
    let logged = |text: &str| {
        text.contains("kafka cluster scram not ready")
            && text.contains("SASL authentication error")
            && text.contains("kafka cluster tls not ready")
            && text.contains("certificate verify failed")
    };
    let deadline = Instant::now() + READY;
    while !logged(&broker.stderr_text()) {
        assert!(
            Instant::now() < deadline,
            "no 'not ready' lines: {}",
            broker.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Fixed: the right password in its file, the right CA in the config; SIGHUP.
    std::fs::write(password_file.path_str(), format!("{password}\n")).unwrap();
    std::fs::write(config.path_str(), write(secure.get("FERRYMQ_KAFKA_CA"))).unwrap();
    broker.signal("HUP");
    let readyz = readyz_until(metrics_port, |r| r == "ready\n");
    assert_eq!(readyz, "ready\n", "/readyz after SIGHUP");
    assert_eq!(publish(port, "fix-scram", "scram/x", "after-scram", 20), 1);
    assert_eq!(publish(port, "fix-tls", "tls/x", "after-tls", 20), 1);

    // Everything delivered: the records held by the producers with wrong settings too.
    let scram = kafka::read_topic(&plaintext, &scram_topic, 2, READ);
    assert_eq!(payloads(&scram), ["held-scram", "after-scram"]);
    let tls = kafka::read_topic(&plaintext, &tls_topic, 2, READ);
    assert_eq!(payloads(&tls), ["held-tls", "after-tls"]);

    let output = broker.stderr_text();
    for secret in [&password, &wrong_password] {
        assert!(
            !output.contains(secret.as_str()),
            "a password appears in the broker's output:\n{output}"
        );
    }
    drop(broker);
}
