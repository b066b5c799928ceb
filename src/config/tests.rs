//! The configuration's own tests: defaults, file, flags, validation and their errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

use super::*;
use crate::protocol::PACKET_SIZE_BYTES_MAX;

/// The `ferrymq` command as far as this module is concerned.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BrokerArgs,
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml")
}

fn args(flags: &[&str]) -> BrokerArgs {
    let argv = std::iter::once("ferrymq").chain(flags.iter().copied());
    Cli::try_parse_from(argv).expect("flags parse").args
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

#[test]
fn defaults_are_valid() {
    let config = Config::default();
    config.validate().expect("defaults valid");
    assert_eq!(
        config.listeners,
        [ListenerConfig::new(addr("127.0.0.1:1883"))]
    );
    assert_eq!(config.broker.packet_size_bytes_max, 1_048_576);
    assert_eq!(config.broker.session_expiry_secs_max, 604_800);
    assert_eq!(parse("").expect("empty file"), config);
    assert_eq!(load(&BrokerArgs::default()).expect("no flags"), config);
}

#[test]
fn no_flag_given_leaves_every_value_unset() {
    let given = args(&[]);
    assert!(given.config.is_none() && given.listen.is_empty() && given.cores.is_none());
    let mut config = Config::default();
    config.apply(&given);
    assert_eq!(config, Config::default());
}

#[test]
fn file_overrides_defaults() {
    let config = parse(
        "[[listener]]\nbind = \"0.0.0.0:1884\"\n[[listener]]\nbind = \"[::1]:1885\"\n\
         [broker]\ncores = \"0-2,5\"\nconnections_max = 7\nretain_available = false\n",
    )
    .expect("file parses");
    let binds: Vec<_> = config.listeners.iter().map(|l| l.bind).collect();
    assert_eq!(binds, [addr("0.0.0.0:1884"), addr("[::1]:1885")]);
    assert_eq!(config.broker.cores, Some(vec![0, 1, 2, 5]));
    assert_eq!(config.broker.connections_max, 7);
    assert!(!config.broker.retain_available);
    // Keys the file leaves out keep their defaults.
    let defaults = BrokerConfig::default();
    assert_eq!(config.broker.receive_maximum, defaults.receive_maximum);
    assert_eq!(config.broker.sys_interval_secs, defaults.sys_interval_secs);
}

#[test]
fn cores_may_be_an_array() {
    let config = parse("[broker]\ncores = [3, 1]\n").expect("array of CPUs");
    assert_eq!(config.broker.cores, Some(vec![3, 1]));
}

#[test]
fn flags_override_file() {
    let mut config = parse(
        "[[listener]]\nbind = \"0.0.0.0:1884\"\n[broker]\ncores = [0]\n\
         connections_max = 7\nreceive_maximum = 10\ntopic_alias_maximum = 5\n",
    )
    .expect("file parses");
    config.apply(&args(&[
        "--listen",
        "127.0.0.1:2000",
        "--listen",
        "127.0.0.1:2001",
        "--cores",
        "1-2",
        "--connections-max",
        "9",
        "--retain-available",
        "false",
        "--sys-interval-secs",
        "0",
    ]));
    let binds: Vec<_> = config.listeners.iter().map(|l| l.bind).collect();
    assert_eq!(binds, [addr("127.0.0.1:2000"), addr("127.0.0.1:2001")]);
    assert_eq!(config.broker.cores, Some(vec![1, 2]));
    assert_eq!(config.broker.connections_max, 9);
    assert!(!config.broker.retain_available);
    assert_eq!(config.broker.sys_interval_secs, 0);
    // Flags not given leave the file's values.
    assert_eq!(config.broker.receive_maximum, 10);
    assert_eq!(config.broker.topic_alias_maximum, 5);
}

#[test]
fn every_flag_sets_its_field() {
    let mut config = Config::default();
    config.apply(&args(&[
        "--connections-max=1",
        "--packet-size-bytes-max=2",
        "--connect-timeout-ms=3",
        "--keep-alive-secs-max=4",
        "--session-expiry-secs-max=5",
        "--session-queue-messages-max=6",
        "--outgoing-queue-messages-max=7",
        "--inflight-messages-max=8",
        "--receive-maximum=9",
        "--topic-alias-maximum=10",
        "--retain-available=false",
        "--inter-shard-channel-capacity=11",
        "--sys-interval-secs=12",
        "--batch-max-messages=13",
        "--batch-max-bytes=14",
        "--batch-linger-us=15",
        "--ring-capacity-batches=16",
        "--metrics=127.0.0.1:9100",
        "--subscriptions-per-client-max=17",
        "--publish-rate-max=18",
        "--password-file=/p",
        "--acl-file=/a",
        "--allow-anonymous=true",
        "--log-format=json",
        "--log-level=trace",
    ]));
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "trace");
    let auth = crate::auth::AuthConfig {
        password_file: Some(PathBuf::from("/p")),
        acl_file: Some(PathBuf::from("/a")),
        allow_anonymous: Some(true),
    };
    assert_eq!(config.auth, auth);
    let batching = BatchingConfig {
        max_messages: 13,
        max_bytes: 14,
        linger_us: 15,
        ring_capacity_batches: 16,
    };
    assert_eq!(config.batching, batching);
    let expected = BrokerConfig {
        cores: None,
        connections_max: 1,
        packet_size_bytes_max: 2,
        connect_timeout_ms: 3,
        keep_alive_secs_max: 4,
        session_expiry_secs_max: 5,
        session_queue_messages_max: 6,
        outgoing_queue_messages_max: 7,
        inflight_messages_max: 8,
        receive_maximum: 9,
        topic_alias_maximum: 10,
        retain_available: false,
        inter_shard_channel_capacity: 11,
        sys_interval_secs: 12,
        metrics_bind: Some("127.0.0.1:9100".parse().unwrap()),
        subscriptions_per_client_max: 17,
        publish_rate_max: 18,
    };
    assert_eq!(config.broker, expected);
}

