//! Password files in the format of Mosquitto's `mosquitto_passwd`.
//!
//! One user per line, `USERNAME:HASH`, where HASH is one of (checked against Mosquitto
//! 2.0's `apps/mosquitto_passwd/mosquitto_passwd.c`, `common/password_mosq.[ch]` and
//! `src/security_default.c`, and against the Debian `mosquitto_passwd` 2.0.11 binary):
//!
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 over the password bytes with
//!   ITERATIONS rounds (`mosquitto_passwd` writes 101, `PW_DEFAULT_ITERATIONS`; `-I`
//!   changes it), a 12-byte random salt (`SALT_LEN`) and a 64-byte derived key. What
//!   `mosquitto_passwd` has written by default since 2.0.
//! - `$6$SALT$HASH`: SHA-512 of the password bytes followed by the salt, a 12-byte salt
//!   and the 64-byte digest. What `mosquitto_passwd` wrote up to 1.6 (`-H sha512` now).
//!
//! SALT and HASH are standard base64 with padding. Mosquitto 2.0 refuses entries whose
//! salt is not 12 bytes or whose hash is not 64 bytes, so this parser does too.
//!
//! Where this parser is stricter than Mosquitto's broker, which logs a warning and drops
//! the entry, or silently skips the line: every line that is neither blank nor a comment
//! must be a valid entry, otherwise loading fails with `FILE:LINE: problem`. Comments are
//! lines whose first character is `#`, as in Mosquitto. Blanks around the user name and
//! the hash are ignored (Mosquitto trims them too). A user name may appear only once.
//! Plain-text passwords (what `mosquitto_passwd -U` converts) are refused.
//!
//! [`PasswordFile`] keeps every line as it was read, so that adding, changing or deleting
//! one user (the `ferrymq passwd` command) leaves the other lines, comments included, as
//! they were and in their order. [`PasswordFile::save`] writes atomically (a temporary file
//! in the same directory, then `rename`) with mode 0600.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::AuthError;

/// Salt length of both hash kinds (`SALT_LEN` in Mosquitto).
pub const SALT_BYTES: usize = 12;
/// Length of a SHA-512 digest and of the PBKDF2 key Mosquitto derives.
pub const HASH_BYTES: usize = 64;
/// PBKDF2 rounds `mosquitto_passwd` uses unless told otherwise (`PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Longest user name `mosquitto_passwd` accepts (and MQTT can carry).
pub const USERNAME_BYTES_MAX: usize = 65535;

/// One user's stored password: the kind of hash, its salt and the hash itself.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$SALT$HASH`: `sha512(password || salt)`.
    Sha512 {
        salt: [u8; SALT_BYTES],
        hash: [u8; HASH_BYTES],
    },
    /// `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: [u8; SALT_BYTES],
        hash: [u8; HASH_BYTES],
    },
}

impl fmt::Debug for PasswordHash {
    /// Shows the kind and iteration count only, not the salt or hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash::Sha512"),
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(
                    f,
                    "PasswordHash::Pbkdf2Sha512 {{ iterations: {iterations} }}"
                )
            }
        }
    }
}

