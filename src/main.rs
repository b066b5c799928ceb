//! The `ferrymq` command: without a subcommand it runs the broker (defaults, then
//! `--config FILE`, then flags); `ferrymq decode` turns captured bytes into packets, or into
//! the error and reason code the broker answers with.

use std::process::ExitCode;

use bytes::BytesMut;
use clap::{Parser, Subcommand, ValueEnum};
use ferrymq::config::{self, BrokerArgs};
use ferrymq::protocol::{decode_packet, Protocol, Role, PACKET_SIZE_BYTES_MAX};

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

fn run_broker(args: &BrokerArgs) -> ExitCode {
    let config = match config::load(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ferrymq: config error: {error}");
            return ExitCode::from(2);
        }
    };
    match ferrymq::broker::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        // A setting only checked when used (a librdkafka property, a CPU outside the
        // affinity mask) is a config error too.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("ferrymq: config error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("ferrymq: {error}");
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
    }
}