#[test]
fn validation_errors_name_the_key() {
    type Edit = fn(&mut Config);
    let cases: [(Edit, &str); 19] = [
        (
            |c| c.listeners.clear(),
            "listener: at least one listener is needed",
        ),
        (
            |c| c.listeners.push(c.listeners[0].clone()),
            "listener[1].bind: 127.0.0.1:1883 is already bound by listener[0]",
        ),
        (
            |c| c.broker.cores = Some(vec![]),
            "broker.cores: the list of CPUs is empty",
        ),
        (
            |c| c.broker.cores = Some(vec![0, 2, 0]),
            "broker.cores: CPU 0 is listed twice",
        ),
        (
            |c| c.broker.cores = Some(vec![1024]),
            "broker.cores: CPU 1024 is above the maximum of 1023",
        ),
        (
            |c| c.broker.connections_max = 0,
            "broker.connections_max: 0 is below the minimum of 1",
        ),
        (
            |c| c.broker.packet_size_bytes_max = 5,
            "broker.packet_size_bytes_max: 5 is below the minimum of 16",
        ),
        (
            |c| c.broker.packet_size_bytes_max = 268_435_461,
            "broker.packet_size_bytes_max: 268435461 is above the maximum of 268435460",
        ),
        (
            |c| c.broker.connect_timeout_ms = 0,
            "broker.connect_timeout_ms: 0 is below the minimum of 1",
        ),
        (
            |c| c.broker.connect_timeout_ms = 3_600_001,
            "broker.connect_timeout_ms: 3600001 is above the maximum of 3600000",
        ),
        (
            |c| c.broker.session_queue_messages_max = 0,
            "broker.session_queue_messages_max: 0 is below the minimum of 1",
        ),
        (
            |c| c.broker.outgoing_queue_messages_max = 0,
            "broker.outgoing_queue_messages_max: 0 is below the minimum of 1",
        ),
        (
            |c| c.broker.inflight_messages_max = 0,
            "broker.inflight_messages_max: 0 is below the minimum of 1",
        ),
        (
            |c| c.broker.receive_maximum = 0,
            "broker.receive_maximum: 0 is below the minimum of 1",
        ),
        (
            |c| c.broker.inter_shard_channel_capacity = 0,
            "broker.inter_shard_channel_capacity: 0 is below the minimum of 1",
        ),
        (
            |c| c.batching.max_messages = 0,
            "batching.max_messages: 0 is below the minimum of 1",
        ),
        (
            |c| c.batching.max_bytes = 1023,
            "batching.max_bytes: 1023 is below the minimum of 1024",
        ),
        (
            |c| c.batching.linger_us = 1_000_001,
            "batching.linger_us: 1000001 is above the maximum of 1000000",
        ),
        (
            |c| c.batching.ring_capacity_batches = 0,
            "batching.ring_capacity_batches: 0 is below the minimum of 1",
        ),
    ];
    for (edit, expected) in cases {
        let mut config = Config::default();
        edit(&mut config);
        let error = config.validate().expect_err(expected).to_string();
        assert_eq!(error, expected);
    }
}

