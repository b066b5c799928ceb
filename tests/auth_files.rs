//! Password and ACL files in Mosquitto's formats, checked against Mosquitto itself (the
//! Debian `mosquitto` 2.0.11 package: `mosquitto_passwd`, `/usr/sbin/mosquitto`,
//! `mosquitto_pub`, `mosquitto_sub`): files `mosquitto_passwd` writes are read here, files
//! `ferrymq passwd` writes are accepted by Mosquitto, and ACL decisions agree with what
//! Mosquitto does with the same `acl_file`.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::free_port;
use ferrymq::auth::{
    Access, Acl, AuthConfig, AuthDecision, AuthSnapshot, AuthStore, Authenticator, ClientIdentity,
    Credentials, DenyReason, PasswordFile,
};

const FERRYMQ: &str = env!("CARGO_BIN_EXE_ferrymq");

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("ferrymq-auth-files-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A Mosquitto broker on a free loopback port with the given extra config lines, killed
/// when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mosquitto {
    fn start(dir: &Path, name: &str, config: &str) -> Mosquitto {
        for _attempt in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("{name}.conf"));
            let log = dir.join(format!("{name}.log"));
            // As root, Mosquitto drops to the `mosquitto` user, which cannot read 0600
            // files owned by root; keep it root.
            // SAFETY: geteuid has no preconditions.
            let user = if unsafe { libc::geteuid() } == 0 {
                "user root\n"
            } else {
                ""
            };
            fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\n{user}{config}\n"),
            )
            .unwrap();
            let child = Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .expect("start /usr/sbin/mosquitto");
            let mut broker = Mosquitto { child, port, log };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Rows start brokers in parallel, and two can draw the same free
                    // port: the connect may have reached the other row's Mosquitto while
                    // ours failed to bind. A failed bind exits at once, so ours still
                    // running a moment later means the port is ours.
                    std::thread::sleep(Duration::from_millis(150));
                    if broker.child.try_wait().unwrap().is_none() {
                        return broker;
                    }
                    break;
                }
                if broker.child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "mosquitto did not start on {port}:\n{}",
                fs::read_to_string(&broker.log).unwrap_or_default()
            );
        }
        panic!("mosquitto did not start");
    }

    /// `mosquitto_pub` with `args`; whether it succeeded (CONNACK accepted, sent).
    fn publish(&self, args: &[&str]) -> bool {
        let out = run(Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args));
        out.status.success()
    }

    /// `mosquitto_sub -C 1 -W 3` with `args`: the first message's payload, if one came.
    fn receive_one(&self, args: &[&str]) -> Option<String> {
        let out = run(Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-C", "1", "-W", "3"])
            .args(args));
        out.status
            .success()
            .then(|| text(&out.stdout).trim_end().to_owned())
    }

    /// Tells Mosquitto to reload its files.
    fn reload(&self) {
        // SAFETY: our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_passwd(args: &[&str]) {
    let out = run(Command::new("mosquitto_passwd").args(args));
    assert!(
        out.status.success(),
        "mosquitto_passwd {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `ferrymq passwd ARGS` with `stdin` piped in.
fn ferrymq_passwd(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(FERRYMQ)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn password_ok(file: &PasswordFile, user: &str, password: &str) -> bool {
    file.verify(user, password.as_bytes())
}

#[test]
fn files_written_by_mosquitto_passwd_are_read() {
    let dir = TempDir::new("from-mosquitto");
    let pw = dir.join("passwd");
    let pw = path_str(&pw);
    mosquitto_passwd(&["-c", "-b", pw, "alice", "correct horse"]);
    mosquitto_passwd(&["-b", pw, "bob", "b0b:pw"]);
    mosquitto_passwd(&["-H", "sha512", "-b", pw, "carol", "carolpw"]);
    mosquitto_passwd(&["-I", "1000", "-b", pw, "dave", "ünïcödé"]);
    let contents = fs::read_to_string(pw).unwrap();
    assert!(contents.contains("alice:$7$101$"), "{contents}");
    assert!(contents.contains("carol:$6$"), "{contents}");
    assert!(contents.contains("dave:$7$1000$"), "{contents}");

    let file = PasswordFile::load(Path::new(pw)).unwrap();
    assert_eq!(
        file.usernames().collect::<Vec<_>>(),
        ["alice", "bob", "carol", "dave"]
    );
    assert!(password_ok(&file, "alice", "correct horse"));
    assert!(!password_ok(&file, "alice", "correct horse "));
    assert!(!password_ok(&file, "alice", "Correct horse"));
    assert!(password_ok(&file, "bob", "b0b:pw"));
    assert!(!password_ok(&file, "bob", "b0b"));
    assert!(password_ok(&file, "carol", "carolpw"));
    assert!(!password_ok(&file, "carol", "carolpw2"));
    assert!(password_ok(&file, "dave", "ünïcödé"));
    assert!(!password_ok(&file, "dave", "unicode"));
    assert!(!password_ok(&file, "eve", "correct horse"));

    let auth = Authenticator::new(Some(file), None);
    let connect = |username, password: &'static str| {
        auth.authenticate(&Credentials {
            username,
            password: Some(password.as_bytes()),
            ..Credentials::default()
        })
    };
    assert_eq!(
        connect(Some("alice"), "correct horse"),
        AuthDecision::Allow {
            username: Some("alice".into())
        }
    );
    assert_eq!(
        connect(Some("alice"), "wrong"),
        AuthDecision::Deny(DenyReason::BadCredentials)
    );
    assert_eq!(
        connect(None, "correct horse"),
        AuthDecision::Deny(DenyReason::NotAuthorized)
    );

    // `ferrymq passwd` edits the file in place: bob's line changes, the others stay
    // byte for byte.
    let out = ferrymq_passwd(&[pw, "bob", "--password", "new bob"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let edited = fs::read_to_string(pw).unwrap();
    let before: Vec<&str> = contents.lines().collect();
    let after: Vec<&str> = edited.lines().collect();
    assert_eq!(after.len(), 4);
    assert_eq!(
        (after[0], after[2], after[3]),
        (before[0], before[2], before[3])
    );
    assert_ne!(after[1], before[1]);
    let file = PasswordFile::load(Path::new(pw)).unwrap();
    assert!(password_ok(&file, "bob", "new bob"));
    assert!(!password_ok(&file, "bob", "b0b:pw"));
}

#[test]
fn mosquitto_accepts_files_written_by_ferrymq() {
    let dir = TempDir::new("to-mosquitto");
    let pw_path = dir.join("passwd");
    let pw = path_str(&pw_path);

    let out = ferrymq_passwd(&[pw, "alice", "--password", "pa ss:wörd"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Not a terminal: one line from stdin.
    let out = ferrymq_passwd(&[pw, "bob"], b"bobpw\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = fs::metadata(&pw_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let contents = fs::read_to_string(&pw_path).unwrap();
    assert!(contents.starts_with("alice:$7$101$"), "{contents}");
    assert!(contents.contains("\nbob:$7$101$"), "{contents}");

    let broker = Mosquitto::start(
        &dir.0,
        "mosquitto",
        &format!("allow_anonymous false\npassword_file {pw}"),
    );
    let can_connect = |user: Option<&str>, password: Option<&str>| {
        let mut args = vec!["-t", "t", "-m", "x"];
        if let Some(user) = user {
            args.extend(["-u", user]);
        }
        if let Some(password) = password {
            args.extend(["-P", password]);
        }
        broker.publish(&args)
    };
    assert!(can_connect(Some("alice"), Some("pa ss:wörd")));
    assert!(!can_connect(Some("alice"), Some("pa ss:word")));
    assert!(!can_connect(Some("alice"), None));
    assert!(can_connect(Some("bob"), Some("bobpw")));
    assert!(!can_connect(Some("bob"), Some("bobpw\n")));
    assert!(!can_connect(Some("carol"), Some("bobpw")));
    assert!(!can_connect(None, None));

    // Change alice's password, delete bob; Mosquitto rereads the file on SIGHUP.
    let out = ferrymq_passwd(&[pw, "alice", "--password", "second"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ferrymq_passwd(&[pw, "-D", "bob"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::metadata(&pw_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    broker.reload();
    let deadline = Instant::now() + Duration::from_secs(10);
    while can_connect(Some("bob"), Some("bobpw")) {
        assert!(Instant::now() < deadline, "mosquitto did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(can_connect(Some("alice"), Some("second")));
    assert!(!can_connect(Some("alice"), Some("pa ss:wörd")));
}

#[test]
fn passwd_command() {
    let dir = TempDir::new("command");
    let pw_path = dir.join("passwd");
    let pw = path_str(&pw_path);

    let help = run(Command::new(FERRYMQ).args(["passwd", "--help"]));
    assert!(help.status.success());
    let help = text(&help.stdout);
    for phrase in [
        "mosquitto_passwd",
        "0600",
        "atomically",
        "--password <PASSWORD>",
        "-D, --delete",
        "--iterations <N>",
        "[default: 101]",
        "standard input",
        "without echo",
        "<FILE>",
        "<USER>",
    ] {
        assert!(help.contains(phrase), "{phrase:?} missing from:\n{help}");
    }

    // Deleting from a file that does not exist fails and creates nothing.
    let out = ferrymq_passwd(&[pw, "-D", "alice"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(pw), "{}", text(&out.stderr));
    assert!(!pw_path.exists());

    // Comments and order are kept.
    fs::write(&pw_path, "# users\n\n").unwrap();
    for (user, password) in [("zed", "z"), ("amy", "a"), ("kim", "k")] {
        let out = ferrymq_passwd(&[pw, user, "--password", password], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = ferrymq_passwd(&[pw, "amy"], b"a2\r\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let contents = fs::read_to_string(&pw_path).unwrap();
    let names: Vec<&str> = contents
        .lines()
        .map(|line| line.split(':').next().unwrap())
        .collect();
    assert_eq!(names, ["# users", "", "zed", "amy", "kim"]);
    let file = PasswordFile::load(&pw_path).unwrap();
    assert!(password_ok(&file, "amy", "a2"));
    assert!(password_ok(&file, "zed", "z"));

    // Refusals leave the file as it was.
    let refusals: [(&[&str], &[u8], i32, &str); 7] = [
        (&[pw, "-D", "nobody"], b"", 1, "user \"nobody\" is not in"),
        (
            &[pw, "a:b", "--password", "x"],
            b"",
            1,
            "must not contain ':'",
        ),
        (&[pw, " amy", "--password", "x"], b"", 1, "blanks"),
        (&[pw, "amy", "--password", ""], b"", 1, "empty password"),
        (&[pw, "amy"], b"", 1, "no password given"),
        (&[pw, "amy"], b"\n", 1, "empty password"),
        (
            &[pw, "-D", "amy", "--password", "x"],
            b"",
            2,
            "cannot be used with",
        ),
    ];
    for (args, stdin, code, message) in refusals {
        let out = ferrymq_passwd(args, stdin);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(fs::read_to_string(&pw_path).unwrap(), contents, "{args:?}");
    }

    // A corrupt line: one error line naming file and line, nothing written.
    let corrupt = format!("{contents}mallory:plaintext\n");
    fs::write(&pw_path, &corrupt).unwrap();
    let out = ferrymq_passwd(&[pw, "amy", "--password", "x"], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("ferrymq passwd: {pw}:6: user \"mallory\": ")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(fs::read_to_string(&pw_path).unwrap(), corrupt);

    // Deleting the last users leaves the comments.
    fs::write(&pw_path, &contents).unwrap();
    for user in ["zed", "amy", "kim"] {
        let out = ferrymq_passwd(&[pw, "--delete", user], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(fs::read_to_string(&pw_path).unwrap(), "# users\n\n");
}

#[test]
fn password_file_errors_name_file_and_line() {
    let dir = TempDir::new("errors");
    let path = dir.join("passwd");
    fs::write(&path, "# ok\n\nalice:$7$101$AAAA$BBBB\n").unwrap();
    let error = PasswordFile::load(&path).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}:3: user \"alice\": salt is 3 bytes, expected 12",
            path.display()
        )
    );
    let error = PasswordFile::load(&dir.join("missing"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!("{}: ", dir.join("missing").display())),
        "{error}"
    );
    assert!(error.contains("No such file"), "{error}");
}

// ---------------------------------------------------------------------------------------
// ACL matrix
// ---------------------------------------------------------------------------------------

use Access::{Read, Subscribe, Write};

/// Whether a row can be and is compared with Mosquitto 2.0.11 (see `acl_matrix_agrees_with_mosquitto`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mosq {
    /// Mosquitto decides the same.
    Same,
    /// Not comparable or deliberately different; the comment on the row says what
    /// Mosquitto did.
    Skip,
}

struct Case {
    acl: &'static str,
    user: Option<&'static str>,
    client: &'static str,
    topic: &'static str,
    access: Access,
    expected: bool,
    why: &'static str,
    mosquitto: Mosq,
}

const ANON_THEN_USER: &str = "topic read pub/#\nuser alice\ntopic readwrite alice/#\n";
const READ_WRITE: &str = "user u\ntopic read r/#\ntopic write w/#\ntopic rw/#\n";
const PLUS: &str = "user u\ntopic readwrite s/+/temp\n";
const HASH: &str = "user u\ntopic read s/#\n";
const DENY: &str = "user u\ntopic readwrite h/#\ntopic deny h/secret/#\n";
const PATTERNS: &str = "pattern readwrite dev/%c/#\npattern read users/%u/#\n";
const USER_AND_PATTERN: &str = "user alice\ntopic read a/#\npattern write dev/%c/#\n";
const USER_DENY_PATTERN_GRANT: &str = "user u\ntopic deny d/u\npattern readwrite d/%u\n";
const USER_GRANT_PATTERN_DENY: &str = "user u\ntopic readwrite e/#\npattern deny e/%c\n";
const DANGEROUS: &str = "pattern readwrite dev/%c/#\npattern read pub/#\n";
const DANGEROUS_OWN: &str = "user u\ntopic read own/#\npattern read pub/#\n";
const SLASH_DENY: &str = "pattern deny dev/%c/#\npattern readwrite dev/#\n";
const ALL: &str = "user u\ntopic readwrite #\n";
const SYS: &str = "user u\ntopic readwrite $SYS/#\n";
const SUBSCRIBE: &str = "user u\ntopic read a/#\ntopic deny a/secret\n";
const MERGED: &str = "user u\ntopic read a\nuser v\ntopic read b\nuser u\ntopic read c\n";

#[rustfmt::skip]
fn matrix() -> Vec<Case> {
    use Mosq::{Same, Skip};
    let c = |acl, user, client, topic, access, expected, why, mosquitto| Case {
        acl, user, client, topic, access, expected, why, mosquitto,
    };
    vec![
        // Lines before the first `user` line are for anonymous clients only.
        c(ANON_THEN_USER, None, "c1", "pub/news", Read, true, "topic above any user line: anonymous", Same),
        c(ANON_THEN_USER, Some("alice"), "c1", "pub/news", Read, false, "anonymous lines do not apply to a named user", Same),
        c(ANON_THEN_USER, Some("alice"), "c1", "alice/x", Write, true, "the user's readwrite line", Same),
        c(ANON_THEN_USER, None, "c1", "alice/x", Read, false, "a user's lines do not apply to anonymous clients", Same),
        c(ANON_THEN_USER, Some("bob"), "c1", "pub/news", Read, false, "a user without lines gets nothing, not the anonymous lines", Same),
        // read, write, readwrite.
        c(READ_WRITE, Some("u"), "c1", "r/1", Read, true, "read grants read", Same),
        c(READ_WRITE, Some("u"), "c1", "r/1", Write, false, "read does not grant write", Same),
        c(READ_WRITE, Some("u"), "c1", "w/1", Write, true, "write grants write", Same),
        c(READ_WRITE, Some("u"), "c1", "w/1", Read, false, "write does not grant read", Same),
        c(READ_WRITE, Some("u"), "c1", "rw/1", Write, true, "no access word: readwrite", Same),
        c(READ_WRITE, Some("u"), "c1", "rw/1", Read, true, "no access word: readwrite", Same),
        // Wildcards in rules.
        c(PLUS, Some("u"), "c1", "s/kitchen/temp", Write, true, "+ matches one level", Same),
        c(PLUS, Some("u"), "c1", "s/a/b/temp", Write, false, "+ matches exactly one level", Same),
        c(PLUS, Some("u"), "c1", "s//temp", Write, true, "+ matches an empty level", Same),
        c(HASH, Some("u"), "c1", "s", Read, true, "# matches the parent level too", Same),
        c(HASH, Some("u"), "c1", "s/a/b/c", Read, true, "# matches any depth", Same),
        c(HASH, Some("u"), "c1", "sx/a", Read, false, "# only below its level", Same),
        // deny.
        c(DENY, Some("u"), "c1", "h/secret/x", Read, false, "deny wins over a grant listed before it", Same),
        c(DENY, Some("u"), "c1", "h/secret", Write, false, "deny .../# covers the parent level", Same),
        c(DENY, Some("u"), "c1", "h/open", Read, true, "outside the denied subtree the grant applies", Same),
        c(USER_DENY_PATTERN_GRANT, Some("u"), "c1", "d/u", Write, false, "a user's deny comes before every pattern", Same),
        c(USER_GRANT_PATTERN_DENY, Some("u"), "c9", "e/c9", Write, true, "a user's grant comes before pattern denies", Same),
        // Patterns: %c, %u, for every client.
        c(PATTERNS, None, "c1", "dev/c1/x", Write, true, "%c is the client id; patterns apply to anonymous clients", Same),
        c(PATTERNS, None, "c1", "dev/c2/x", Write, false, "another client's id", Same),
        c(PATTERNS, Some("alice"), "c1", "users/alice/inbox", Read, true, "%u is the user name", Same),
        c(PATTERNS, Some("alice"), "c1", "users/bob/inbox", Read, false, "another user's name", Same),
        c(PATTERNS, Some("alice"), "c1", "users/alice/inbox", Write, false, "the %u pattern is read only", Same),
        c(PATTERNS, None, "c1", "users/%u/x", Read, false, "a %u pattern does not apply to anonymous clients, not even literally", Same),
        c(USER_AND_PATTERN, Some("alice"), "c1", "dev/c1/up", Write, true, "patterns apply on top of a user's own lines", Same),
        // Client ids and user names that would turn %c/%u into wildcards.
        c(DANGEROUS, None, "+", "dev/x/y", Write, false, "client id + would make dev/+/#", Same),
        c(DANGEROUS, None, "#", "dev/a", Write, false, "client id # would make dev/#/#", Same),
        c(DANGEROUS, None, "x+", "pub/a", Read, false, "with + in the client id every pattern refuses, even without %c", Same),
        c(DANGEROUS, Some("a#"), "c1", "pub/a", Read, false, "the same for # in the user name", Same),
        c(DANGEROUS_OWN, Some("u"), "c+", "own/x", Read, true, "the user's own lines are checked before that refusal", Same),
        // Mosquitto 2.0.11 allowed this: client `a/b` read dev/a/b/x through
        // `pattern readwrite dev/%c/#` (it substitutes '/'). Refused here on purpose.
        c(DANGEROUS, None, "a/b", "dev/a/b/x", Write, false, "a / in the client id must not reach into client a's levels", Skip),
        c(SLASH_DENY, None, "a/b", "dev/a/b/x", Write, false, "deny patterns still apply to a client id with /", Same),
        c(SLASH_DENY, None, "a/b", "dev/z", Write, true, "patterns without %c still apply to it", Same),
        // $SYS.
        c(ALL, Some("u"), "c1", "$SYS/broker/version", Read, false, "# does not match $ topics", Same),
        c(SYS, Some("u"), "c1", "$SYS/broker/version", Read, true, "$SYS/# does", Same),
        c(SYS, Some("u"), "c1", "$SYS/test", Write, false, "clients never write $SYS", Same),
        // An ACL with no line for the client refuses everything.
        c("", None, "c1", "x", Write, false, "nothing granted: refused", Same),
        c(MERGED, Some("u"), "c1", "c", Read, true, "a second `user u` block adds to the first", Same),
        // SUBSCRIBE. Mosquitto 2.0.11 grants every SUBSCRIBE (SUBACK 0 even for filters no
        // line mentions) and filters messages on delivery; ferrymq refuses filters that
        // can never receive a message.
        c(SUBSCRIBE, Some("u"), "c1", "a/#", Subscribe, true, "some topics under a/# are readable", Skip),
        c(SUBSCRIBE, Some("u"), "c1", "a/secret", Subscribe, false, "entirely denied", Skip),
        c(SUBSCRIBE, Some("u"), "c1", "b/#", Subscribe, false, "nothing readable", Skip),
        c(SUBSCRIBE, Some("u"), "c1", "$share/g/a/x", Subscribe, true, "a shared subscription is decided on its filter", Skip),
        c(PATTERNS, None, "c1", "dev/+/x", Subscribe, true, "overlaps the client's own dev/c1/#", Skip),
        c(DANGEROUS, None, "+", "dev/+/#", Subscribe, false, "wildcard client id: patterns grant nothing", Skip),
    ]
}

fn identity(case: &Case) -> ClientIdentity {
    ClientIdentity::new(case.client, case.user)
}

#[test]
fn acl_matrix() {
    let cases = matrix();
    assert!(cases.len() >= 24);
    let mut failures = Vec::new();
    for (row, case) in cases.iter().enumerate() {
        let acl = Acl::parse("acl", case.acl).unwrap();
        let snapshot =
            AuthSnapshot::from_parts(1, Authenticator::new(None, None), Some(acl.clone()));
        let uncached = acl.check(&identity(case), case.topic, case.access);
        let mut client = snapshot.client_acl(identity(case));
        let cached = client.check(&snapshot, case.topic, case.access);
        let again = client.check(&snapshot, case.topic, case.access);
        if uncached != case.expected || cached != case.expected || again != case.expected {
            failures.push(format!(
                "row {row}: {:?} {:?} as {:?}/{}: expected {} ({}), got {uncached}/{cached}/{again}",
                case.access, case.topic, case.user, case.client, case.expected, case.why
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Mosquitto 2.0.11 (Debian) agreed with all 41 rows marked `Same` when this was written;
/// of the 7 `Skip` rows, the six SUBSCRIBE rows got SUBACK 0 from Mosquitto whatever the
/// ACL, and the `a/b` client id row was allowed by Mosquitto (see the comments there).
///
/// Runs every row marked `Mosq::Same` against Mosquitto 2.0.11 with the same ACL (plus an
/// admin user that may read and write everything): Write by publishing a retained
/// message as the client and reading it back as the admin; Read by publishing a retained
/// message as the admin (or, for `$SYS`, reading what the broker publishes) and
/// subscribing as the client.
#[test]
fn acl_matrix_agrees_with_mosquitto() {
    const ADMIN: &str = "ferrymq-admin";
    let dir = TempDir::new("acl-mosquitto");
    let dir = &dir;
    let cases = matrix();
    let results: Vec<(usize, Option<bool>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .filter(|(_, case)| case.mosquitto == Mosq::Same)
            .map(|(row, case)| {
                scope.spawn(move || {
                    let acl_path = dir.join(&format!("row{row}.acl"));
                    fs::write(
                        &acl_path,
                        format!(
                            "{}\nuser {ADMIN}\ntopic readwrite #\ntopic readwrite $SYS/#\n",
                            case.acl
                        ),
                    )
                    .unwrap();
                    let broker = Mosquitto::start(
                        &dir.0,
                        &format!("row{row}"),
                        &format!("allow_anonymous true\nacl_file {}", acl_path.display()),
                    );
                    let mut client: Vec<&str> = vec!["-i", case.client];
                    if let Some(user) = case.user {
                        client.extend(["-u", user]);
                    }
                    let admin = ["-i", ADMIN, "-u", ADMIN];
                    let probe = format!("probe-{row}");
                    let topic = ["-t", case.topic];
                    let allowed = match case.access {
                        Write => {
                            let publish = [&client[..], &topic, &["-q", "1", "-r", "-m", &probe]];
                            assert!(broker.publish(&publish.concat()), "row {row}: publish");
                            broker
                                .receive_one(&[&admin[..], &topic].concat())
                                .as_deref()
                                == Some(probe.as_str())
                        }
                        Read => {
                            if !case.topic.starts_with("$SYS") {
                                let publish =
                                    [&admin[..], &topic, &["-q", "1", "-r", "-m", &probe]];
                                assert!(broker.publish(&publish.concat()), "row {row}: admin");
                            }
                            broker
                                .receive_one(&[&client[..], &topic].concat())
                                .is_some()
                        }
                        Subscribe => return (row, None),
                    };
                    (row, Some(allowed))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for (row, mosquitto) in &results {
        let case = &cases[*row];
        if *mosquitto != Some(case.expected) {
            failures.push(format!(
                "row {row}: {:?} {:?} as {:?}/{}: ferrymq {}, mosquitto {mosquitto:?} ({})",
                case.access, case.topic, case.user, case.client, case.expected, case.why
            ));
        }
    }
    assert!(results.len() >= 20, "compared only {} rows", results.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The per-client cache
// ---------------------------------------------------------------------------------------

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const CACHE_ACL: &str = "\
topic read public/#
topic deny public/secret
user alice
topic readwrite a/#
topic deny a/b/secret
topic write w/+/x
topic read $SYS/broker/#
user bob
topic read a/+/c
pattern readwrite dev/%c/#
pattern read users/%u/#
pattern deny users/%u/private/#
";

fn random_topic(rng: &mut Rng, wildcards: bool) -> String {
    let mut levels = vec![rng
        .pick(&["a", "w", "dev", "users", "public", "$SYS", "x", ""])
        .to_owned()];
    let depth = rng.next() % 4;
    for _ in 0..depth {
        let mut choices = vec![
            "b", "c", "x", "secret", "private", "c1", "alice", "bob", "broker", "",
        ];
        if wildcards {
            choices.extend(["+", "+", "#"]);
        }
        levels.push(rng.pick(&choices).to_owned());
    }
    // Many distinct topics, to go past the cache's size.
    if rng.next() % 3 == 0 {
        levels.push(format!("n{}", rng.next() % 2000));
    }
    levels.join("/")
}

#[test]
fn cache_gives_the_same_answers_as_the_rules() {
    let acl = Acl::parse("acl", CACHE_ACL).unwrap();
    let snapshot = AuthSnapshot::from_parts(7, Authenticator::new(None, None), Some(acl.clone()));
    let identities = [
        ClientIdentity::new("c1", None),
        ClientIdentity::new("c1", Some("alice")),
        ClientIdentity::new("c2", Some("bob")),
        ClientIdentity::new("c+", Some("bob")),
        ClientIdentity::new("c3", Some("carol")),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut allowed = 0;
    for identity in identities {
        let mut client = snapshot.client_acl(identity.clone());
        let mut seen = HashSet::new();
        for _ in 0..6000 {
            let access = [Read, Write, Subscribe][(rng.next() % 3) as usize];
            let wildcards = access == Subscribe || rng.next() % 10 == 0;
            let topic = random_topic(&mut rng, wildcards);
            let expected = acl.check(&identity, &topic, access);
            let got = client.check(&snapshot, &topic, access);
            assert_eq!(got, expected, "{identity:?} {access:?} {topic:?}");
            if access == Subscribe {
                assert_eq!(
                    client.check_subscribe(&snapshot, &topic),
                    acl.check_subscribe(&identity, &topic),
                    "{identity:?} {topic:?}"
                );
            }
            allowed += usize::from(got);
            seen.insert(topic);
            assert!(client.cached_topics() <= ferrymq::auth::acl::CLIENT_CACHE_ENTRIES_MAX);
        }
        assert!(seen.len() > 1024, "only {} distinct topics", seen.len());
    }
    assert!(
        allowed > 1000,
        "only {allowed} allowed: the test checks too little"
    );
}

#[test]
fn cache_is_invalidated_on_reload() {
    let dir = TempDir::new("reload");
    let acl_path = dir.join("acl");
    let pw_path = dir.join("passwd");
    fs::write(&acl_path, "user alice\ntopic readwrite one/#\n").unwrap();
    let out = ferrymq_passwd(&[path_str(&pw_path), "alice", "--password", "pw"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = AuthStore::load(AuthConfig {
        password_file: Some(pw_path.clone()),
        acl_file: Some(acl_path.clone()),
        allow_anonymous: None,
    })
    .unwrap();

    let first = store.current();
    let decision = first.authenticator().authenticate(&Credentials {
        username: Some("alice"),
        password: Some(b"pw"),
        ..Credentials::default()
    });
    let AuthDecision::Allow { username } = decision else {
        panic!("{decision:?}");
    };
    let mut client = first.client_acl(ClientIdentity::new("c1", username.as_deref()));
    // Fill the cache.
    for _ in 0..3 {
        assert!(client.check(&first, "one/x", Write));
        assert!(!client.check(&first, "two/x", Write));
    }
    assert_eq!(client.cached_topics(), 2);

    fs::write(&acl_path, "user alice\ntopic readwrite two/#\n").unwrap();
    let second = store.reload().unwrap();
    assert_eq!(second.generation(), first.generation() + 1);
    assert_eq!(store.generation(), second.generation());
    // The old snapshot still answers as before (a shard that has not switched yet).
    assert!(client.check(&first, "one/x", Write));
    assert!(!client.check(&second, "one/x", Write));
    assert!(client.check(&second, "two/x", Write));
    assert_eq!(client.generation(), second.generation());

    // A broken file keeps the snapshot in force.
    fs::write(
        &acl_path,
        "user alice\ntopic readwrite two/#\ntopic nope x y\n",
    )
    .unwrap();
    let error = store.reload().unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}:3: ", acl_path.display())),
        "{error}"
    );
    assert!(Arc::ptr_eq(&store.current(), &second));
    fs::write(&acl_path, "user alice\ntopic readwrite two/#\n").unwrap();
    fs::write(&pw_path, "alice:not-a-hash\n").unwrap();
    let error = store.reload().unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}:1: ", pw_path.display())),
        "{error}"
    );
    assert!(Arc::ptr_eq(&store.current(), &second));
    assert!(client.check(&store.current(), "two/x", Write));

    // Users removed from the password file are found after a reload.
    fs::write(&pw_path, "# nobody\n").unwrap();
    let third = store.reload().unwrap();
    assert!(!third.still_allowed(Some("alice"), false));
    assert!(second.still_allowed(Some("alice"), false));
}
