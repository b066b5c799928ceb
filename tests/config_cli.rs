//! `ferrymq::config::load` against TOML files on disk and command lines as clap parses them:
//! defaults < `--config FILE` < flags, and the one-line errors an operator sees.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use ferrymq::config::{
    load, AckMode, BatchingConfig, BrokerArgs, BrokerConfig, Config, HeaderField,
};

/// The example configuration shown in README: every key; `[broker]` and `[batching]` with
/// their defaults, `[kafka]` (empty by default) with one cluster and two mappings.
const EXAMPLE: &str = r#"# ferrymq.toml: every key is optional; [broker] and [batching] show the defaults.
# Flags override the file: --listen ADDR (repeatable), --cores LIST, --connections-max N,
# --batch-max-messages N, ...

[[listener]]                         # without any, the broker listens on 127.0.0.1:1883
bind = "0.0.0.0:1883"

[[listener]]
bind = "[::1]:1883"

[broker]
# cores = "0-3,6"                    # or [0, 1, 2, 3, 6]; default: every CPU the process may use
connections_max = 100000             # open connections, all listeners together
packet_size_bytes_max = 1048576      # Maximum Packet Size; 16 ..= 268435460
connect_timeout_ms = 10000           # time a new socket has to send CONNECT
keep_alive_secs_max = 0              # 0 accepts the client's keep alive
session_expiry_secs_max = 604800     # 7 days
session_queue_messages_max = 1000    # QoS 1/2 messages kept per offline session
outgoing_queue_messages_max = 1000   # messages queued per connected subscriber
inflight_messages_max = 32           # outgoing QoS 1/2 awaiting ack, per client
receive_maximum = 1024               # Receive Maximum; 1 ..= 65535
topic_alias_maximum = 64             # Topic Alias Maximum; 0 disables aliases
retain_available = true
inter_shard_channel_capacity = 4096  # messages in flight per pair of shards
sys_interval_secs = 10               # $SYS publish interval; 0 disables

[kafka.clusters.main]                # default: no cluster, no mapping: a plain MQTT broker
bootstrap = "kafka1:9092,kafka2:9092"
config = { "compression.type" = "lz4", "linger.ms" = 5 }  # any librdkafka property

[[kafka.mapping]]                    # every message on a matching topic, in file order
mqtt = "devices/+/telemetry/#"       # MQTT topic filter; not $share/
cluster = "main"                     # may be left out when there is one cluster
topic = "telemetry.{2}"              # {client_id} {username} {topic} {N} {prop:NAME}
key = "{client_id}"                  # default: the MQTT topic
headers = ["mqtt_topic", "client_id", "qos"]  # the default
ack = "kafka"                        # PUBACK once Kafka has the record; or "none"
mqtt_subscribers = true              # false: to Kafka only

[[kafka.mapping]]
mqtt = "alerts/#"
topic = "alerts"
ack = "none"
mqtt_subscribers = false

[batching]                           # each also a flag: --batch-max-messages N, ...
max_messages = 512                   # records per batch
max_bytes = 1048576                  # bytes per batch; at least 1024
linger_us = 5000                     # longest wait for a batch to fill; at most 1000000
ring_capacity_batches = 256          # batches queued per shard and cluster
"#;

/// The broker flags as the `ferrymq` command flattens them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BrokerArgs,
}