#[test]
fn bounds_are_inclusive() {
    let mut config = Config::default();
    let b = &mut config.broker;
    b.packet_size_bytes_max = PACKET_SIZE_BYTES_MAX_MIN;
    b.connect_timeout_ms = CONNECT_TIMEOUT_MS_MAX;
    b.receive_maximum = u16::MAX;
    b.cores = Some(vec![CORE_ID_MAX]);
    let g = &mut config.batching;
    g.max_messages = 1;
    g.max_bytes = BATCHING_MAX_BYTES_MIN;
    g.linger_us = BATCHING_LINGER_US_MAX;
    g.ring_capacity_batches = 1;
    config
        .validate()
        .expect("lowest and highest values accepted");
    config.broker.packet_size_bytes_max = PACKET_SIZE_BYTES_MAX;
    config
        .validate()
        .expect("largest packet MQTT can encode accepted");
    // Port 0 asks for any free port, so two such listeners do not collide.
    config.listeners = vec![ListenerConfig::new(addr("127.0.0.1:0")); 2];
    config.validate().expect("two port-0 listeners");
    config.batching.linger_us = 0;
    config.validate().expect("no linger");
}

#[test]
fn file_errors_give_position_and_key() {
    let cases = [
        (
            "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"foo\"\n",
            "test.toml:4:8: listener[1].bind: \"foo\" is not an IP address and port",
        ),
        (
            "[[listener]]\n",
            "test.toml:1:1: listener[0]: missing field `bind`",
        ),
        (
            "[broker]\nreceive_maximum = 70000\n",
            "test.toml:2:19: broker.receive_maximum: invalid value: integer `70000`, \
             expected u16",
        ),
        (
            "[broker]\nconnections_max = -1\n",
            "test.toml:2:19: broker.connections_max: invalid value: integer `-1`, \
             expected usize",
        ),
        (
            "[broker]\nretain_available = 1\n",
            "test.toml:2:20: broker.retain_available: invalid type: integer `1`, \
             expected a boolean",
        ),
        (
            "[broker]\ncores = \"0-x\"\n",
            "test.toml:2:9: broker.cores: \"x\" in \"0-x\" is not a CPU number",
        ),
        (
            "[broker]\ncores = [0, \"x\"]\n",
            "test.toml:2:13: broker.cores[1]: invalid type: string \"x\", expected usize",
        ),
        (
            "broker = 1\n",
            "test.toml:1:10: broker: invalid type: integer `1`, expected a table",
        ),
        // Syntax errors: there is no key to name, the position says where.
        ("[broker\n", "test.toml:1:8: unclosed table, expected `]`"),
        (
            "[broker]\nx = = 1\n",
            "test.toml:2:5: extra `=`, expected nothing",
        ),
    ];
    for (text, expected) in cases {
        let error = parse(text).expect_err(expected).to_string();
        assert_eq!(error, expected);
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let error = parse("[broker]\nconections_max = 5\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(
            "test.toml:2:1: broker.conections_max: unknown key `conections_max`, \
             expected one of `cores`, `connections_max`,"
        ),
        "{error}"
    );
    let error = parse("[kafkaa]\nx = 1\n").unwrap_err().to_string();
    assert_eq!(
        error,
        "test.toml:1:2: kafkaa: unknown key `kafkaa`, expected one of `listener`, \
         `broker`, `kafka`, `batching`, `spool`, `auth`, `log`, `cluster`"
    );
    let error = parse("[kafka]\ncluster = 1\n").unwrap_err().to_string();
    assert_eq!(
        error,
        "test.toml:2:1: kafka.cluster: unknown key `cluster`, expected one of `clusters`, \
         `mapping`, `source`"
    );
    let error = parse("[batching]\nring_capacity = 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(
            "test.toml:2:1: batching.ring_capacity: unknown key `ring_capacity`, \
             expected one of `max_messages`,"
        ),
        "{error}"
    );
    let error = parse("[[listener]]\nport = 5\n").unwrap_err().to_string();
    assert_eq!(
        error,
        "test.toml:2:1: listener[0].port: unknown key `port`, expected one of `bind`, \
         `tls_cert`, `tls_key`, `tls_client_ca`, `require_certificate`, \
         `use_identity_as_username`"
    );
}