impl PasswordHash {
    /// A `$7$` hash of `password` with a fresh random salt and `iterations` rounds
    /// ([`DEFAULT_ITERATIONS`] is what `mosquitto_passwd` uses).
    pub fn new(password: &[u8], iterations: u32) -> io::Result<PasswordHash> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::getrandom(&mut salt).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(PasswordHash::pbkdf2_with_salt(password, salt, iterations))
    }

    /// A `$7$` hash with a given salt (for tests and for reproducing a known hash).
    /// `iterations` of 0 is taken as 1.
    pub fn pbkdf2_with_salt(
        password: &[u8],
        salt: [u8; SALT_BYTES],
        iterations: u32,
    ) -> PasswordHash {
        let iterations = iterations.max(1);
        PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash: derive(password, &salt, Some(iterations)),
        }
    }

    /// A `$6$` hash with a given salt: the older format, for tests and interop only.
    pub fn sha512_with_salt(password: &[u8], salt: [u8; SALT_BYTES]) -> PasswordHash {
        PasswordHash::Sha512 {
            salt,
            hash: derive(password, &salt, None),
        }
    }

    /// Parses the part after `USERNAME:`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let Some(rest) = text.strip_prefix('$') else {
            return Err(if text.is_empty() {
                "empty password hash".into()
            } else {
                "not a password hash (plain-text passwords are not accepted: hash them \
                 with `ferrymq passwd` or `mosquitto_passwd -U`)"
                    .into()
            });
        };
        let fields: Vec<&str> = rest.split('$').collect();
        match fields[0] {
            "6" => {
                if fields.len() != 3 {
                    return Err(format!(
                        "a $6$ hash has 2 fields after $6$ (salt, hash), found {}",
                        fields.len() - 1
                    ));
                }
                Ok(PasswordHash::Sha512 {
                    salt: decode_fixed("salt", fields[1])?,
                    hash: decode_fixed("hash", fields[2])?,
                })
            }
            "7" => {
                if fields.len() != 4 {
                    return Err(format!(
                        "a $7$ hash has 3 fields after $7$ (iterations, salt, hash), found {}",
                        fields.len() - 1
                    ));
                }
                let iterations = match fields[1].parse::<u32>() {
                    Ok(n) if n >= 1 && fields[1].bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => {
                        return Err(format!(
                            "iteration count {:?} is not a whole number from 1 to {}",
                            fields[1],
                            u32::MAX
                        ))
                    }
                };
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt: decode_fixed("salt", fields[2])?,
                    hash: decode_fixed("hash", fields[3])?,
                })
            }
            other => Err(format!(
                "unknown hash type ${other}$ (known: $6$ salted SHA-512, $7$ PBKDF2-SHA512)"
            )),
        }
    }

    /// Whether `password` hashes to this; the final comparison takes the same time
    /// wherever the hashes differ.
    pub fn verify(&self, password: &[u8]) -> bool {
        let (salt, expected, iterations) = match self {
            PasswordHash::Sha512 { salt, hash } => (salt, hash, None),
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => (salt, hash, Some(*iterations)),
        };
        let computed = derive(password, salt, iterations);
        bool::from(computed.ct_eq(expected))
    }
}

impl fmt::Display for PasswordHash {
    /// The form stored after `USERNAME:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                BASE64.encode(salt),
                BASE64.encode(hash)
            ),
        }
    }
}

/// `sha512(password || salt)` without iterations, PBKDF2-HMAC-SHA512 with them.
fn derive(password: &[u8], salt: &[u8], iterations: Option<u32>) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    match iterations {
        None => {
            let mut hasher = Sha512::new();
            hasher.update(password);
            hasher.update(salt);
            out.copy_from_slice(&hasher.finalize());
        }
        Some(rounds) => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, rounds, &mut out),
    }
    out
}

fn decode_fixed<const N: usize>(what: &str, text: &str) -> Result<[u8; N], String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|e| format!("{what} is not valid base64 ({e})"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{what} is {} bytes, expected {N}", bytes.len()))
}

/// Why a user name cannot be stored: empty, too long, a `:` (the separator), a control
/// character (as `mosquitto_passwd` refuses), or blanks at either end (they would be
/// trimmed when the file is read back).
pub fn validate_username(username: &str) -> Result<(), String> {
    if username.is_empty() {
        return Err("the user name is empty".into());
    }
    if username.len() > USERNAME_BYTES_MAX {
        return Err(format!(
            "the user name is {} bytes long, at most {USERNAME_BYTES_MAX} are allowed",
            username.len()
        ));
    }
    if username.contains(':') {
        return Err("the user name must not contain ':'".into());
    }
    if username.chars().any(char::is_control) {
        return Err("the user name must not contain control characters".into());
    }
    if username.trim() != username {
        return Err("the user name must not start or end with blanks".into());
    }
    Ok(())
}

#[derive(Clone)]
enum Line {
    /// A blank line or a comment, kept as it was.
    Other(String),
    /// `username:hash`; `raw` is the line as read, rewritten when the hash changes.
    Entry {
        username: String,
        hash: PasswordHash,
        raw: String,
    },
}

/// A password file: its users' hashes, and its lines in order for rewriting it.
#[derive(Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// User name to index in `lines`.
    index: HashMap<String, usize>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.index.len())
            .finish()
    }
}

