//! The broker's flags, [`BrokerArgs`], flattened into the `ferrymq` command.
//!
//! Each flag is declared once, as one entry of the [`broker_args!`] table below: its help, its
//! clap attributes, its type and the key it sets (`broker.connections_max`). From that entry
//! the macro makes
//! - the field of [`BrokerArgs`], an `Option` that is `None` when the flag is not given;
//! - the `[default: …]` that ends its help, written from [`Config::default`] when the command
//!   is built, so `--help` shows the real default and nothing has to be kept in step;
//! - the line of [`Config::apply`] that puts the flag's value over the file's.
//!
//! The default itself is written once, in the section's `Default` impl, and the bounds once,
//! in the section's check. Why not clap's `default_value_t`: clap would then fill in every flag
//! not given, and a default could not be told from a flag, so every flag would replace the
//! file's value with the default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{Config, CpuList, ListenerConfig, LogFormat, SpoolWhenFull};

/// How a default is written after `[default: ` in `--help`: as the flag takes it, so that
/// giving the flag that text changes nothing. `none` is the text for a default of `None`.
trait Shown {
    fn shown(&self, none: &str) -> String;
}

macro_rules! shown_by_display {
    ($($ty:ty),+) => {
        $(impl Shown for $ty {
            fn shown(&self, _none: &str) -> String {
                self.to_string()
            }
        })+
    };
}

shown_by_display!(u16, u32, u64, usize, bool, String, SocketAddr);

impl Shown for PathBuf {
    fn shown(&self, _none: &str) -> String {
        self.display().to_string()
    }
}

impl Shown for CpuList {
    fn shown(&self, _none: &str) -> String {
        let cpus: Vec<String> = self.iter().map(usize::to_string).collect();
        cpus.join(",")
    }
}

/// A value of an enum flag, by the name clap takes (`hold`, `json`).
fn value_name(value: &impl clap::ValueEnum) -> String {
    let name = value
        .to_possible_value()
        .expect("no variant of a flag is skipped");
    name.get_name().to_string()
}

impl Shown for SpoolWhenFull {
    fn shown(&self, _none: &str) -> String {
        value_name(self)
    }
}

impl Shown for LogFormat {
    fn shown(&self, _none: &str) -> String {
        value_name(self)
    }
}

impl<T: Shown> Shown for Option<T> {
    fn shown(&self, none: &str) -> String {
        match self {
            Some(value) => value.shown(none),
            None => none.to_string(),
        }
    }
}

/// `help`, the lines of a doc comment run together, and the default.
fn with_default(help: &str, default: String) -> String {
    format!("{} [default: {default}]", help.trim())
}

/// Puts a flag's value in its field: a field `T` takes the value, a field `Option<T>` (a key
/// whose default is "none") takes `Some(value)`.
trait Assign<T> {
    fn assign(&mut self, value: T);
}

impl<T> Assign<T> for T {
    fn assign(&mut self, value: T) {
        *self = value;
    }
}

impl<T> Assign<T> for Option<T> {
    fn assign(&mut self, value: T) {
        *self = Some(value);
    }
}

/// The text `--help` shows for a default of `None`: `none`, or the entry's `none = "..."`.
macro_rules! none_text {
    () => {
        "none"
    };
    ($text:literal) => {
        $text
    };
}