#[test]
fn tls_listener_keys_parse_and_go_together() {
    let config = parse(
        "[[listener]]\nbind = \"0.0.0.0:8883\"\ntls_cert = \"/etc/ferrymq/server.pem\"\n\
         tls_key = \"/etc/ferrymq/server.key\"\ntls_client_ca = \"/etc/ferrymq/ca.pem\"\n\
         require_certificate = true\nuse_identity_as_username = true\n",
    )
    .expect("TLS listener parses");
    config.validate().expect("TLS listener valid");
    let listener = &config.listeners[0];
    assert!(listener.is_tls());
    assert_eq!(
        listener.tls_key.as_deref(),
        Some(Path::new("/etc/ferrymq/server.key"))
    );
    assert!(listener.require_certificate && listener.use_identity_as_username);
    assert!(!ListenerConfig::new(addr("127.0.0.1:1883")).is_tls());

    let tls = || {
        let mut listener = ListenerConfig::new(addr("127.0.0.1:8883"));
        listener.tls_cert = Some("cert.pem".into());
        listener.tls_key = Some("key.pem".into());
        listener
    };
    type Change = fn(&mut ListenerConfig);
    let cases: [(Change, &str); 7] = [
        (
            |l| l.tls_key = None,
            "listener[1].tls_key: missing; tls_cert needs its private key",
        ),
        (
            |l| l.tls_cert = None,
            "listener[1].tls_cert: missing; tls_key needs its certificate",
        ),
        (
            |l| l.tls_cert = Some("".into()),
            "listener[1].tls_cert: cannot be empty",
        ),
        (
            |l| {
                l.tls_cert = None;
                l.tls_key = None;
                l.tls_client_ca = Some("ca.pem".into());
            },
            "listener[1].tls_client_ca: needs tls_cert and tls_key (a TLS listener)",
        ),
        (
            |l| l.require_certificate = true,
            "listener[1].require_certificate: needs tls_client_ca to verify \
             certificates against",
        ),
        (
            |l| l.use_identity_as_username = true,
            "listener[1].use_identity_as_username: needs tls_client_ca to verify \
             certificates against",
        ),
        (
            |l| {
                l.tls_cert = None;
                l.tls_key = None;
                l.require_certificate = true;
            },
            "listener[1].require_certificate: needs tls_client_ca to verify \
             certificates against",
        ),
    ];
    for (change, expected) in cases {
        let mut config = Config::default();
        let mut listener = tls();
        change(&mut listener);
        config.listeners.push(listener);
        assert_eq!(config.validate().unwrap_err().to_string(), expected);
    }
}

#[test]
fn errors_are_one_line() {
    for text in [
        "[broker\n",
        "[broker]\nfoo = 1\n",
        "[[listener]]\nbind = 1\n",
    ] {
        let error = parse(text).unwrap_err().to_string();
        assert!(!error.contains('\n'), "{error:?}");
    }
}