impl PasswordFile {
    /// An empty file.
    pub fn new() -> PasswordFile {
        PasswordFile::default()
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let bytes = fs::read(path).map_err(|error| AuthError::io(path, error))?;
        PasswordFile::parse_bytes(&path.display().to_string(), &bytes)
    }

    /// [`PasswordFile::load`], or an empty file when `path` does not exist.
    pub fn load_or_new(path: &Path) -> Result<PasswordFile, AuthError> {
        match fs::read(path) {
            Ok(bytes) => PasswordFile::parse_bytes(&path.display().to_string(), &bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(PasswordFile::new()),
            Err(error) => Err(AuthError::io(path, error)),
        }
    }

    /// Parses file contents; `source` names the file in errors.
    pub fn parse(source: &str, text: &str) -> Result<PasswordFile, AuthError> {
        PasswordFile::parse_bytes(source, text.as_bytes())
    }

    fn parse_bytes(source: &str, bytes: &[u8]) -> Result<PasswordFile, AuthError> {
        let mut file = PasswordFile::new();
        for (number, raw) in split_lines(bytes).enumerate() {
            let number = number + 1;
            let error = |problem: String| AuthError::syntax(source, number, problem);
            let raw = std::str::from_utf8(raw)
                .map_err(|_| error("the line is not valid UTF-8".into()))?;
            let text = raw.strip_suffix('\r').unwrap_or(raw);
            if text.trim().is_empty() || text.starts_with('#') {
                file.lines.push(Line::Other(raw.to_owned()));
                continue;
            }
            let Some((username, hash)) = text.split_once(':') else {
                return Err(error(
                    "expected USERNAME:HASH, found no ':' (comments start with '#' in the \
                     first column)"
                        .into(),
                ));
            };
            let username = username.trim();
            let hash = hash.trim();
            if username.is_empty() {
                return Err(error("empty user name".into()));
            }
            if hash.contains(':') {
                return Err(error(format!(
                    "user {username:?}: more than one ':' on the line"
                )));
            }
            let hash = PasswordHash::parse(hash)
                .map_err(|problem| error(format!("user {username:?}: {problem}")))?;
            if let Some(&first) = file.index.get(username) {
                let first_line = file.line_number_of(first);
                return Err(error(format!(
                    "user {username:?} is already defined on line {first_line}"
                )));
            }
            file.index.insert(username.to_owned(), file.lines.len());
            file.lines.push(Line::Entry {
                username: username.to_owned(),
                hash,
                raw: raw.to_owned(),
            });
        }
        Ok(file)
    }

    fn line_number_of(&self, index: usize) -> usize {
        index + 1
    }

    /// The stored hash of `username`.
    pub fn get(&self, username: &str) -> Option<&PasswordHash> {
        match &self.lines[*self.index.get(username)?] {
            Line::Entry { hash, .. } => Some(hash),
            Line::Other(_) => None,
        }
    }

    /// Whether `username` exists and `password` is theirs.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.get(username).is_some_and(|hash| hash.verify(password))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// User names in file order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|line| match line {
            Line::Entry { username, .. } => Some(username.as_str()),
            Line::Other(_) => None,
        })
    }

    /// Sets `username`'s hash: rewrites its line where it is, or appends a line. Returns
    /// whether the user existed.
    pub fn set(&mut self, username: &str, hash: PasswordHash) -> Result<bool, AuthError> {
        validate_username(username).map_err(AuthError::Invalid)?;
        let raw = format!("{username}:{hash}");
        if let Some(&at) = self.index.get(username) {
            self.lines[at] = Line::Entry {
                username: username.to_owned(),
                hash,
                raw,
            };
            return Ok(true);
        }
        self.index.insert(username.to_owned(), self.lines.len());
        self.lines.push(Line::Entry {
            username: username.to_owned(),
            hash,
            raw,
        });
        Ok(false)
    }

    /// Removes `username`'s line; returns whether it was there.
    pub fn remove(&mut self, username: &str) -> bool {
        let Some(at) = self.index.remove(username) else {
            return false;
        };
        self.lines.remove(at);
        for index in self.index.values_mut() {
            if *index > at {
                *index -= 1;
            }
        }
        true
    }

    /// The file's contents: every line as read (or as rewritten), each ending in `\n`.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            match line {
                Line::Other(raw) | Line::Entry { raw, .. } => text.push_str(raw),
            }
            text.push('\n');
        }
        text
    }

    /// Writes the file atomically with mode 0600: to a new temporary file in the same
    /// directory, flushed to disk, then renamed over `path`. A symbolic link at `path` is
    /// followed, so the file it points to is replaced and the link kept.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        write_atomically(path, self.to_text().as_bytes())
    }
}