/// A file in a directory of its own under the system temp dir, removed when dropped.
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(text: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferrymq-config-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("ferrymq.toml");
        std::fs::write(&path, text).expect("write config file");
        TempFile { dir, path }
    }

    fn flag(&self) -> String {
        self.path.to_str().expect("temp path is UTF-8").to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn load_with(flags: &[&str]) -> Result<Config, String> {
    let argv = std::iter::once("ferrymq").chain(flags.iter().copied());
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    load(&cli.args).map_err(|e| e.to_string())
}

fn binds(config: &Config) -> Vec<SocketAddr> {
    config.listeners.iter().map(|l| l.bind).collect()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

#[test]
fn example_config_loads_with_the_defaults_it_shows() {
    let file = TempFile::new(EXAMPLE);
    let config = load_with(&["--config", &file.flag()]).expect("example loads");
    assert_eq!(binds(&config), [addr("0.0.0.0:1883"), addr("[::1]:1883")]);
    assert_eq!(config.broker, BrokerConfig::default());
    assert_eq!(config.batching, BatchingConfig::default());
    let main = &config.kafka.clusters["main"];
    assert_eq!(main.bootstrap, "kafka1:9092,kafka2:9092");
    assert_eq!(main.config["compression.type"], "lz4");
    assert_eq!(main.config["linger.ms"], "5");
    let [telemetry, alerts] = config.kafka.mappings.as_slice() else {
        panic!("two mappings");
    };
    assert_eq!(telemetry.topic, "telemetry.{2}");
    assert_eq!(
        telemetry.headers,
        [
            HeaderField::MqttTopic,
            HeaderField::ClientId,
            HeaderField::Qos
        ]
    );
    assert_eq!(config.kafka.cluster_of(alerts), Some("main"));
    assert_eq!(alerts.key, None);
    assert_eq!(alerts.ack, AckMode::None);
    assert!(telemetry.mqtt_subscribers && !alerts.mqtt_subscribers);
}

#[test]
fn no_file_and_no_flags_give_the_defaults() {
    assert_eq!(load_with(&[]).expect("defaults"), Config::default());
    assert_eq!(binds(&Config::default()), [addr("127.0.0.1:1883")]);
}

#[test]
fn file_values_replace_defaults_and_flags_replace_file_values() {
    let file = TempFile::new(
        "[[listener]]\nbind = \"127.0.0.1:2883\"\n\n[broker]\ncores = [0]\n\
         connections_max = 500\npacket_size_bytes_max = 4096\nsys_interval_secs = 0\n",
    );
    let from_file = load_with(&["--config", &file.flag()]).expect("file loads");
    assert_eq!(binds(&from_file), [addr("127.0.0.1:2883")]);
    assert_eq!(from_file.broker.cores, Some(vec![0]));
    assert_eq!(from_file.broker.connections_max, 500);
    assert_eq!(from_file.broker.packet_size_bytes_max, 4096);
    assert_eq!(from_file.broker.sys_interval_secs, 0);
    assert_eq!(from_file.broker.receive_maximum, 1024, "default kept");

    let overridden = load_with(&[
        "--config",
        &file.flag(),
        "--listen",
        "127.0.0.1:3883",
        "--listen",
        "[::1]:3883",
        "--cores",
        "0-1",
        "--connections-max",
        "600",
        "--receive-maximum",
        "20",
    ])
    .expect("file and flags load");
    assert_eq!(
        binds(&overridden),
        [addr("127.0.0.1:3883"), addr("[::1]:3883")]
    );
    assert_eq!(overridden.broker.cores, Some(vec![0, 1]));
    assert_eq!(overridden.broker.connections_max, 600);
    assert_eq!(overridden.broker.receive_maximum, 20);
    assert_eq!(
        overridden.broker.packet_size_bytes_max, 4096,
        "file value kept"
    );
    assert_eq!(overridden.broker.sys_interval_secs, 0, "file value kept");
}

#[test]
fn a_flag_can_repair_a_file_value_out_of_bounds() {
    // Validation runs after the flags, so the value checked is the one the broker will use.
    let file = TempFile::new("[broker]\npacket_size_bytes_max = 5\n");
    let error = load_with(&["--config", &file.flag()]).unwrap_err();
    assert_eq!(
        error,
        "broker.packet_size_bytes_max: 5 is below the minimum of 16"
    );
    let config = load_with(&["--config", &file.flag(), "--packet-size-bytes-max", "64"])
        .expect("flag overrides the bad value");
    assert_eq!(config.broker.packet_size_bytes_max, 64);
}

#[test]
fn flag_values_are_validated_under_their_toml_key() {
    let error = load_with(&["--receive-maximum", "0"]).unwrap_err();
    assert_eq!(error, "broker.receive_maximum: 0 is below the minimum of 1");
    let error =
        load_with(&["--listen", "127.0.0.1:4000", "--listen", "127.0.0.1:4000"]).unwrap_err();
    assert_eq!(
        error,
        "listener[1].bind: 127.0.0.1:4000 is already bound by listener[0]"
    );
}

#[test]
fn file_errors_name_file_line_and_key() {
    let cases = [
        (
            "[broker]\nconnections_max = 10\nconections_max = 5\n",
            ":3:1: broker.conections_max: unknown key `conections_max`, expected one of",
        ),
        (
            "[[listener]]\nbind = \"0.0.0.0:1883\"\n[[listener]]\nbind = \"foo\"\n",
            ":4:8: listener[1].bind: \"foo\" is not an IP address and port",
        ),
        (
            "[broker]\nkeep_alive_secs_max = 65536\n",
            ":2:23: broker.keep_alive_secs_max: invalid value: integer `65536`, expected u16",
        ),
        (
            "[broker]\ncores = \"3-1\"\n",
            ":2:9: broker.cores: range \"3-1\" in \"3-1\" runs backwards",
        ),
        ("[broker]\nconnections_max = \n", ":2:19: "),
        (
            "[acl]\nfile = \"/etc/ferrymq/acl\"\n",
            ":1:2: acl: unknown key `acl`, expected one of `listener`, `broker`, `kafka`, \
             `batching`, `spool`, `auth`, `log`",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"k:9092\"\nconfig = { \"acks\" = [1] }\n",
            ":3:21: kafka.clusters.main.config.acks: invalid type: sequence, expected a string, \
             integer or boolean",
        ),
        (
            "[[kafka.mapping]]\nmqtt = \"a/#\"\ntopic = \"a\"\nack = \"al\"\n",
            ":4:7: kafka.mapping[0].ack: unknown variant `al`, expected one of `none`, `kafka`, \
             `durable`",
        ),
    ];
    for (text, expected) in cases {
        let file = TempFile::new(text);
        let error = load_with(&["--config", &file.flag()]).unwrap_err();
        let expected = format!("{}{expected}", file.path.display());
        assert!(
            error.starts_with(&expected),
            "{error:?} should start {expected:?}"
        );
        assert!(!error.contains('\n'), "{error:?} is more than one line");
    }
}

#[test]
fn kafka_errors_name_the_key_without_a_position() {
    let clusters = "[kafka.clusters.main]\nbootstrap = \"k1:9092\"\n\
                    [kafka.clusters.audit]\nbootstrap = \"a1:9092\"\n";
    let cases = [
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"main\"\ntopic = \"a\"\n\
             [[kafka.mapping]]\nmqtt = \"b\"\ncluster = \"main\"\ntopic = \"b\"\n\
             [[kafka.mapping]]\nmqtt = \"c\"\ncluster = \"backup\"\ntopic = \"c\"\n",
            "kafka.mapping[2].cluster: \"backup\" is not a cluster (known: audit, main)",
        ),
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"a\"\n",
            "kafka.mapping[0].cluster: missing, and needed when there are several clusters \
             (known: audit, main)",
        ),
        (
            "[spool]\nsync_us = 2000000\n",
            "spool.sync_us: 2000000 is above the maximum of 1000000",
        ),
        (
            "[kafka.clusters.more]\nbootstrap = \"m:9092\"\n\
             config = { \"bootstrap.servers\" = \"m:9092\" }\n",
            "kafka.clusters.more.config.\"bootstrap.servers\": the brokers are set by \
             kafka.clusters.more.bootstrap",
        ),
    ];
    for (text, expected) in cases {
        let file = TempFile::new(&format!("{clusters}{text}"));
        let error = load_with(&["--config", &file.flag()]).unwrap_err();
        assert_eq!(error, expected);
    }
}