#[test]
fn cpu_lists() {
    assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
    assert_eq!(parse_cpu_list("0,1"), Ok(vec![0, 1]));
    assert_eq!(parse_cpu_list("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
    assert_eq!(parse_cpu_list(" 4 , 2-3 "), Ok(vec![4, 2, 3]));
    assert_eq!(parse_cpu_list("5-5"), Ok(vec![5]));
    let errors = [
        ("", "\"\" in \"\" is not a CPU number"),
        ("0,", "\"\" in \"0,\" is not a CPU number"),
        ("a", "\"a\" in \"a\" is not a CPU number"),
        ("-1", "\"\" in \"-1\" is not a CPU number"),
        ("0-", "\"\" in \"0-\" is not a CPU number"),
        ("3-1", "range \"3-1\" in \"3-1\" runs backwards"),
        ("0-2,1", "CPU 1 is listed twice"),
        ("1024", "CPU 1024 is above the maximum of 1023"),
    ];
    for (list, expected) in errors {
        assert_eq!(parse_cpu_list(list), Err(expected.to_string()), "{list:?}");
    }
}

#[test]
fn bad_flags_are_refused_by_clap() {
    for flags in [
        &["--cores", "2-1"][..],
        &["--listen", "foo"],
        &["--receive-maximum", "70000"],
        &["--retain-available", "yes"],
    ] {
        let argv = std::iter::once("ferrymq").chain(flags.iter().copied());
        assert!(Cli::try_parse_from(argv).is_err(), "{flags:?}");
    }
}

#[test]
fn log_section_flags_and_rust_log() {
    let config = parse("[log]\nformat = \"json\"\nlevel = \"warn,ferrymq::tls=debug\"\n")
        .expect("[log] parses");
    config.validate().expect("[log] valid");
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "warn,ferrymq::tls=debug");
    assert_eq!(
        parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string(),
        "test.toml:2:10: log.format: unknown variant `xml`, expected `text` or `json`"
    );
    assert!(parse("[log]\nlevels = \"info\"\n")
        .unwrap_err()
        .to_string()
        .starts_with("test.toml:2:1: log.levels: unknown key `levels`, expected"));

    let mut config = Config::default();
    config.apply(&args(&["--log-format", "json", "--log-level", "debug"]));
    assert_eq!(
        config.log,
        LogConfig {
            format: LogFormat::Json,
            level: "debug".into()
        }
    );
    assert!(Cli::try_parse_from(["ferrymq", "--log-format", "yaml"]).is_err());

    for (level, expected) in [
        ("", "log.level: empty; give a level such as info"),
        (
            "verbose",
            "log.level: \"verbose\" in \"verbose\" is not a level (off, error, warn, info, \
             debug, trace); a target takes one, as in verbose=debug",
        ),
        (
            "ferrymq=loud",
            "log.level: \"ferrymq=loud\" is not a log filter: ",
        ),
    ] {
        let mut config = Config::default();
        config.log.level = level.into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with(expected), "{level:?}: {error}");
    }
    for level in [
        "off",
        "ERROR",
        "info",
        "trace",
        "info,ferrymq::tls=debug",
        "ferrymq=warn",
    ] {
        check_log_filter(level).unwrap_or_else(|e| panic!("{level:?}: {e}"));
    }

    // Defaults < RUST_LOG < --log-level.
    let level = |flags: &[&str], rust_log: Option<&str>| {
        load_with_rust_log(&args(flags), rust_log).map(|c| c.log.level)
    };
    assert_eq!(level(&[], None).unwrap(), "info");
    assert_eq!(level(&[], Some("debug")).unwrap(), "debug");
    assert_eq!(level(&[], Some("  ")).unwrap(), "info");
    assert_eq!(
        level(&["--log-level", "warn"], Some("debug")).unwrap(),
        "warn"
    );
    assert!(level(&[], Some("loud"))
        .unwrap_err()
        .to_string()
        .starts_with("RUST_LOG: \"loud\" in \"loud\" is not a level"));
    // Overridden by the flag, a bad RUST_LOG does not matter.
    assert_eq!(
        level(&["--log-level", "warn"], Some("loud")).unwrap(),
        "warn"
    );
}