/// Lines of `bytes` without their `\n`; no empty last line after a final `\n`.
fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty = bytes.is_empty();
    body.split(|&b| b == b'\n').filter(move |_| !empty)
}

/// Replaces `path` with `contents`: a temporary file in the same directory (mode 0600,
/// written and flushed), renamed over the target, then the directory flushed.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), AuthError> {
    let target: PathBuf = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|error| AuthError::io(path, error))?
        }
        _ => path.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| AuthError::Invalid(format!("{}: not a file name", path.display())))?
        .to_string_lossy()
        .into_owned();
    let mut suffix = [0u8; 6];
    getrandom::getrandom(&mut suffix)
        .map_err(|e| AuthError::io(path, io::Error::other(e.to_string())))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let temp = dir.join(format!(".{name}.{}.{suffix}.tmp", std::process::id()));

    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The umask can only take bits away; set exactly 0600 whatever it is.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &target)
    };
    if let Err(error) = write() {
        let _ = fs::remove_file(&temp);
        return Err(AuthError::io(&target, error));
    }
    // Make the rename itself durable; a failure here does not undo the write.
    if let Ok(dir) = fs::File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by Debian's `mosquitto_passwd` 2.0.11: `mosquitto_passwd -c -b FILE alice secret`.
    const MOSQUITTO_ALICE: &str = "alice:$7$101$z47BkgDAo5ys/e/8$q7TTSoDf4AtDSh9B2UKz4AXC5fNbxFW7fweEgRc3G8vots3zwXRJ9fYrAGSHHSd45JEHKgNgSPxIPhZ5PjFkkw==";

    #[test]
    fn verifies_a_hash_made_by_mosquitto_passwd() {
        let file = PasswordFile::parse("pw", MOSQUITTO_ALICE).unwrap();
        assert!(file.verify("alice", b"secret"));
        assert!(!file.verify("alice", b"secreT"));
        assert!(!file.verify("alice", b""));
        assert!(!file.verify("bob", b"secret"));
        // Printing it back gives the same text.
        let hash = file.get("alice").unwrap();
        assert_eq!(format!("alice:{hash}"), MOSQUITTO_ALICE);
    }

    #[test]
    fn round_trips_both_kinds() {
        let salt = *b"0123456789ab";
        for hash in [
            PasswordHash::pbkdf2_with_salt(b"pw", salt, 101),
            PasswordHash::sha512_with_salt(b"pw", salt),
            PasswordHash::new(b"pw", 7).unwrap(),
        ] {
            let text = hash.to_string();
            let parsed = PasswordHash::parse(&text).unwrap();
            assert_eq!(parsed, hash);
            assert!(parsed.verify(b"pw"));
            assert!(!parsed.verify(b"pW"));
        }
        assert!(
            PasswordHash::parse(&PasswordHash::sha512_with_salt(b"x", salt).to_string())
                .unwrap()
                .to_string()
                .starts_with("$6$MDEyMzQ1Njc4OWFi$")
        );
    }

    #[test]
    fn sha512_is_password_then_salt() {
        let salt = *b"saltsaltsalt";
        let PasswordHash::Sha512 { hash, .. } = PasswordHash::sha512_with_salt(b"pw", salt) else {
            unreachable!()
        };
        let expected = Sha512::digest(b"pwsaltsaltsalt");
        assert_eq!(&hash[..], &expected[..]);
    }

    #[test]
    fn new_salts_differ() {
        let a = PasswordHash::new(b"pw", 1).unwrap();
        let b = PasswordHash::new(b"pw", 1).unwrap();
        assert_ne!(a.to_string(), b.to_string());
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let good = PasswordHash::pbkdf2_with_salt(b"x", [1; 12], 1).to_string();
        let cases = [
            ("nocolon".to_string(), "no ':'"),
            (format!(":{good}"), "empty user name"),
            ("bob:".to_string(), "empty password hash"),
            ("bob:plaintext".to_string(), "plain-text"),
            ("bob:$5$abc$def".to_string(), "unknown hash type $5$"),
            ("bob:$7$0$AAAA$AAAA".to_string(), "iteration count \"0\""),
            ("bob:$7$-3$AAAA$AAAA".to_string(), "iteration count"),
            ("bob:$7$101$AAAA".to_string(), "3 fields"),
            (
                "bob:$7$101$!!!!$AAAA".to_string(),
                "salt is not valid base64",
            ),
            (
                "bob:$7$101$AAAA$AAAA".to_string(),
                "salt is 3 bytes, expected 12",
            ),
            (
                format!("bob:$6${}$AAAA", BASE64.encode([0u8; 12])),
                "hash is 3 bytes, expected 64",
            ),
            (format!("bob:{good}:extra"), "more than one ':'"),
            (
                format!("bob:{good}\nbob:{good}"),
                "already defined on line 2",
            ),
            (" # indented comment".to_string(), "no ':'"),
        ];
        for (body, expected) in cases {
            let text = format!("# comment\n{body}\n");
            let error = PasswordFile::parse("/etc/pw", &text)
                .unwrap_err()
                .to_string();
            let line = if body.contains('\n') { 3 } else { 2 };
            assert!(
                error.starts_with(&format!("/etc/pw:{line}: ")),
                "{body:?}: {error}"
            );
            assert!(error.contains(expected), "{body:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let error = PasswordFile::parse_bytes("f", b"a:\xff\n").unwrap_err();
        assert_eq!(error.to_string(), "f:1: the line is not valid UTF-8");
    }

    #[test]
    fn keeps_other_lines_and_order() {
        let h = |p: &[u8]| PasswordHash::pbkdf2_with_salt(p, [2; 12], 1);
        let text = format!(
            "# users\n\nalice:{}\n  bob : {}  \r\n# end\ncarol:{}\n",
            h(b"a"),
            h(b"b"),
            h(b"c")
        );
        let mut file = PasswordFile::parse("f", &text).unwrap();
        assert_eq!(file.to_text(), text);
        assert_eq!(
            file.usernames().collect::<Vec<_>>(),
            ["alice", "bob", "carol"]
        );
        assert!(file.verify("bob", b"b"));

        assert!(file.set("bob", h(b"B")).unwrap());
        assert!(!file.set("dave", h(b"d")).unwrap());
        assert!(file.remove("alice"));
        assert!(!file.remove("alice"));
        assert_eq!(
            file.to_text(),
            format!(
                "# users\n\nbob:{}\n# end\ncarol:{}\ndave:{}\n",
                h(b"B"),
                h(b"c"),
                h(b"d")
            )
        );
        assert!(file.verify("carol", b"c"));
        assert!(file.verify("dave", b"d"));
        assert!(file.verify("bob", b"B"));
        let reparsed = PasswordFile::parse("f", &file.to_text()).unwrap();
        assert_eq!(reparsed.len(), 3);
    }

    #[test]
    fn usernames_are_checked_before_storing() {
        let mut file = PasswordFile::new();
        let hash = PasswordHash::pbkdf2_with_salt(b"x", [0; 12], 1);
        for bad in ["", "a:b", "a\tb", " a", "a ", "a\nb"] {
            assert!(file.set(bad, hash.clone()).is_err(), "{bad:?}");
        }
        assert!(file.set("a b/ü+#", hash).is_ok());
        assert!(!file.is_empty());
    }

    #[test]
    fn save_is_atomic_and_private() {
        let dir = std::env::temp_dir().join(format!("ferrymq-passwd-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        let mut file = PasswordFile::new();
        file.set("u", PasswordHash::pbkdf2_with_salt(b"x", [0; 12], 1))
            .unwrap();
        file.save(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), file.to_text());
        // Only the file itself is left behind, no temporary file.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Through a symbolic link the target is replaced and the link kept.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        file.remove("u");
        file.save(&link).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        fs::remove_dir_all(&dir).unwrap();
    }
}
