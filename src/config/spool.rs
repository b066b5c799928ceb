//! TOML `[spool]`: the per-shard on-disk log behind `ack = "durable"`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{at_least, at_most, ConfigError};

/// What a durable QoS 1/2 publisher gets while its shard's spool holds `spool.max_bytes`;
/// TOML `spool.when_full`, flag `--spool-when-full`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpoolWhenFull {
    /// Stop reading the publisher until the spool has room: nothing is refused, the device
    /// waits (TCP backpressure).
    #[default]
    Hold,
    /// Answer an MQTT 5.0 publisher's PUBLISH with PUBACK/PUBREC 0x97 Quota exceeded, so it
    /// knows at once and may retry later or elsewhere; 3.1.1 clients, which have no
    /// negative acknowledgement, are held as with `hold`.
    Refuse,
}

/// The per-shard durable log; TOML `[spool]`. Used only by `ack = "durable"` mappings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct SpoolConfig {
    /// Directory of the logs, one subdirectory per shard (`shard-N`).
    pub data_dir: PathBuf,
    /// Longest a record waits for its flush (group commit). 1 ms keeps PUBACK latency low
    /// while many records share one `fdatasync` under load.
    pub sync_us: u64,
    /// A flush starts at once when this many bytes wait. 1 MiB.
    pub sync_bytes: usize,
    /// Bytes on disk per shard before durable publishers are held back (Kafka away for
    /// long). 1 GiB.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started; a segment is deleted
    /// once Kafka has all its records. 64 MiB.
    pub segment_bytes: u64,
    /// Durable QoS 1/2 publishers while the spool is full: held or refused (5.0 only).
    pub when_full: SpoolWhenFull,
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig {
            data_dir: PathBuf::from("ferrymq-data"),
            sync_us: 1000,
            sync_bytes: 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            when_full: SpoolWhenFull::Hold,
        }
    }
}

/// Longest group-commit wait: beyond a second, PUBACKs would stall devices.
pub const SPOOL_SYNC_US_MAX: u64 = 1_000_000;
/// Smallest segment: a few direct-I/O blocks.
pub const SPOOL_SEGMENT_BYTES_MIN: u64 = 64 * 1024;

impl SpoolConfig {
    /// Checks every value against its bounds; the error names the first key out of bounds.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        at_most("spool.sync_us", self.sync_us, SPOOL_SYNC_US_MAX)?;
        at_least("spool.sync_bytes", self.sync_bytes, 1)?;
        at_least(
            "spool.segment_bytes",
            self.segment_bytes,
            SPOOL_SEGMENT_BYTES_MIN,
        )?;
        at_least("spool.max_bytes", self.max_bytes, self.segment_bytes)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("spool.data_dir: cannot be empty".into()));
        }
        Ok(())
    }
}