/// `--help` tells the truth: each flag's `[default: X]`, given back as `--flag=X`, leaves
/// `Config::default()` as it is. Defaults shown as prose are those of keys unset by default.
#[test]
fn help_gives_each_default() {
    Cli::command().debug_assert();
    let prose = [
        "none",
        "every CPU the process may run on",
        "false with a password file, true without",
    ];
    for arg in Cli::command()
        .get_arguments()
        .filter(|a| a.get_id() != "config")
    {
        let flag = arg.get_long().expect("a long flag");
        let help = arg.get_help().expect(flag).to_string();
        let (_, shown) = help.rsplit_once(" [default: ").expect(flag);
        let shown = shown.strip_suffix(']').expect(flag);
        assert!(
            arg.get_default_values().is_empty(),
            "{flag}: clap must not fill it"
        );
        if !prose.contains(&shown) {
            let mut config = Config::default();
            config.apply(&args(&[&format!("--{flag}={shown}")]));
            assert_eq!(config, Config::default(), "--{flag}={shown}");
        }
    }
}

const KAFKA: &str = r#"
[kafka.clusters.main]
bootstrap = "kafka1:9092, kafka2:9092"
config = { "compression.type" = "lz4", "linger.ms" = 5, "enable.idempotence" = true }

[kafka.clusters.backup]
bootstrap = "[::1]:9093"

[[kafka.mapping]]
mqtt = "devices/+/telemetry/#"
cluster = "main"
topic = "telemetry"
key = "{client_id}"
ack = "kafka"

[[kafka.mapping]]
mqtt = "alerts/#"
cluster = "backup"
topic = "alerts.{2}"
headers = ["mqtt_topic", "user_properties"]
ack = "none"
mqtt_subscribers = false

[batching]
max_messages = 100
linger_us = 0
"#;

#[test]
fn kafka_and_batching_sections_parse() {
    let config = parse(KAFKA).expect("parses");
    config.validate().expect("valid");
    let main = &config.kafka.clusters["main"];
    assert_eq!(main.bootstrap, "kafka1:9092, kafka2:9092");
    let properties: Vec<_> = main
        .config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        properties,
        [
            ("compression.type", "lz4"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
        ]
    );
    assert!(config.kafka.clusters["backup"].config.is_empty());
    let [telemetry, alerts] = config.kafka.mappings.as_slice() else {
        panic!("two mappings");
    };
    assert_eq!(
        *telemetry,
        MappingConfig {
            mqtt: "devices/+/telemetry/#".into(),
            cluster: Some("main".into()),
            topic: "telemetry".into(),
            key: Some("{client_id}".into()),
            headers: vec![
                HeaderField::MqttTopic,
                HeaderField::ClientId,
                HeaderField::Qos
            ],
            ack: AckMode::Kafka,
            mqtt_subscribers: true,
            from_sources: false,
            on_refused: OnRefused::ReasonCode,
            dead_letter_topic: None,
            dead_letter_cluster: None,
        }
    );
    assert_eq!(
        alerts.headers,
        [HeaderField::MqttTopic, HeaderField::UserProperties]
    );
    assert_eq!(alerts.ack, AckMode::None);
    assert!(!alerts.mqtt_subscribers);
    assert_eq!(config.kafka.cluster_of(alerts), Some("backup"));
    let expected = BatchingConfig {
        max_messages: 100,
        linger_us: 0,
        ..BatchingConfig::default()
    };
    assert_eq!(config.batching, expected);
}

#[test]
fn every_header_field_has_its_toml_name() {
    for field in HeaderField::ALL {
        let name = field.as_str();
        let text = format!(
            "[kafka.clusters.k]\nbootstrap = \"k:1\"\n[[kafka.mapping]]\nmqtt = \"a\"\n\
             topic = \"a\"\nheaders = [\"{name}\"]\n"
        );
        let config = parse(&text).expect(name);
        assert_eq!(config.kafka.mappings[0].headers, [field]);
    }
}

/// The clusters `main` and `audit`, then `mappings`.
fn kafka_error(mappings: &str) -> String {
    let text = format!(
        "[kafka.clusters.main]\nbootstrap = \"k1:9092\"\n\
         [kafka.clusters.audit]\nbootstrap = \"a1:9092\"\n{mappings}"
    );
    let config = parse(&text).expect(&text);
    config.validate().expect_err(&text).to_string()
}

