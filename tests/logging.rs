//! The broker's log on stderr: `--log-format json` writes one JSON object per line with
//! `level` and `message` and the event's fields, `text` (the default) the human lines;
//! `--log-level` and RUST_LOG choose what is logged; the `listening on` lines also go to
//! stdout, for programs that wait for the broker, unless stdout is stderr.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::free_port;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A `ferrymq` on one shard with both outputs read line by line.
struct Run {
    child: Child,
    port: u16,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    seen_stderr: Vec<String>,
}

impl Run {
    /// Starts `ferrymq --listen 127.0.0.1:PORT --cores 0 ARGS` with `env` added, and waits
    /// for its `listening` line on stdout and for the port to answer.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Run {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferrymq"));
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--cores", "0"])
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start ferrymq");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let mut run = Run {
            child,
            port,
            stdout,
            stderr,
            seen_stderr: Vec::new(),
        };
        let first = run.stdout.recv_timeout(WAIT).unwrap_or_default();
        assert!(
            first.contains("listening"),
            "no listening line on stdout: {first:?}\n{}",
            run.stderr_now().join("\n")
        );
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ferrymq is not accepting on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        run
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every stderr line so far.
    fn stderr_now(&mut self) -> Vec<String> {
        self.seen_stderr.extend(self.stderr.try_iter());
        self.seen_stderr.clone()
    }

    /// Waits for a stderr line that `wanted` accepts.
    fn wait_stderr(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.stderr_now().into_iter().find(|l| wanted(l)) {
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.seen_stderr.push(line),
                Err(_) => panic!("no {what} on stderr: {:#?}", self.seen_stderr),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, then the exit status and every stderr line.
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "ferrymq did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end with the pipes.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            self.seen_stderr.push(line);
        }
        (status, self.seen_stderr.clone())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `pipe` on a channel, echoed to the test's stderr.
fn lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Parses a JSON log line; every one has a timestamp, a level and a message.
fn json(line: &str) -> Value {
    let value: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
    assert!(value.is_object(), "{line}");
    for key in ["timestamp", "level", "message"] {
        assert!(value[key].is_string(), "no string {key:?} in {line}");
    }
    value
}

/// A password file with one user, written by `ferrymq passwd`.
fn password_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ferrymq-logging-{}-{name}.passwd",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .arg("passwd")
        .arg(&path)
        .args(["device", "--password", "secret", "--iterations", "1"])
        .output()
        .expect("ferrymq passwd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[test]
fn json_format_writes_one_object_per_line_with_level_message_and_fields() {
    let passwd = password_file("json");
    let mut run = Run::start(
        &[
            "--log-format",
            "json",
            "--password-file",
            passwd.to_str().unwrap(),
        ],
        &[],
    );
    let addr = run.addr();
    let listening = json(&run.wait_stderr("listening event", |l| l.contains("listening on")));
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert_eq!(
        listening["message"],
        format!("listening on {addr} with 1 shards (CPUs [0])")
    );
    assert_eq!(listening["addr"], addr.as_str());
    assert_eq!(listening["tls"], false);
    assert_eq!(listening["shards"], 1);
    assert_eq!(listening["target"], "ferrymq::server");

    // A reload that fails: a warning with the error as a field of its own.
    std::fs::write(&passwd, "device-without-a-hash\n").unwrap();
    run.signal("HUP");
    let warning = json(&run.wait_stderr("reload warning", |l| l.contains("SIGHUP")));
    assert_eq!(warning["level"], "WARN", "{warning}");
    let message = warning["message"].as_str().unwrap();
    assert!(
        message.starts_with("SIGHUP: reload failed, the files loaded before stay in force: "),
        "{message}"
    );
    let error = warning["error"].as_str().expect("an error field");
    assert!(!error.is_empty() && message.ends_with(error), "{warning}");

    let (status, stderr) = run.stop();
    assert!(status.success(), "{status}");
    assert!(!stderr.is_empty());
    for line in &stderr {
        json(line);
    }
    let last = json(stderr.last().unwrap());
    assert_eq!(last["message"], "stopped", "{last}");
    assert_eq!(last["level"], "INFO");
    let _ = std::fs::remove_file(passwd);
}

#[test]
fn text_format_writes_the_human_lines() {
    let passwd = password_file("text");
    let mut run = Run::start(&["--password-file", passwd.to_str().unwrap()], &[]);
    let expected = format!(
        "ferrymq: listening on {} with 1 shards (CPUs [0])",
        run.addr()
    );
    run.wait_stderr("listening line", |l| l == expected);
    run.signal("HUP");
    run.wait_stderr("reload line", |l| {
        l == "ferrymq: SIGHUP: password and ACL files reloaded (generation 2)"
    });
    let (status, stderr) = run.stop();
    assert!(status.success(), "{status}");
    assert_eq!(stderr.last().map(String::as_str), Some("ferrymq: stopped"));
    for line in &stderr {
        assert!(line.starts_with("ferrymq: "), "{line:?}");
        assert!(serde_json::from_str::<Value>(line).is_err(), "{line:?}");
    }
    let _ = std::fs::remove_file(passwd);
}

#[test]
fn log_level_flag_and_rust_log_filter_events() {
    let listening = |l: &str| l.contains("listening on");
    // Warnings only: the listening line still goes to stdout, not to the log.
    for (args, env) in [
        (&["--log-level", "warn"][..], &[][..]),
        (&[], &[("RUST_LOG", "warn")]),
    ] {
        let run = Run::start(args, env);
        let (status, stderr) = run.stop();
        assert!(status.success());
        assert!(stderr.is_empty(), "{args:?} {env:?}: {stderr:?}");
    }
    // The flag wins over RUST_LOG.
    let mut run = Run::start(&["--log-level", "info"], &[("RUST_LOG", "error")]);
    run.wait_stderr("listening line", listening);
    let (_, stderr) = run.stop();
    assert!(stderr.iter().any(|l| l == "ferrymq: stopped"), "{stderr:?}");
    // A filter in RUST_LOG's syntax.
    let mut run = Run::start(&["--log-level", "warn,ferrymq::server=info"], &[]);
    run.wait_stderr("listening line", listening);
}

#[test]
fn bad_log_settings_are_config_errors() {
    for (args, env, expected) in [
        (
            &["--log-level", "verbose"][..],
            &[][..],
            "ferrymq: config error: log.level: \"verbose\" in \"verbose\" is not a level",
        ),
        (
            &[],
            &[("RUST_LOG", "loud")],
            "ferrymq: config error: RUST_LOG: \"loud\" in \"loud\" is not a level",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(["--cores", "0"])
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .output()
            .expect("run ferrymq");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
        assert!(stderr.starts_with(expected), "{stderr:?}");
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["--log-format", "yaml"])
        .output()
        .expect("run ferrymq");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: text, json"));
}

/// With stdout and stderr on one file (a terminal, `2>&1`), the listening line is written
/// once, by the log.
#[test]
fn listening_is_written_once_when_stdout_is_stderr() {
    let port = free_port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec \"$0\" --listen 127.0.0.1:{port} --cores 0 2>&1"
        ))
        .arg(env!("CARGO_BIN_EXE_ferrymq"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ferrymq");
    let output = lines(child.stdout.take().unwrap());
    let first = output.recv_timeout(WAIT).expect("a first line");
    assert!(first.contains("listening on"), "{first}");
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    // Where the open-files limit holds fewer connections than the default connections_max
    // (20,000 on this project's machines), a line after the listening one says so.
    let rest: Vec<String> = output
        .iter()
        .filter(|line| !line.starts_with("ferrymq: open files: "))
        .collect();
    assert!(
        !rest.iter().any(|l| l.contains("listening on")),
        "twice: {first:?} then {rest:?}"
    );
    assert_eq!(rest, ["ferrymq: stopped"]);
}