#[test]
fn batching_flags_override_the_file_and_are_validated() {
    let file = TempFile::new("[batching]\nmax_messages = 64\nlinger_us = 500\n");
    let config = load_with(&[
        "--config",
        &file.flag(),
        "--batch-linger-us",
        "0",
        "--batch-max-bytes",
        "4096",
        "--ring-capacity-batches",
        "8",
    ])
    .expect("loads");
    let expected = BatchingConfig {
        max_messages: 64,
        max_bytes: 4096,
        linger_us: 0,
        ring_capacity_batches: 8,
    };
    assert_eq!(config.batching, expected);
    let cases = [
        (
            &["--batch-max-messages", "0"][..],
            "batching.max_messages: 0 is below the minimum of 1",
        ),
        (
            &["--batch-max-bytes", "1000"],
            "batching.max_bytes: 1000 is below the minimum of 1024",
        ),
        (
            &["--batch-linger-us", "2000000"],
            "batching.linger_us: 2000000 is above the maximum of 1000000",
        ),
        (
            &["--ring-capacity-batches", "0"],
            "batching.ring_capacity_batches: 0 is below the minimum of 1",
        ),
    ];
    for (flags, expected) in cases {
        assert_eq!(load_with(flags).unwrap_err(), expected);
    }
}

#[test]
fn missing_file_is_named() {
    let file = TempFile::new("");
    let missing = file.dir.join("absent.toml");
    let flag = missing.to_str().expect("UTF-8").to_string();
    let error = load_with(&["--config", &flag]).unwrap_err();
    assert!(
        error.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{error}"
    );
}