/// Makes [`BrokerArgs`] and `BrokerArgs::apply_to` from the table of flags: per flag, its help
/// (a doc comment of one paragraph), its `#[arg(...)]` attributes, `NAME: TYPE` (the field of
/// `BrokerArgs`, holding `Option<TYPE>`), `=>` and the key it sets in [`Config`], and for a key
/// whose default is `None`, optionally the text `--help` shows for it.
macro_rules! broker_args {
    ($(
        $(#[doc = $doc:literal])+
        #[arg($($arg:tt)*)]
        $flag:ident: $ty:ty => $($key:ident).+ $(, none = $none:literal)?;
    )+) => {
        /// Broker flags, flattened into the `ferrymq` command. Each overrides the file's value;
        /// a flag not given leaves the file's value (or the default) in place.
        #[derive(Args, Clone, Debug, Default)]
        pub struct BrokerArgs {
            /// TOML configuration file; flags override its values. A string value may be
            /// "${env:NAME}" or "${file:PATH}" (an environment variable, a file's content).
            /// SIGHUP reads it again for the Kafka clusters' bootstrap and config.
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            // Its help is written out below, LISTEN_HELP; its key is `listener`, a list.
            #[arg(long = "listen", value_name = "ADDR", help = with_default(LISTEN_HELP, {
                let binds: Vec<String> =
                    Config::default().listeners.iter().map(|l| l.bind.to_string()).collect();
                binds.join(" ")
            }))]
            pub listen: Vec<SocketAddr>,
            $(
                #[arg($($arg)*, help = with_default(
                    concat!($($doc),+),
                    Shown::shown(&Config::default().$($key).+, none_text!($($none)?)),
                ))]
                pub $flag: Option<$ty>,
            )+
        }

        impl BrokerArgs {
            /// Puts each flag given (`listen` aside) over the value of its key in `config`.
            fn apply_to(&self, config: &mut Config) {
                $(
                    if let Some(value) = &self.$flag {
                        Assign::assign(&mut config.$($key).+, value.clone());
                        // An error about the key is then about the flag's value, not about a
                        // `${env:…}` reference the file gave it.
                        config.substitutions.overridden(&[$(stringify!($key)),+].join("."));
                    }
                )+
            }
        }
    };
}

const LISTEN_HELP: &str = "Address to listen on, e.g. 0.0.0.0:1883; repeat for several. \
    Replaces the file's listeners, TLS ones too: TLS listeners are set in the file only, as \
    [[listener]] with bind, tls_cert, tls_key (PEM files) and optionally tls_client_ca (PEM CA \
    bundle: verify client certificates), require_certificate = true (refuse clients without \
    one), use_identity_as_username = true (the certificate's CN is the user name).";

