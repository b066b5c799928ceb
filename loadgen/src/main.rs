//! `ferrymq-loadgen`: simulated device fleets for ferrymq.
//!
//! This version parses and checks its scenario flags (emqtt-bench's names where they fit)
//! and prints the scenario it would run. Running it arrives with the loadgen issue, which
//! builds the device state machines on the broker's codec.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Simulates MQTT devices publishing through ferrymq and checks where every message went.
/// (Scenario execution is not built yet: the command validates its flags and prints the
/// scenario.)
#[derive(Parser, Debug)]
#[command(
    name = "ferrymq-loadgen",
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Args {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Broker host (emqtt-bench's -h).
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// Number of simulated devices.
    #[arg(short = 'c', long = "count", default_value_t = 1000)]
    devices: u32,
    /// New connections per second.
    #[arg(short = 'i', long = "rate", default_value_t = 1000)]
    connect_rate: u32,
    /// Milliseconds between two publishes of one device.
    #[arg(short = 'I', long = "interval-ms", default_value_t = 1000)]
    publish_interval_ms: u64,
    /// Topic template: %i is the device number, %c the client id.
    #[arg(short = 't', long, default_value = "devices/%i/telemetry")]
    topic: String,
    /// Payload size in bytes (at least 24: device id, sequence number and send time).
    #[arg(short = 's', long = "size", default_value_t = 64)]
    payload_size_bytes: usize,
    /// QoS of the publishes.
    #[arg(short = 'q', long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// MQTT version: 3 (3.1), 4 (3.1.1) or 5.
    #[arg(short = 'V', long = "mqtt-version", default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=5))]
    mqtt_version: u8,
    /// First device number; several processes share one population with disjoint ranges.
    #[arg(long, default_value_t = 0)]
    id_start: u64,
    /// Client id prefix; the device number follows it.
    #[arg(long, default_value = "ferrymq-loadgen-")]
    id_prefix: String,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 300)]
    keep_alive_secs: u16,
    /// Run length in seconds (0: until interrupted).
    #[arg(long = "duration", default_value_t = 30)]
    duration_secs: u64,
    /// Source addresses to spread connections over, e.g. 127.0.0.1-127.0.0.100.
    #[arg(long)]
    source_ips: Option<String>,
    /// Write the final report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Device id (8 bytes), sequence number (8 bytes) and send time in microseconds (8 bytes).
const PAYLOAD_HEADER_BYTES: usize = 24;

fn parse_ip_range(spec: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
    let parse = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|e| format!("--source-ips: {s:?}: {e}"))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if u32::from(first) > u32::from(last) {
        return Err(format!("--source-ips: {first} comes after {last}"));
    }
    Ok((first, last))
}

fn check(args: &Args) -> Result<(), String> {
    if args.payload_size_bytes < PAYLOAD_HEADER_BYTES {
        return Err(format!(
            "--size: at least {PAYLOAD_HEADER_BYTES} bytes are needed for device id, sequence \
             number and send time"
        ));
    }
    if args.connect_rate == 0 {
        return Err("--rate: must be at least 1 connection per second".into());
    }
    if args.devices == 0 {
        return Err("--count: must be at least 1 device".into());
    }
    if let Some(spec) = &args.source_ips {
        parse_ip_range(spec)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(message) = check(&args) {
        eprintln!("ferrymq-loadgen: {message}");
        return ExitCode::from(2);
    }
    println!(
        "scenario: {} devices ({}{}..) on {}:{}, MQTT level {}, QoS {}, {} B every {} ms to {:?}, \
         {} connects/s, {} s",
        args.devices,
        args.id_prefix,
        args.id_start,
        args.host,
        args.port,
        args.mqtt_version,
        args.qos,
        args.payload_size_bytes,
        args.publish_interval_ms,
        args.topic,
        args.connect_rate,
        args.duration_secs,
    );
    eprintln!("ferrymq-loadgen: running scenarios is not built yet (see the loadgen issue)");
    ExitCode::from(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn emqtt_bench_style_flags_parse() {
        let args = Args::try_parse_from([
            "ferrymq-loadgen",
            "-h",
            "10.0.0.1",
            "-c",
            "19000",
            "-i",
            "500",
            "-I",
            "100",
            "-t",
            "d/%i/t",
            "-s",
            "128",
            "-q",
            "2",
            "-V",
            "4",
        ])
        .unwrap();
        assert_eq!(
            (args.devices, args.connect_rate, args.qos, args.mqtt_version),
            (19000, 500, 2, 4)
        );
        assert!(check(&args).is_ok());
        assert!(Args::try_parse_from(["ferrymq-loadgen", "-q", "3"]).is_err());
    }

    #[test]
    fn source_ip_ranges() {
        assert_eq!(
            parse_ip_range("127.0.0.1-127.0.0.100").unwrap(),
            (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 100))
        );
        assert!(parse_ip_range("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_ip_range("localhost").is_err());
    }
}