#[test]
fn kafka_validation_errors_name_the_key() {
    let ok = "[[kafka.mapping]]\nmqtt = \"ok\"\ncluster = \"main\"\ntopic = \"ok\"\n";
    let cases = [
        (
            "mqtt = \"a/#/b\"\ncluster = \"main\"\ntopic = \"t\"\n",
            "kafka.mapping[1].mqtt: \"a/#/b\" is not a topic filter: '#' must be the \
             whole last level",
        ),
        (
            "mqtt = \"\"\ncluster = \"main\"\ntopic = \"t\"\n",
            "kafka.mapping[1].mqtt: \"\" is not a topic filter: empty topic filter",
        ),
        (
            "mqtt = \"$share/g/a/#\"\ncluster = \"main\"\ntopic = \"t\"\n",
            "kafka.mapping[1].mqtt: \"$share/g/a/#\" is a shared subscription; a mapping \
             takes every matching message, so give the filter without `$share/GROUP/`",
        ),
        (
            "mqtt = \"a\"\ncluster = \"backup\"\ntopic = \"t\"\n",
            "kafka.mapping[1].cluster: \"backup\" is not a cluster (known: audit, main)",
        ),
        (
            "mqtt = \"a\"\ntopic = \"t\"\n",
            "kafka.mapping[1].cluster: missing, and needed when there are several \
             clusters (known: audit, main)",
        ),
        (
            "mqtt = \"a\"\ncluster = \"main\"\ntopic = \"t\"\nheaders = [\"qos\", \"qos\"]\n",
            "kafka.mapping[1].headers: \"qos\" is listed twice",
        ),
    ];
    for (second, expected) in cases {
        let error = kafka_error(&format!("{ok}[[kafka.mapping]]\n{second}"));
        assert_eq!(error, expected);
    }
    // Templates are the bridge's to parse (bridge::mapping's tests): the configuration, plain
    // data, takes any string, and the error is mapping[2]'s.
    let error = kafka_error(&format!(
        "{ok}[[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"main\"\ntopic = \"t/{{1\"\n\
         [[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"x\"\ntopic = \"t\"\n"
    ));
    assert_eq!(
        error,
        "kafka.mapping[2].cluster: \"x\" is not a cluster (known: audit, main)"
    );
}

#[test]
fn cluster_errors_name_the_key() {
    let cases = [
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\n",
            "kafka.mapping[0].cluster: there is no cluster to send to; add a \
             [kafka.clusters.NAME] table",
        ),
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"main\"\ntopic = \"t\"\n",
            "kafka.mapping[0].cluster: \"main\" is not a cluster (known: none)",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"\"\n",
            "kafka.clusters.main.bootstrap: empty; give one or more host:port, separated \
             by commas",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"k1:9092,k2\"\n",
            "kafka.clusters.main.bootstrap: \"k2\" in \"k1:9092,k2\" is not host:port",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"k1:9092,\"\n",
            "kafka.clusters.main.bootstrap: \"\" in \"k1:9092,\" is not host:port",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"k1:0\"\n",
            "kafka.clusters.main.bootstrap: \"k1:0\" in \"k1:0\" is not host:port",
        ),
        (
            "[kafka.clusters.\"eu west\"]\nbootstrap = \":9092\"\n",
            "kafka.clusters.\"eu west\".bootstrap: \":9092\" in \":9092\" is not host:port",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"k:1\"\n\
             config = { \"bootstrap.servers\" = \"k:2\" }\n",
            "kafka.clusters.main.config.\"bootstrap.servers\": the brokers are set by \
             kafka.clusters.main.bootstrap",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"k:1\"\n\
             config = { \"metadata.broker.list\" = \"k:2\" }\n",
            "kafka.clusters.main.config.\"metadata.broker.list\": the brokers are set by \
             kafka.clusters.main.bootstrap",
        ),
        (
            "[kafka.clusters.\"\"]\nbootstrap = \"k:1\"\n",
            "kafka.clusters.\"\": a cluster name cannot be empty",
        ),
    ];
    for (text, expected) in cases {
        let config = parse(text).expect(text);
        let error = config.validate().expect_err(text).to_string();
        assert_eq!(error, expected);
    }
}

