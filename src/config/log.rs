//! TOML `[log]`: the broker's log on stderr, its format and which events it keeps.

use serde::Deserialize;

use super::ConfigError;

/// The broker's log, on stderr; TOML `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct LogConfig {
    /// `text`: one line per event, `ferrymq: ` and the message; `json`: one JSON object per
    /// line with `timestamp`, `level`, `message`, the event's fields, `target` and
    /// `threadName`.
    pub format: LogFormat,
    /// Which events are logged: a level (`off`, `error`, `warn`, `info`, `debug`, `trace`) or
    /// a filter in RUST_LOG's syntax, e.g. `info,ferrymq::tls=debug`. `info` logs starts,
    /// stops, reloads and what goes wrong, nothing per message.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// How log events are written; TOML `log.format`, flag `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human lines, `ferrymq: listening on ...`, as the broker has always written them.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Levels a log filter may name on its own.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a log filter: a level, or comma-separated directives in RUST_LOG's syntax
/// (`info,ferrymq::tls=debug`). A bare word that is not a level is refused: RUST_LOG would
/// take it as a target with every level, and `--log-level verbose` would log nothing.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("empty; give a level such as info".into());
    }
    for directive in filter.split(',').map(str::trim) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && !LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} in {filter:?} is not a level ({}); a target takes one, \
                 as in {directive}=debug",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|e| format!("{filter:?} is not a log filter: {e}"))
}

impl LogConfig {
    /// Checks the filter; the error names `log.level`.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        check_log_filter(&self.level).map_err(|e| ConfigError(format!("log.level: {e}")))
    }
}