#[test]
fn malformed_flags_are_refused_before_load() {
    for flags in [
        &["--cores", "0-"][..],
        &["--listen", "localhost"],
        &["--inflight-messages-max", "-1"],
        &["--retain-available"],
        &["--no-such-flag", "1"],
    ] {
        assert!(load_with(flags).is_err(), "{flags:?} accepted");
    }
}

/// Runs the `ferrymq` binary with `--config FILE` and the environment variables `vars` (and
/// no RUST_LOG); its exit code and stderr.
fn run_broker(file: &TempFile, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferrymq"));
    command
        .arg("--config")
        .arg(&file.path)
        .env_remove("RUST_LOG");
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().expect("run ferrymq");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
    (output.status.code(), stderr)
}

#[test]
fn a_missing_secret_variable_stops_the_broker_naming_key_and_variable() {
    let file = TempFile::new(
        "[kafka.clusters.main]\nbootstrap = \"k1:9092\"\n\
         config = { \"sasl.password\" = \"${env:FERRYMQ_TEST_UNSET_PASSWORD}\" }\n",
    );
    let (code, stderr) = run_broker(&file, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "ferrymq: config error: kafka.clusters.main.config.\"sasl.password\": \
         ${env:FERRYMQ_TEST_UNSET_PASSWORD}: environment variable \
         FERRYMQ_TEST_UNSET_PASSWORD is not set\n"
    );
}

#[test]
fn secret_values_never_reach_stderr() {
    let file = TempFile::new("");
    let password = "file-secret \"hunter2\"";
    let password_file = file.dir.join("kafka-password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write secret");
    let text = |bind: &str| {
        format!(
            "[broker]\nmetrics_bind = \"{bind}\"\n\
             [kafka.clusters.main]\nbootstrap = \"${{env:FERRYMQ_TEST_BOOTSTRAP}}\"\n\
             config = {{ \"sasl.password\" = \"${{file:{}}}\", \
             \"ssl.key.password\" = \"literal-secret\" }}\n",
            password_file.display()
        )
    };
    let secrets = [password, "hunter2", "env-secret", "literal-secret"];
    // A value of the wrong form, from a reference: the TOML error names key and reference.
    std::fs::write(&file.path, text("${env:FERRYMQ_TEST_BIND}")).expect("rewrite config");
    let vars = [
        ("FERRYMQ_TEST_BIND", "env-secret"),
        ("FERRYMQ_TEST_BOOTSTRAP", "k1:9092"),
    ];
    let (code, stderr) = run_broker(&file, &vars);
    assert_eq!(code, Some(2), "{stderr}");
    let expected = format!(
        "ferrymq: config error: {}:2:16: broker.metrics_bind: ${{env:FERRYMQ_TEST_BIND}}: \
         \"***\" is not an IP address and port\n",
        file.path.display()
    );
    assert_eq!(stderr, expected);
    // A value out of bounds, from a reference: the validation error names both.
    std::fs::write(&file.path, text("127.0.0.1:0")).expect("rewrite config");
    let vars = [("FERRYMQ_TEST_BOOTSTRAP", "env-secret")];
    let (code, stderr) = run_broker(&file, &vars);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "ferrymq: config error: kafka.clusters.main.bootstrap: ${env:FERRYMQ_TEST_BOOTSTRAP}: \
         \"***\" in \"***\" is not host:port\n"
    );
    for secret in secrets {
        assert!(!stderr.contains(secret), "{secret:?} in {stderr:?}");
    }
}
