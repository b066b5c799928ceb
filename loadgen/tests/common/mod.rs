//! Helpers shared by the loadgen's end-to-end tests. Each test file uses some of them.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn loadgen() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrymq-loadgen"))
}

/// The broker binary beside the loadgen, built (same profile) if it is not there yet:
/// it belongs to the workspace's other package.
pub fn broker_binary() -> PathBuf {
    let dir = loadgen().parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", "ferrymq", "--bin", "ferrymq"]);
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build for ferrymq");
    assert!(status.success(), "building ferrymq failed");
    dir.join("ferrymq")
}

/// `prefix-PID-NANOS`: a Kafka topic, MQTT topic level and client id prefix no other run
/// uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value at a dotted `path` (`latency.connect.count`) of a JSON report.
pub fn value<'a>(report: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    let mut value = report;
    for key in path.split('.') {
        value = &value[key];
    }
    value
}

/// A whole-number figure of a JSON report.
pub fn figure(report: &serde_json::Value, path: &str) -> u64 {
    value(report, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {report}"))
}

/// A rate (a float) of a JSON report.
pub fn rate(report: &serde_json::Value, path: &str) -> f64 {
    value(report, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {report}"))
}
