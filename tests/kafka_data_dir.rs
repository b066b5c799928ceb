//! `scripts/kafka` keeps a throw-away Kafka's data (topics and the KRaft metadata log) in
//! memory, on tmpfs, unless told otherwise: on a slow disk the KRaft controller stalls
//! for seconds and every `ack = "kafka"` PUBACK waits with it.
//!
//! `scripts/kafka config` prints the server.properties a start would write (no Java
//! needed); the running instance the tests use is checked through its own command line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
}

/// The file system type of `path` as `stat -f` names it ("tmpfs", "ext2/ext3", ...).
fn fs_type(path: &Path) -> String {
    let output = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .expect("run stat");
    assert!(output.status.success(), "stat -f {}", path.display());
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn shm_is_tmpfs() -> bool {
    fs_type(Path::new("/dev/shm")) == "tmpfs"
}

fn log_dirs(properties: &str) -> PathBuf {
    properties
        .lines()
        .find_map(|line| line.strip_prefix("log.dirs="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no log.dirs in:\n{properties}"))
}

/// `scripts/kafka config` for instance `name` with `FERRYMQ_KAFKA_DATA` set to `data`
/// (unset: None): exit code and stdout.
fn config(name: &str, data: Option<&str>) -> (i32, String) {
    let mut command = Command::new(script());
    command.args(["config", "--name", name]);
    match data {
        Some(data) => command.env("FERRYMQ_KAFKA_DATA", data),
        None => command.env_remove("FERRYMQ_KAFKA_DATA"),
    };
    let output = command.output().expect("run scripts/kafka config");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn data_is_on_tmpfs_by_default_and_on_disk_when_asked() {
    let name = "data-dir-test";
    let (code, memory) = config(name, None);
    assert_eq!(code, 0, "{memory}");
    let dir = log_dirs(&memory);
    if shm_is_tmpfs() {
        assert!(
            dir.starts_with("/dev/shm") && dir.to_string_lossy().ends_with(&format!("-{name}")),
            "{}",
            dir.display()
        );
        // The per-user directory above it exists and is tmpfs.
        assert_eq!(fs_type(dir.parent().unwrap()), "tmpfs");
    } else {
        assert!(dir.ends_with(format!("{name}/data")), "{}", dir.display());
    }
    let (code, disk) = config(name, Some("disk"));
    assert_eq!(code, 0, "{disk}");
    let dir = log_dirs(&disk);
    assert!(
        !dir.starts_with("/dev/shm") && dir.ends_with(format!("{name}/data")),
        "{}",
        dir.display()
    );
    assert_eq!(config(name, Some("memory")).1, memory);
    // Memory stays bounded: retention can delete whole segments.
    for text in [&memory, &disk] {
        assert!(
            text.contains("\nlog.retention.bytes=1073741824\n"),
            "{text}"
        );
        assert!(text.contains("\nlog.segment.bytes=134217728\n"), "{text}");
    }
    assert_eq!(config(name, Some("ssd")).0, 2);
}

/// The Kafka the tests run against, when `scripts/kafka` runs it: its data is on tmpfs
/// (unless `FERRYMQ_KAFKA_DATA=disk` or /dev/shm is not tmpfs). Skipped when it is not a
/// `scripts/kafka` instance (Docker, another host).
#[test]
fn the_running_test_kafka_keeps_its_data_on_tmpfs() {
    let output = Command::new(script())
        .arg("status")
        .output()
        .expect("run scripts/kafka status");
    let status = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        eprintln!("skipped: no scripts/kafka instance answers: {status}");
        return;
    }
    // "kafka[default]: running on 127.0.0.1:9092 (pid 123, data on tmpfs /dev/shm/...)"
    let pid: u32 = status
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split([',', ')']).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {status:?}"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("Kafka's command line");
    let properties = cmdline
        .split(|&b| b == 0)
        .rfind(|arg| !arg.is_empty())
        .map(|arg| PathBuf::from(String::from_utf8_lossy(arg).into_owned()))
        .expect("server.properties on Kafka's command line");
    let text = std::fs::read_to_string(&properties).expect("read server.properties");
    let dir = log_dirs(&text);
    if !shm_is_tmpfs() || std::env::var("FERRYMQ_KAFKA_DATA").as_deref() == Ok("disk") {
        eprintln!("skipped: data on disk is expected here ({})", dir.display());
        return;
    }
    assert_eq!(
        fs_type(&dir),
        "tmpfs",
        "Kafka (pid {pid}) keeps its data in {} (started by an older scripts/kafka, or with \
         FERRYMQ_KAFKA_DATA=disk): `scripts/kafka restart` moves it to tmpfs",
        dir.display()
    );
}
