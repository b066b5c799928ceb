//! `--kafka-config KEY=VALUE`: librdkafka properties from the command line, for a secured
//! Kafka (TLS, SASL, ...) or any other client setting.
//!
//! One source file for two programs: `ferrymq-loadgen` (this crate, `kafka-bench` included)
//! and `ferrymq-bench-bridge`, which includes it with `#[path]`, so it needs nothing but std
//! and rdkafka.
//!
//! A value written `${env:NAME}` is the environment variable NAME, one written
//! `${file:PATH}` the content of the file PATH without its final newline: passwords need not
//! be on the command line. Such values, and every value of a key holding `password`,
//! `secret` or `token` (and `ssl.key.pem`, a private key), are never printed: messages show
//! the flag as written, with a literal secret as `(withheld)`, and [`KafkaConfig::redact`]
//! takes them out of librdkafka's own messages.

use std::ffi::OsString;
use std::fmt;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;

/// The flag's name, which every message starts with.
pub const FLAG: &str = "--kafka-config";

/// Shown instead of a value that must not be printed.
const WITHHELD: &str = "(withheld)";

/// Properties that name the brokers: each program has a flag of its own for them.
const BOOTSTRAP_PROPERTIES: [&str; 2] = ["bootstrap.servers", "metadata.broker.list"];

/// The `--kafka-config` properties, in the order given (a key given twice: the last wins,
/// as in librdkafka). `Debug` shows them as [`KafkaConfig::describe`] does, secrets withheld.
#[derive(Clone, Default)]
pub struct KafkaConfig {
    properties: Vec<Property>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaConfig({:?})", self.describe())
    }
}

#[derive(Clone)]
struct Property {
    key: String,
    value: String,
    /// The flag as written; a literal secret value as [`WITHHELD`].
    shown: String,
    /// The value must not be printed: a secret key's, or read from `${env:}`/`${file:}`.
    hidden: bool,
}

/// Whether the values of `key` are secrets that must never be printed.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|word| key.contains(word))
        || key == "ssl.key.pem"
}

impl KafkaConfig {
    /// Parses the flags, reading `${env:NAME}` from the environment and `${file:PATH}` from
    /// the file system. `bootstrap_flag` is the program's flag for the brokers, which the
    /// error for `bootstrap.servers` points to.
    pub fn parse(flags: &[String], bootstrap_flag: &str) -> Result<KafkaConfig, String> {
        KafkaConfig::parse_with(flags, bootstrap_flag, &|name| std::env::var_os(name))
    }

    /// [`KafkaConfig::parse`] with `env` for the environment.
    fn parse_with(
        flags: &[String],
        bootstrap_flag: &str,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<KafkaConfig, String> {
        let mut properties = Vec::with_capacity(flags.len());
        for flag in flags {
            let Some((key, written)) = flag
                .split_once('=')
                .map(|(key, written)| (key.trim(), written))
                .filter(|(key, _)| !key.is_empty())
            else {
                let shown = if is_secret_key(flag) {
                    format!("{WITHHELD} (it looks like a secret)")
                } else {
                    format!("{flag:?}")
                };
                return Err(format!(
                    "{FLAG} {shown}: expected KEY=VALUE (a librdkafka property, e.g. \
                     security.protocol=SASL_SSL)"
                ));
            };
            let reference = written
                .strip_prefix("${")
                .and_then(|inner| inner.strip_suffix('}'));
            let (value, shown, hidden) = match reference {
                Some(inner) => {
                    let value = resolve(inner, env).map_err(|e| format!("{FLAG} {flag}: {e}"))?;
                    (value, flag.clone(), true)
                }
                None if is_secret_key(key) => {
                    (written.to_string(), format!("{key}={WITHHELD}"), true)
                }
                None => (written.to_string(), flag.clone(), false),
            };
            if BOOTSTRAP_PROPERTIES.contains(&key) {
                return Err(format!(
                    "{FLAG} {shown}: the brokers are set by {bootstrap_flag}"
                ));
            }
            properties.push(Property {
                key: key.to_string(),
                value,
                shown,
                hidden,
            });
        }
        Ok(KafkaConfig { properties })
    }

    /// Asks librdkafka whether it takes each property (name and value), then makes a
    /// producer with all of them and no brokers (nothing to connect to) and drops it, which
    /// checks what only a whole client does (the files named by `ssl.*.location`, the SASL
    /// mechanism, properties that must go together): a refused configuration is an error
    /// before anything starts.
    pub fn check(&self) -> Result<(), String> {
        for property in &self.properties {
            let mut config = ClientConfig::new();
            config.set(&property.key, &property.value);
            if let Err(error) = config.create_native_config() {
                let why = match error {
                    KafkaError::ClientConfig(_, description, _, _) => description,
                    other => other.to_string(),
                };
                return Err(format!(
                    "{FLAG} {}: librdkafka refuses it: {}",
                    property.shown,
                    self.redact(&why)
                ));
            }
        }
        if self.is_empty() {
            return Ok(());
        }
        // A client of its own, with no brokers to connect to, to see them work together.
        let mut config = ClientConfig::new();
        self.apply(&mut config);
        if let Err(error) = config.create::<BaseProducer>() {
            let why = match error {
                KafkaError::ClientCreation(description) => description,
                other => other.to_string(),
            };
            return Err(format!(
                "{FLAG}: librdkafka cannot make a client with {}: {}",
                self.describe(),
                self.redact(&why)
            ));
        }
        Ok(())
    }

    /// The properties, key and value, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
    }

