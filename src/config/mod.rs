//! The broker's configuration: defaults, overridden by a TOML file (`--config FILE`),
//! overridden by command-line flags.
//!
//! [`load`] reads the file, applies the flags and validates the result, so the rest of the
//! broker only ever sees a [`Config`] whose every value is within its bounds. Errors are one
//! line and name the key as it is written in TOML (`broker.packet_size_bytes_max: 5 is below
//! the minimum of 16`), prefixed with `FILE:LINE:COLUMN` when they come from reading the file.
//!
//! Any string value of the file may be `"${env:NAME}"` or `"${file:PATH}"`: the variable's
//! value or the file's content (see [`secrets`]). Errors never show what such a
//! reference gave, nor the value of a key that holds a secret ([`is_secret_key`]).
//!
//! One file per section: [`listener`], [`broker`], [`kafka`] (clusters and mappings),
//! [`batching`], [`spool`], [`log`] (`[auth]` is [`crate::auth::AuthConfig`]); [`cli`] holds
//! the flags, each declared once with the key it sets; [`file`] turns TOML errors into one
//! line; [`secrets`] resolves `${env:…}`/`${file:…}` and keeps secrets out of errors. Every
//! public name is re-exported here: `crate::config::BrokerConfig`, `crate::config::load`.
//!
//! The configuration is plain data: it does not parse the mappings' topic and key templates.
//! The bridge does, once, when it compiles the mappings (`bridge::validate`, which `ferrymq`
//! runs right after [`load`]).
//!
//! ```toml
//! [[listener]]
//! bind = "0.0.0.0:1883"
//!
//! [broker]
//! cores = "0-3"
//! connections_max = 100000
//!
//! [kafka.clusters.main]
//! bootstrap = "kafka1:9092,kafka2:9092"
//! config = { "compression.type" = "lz4" }
//!
//! [[kafka.mapping]]
//! mqtt = "devices/+/telemetry/#"
//! topic = "telemetry"
//! key = "{client_id}"
//!
//! [batching]
//! linger_us = 2000
//! ```

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

pub mod batching;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod file;
pub mod kafka;
pub mod listener;
pub mod log;
pub mod secrets;
pub mod source;
pub mod spool;

pub use batching::{BatchingConfig, BATCHING_LINGER_US_MAX, BATCHING_MAX_BYTES_MIN};
pub use broker::{
    parse_cpu_list, BrokerConfig, CpuList, CONNECT_TIMEOUT_MS_MAX, CORE_ID_MAX,
    PACKET_SIZE_BYTES_MAX_MIN,
};
pub use cli::BrokerArgs;
pub use cluster::BrokerClusterConfig;
pub use kafka::{AckMode, ClusterConfig, HeaderField, KafkaConfig, MappingConfig, OnRefused};
pub use listener::{ListenerConfig, PORT_DEFAULT};
pub use log::{check_log_filter, LogConfig, LogFormat};
pub use secrets::{is_secret_key, scrub};
pub use source::{SourceConfig, SourceStart, SOURCE_IN_FLIGHT_MAX};
pub use spool::{SpoolConfig, SpoolWhenFull, SPOOL_SEGMENT_BYTES_MIN, SPOOL_SYNC_US_MAX};

use file::describe_toml_error;
use secrets::{Resolved, Substitutions};

/// The whole configuration. Plain data; [`load`] builds and validates it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct Config {
    /// Sockets to accept MQTT connections on; TOML `[[listener]]`.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Limits and announced capabilities; TOML `[broker]`.
    pub broker: BrokerConfig,
    /// Kafka clusters and the MQTT topics forwarded to them; TOML `[kafka]`.
    pub kafka: KafkaConfig,
    /// How records are grouped on their way to Kafka; TOML `[batching]`.
    pub batching: BatchingConfig,
    /// The on-disk log behind `ack = "durable"`; TOML `[spool]`.
    pub spool: SpoolConfig,
    /// Password and ACL files in Mosquitto's formats; TOML `[auth]`.
    pub auth: crate::auth::AuthConfig,
    /// The broker's log on stderr: format and level; TOML `[log]`.
    pub log: LogConfig,
    /// Nodes acting as one broker through Kafka; TOML `[cluster]`.
    pub cluster: Option<cluster::BrokerClusterConfig>,
    /// The file's `${env:NAME}` and `${file:PATH}` values and what they gave: kept so that
    /// errors can name the reference and never show the value ([`Config::secret_values`]).
    #[serde(skip)]
    pub substitutions: Substitutions,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            // Loopback only: a broker started without configuration is not open to the network.
            listeners: vec![ListenerConfig::new(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                PORT_DEFAULT,
            )))],
            broker: BrokerConfig::default(),
            kafka: KafkaConfig::default(),
            batching: BatchingConfig::default(),
            spool: SpoolConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            log: LogConfig::default(),
            cluster: None,
            substitutions: Substitutions::default(),
        }
    }
}

/// A configuration error, one line, naming the key as written in TOML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error of one line, `key: problem`, the key as written in TOML
    /// (`kafka.mapping[2].topic`).
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