broker_args! {
    /// CPUs to run one shard each on, e.g. 0,1 or 0-3,6.
    #[arg(long, value_name = "LIST", value_parser = super::parse_cpu_list)]
    cores: CpuList => broker.cores, none = "every CPU the process may run on";
    /// Connections open at once, over all listeners.
    #[arg(long, value_name = "N")]
    connections_max: usize => broker.connections_max;
    /// Largest packet accepted, announced as Maximum Packet Size (16..=268435460).
    #[arg(long, value_name = "BYTES")]
    packet_size_bytes_max: u32 => broker.packet_size_bytes_max;
    /// Time a new socket has to send CONNECT.
    #[arg(long, value_name = "MS")]
    connect_timeout_ms: u64 => broker.connect_timeout_ms;
    /// Longest keep alive granted; 0 accepts the client's.
    #[arg(long, value_name = "SECS")]
    keep_alive_secs_max: u16 => broker.keep_alive_secs_max;
    /// Longest session expiry granted.
    #[arg(long, value_name = "SECS")]
    session_expiry_secs_max: u32 => broker.session_expiry_secs_max;
    /// QoS 1/2 messages kept per offline session.
    #[arg(long, value_name = "N")]
    session_queue_messages_max: usize => broker.session_queue_messages_max;
    /// Messages queued per connected subscriber.
    #[arg(long, value_name = "N")]
    outgoing_queue_messages_max: usize => broker.outgoing_queue_messages_max;
    /// Outgoing QoS 1/2 messages awaiting ack per client.
    #[arg(long, value_name = "N")]
    inflight_messages_max: u16 => broker.inflight_messages_max;
    /// Receive Maximum announced to 5.0 clients (1..=65535).
    #[arg(long, value_name = "N")]
    receive_maximum: u16 => broker.receive_maximum;
    /// Topic Alias Maximum announced to 5.0 clients; 0 disables aliases.
    #[arg(long, value_name = "N")]
    topic_alias_maximum: u16 => broker.topic_alias_maximum;
    /// Whether retained messages are kept.
    #[arg(long, value_name = "BOOL")]
    retain_available: bool => broker.retain_available;
    /// Messages in flight per ordered pair of shards.
    #[arg(long, value_name = "N")]
    inter_shard_channel_capacity: usize => broker.inter_shard_channel_capacity;
    /// Seconds between $SYS publications; 0 disables them.
    #[arg(long, value_name = "SECS")]
    sys_interval_secs: u32 => broker.sys_interval_secs;
    /// Serve Prometheus metrics on http://ADDR/metrics (and /healthz, /readyz); TOML
    /// broker.metrics_bind.
    #[arg(long = "metrics", value_name = "ADDR")]
    metrics_bind: SocketAddr => broker.metrics_bind;
    /// Subscriptions one client may hold; 0: no limit.
    #[arg(long, value_name = "N")]
    subscriptions_per_client_max: usize => broker.subscriptions_per_client_max;
    /// PUBLISHes per second one client may send (a faster one is read more slowly); 0: no
    /// limit.
    #[arg(long, value_name = "N")]
    publish_rate_max: u32 => broker.publish_rate_max;
    /// Records per Kafka batch; TOML batching.max_messages.
    #[arg(long = "batch-max-messages", value_name = "N")]
    batch_max_messages: usize => batching.max_messages;
    /// Bytes per Kafka batch, at least 1024; TOML batching.max_bytes.
    #[arg(long = "batch-max-bytes", value_name = "BYTES")]
    batch_max_bytes: usize => batching.max_bytes;
    /// Longest wait for a batch to fill, at most 1000000 (1 ms under load, this at device
    /// rates); TOML batching.linger_us.
    #[arg(long = "batch-linger-us", value_name = "US")]
    batch_linger_us: u64 => batching.linger_us;
    /// Batches librdkafka may hold per shard and cluster (N × max_messages records); TOML
    /// batching.ring_capacity_batches.
    #[arg(long = "ring-capacity-batches", value_name = "N")]
    ring_capacity_batches: usize => batching.ring_capacity_batches;
    /// Directory of the durable spool; TOML spool.data_dir.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: PathBuf => spool.data_dir;
    /// Longest wait for a spool flush; TOML spool.sync_us.
    #[arg(long = "spool-sync-us", value_name = "US")]
    spool_sync_us: u64 => spool.sync_us;
    /// Bytes that start a spool flush at once; TOML spool.sync_bytes.
    #[arg(long = "spool-sync-bytes", value_name = "BYTES")]
    spool_sync_bytes: usize => spool.sync_bytes;
    /// Spool bytes per shard before durable publishers wait; TOML spool.max_bytes.
    #[arg(long = "spool-max-bytes", value_name = "BYTES")]
    spool_max_bytes: u64 => spool.max_bytes;
    /// Durable QoS 1/2 publishers while the spool is full: hold (stop reading them) or
    /// refuse (MQTT 5.0 clients get PUBACK/PUBREC 0x97 Quota exceeded; 3.1.1 clients are
    /// held); TOML spool.when_full.
    #[arg(long = "spool-when-full", value_name = "POLICY", value_enum)]
    spool_when_full: SpoolWhenFull => spool.when_full;
    /// Password file in mosquitto_passwd's format (make one with `ferrymq passwd`); clients
    /// then need a user name and password. Reloaded on SIGHUP. TOML auth.password_file.
    #[arg(long = "password-file", value_name = "FILE")]
    password_file: PathBuf => auth.password_file;
    /// ACL file in Mosquitto's acl_file format (user, topic, pattern with %c and %u);
    /// without one every client may publish and subscribe to everything. Reloaded on
    /// SIGHUP. TOML auth.acl_file.
    #[arg(long = "acl-file", value_name = "FILE")]
    acl_file: PathBuf => auth.acl_file;
    /// Whether clients without a user name may connect; TOML auth.allow_anonymous.
    #[arg(long = "allow-anonymous", value_name = "BOOL")]
    allow_anonymous: bool => auth.allow_anonymous, none = "false with a password file, true without";
    /// Log format on stderr: text (human lines) or json (one JSON object per line); TOML
    /// log.format.
    #[arg(long = "log-format", value_name = "FORMAT", value_enum)]
    log_format: LogFormat => log.format;
    /// Events logged: off, error, warn, info, debug, trace, or a filter such as
    /// info,ferrymq::tls=debug; TOML log.level. RUST_LOG, when set, replaces the file's
    /// value; this flag replaces both.
    #[arg(long = "log-level", value_name = "FILTER")]
    log_level: String => log.level;
}

impl Config {
    /// Overrides the values given on the command line. `--listen` replaces every listener of
    /// the file, TLS ones too, by plain TCP listeners on the given addresses.
    pub fn apply(&mut self, args: &BrokerArgs) {
        if !args.listen.is_empty() {
            self.listeners = args
                .listen
                .iter()
                .map(|&bind| ListenerConfig::new(bind))
                .collect();
            self.substitutions.overridden("listener");
        }
        args.apply_to(self);
    }
}