    /// Sets the properties on `config`, after what is already there (they win).
    pub fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in self.iter() {
            config.set(key, value);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }

    /// The flags as written, secrets withheld, space-separated: for reports.
    pub fn describe(&self) -> String {
        self.properties
            .iter()
            .map(|p| p.shown.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `text` (e.g. librdkafka's message for a client it could not make) with every value
    /// that must not be printed replaced by `(withheld)`.
    pub fn redact(&self, text: &str) -> String {
        let mut hidden: Vec<&str> = self
            .properties
            .iter()
            .filter(|p| p.hidden && !p.value.is_empty())
            .map(|p| p.value.as_str())
            .collect();
        // Longest first: a secret holding another is withheld whole.
        hidden.sort_by_key(|value| std::cmp::Reverse(value.len()));
        let mut text = text.to_string();
        for value in hidden {
            text = text.replace(value, WITHHELD);
        }
        text
    }
}

/// The value of `${env:NAME}` or `${file:PATH}` (`inner` is what the braces hold).
fn resolve(inner: &str, env: &dyn Fn(&str) -> Option<OsString>) -> Result<String, String> {
    if let Some(name) = inner.strip_prefix("env:") {
        if name.is_empty() {
            return Err("${env:NAME} needs a variable name".into());
        }
        return env(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?
            .into_string()
            .map_err(|_| format!("environment variable {name} is not UTF-8"));
    }
    if let Some(path) = inner.strip_prefix("file:") {
        if path.is_empty() {
            return Err("${file:PATH} needs a path".into());
        }
        let mut text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        return Ok(text);
    }
    Err("a value in ${...} must be ${env:NAME} or ${file:PATH}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn env(name: &str) -> Option<OsString> {
        match name {
            "KAFKA_PASSWORD" => Some("s3cr3t-from-env".into()),
            "KAFKA_PROTOCOL" => Some("SASL_SSL".into()),
            "EMPTY" => Some("".into()),
            _ => None,
        }
    }

    fn parse(list: &[&str]) -> Result<KafkaConfig, String> {
        KafkaConfig::parse_with(&flags(list), "--bootstrap", &env)
    }

    fn temp_file(content: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("kafka-config-test-{}-{nanos}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn literal_values_in_order_last_one_wins() {
        let config = parse(&[
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            "ssl.ca.location=/etc/ca.pem",
            "sasl.oauthbearer.config=principal=me",
            "linger.ms=5",
            "linger.ms=20",
            "client.rack=",
        ])
        .unwrap();
        let pairs: Vec<_> = config.iter().collect();
        assert_eq!(
            pairs,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("ssl.ca.location", "/etc/ca.pem"),
                ("sasl.oauthbearer.config", "principal=me"),
                ("linger.ms", "5"),
                ("linger.ms", "20"),
                ("client.rack", ""),
            ]
        );
        let mut client = ClientConfig::new();
        client.set("linger.ms", "1").set("acks", "all");
        config.apply(&mut client);
        assert_eq!(client.get("linger.ms"), Some("20"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert!(!config.is_empty() && parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn malformed_flags_are_refused_naming_the_flag() {
        for bad in ["linger.ms", "=5", ""] {
            let error = parse(&[bad]).unwrap_err();
            assert!(
                error.starts_with("--kafka-config ") && error.contains("expected KEY=VALUE"),
                "{bad:?}: {error}"
            );
        }
        // Text that looks like a secret is not echoed.
        let error = parse(&["sasl.password:hunter2"]).unwrap_err();
        assert!(error.starts_with("--kafka-config "), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn env_and_file_references_are_read() {
        let path = temp_file("from-file\n");
        let crlf = temp_file("line\r\n");
        let two = temp_file("two\n\n");
        let bare = temp_file("no newline");
        let config = parse(&[
            "sasl.password=${env:KAFKA_PASSWORD}",
            "security.protocol=${env:KAFKA_PROTOCOL}",
            "client.rack=${env:EMPTY}",
            &format!("sasl.username=${{file:{}}}", path.display()),
            &format!("a=${{file:{}}}", crlf.display()),
            &format!("b=${{file:{}}}", two.display()),
            &format!("c=${{file:{}}}", bare.display()),
        ])
        .unwrap();
        let values: Vec<_> = config.iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [
                "s3cr3t-from-env",
                "SASL_SSL",
                "",
                "from-file",
                "line",
                "two\n",
                "no newline"
            ]
        );
        for p in [path, crlf, two, bare] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn missing_variables_files_and_unknown_references_are_errors() {
        let error = parse(&["sasl.password=${env:NOT_THERE}"]).unwrap_err();
        assert_eq!(
            error,
            "--kafka-config sasl.password=${env:NOT_THERE}: environment variable NOT_THERE is \
             not set"
        );
        let error = parse(&["sasl.password=${file:/nonexistent/kafka-password}"]).unwrap_err();
        assert!(
            error.starts_with(
                "--kafka-config sasl.password=${file:/nonexistent/kafka-password}: read \
                 /nonexistent/kafka-password: "
            ),
            "{error}"
        );
        for bad in [
            "x=${env:}",
            "x=${file:}",
            "x=${ENV:KAFKA_PASSWORD}",
            "x=${vault:a}",
        ] {
            let error = parse(&[bad]).unwrap_err();
            assert!(
                error.starts_with(&format!("--kafka-config {bad}: ")),
                "{bad}: {error}"
            );
        }
        // Only a whole value is a reference.
        let config = parse(&["client.id=a${env:KAFKA_PASSWORD}"]).unwrap();
        assert_eq!(
            config.iter().next(),
            Some(("client.id", "a${env:KAFKA_PASSWORD}"))
        );
    }

    #[test]
    fn the_brokers_have_their_own_flag() {
        for key in ["bootstrap.servers", "metadata.broker.list"] {
            let error = parse(&[&format!("{key}=h:9092")]).unwrap_err();
            assert_eq!(
                error,
                format!("--kafka-config {key}=h:9092: the brokers are set by --bootstrap")
            );
        }
    }

    #[test]
    fn secrets_are_never_shown() {
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("ssl.key.password"));
        assert!(is_secret_key("sasl.oauthbearer.client.secret"));
        assert!(is_secret_key("sasl.oauthbearer.token.endpoint.url"));
        assert!(is_secret_key("SSL.KEYSTORE.PASSWORD"));
        assert!(is_secret_key("ssl.key.pem"));
        assert!(!is_secret_key("sasl.username") && !is_secret_key("ssl.key.location"));
        let config = parse(&[
            "sasl.username=ferrymq",
            "sasl.password=hunter2-literal",
            "ssl.key.password=${env:KAFKA_PASSWORD}",
        ])
        .unwrap();
        let described = config.describe();
        assert_eq!(
            described,
            "sasl.username=ferrymq sasl.password=(withheld) \
             ssl.key.password=${env:KAFKA_PASSWORD}"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!format!("{config:?}").contains("s3cr3t"));
        assert_eq!(
            config.redact("bad: hunter2-literal and s3cr3t-from-env, user ferrymq"),
            "bad: (withheld) and (withheld), user ferrymq"
        );
    }

    #[test]
    fn librdkafka_checks_names_and_values() {
        let good = parse(&[
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=u",
            "sasl.password=p",
            "compression.type=zstd",
        ])
        .unwrap();
        assert_eq!(good.check(), Ok(()));
        // Taken alone, but a client cannot be made with it: still before anything starts.
        let error = parse(&[
            "security.protocol=SSL",
            "ssl.ca.location=/nonexistent/ca.pem",
            "ssl.key.password=${env:KAFKA_PASSWORD}",
        ])
        .unwrap()
        .check()
        .unwrap_err();
        assert!(
            error.starts_with(
                "--kafka-config: librdkafka cannot make a client with security.protocol=SSL \
                 ssl.ca.location=/nonexistent/ca.pem ssl.key.password=${env:KAFKA_PASSWORD}: "
            ) && error.contains("ssl.ca.location"),
            "{error}"
        );
        let error = parse(&["compression.type=zsdt"])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(
            error.starts_with("--kafka-config compression.type=zsdt: librdkafka refuses it: "),
            "{error}"
        );
        let error = parse(&["no.such.property=1"]).unwrap().check().unwrap_err();
        assert!(
            error.starts_with("--kafka-config no.such.property=1: librdkafka refuses it: "),
            "{error}"
        );
        // A refused value that came from the environment is not printed.
        let error = parse(&["security.protocol=${env:KAFKA_PASSWORD}"])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(
            error.starts_with(
                "--kafka-config security.protocol=${env:KAFKA_PASSWORD}: librdkafka refuses it: "
            ),
            "{error}"
        );
        assert!(!error.contains("s3cr3t"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }
}
