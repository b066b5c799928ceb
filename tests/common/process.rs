//! Other programs run by the tests (mosquitto clients, openssl, `kill`): each run bounded
//! in time, its output kept.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `command` with `stdin` (or none) fed to it, at most `limit`: its exit status (None
/// if it ran longer; it was killed then), stdout and stderr (what it wrote until then).
pub fn run_within(
    command: &mut Command,
    stdin: Option<&str>,
    limit: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let text = text.to_string();
        thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let reader = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let status = wait_within(&mut child, limit);
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

/// [`run_within`] that fails the test if `command` runs longer than `limit`: (status,
/// stdout, stderr).
pub fn run_bounded(
    mut command: Command,
    stdin: Option<&str>,
    limit: Duration,
) -> (ExitStatus, String, String) {
    match run_within(&mut command, stdin, limit) {
        (Some(status), stdout, stderr) => (status, stdout, stderr),
        (None, stdout, stderr) => {
            panic!("{command:?} did not finish within {limit:?}\n{stdout}{stderr}")
        }
    }
}

/// Waits for `child` to exit, at most `limit`; kills it (and returns None) after that.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Longest one `mosquitto_pub` run may take.
pub const MOSQUITTO_STEP: Duration = Duration::from_secs(20);

/// Runs `mosquitto_pub -h 127.0.0.1 -p PORT ARGS`, feeding `lines` on stdin (for `-l`);
/// returns its exit status and its output (stdout, then stderr). Fails the test if it runs
/// longer than [`MOSQUITTO_STEP`].
pub fn mosquitto_pub(port: u16, args: &[&str], lines: &[String]) -> (ExitStatus, String) {
    match mosquitto_pub_within(port, args, lines, MOSQUITTO_STEP) {
        (Some(status), output) => (status, output),
        (None, output) => {
            panic!("mosquitto_pub {args:?} did not finish within {MOSQUITTO_STEP:?}: {output}")
        }
    }
}

/// [`mosquitto_pub`], stopped (no status) if it runs longer than `limit`: a PUBACK that does
/// not come, say. The output is what it wrote until then.
pub fn mosquitto_pub_within(
    port: u16,
    args: &[&str],
    lines: &[String],
    limit: Duration,
) -> (Option<ExitStatus>, String) {
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let (status, stdout, stderr) = run_within(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        Some(&input),
        limit,
    );
    (status, stdout + &stderr)
}

/// Lines of mosquitto_pub's `-d` output saying a PUBACK came.
pub fn pubacks_in(output: &str) -> usize {
    output.matches("received PUBACK").count()
}

/// `kill -NAME PID`; fails the test if kill does.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// CPU time (user + system, all threads) of process `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // After the command name (which may hold spaces), utime and stime are fields 12 and 13.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat has (comm)") + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the system.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