#[test]
fn kafka_file_errors_give_position_and_key() {
    let cases = [
        (
            "[kafka.clusters.main]\nconfig = {}\n",
            "test.toml:1:1: kafka.clusters.main: missing field `bootstrap`",
        ),
        (
            "[kafka.clusters.main]\nbootstrap = \"k:1\"\nconfig = { \"linger.ms\" = 0.5 }\n",
            "test.toml:3:26: kafka.clusters.main.config.\"linger.ms\": invalid type: \
             floating point `0.5`, expected a string, integer or boolean",
        ),
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\nack = \"always\"\n",
            "test.toml:4:7: kafka.mapping[0].ack: unknown variant `always`, expected one \
             of `none`, `kafka`, `durable`",
        ),
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\nheaders = [\"qos\", \"ip\"]\n",
            "test.toml:4:19: kafka.mapping[0].headers[1]: unknown variant `ip`, expected \
             one of `mqtt_topic`,",
        ),
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\n",
            "test.toml:1:1: kafka.mapping[0]: missing field `topic`",
        ),
        (
            "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\nqos = 1\n",
            "test.toml:4:1: kafka.mapping[0].qos: unknown key `qos`, expected one of",
        ),
        (
            "[batching]\nlinger_us = -1\n",
            "test.toml:2:13: batching.linger_us: invalid value: integer `-1`, expected u64",
        ),
    ];
    for (text, expected) in cases {
        let error = parse(text).expect_err(expected).to_string();
        assert!(
            error.starts_with(expected),
            "{error:?} should start {expected:?}"
        );
        assert!(!error.contains('\n'), "{error:?}");
    }
}

#[test]
fn mapping_defaults() {
    let config = parse(
        "[kafka.clusters.only]\nbootstrap = \"k:9092\"\n\
         [[kafka.mapping]]\nmqtt = \"a/#\"\ntopic = \"a\"\n",
    )
    .expect("parses");
    config.validate().expect("the only cluster is taken");
    let mapping = &config.kafka.mappings[0];
    assert_eq!(mapping.cluster, None);
    assert_eq!(config.kafka.cluster_of(mapping), Some("only"));
    assert_eq!(mapping.key, None);
    assert_eq!(
        mapping.headers,
        [
            HeaderField::MqttTopic,
            HeaderField::ClientId,
            HeaderField::Qos
        ]
    );
    assert_eq!(mapping.ack, AckMode::Kafka);
    assert!(mapping.mqtt_subscribers);
}

#[test]
fn a_cluster_section_names_a_kafka_cluster_and_valid_names() {
    let kafka = "[kafka.clusters.main]\nbootstrap = \"k:9092\"\n";
    let ok = parse(&format!(
        "{kafka}[cluster]\nname = \"fleet\"\nnode = \"a-1\"\n"
    ))
    .unwrap();
    ok.validate().unwrap();
    let cluster = ok.cluster.as_ref().unwrap();
    assert_eq!(cluster.prefix(), "ferrymq.fleet.");
    assert_eq!(cluster.node_name(1883), "a-1");
    let error = |text: &str| {
        parse(&format!("{kafka}[cluster]\n{text}"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        error("name = \"a/b\"\n"),
        "cluster.name: '/' is not allowed (letters, digits, '.', '_' and '-' only)"
    );
    assert_eq!(
        error("name = \"f\"\nkafka = \"other\"\n"),
        "cluster.kafka: no [kafka.clusters.other] is configured"
    );
    assert_eq!(
        error("name = \"f\"\npartitions = 0\n"),
        "cluster.partitions: 0 is below the minimum of 1"
    );
    assert_eq!(
        error("name = \"f\"\nreplication_factor = 0\n"),
        "cluster.replication_factor: 0 is neither -1 (the Kafka cluster's default) nor 1 or more"
    );
    let no_kafka = parse("[cluster]\nname = \"f\"\n").unwrap().validate();
    assert!(no_kafka
        .unwrap_err()
        .to_string()
        .starts_with("cluster.kafka: "));
}
