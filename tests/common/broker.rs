//! A ferrymq broker process for integration tests: started on a free loopback port with
//! two shards (when the machine has two CPUs), so that connections are handed between
//! shards and messages cross them; stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ports::free_port;
use super::process::{cpu_seconds, signal};

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// What the broker wrote to stderr so far, when started with
    /// [`Broker::start_capturing_stderr`] (it is echoed to the test's stderr too).
    stderr: Option<Arc<Mutex<String>>>,
}

/// Echoes each line of `pipe` to the test's stderr and keeps them all, newline-ended.
fn keep_lines(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    text
}

/// Shards of a test broker: two where this process may use two CPUs, else one.
pub fn shard_count() -> usize {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        2
    } else {
        1
    }
}

/// The shard of a test broker that owns `client_id`.
pub fn shard_of(client_id: &str) -> usize {
    ferrymq::broker::shard::shard_for(client_id.as_bytes(), shard_count())
}

/// A client id starting with `prefix` that shard `shard` owns.
pub fn id_on(shard: usize, prefix: &str) -> String {
    let shard = shard % shard_count();
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| shard_of(id) == shard)
        .unwrap()
}

/// `--cores` for [`shard_count`] shards.
fn cores_arg() -> String {
    if shard_count() == 2 {
        "0,1".into()
    } else {
        "0".into()
    }
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts `ferrymq` with `args` after `--listen` and `--cores`, and waits until it
    /// accepts connections.
    pub fn start_with(args: &[&str]) -> Broker {
        Broker::start_inner(args, false, None, None, &[])
    }

    /// [`Broker::start_with`] on a given port (a restart on the port of a stopped broker).
    pub fn start_on(port: u16, args: &[&str]) -> Broker {
        Broker::start_inner(args, false, None, Some(port), &[])
    }

    /// [`Broker::start_with`], keeping what the broker writes to stderr for
    /// [`Broker::stderr_text`].
    pub fn start_capturing_stderr(args: &[&str]) -> Broker {
        Broker::start_inner(args, true, None, None, &[])
    }

    /// [`Broker::start_capturing_stderr`] with its open-files limit (RLIMIT_NOFILE, soft
    /// and hard) set to `open_files` before it runs.
    pub fn start_with_open_files_limit(args: &[&str], open_files: u64) -> Broker {
        Broker::start_inner(args, true, Some(open_files), None, &[])
    }

    /// [`Broker::start_capturing_stderr`] with environment variables (`${env:NAME}` values
    /// of its config, say).
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Broker {
        Broker::start_inner(args, true, None, None, envs)
    }

    fn start_inner(
        args: &[&str],
        capture_stderr: bool,
        open_files: Option<u64>,
        port: Option<u16>,
        envs: &[(&str, &str)],
    ) -> Broker {
        let Some(port) = port else {
            // A free port can be taken between the check and the broker's bind (by anything
            // on the machine); such a start is tried again on another port, twice at most.
            for _ in 0..2 {
                let port = free_port();
                match Broker::try_start(args, capture_stderr, open_files, port, envs) {
                    Ok(broker) => return broker,
                    // ferrymq names the port's owner when it can ("cannot listen on ...").
                    Err(text)
                        if text.contains("Address already in use")
                            || text.contains("cannot listen on") =>
                    {
                        eprintln!("port {port} was taken before ferrymq bound it; another port");
                    }
                    Err(text) => panic!("ferrymq did not start: {text}"),
                }
            }
            let port = free_port();
            return Broker::try_start(args, capture_stderr, open_files, port, envs)
                .unwrap_or_else(|text| panic!("ferrymq did not start: {text}"));
        };
        Broker::try_start(args, capture_stderr, open_files, port, envs)
            .unwrap_or_else(|text| panic!("ferrymq did not start: {text}"))
    }

    /// Starts the broker on `port`; what it wrote to stderr if it did not start.
    fn try_start(
        args: &[&str],
        capture_stderr: bool,
        open_files: Option<u64>,
        port: u16,
        envs: &[(&str, &str)],
    ) -> Result<Broker, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferrymq"));
        command.envs(envs.iter().copied());
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cores")
            .arg(cores_arg())
            .args(args)
            .stdout(Stdio::piped())
            // Always read (and echoed): a failed start says why there.
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrymq");
        let stderr = child.stderr.take().map(keep_lines);
        // Wait for the "listening" line, then for the port to answer.
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        if !first.contains("listening") {
            let _ = child.kill();
            let _ = child.wait();
            // The stderr reader has the process's last lines once the pipe closes.
            std::thread::sleep(Duration::from_millis(50));
            let text = stderr
                .as_ref()
                .map(|text| text.lock().unwrap().clone())
                .unwrap_or_default();
            return Err(format!("{first:?} {text}"));
        }
        std::thread::spawn(move || for _ in lines {});
        wait_accepting(&mut child, port);
        // Both shards bind the port; give the second a moment after the first answers.
        std::thread::sleep(Duration::from_millis(100));
        Ok(Broker {
            child: Some(child),
            port,
            stderr: if capture_stderr { stderr } else { None },
        })
    }

    /// What the broker wrote to stderr so far (empty unless started with
    /// [`Broker::start_capturing_stderr`]).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .as_ref()
            .map(|text| text.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// SIGKILL (no chance to flush or clean up), then the exit status.
    pub fn kill9(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_kill(child.id(), 9);
        child.wait().expect("wait for ferrymq after SIGKILL")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_kill(child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ferrymq did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Broker {
    /// Starts `ferrymq --config FILE --cores ...` without `--listen`, FILE being a plain
    /// listener on 127.0.0.1 (listener[0], the port waited on and in [`Broker::port`])
    /// followed by `config`: more `[[listener]]` tables (TLS ones, say) and any other
    /// table. Keeps what the broker writes to stderr for [`Broker::stderr_text`].
    pub fn start_with_config(config: &str, args: &[&str]) -> Broker {
        let port = free_port();
        let path =
            std::env::temp_dir().join(format!("ferrymq-test-{}-{port}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!("[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n{config}"),
        )
        .expect("write config file");
        let child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .arg("--config")
            .arg(&path)
            .arg("--cores")
            .arg(cores_arg())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrymq");
        let broker = Broker::wait_started(child, port);
        // Read at start only.
        let _ = std::fs::remove_file(&path);
        broker
    }

    /// Echoes and keeps `child`'s stderr, waits for its "listening" line and for `port` to
    /// answer.
    fn wait_started(mut child: Child, port: u16) -> Broker {
        let text = keep_lines(child.stderr.take().expect("stderr piped"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        if !first.contains("listening") {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("ferrymq did not start: {first:?}\n{}", text.lock().unwrap());
        }
        std::thread::spawn(move || for _ in lines {});
        wait_accepting(&mut child, port);
        // Both shards bind the port; give the second a moment after the first answers.
        std::thread::sleep(Duration::from_millis(100));
        Broker {
            child: Some(child),
            port,
            stderr: Some(text),
        }
    }
}

impl Broker {
    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// `kill -NAME PID` (`"HUP"`, say): a signal that leaves the broker running.
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// The broker's CPU time so far, all its threads, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }
}

/// Waits up to 10 s for `port` to accept. A broker that never does is killed before the
/// panic, so that a failed start leaves no process behind.
fn wait_accepting(child: &mut Child, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            // The rare start-up hang (issue 8's note): with FERRYMQ_TEST_HANG_DUMP set, the
            // threads' stacks go to /tmp/hang-PID.txt before the kill.
            if std::env::var_os("FERRYMQ_TEST_HANG_DUMP").is_some() {
                let dump = Command::new("gdb")
                    .args([
                        "-p",
                        &child.id().to_string(),
                        "-batch",
                        "-ex",
                        "thread apply all bt 12",
                    ])
                    .output();
                if let Ok(dump) = dump {
                    std::fs::write(format!("/tmp/hang-{}.txt", child.id()), dump.stdout).ok();
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrymq is not accepting on {port} 10 s after it said it was listening");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
