//! The `ferrymq` command: without a subcommand it runs the broker (defaults, then
//! `--config FILE`, then flags); `ferrymq decode` turns captured bytes into packets, or into
//! the error and reason code the broker answers with; `ferrymq passwd` edits a password file
//! in Mosquitto's `mosquitto_passwd` format.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::BytesMut;
use clap::{Parser, Subcommand, ValueEnum};
use ferrymq::config::{self, BrokerArgs, Config, ConfigError, LogConfig, LogFormat};
use ferrymq::protocol::{decode_packet, Protocol, Role, PACKET_SIZE_BYTES_MAX};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ferrymq",
    version,
    about = "An MQTT 3.1.1/5.0 broker, thread-per-core. Without a command it runs the broker: \
             with no options, an anonymous broker on 127.0.0.1:1883.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Decode MQTT packets given in hex and print each packet, or the decoding error with
    /// the MQTT 5.0 reason code a server answers it with.
    Decode {
        /// Bytes in hex; spaces, colons and a leading 0x are ignored. Several packets may
        /// follow each other.
        #[arg(required = true)]
        hex: Vec<String>,
        /// Protocol version of the connection; leave out to start with a CONNECT, which
        /// then sets it.
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        /// Decode as the client does (packets sent by a server) instead of as the server.
        #[arg(long)]
        from_server: bool,
    },
    /// Add a user to a password file, change a user's password, or delete a user.
    ///
    /// The file has Mosquitto's mosquitto_passwd format (`USER:$7$...`, PBKDF2-SHA512 with a
    /// random 12-byte salt), so it also works as a Mosquitto password_file, and files
    /// written by mosquitto_passwd can be edited. FILE is created if it does not exist.
    /// Other lines, comments included, are kept in their order. FILE is replaced
    /// atomically (a temporary file in the same directory, then rename) with mode 0600.
    /// Without --password, the password is asked twice on the terminal without echo, or
    /// read as one line from standard input when that is not a terminal. An empty password
    /// is refused.
    #[command(after_help = "Exit status: 0 done, 1 failed (FILE unchanged), 2 usage error.")]
    Passwd {
        /// Password file to create or update.
        file: PathBuf,
        /// User name to add, update or delete: not empty, no ':', no control characters,
        /// no blanks at either end.
        user: String,
        /// The new password. Other local users may see it in the process list: prefer
        /// the prompt or standard input.
        #[arg(long, value_name = "PASSWORD", conflicts_with = "delete")]
        password: Option<String>,
        /// Delete USER from FILE instead of setting a password; fails if USER is not
        /// in FILE.
        #[arg(short = 'D', long)]
        delete: bool,
        /// PBKDF2 iterations for the new hash (mosquitto_passwd's default is 101).
        #[arg(long, value_name = "N", default_value_t = ferrymq::auth::DEFAULT_ITERATIONS,
              value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "delete")]
        iterations: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    #[value(name = "3.1")]
    V31,
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
}

impl From<ProtocolArg> for Protocol {
    fn from(arg: ProtocolArg) -> Protocol {
        match arg {
            ProtocolArg::V31 => Protocol::V3_1,
            ProtocolArg::V311 => Protocol::V3_1_1,
            ProtocolArg::V5 => Protocol::V5,
        }
    }
}

fn parse_hex(parts: &[String]) -> Result<Vec<u8>, String> {
    let digits: String = parts
        .iter()
        .map(|part| part.trim_start_matches("0x"))
        .flat_map(|part| part.chars())
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| format!("not a hex byte: {:?}", &digits[i..i + 2]))
        })
        .collect()
}

fn decode(hex: &[String], protocol: Option<Protocol>, from_server: bool) -> ExitCode {
    let bytes = match parse_hex(hex) {
        Ok(bytes) => bytes,
        Err(message) => {
            eprintln!("ferrymq decode: {message}");
            return ExitCode::from(2);
        }
    };
    let role = if from_server {
        Role::Client
    } else {
        Role::Server
    };
    if role == Role::Client && protocol.is_none() {
        eprintln!("ferrymq decode: --from-server needs --protocol");
        return ExitCode::from(2);
    }
    let mut protocol = protocol;
    let mut buf = BytesMut::from(&bytes[..]);
    loop {
        match decode_packet(&mut buf, role, protocol, PACKET_SIZE_BYTES_MAX) {
            Ok(Some(packet)) => {
                if let ferrymq::protocol::Packet::Connect(connect) = &packet {
                    protocol.get_or_insert(connect.protocol);
                }
                println!("{packet:#?}");
            }
            Ok(None) if buf.is_empty() => return ExitCode::SUCCESS,
            Ok(None) => {
                eprintln!("incomplete packet: {} bytes left over", buf.len());
                return ExitCode::FAILURE;
            }
            Err(error) => {
                eprintln!("error: {error} (reason code {})", error.reason_code());
                return ExitCode::FAILURE;
            }
        }
    }
}