/// Builds the configuration: defaults, then the file named by `--config`, then the flags, then
/// validation.
pub fn load(args: &BrokerArgs) -> Result<Config, ConfigError> {
    load_with_rust_log(args, None)
}

/// [`load`], with `rust_log` (RUST_LOG's value) between the file and the flags: when set and
/// not blank it replaces the file's `log.level`, and `--log-level` replaces it. A filter that
/// does not parse is an error naming RUST_LOG, unless `--log-level` is given.
pub fn load_with_rust_log(
    args: &BrokerArgs,
    rust_log: Option<&str>,
) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let rust_log = rust_log.map(str::trim).filter(|filter| !filter.is_empty());
    if let (Some(filter), None) = (rust_log, &args.log_level) {
        check_log_filter(filter).map_err(|e| ConfigError(format!("RUST_LOG: {e}")))?;
        config.log.level = filter.to_string();
        config.substitutions.overridden("log.level");
    }
    config.apply(args);
    config.validate()?;
    Ok(config)
}

impl Config {
    /// Reads a TOML file over the defaults, without validating the values.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text over the defaults, without validating the values. `file` names the
    /// text's origin in errors, which read `file:line:column: key: problem`. String values
    /// `"${env:NAME}"` and `"${file:PATH}"` are resolved first; an error resolving one reads
    /// `key: reference: problem`.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, file, &|name| std::env::var_os(name))
    }

    /// [`Config::from_toml`], reading environment variables with `env`.
    pub(crate) fn from_toml_with_env(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let document = toml::de::DeTable::parse(text).map_err(|e| {
            // A syntax error: no value was read, so there is nothing to resolve.
            ConfigError(describe_toml_error(
                text,
                file,
                &e,
                &Resolved::unchanged(text),
                None,
            ))
        })?;
        let resolved = secrets::resolve(text, document.get_ref(), env).map_err(ConfigError)?;
        let mut config: Config = toml::from_str(&resolved.text).map_err(|e| {
            ConfigError(describe_toml_error(
                text,
                file,
                &e,
                &resolved,
                Some(document.get_ref()),
            ))
        })?;
        config.substitutions = resolved.substitutions;
        Ok(config)
    }

    /// The values never to show: those the file's references gave and those of secret keys
    /// ([`is_secret_key`]) in the clusters' `config`; longest first, for [`scrub`].
    pub fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self.substitutions.values().map(str::to_string).collect();
        for cluster in self.kafka.clusters.values() {
            for (name, value) in &cluster.config {
                if is_secret_key(name) {
                    values.push(value.clone());
                }
            }
        }
        values.retain(|value| !value.is_empty());
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        values
    }

    /// `value` as it may be shown for `key`, a key path as errors write it
    /// (`kafka.clusters.main.config."sasl.password"`): `***` when the key holds a secret
    /// ([`is_secret_key`]) or its value came from a reference, else `value`. For anything
    /// that prints settings with their values.
    pub fn shown<'v>(&self, key: &str, value: &'v str) -> &'v str {
        if is_secret_key(key) || self.substitutions.of_key(key).is_some() {
            secrets::MASK
        } else {
            value
        }
    }

    /// Checks every value against its bounds; the error names the first key out of bounds,
    /// and the reference its value came from, if any (`key: ${env:NAME}: problem`). It shows
    /// none of [`Config::secret_values`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|error| self.shown_error(error))
    }

    /// Wraps an error about this configuration as [`Config::validate`] does: `key: problem`
    /// becomes `key: ${env:NAME}: problem` when the key's value came from a reference, and no
    /// value of [`Config::secret_values`] is shown. For checks made outside this module (the
    /// bridge's templates), so that their errors read as the others do.
    pub fn shown_error(&self, error: ConfigError) -> ConfigError {
        let error = self.substitutions.annotate(&error.0);
        ConfigError(scrub(&error, &self.secret_values()))
    }

    /// Each section's checks, in file order.
    fn check(&self) -> Result<(), ConfigError> {
        listener::check_listeners(&self.listeners)?;
        self.broker.check()?;
        self.kafka.validate()?;
        self.batching.check()?;
        self.spool.check()?;
        if let Some(cluster) = &self.cluster {
            cluster.check(self.kafka.clusters.keys())?;
        }
        // The files are read now, so that a broken line stops the start (SIGHUP reloads
        // them later; a broken reload keeps the files in use).
        if let Some(path) = &self.auth.password_file {
            crate::auth::PasswordFile::load(path)
                .map_err(|e| ConfigError(format!("auth.password_file: {e}")))?;
        }
        if let Some(path) = &self.auth.acl_file {
            crate::auth::Acl::load(path).map_err(|e| ConfigError(format!("auth.acl_file: {e}")))?;
        }
        self.log.check()
    }
}

pub(crate) fn at_least<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError(format!(
            "{key}: {value} is below the minimum of {min}"
        )));
    }
    Ok(())
}

pub(crate) fn at_most<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    max: T,
) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError(format!(
            "{key}: {value} is above the maximum of {max}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