fn passwd(
    file: &Path,
    user: &str,
    password: Option<String>,
    delete: bool,
    iterations: u32,
) -> ExitCode {
    use ferrymq::auth::{passwd::validate_username, prompt, PasswordFile, PasswordHash};

    let fail = |message: &dyn std::fmt::Display| {
        eprintln!("ferrymq passwd: {message}");
        ExitCode::FAILURE
    };
    if let Err(problem) = validate_username(user) {
        return fail(&problem);
    }
    let mut passwords = match if delete {
        PasswordFile::load(file)
    } else {
        PasswordFile::load_or_new(file)
    } {
        Ok(passwords) => passwords,
        Err(error) => return fail(&error),
    };
    if delete {
        if !passwords.remove(user) {
            return fail(&format!("user {user:?} is not in {}", file.display()));
        }
    } else {
        let password = match password {
            Some(password) if password.is_empty() => return fail(&"empty password"),
            Some(password) => password.into_bytes(),
            None => match prompt::read_new_password() {
                Ok(password) => password,
                Err(error) => return fail(&error),
            },
        };
        let hash = match PasswordHash::new(&password, iterations) {
            Ok(hash) => hash,
            Err(error) => return fail(&format!("no random salt: {error}")),
        };
        if let Err(error) = passwords.set(user, hash) {
            return fail(&error);
        }
    }
    match passwords.save(file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// The broker's log on stderr, as `[log]` says: `text` writes each event as the one human
/// line `ferrymq: MESSAGE` (the fields are for `json`), `json` one object per line.
fn start_logging(log: &LogConfig) {
    let filter = EnvFilter::builder()
        .parse(&log.level)
        .expect("log.level validated with the config");
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match log.format {
        LogFormat::Text => builder.event_format(TextLine).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_thread_names(true)
            .init(),
    }
}

/// `ferrymq: ` and the event's message: the lines the broker wrote before it had a log
/// format, which operators and tests read.
struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("ferrymq: ")?;
        let mut message = MessageOnly {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut message);
        message.result?;
        writer.write_char('\n')
    }
}

/// Writes the `message` field of an event and nothing else.
struct MessageOnly<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Visit for MessageOnly<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.result = self.writer.write_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // The message is `format_args!`, whose Debug is its text.
            self.result = write!(self.writer, "{value:?}");
        }
    }
}

/// The configuration, checked in full: [`config::load_with_rust_log`] checks the plain
/// values, then the bridge parses the mappings' templates, so a bad one is a config error
/// too, at startup and on SIGHUP.
fn load_config(args: &BrokerArgs, rust_log: Option<&str>) -> Result<Config, ConfigError> {
    let config = config::load_with_rust_log(args, rust_log)?;
    ferrymq::bridge::validate(&config)?;
    Ok(config)
}

fn run_broker(args: &BrokerArgs) -> ExitCode {
    let rust_log = std::env::var("RUST_LOG").ok();
    // Plain lines until the log is set up from the configuration, and for every config
    // error: one line, exit code 2.
    let config = match load_config(args, rust_log.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ferrymq: config error: {error}");
            return ExitCode::from(2);
        }
    };
    start_logging(&config.log);
    // SIGHUP reads the file again (and its ${env:}/${file:} values) for new Kafka settings.
    let reload_args = args.clone();
    let reload: ferrymq::server::Reload =
        Box::new(move || load_config(&reload_args, rust_log.as_deref()).map_err(|e| e.to_string()));
    match ferrymq::server::run_with_reload(config, Some(reload)) {
        Ok(()) => ExitCode::SUCCESS,
        // A setting only checked when used (a librdkafka property, a CPU outside the
        // affinity mask) is a config error too.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("ferrymq: config error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            tracing::error!(error = %error, "{error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run_broker(&cli.broker),
        Some(Command::Decode {
            hex,
            protocol,
            from_server,
        }) => decode(&hex, protocol.map(Protocol::from), from_server),
        Some(Command::Passwd {
            file,
            user,
            password,
            delete,
            iterations,
        }) => passwd(&file, &user, password, delete, iterations),
    }
}
