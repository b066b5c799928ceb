//! Authentication and authorization with Mosquitto's file formats: a password file as
//! written by `mosquitto_passwd` ([`passwd`]) and an `acl_file` ([`acl`]).
//!
//! Nothing here does I/O on the data path: files are read when an [`AuthStore`] is
//! created or reloaded, and the broker works from immutable [`AuthSnapshot`]s.
//!
//! # Wiring it into the broker
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferrymq::auth::{
//!     Access, AuthConfig, AuthDecision, AuthStore, ClientIdentity, Credentials,
//!     SubscribeDecision,
//! };
//!
//! // At start-up (an error is a config error: refuse to start).
//! let store = Arc::new(AuthStore::load(AuthConfig {
//!     password_file: Some("/etc/ferrymq/passwd".into()),
//!     acl_file: Some("/etc/ferrymq/acl".into()),
//!     allow_anonymous: None, // default: false with a password file, true without
//! })?);
//!
//! // Each shard keeps the snapshot it works with, and takes a new one when the
//! // generation moves (a cheap atomic load), e.g. at each CONNECT or on a timer; or the
//! // thread that reloads sends the new `Arc<AuthSnapshot>` to every shard.
//! let mut snapshot = store.current();
//! if store.generation() != snapshot.generation() {
//!     snapshot = store.current();
//! }
//!
//! // CONNECT.
//! let decision = snapshot.authenticator().authenticate(&Credentials {
//!     username: Some("alice"),
//!     password: Some(b"secret"),
//!     tls_identity: None,              // the client certificate's CN, if any
//!     use_identity_as_username: false, // the listener's setting
//! });
//! let username = match decision {
//!     AuthDecision::Allow { username } => username,
//!     // CONNACK with reason.v5_reason_code() (5.0) or reason.v3_return_code() (3.1.x).
//!     AuthDecision::Deny(_reason) => return Ok(()),
//! };
//! // The connection holds its ACL with its decision cache.
//! let mut acl = snapshot.client_acl(ClientIdentity::new("client-1", username.as_deref()));
//!
//! // PUBLISH (and the will topic at CONNECT): drop it (5.0: PUBACK/PUBREC 0x87).
//! if !acl.check(&snapshot, "sensors/1/temp", Access::Write) { /* refuse */ }
//! // SUBSCRIBE: Deny -> SUBACK 0x87 for that filter; AllowFiltered -> check Read per
//! // message delivered through it; AllowAll -> no per-message check needed.
//! match acl.check_subscribe(&snapshot, "sensors/#") {
//!     SubscribeDecision::Deny => {}
//!     SubscribeDecision::AllowAll | SubscribeDecision::AllowFiltered => {}
//! }
//! // Delivering a message (retained ones too) through an AllowFiltered subscription.
//! if acl.check(&snapshot, "sensors/1/temp", Access::Read) { /* deliver */ }
//!
//! // Reload (SIGHUP): on error the old snapshot stays in force.
//! match store.reload() {
//!     Ok(new) => { /* send `new` to the shards */ }
//!     Err(error) => tracing::warn!(error = %error, "reload failed, keeping the old files: {error}"),
//! }
//! # Ok::<(), ferrymq::auth::AuthError>(())
//! ```
//!
//! Passing the shard's current snapshot to every [`ClientAcl`] check is what makes a
//! reload take effect: a `ClientAcl` built under another generation rebuilds its rules and
//! empties its cache. After a reload, connected clients whose credentials would no longer
//! be accepted can be found with [`AuthSnapshot::still_allowed`] (Mosquitto disconnects
//! them on reload).
//!
//! # CONNECT decisions (Mosquitto 2.0's `password_file` / `allow_anonymous`)
//!
//! - A listener with `use_identity_as_username`: the TLS client certificate's identity
//!   is the user name and the password file is not consulted; a user name and password in
//!   CONNECT are ignored. Without an identity: `Deny(NotAuthorized)`.
//! - With a password file: a user name must be in it with a matching password, else
//!   `Deny(BadCredentials)` (unknown user and wrong password look the same, and take the
//!   same time). Without a user name (a 5.0 password without one is ignored): allowed
//!   only if anonymous clients are allowed, else `Deny(NotAuthorized)`.
//! - Without a password file: every client, with or without a user name, is allowed if
//!   anonymous clients are allowed and refused (`NotAuthorized`) if not, as in Mosquitto.
//! - `allow_anonymous` defaults to false when a password file is set and true when not
//!   (Mosquitto 2.0 defaults to false in both cases).
//! - The password is compared as the exact bytes of CONNECT. (Mosquitto hashes it as a C
//!   string, so it ignores anything after a NUL byte; here such a password never
//!   matches.)
//! - Mosquitto answers a refused CONNECT with "not authorised" (3.1.1 return code 5) in
//!   both cases; the two reasons here let the broker answer 4 / 0x86 "bad user name or
//!   password" for wrong credentials.

pub mod acl;
pub mod passwd;
pub mod prompt;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use acl::{Access, Acl, ClientAcl, SubscribeDecision};
pub use passwd::{PasswordFile, PasswordHash, DEFAULT_ITERATIONS};

/// Why a file could not be used. Each displays as one line naming the file, and for a
/// syntax error the line number: `FILE:LINE: problem`.
#[derive(Debug)]
pub enum AuthError {
    /// The file could not be read or written.
    Io { path: PathBuf, error: io::Error },
    /// A line of the file is wrong.
    Syntax {
        file: String,
        line: usize,
        problem: String,
    },
    /// Anything else, e.g. a user name that cannot be stored.
    Invalid(String),
}

impl AuthError {
    pub(crate) fn io(path: &Path, error: io::Error) -> AuthError {
        AuthError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn syntax(file: &str, line: usize, problem: String) -> AuthError {
        AuthError::Syntax {
            file: file.to_owned(),
            line,
            problem,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            AuthError::Syntax {
                file,
                line,
                problem,
            } => write!(f, "{file}:{line}: {problem}"),
            AuthError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Who a connection is, for the ACL: its client id and the user name it was allowed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    pub client_id: String,
    /// `None` for an anonymous client.
    pub username: Option<String>,
}

impl ClientIdentity {
    pub fn new(client_id: &str, username: Option<&str>) -> ClientIdentity {
        ClientIdentity {
            client_id: client_id.to_owned(),
            username: username.map(str::to_owned),
        }
    }
}

/// What a CONNECT presents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The CONNECT user name.
    pub username: Option<&'a str>,
    /// The CONNECT password.
    pub password: Option<&'a [u8]>,
    /// The identity of a verified TLS client certificate (its CN), if any.
    pub tls_identity: Option<&'a str>,
    /// The listener's `use_identity_as_username`: the certificate identity is the user
    /// name and the password is not checked.
    pub use_identity_as_username: bool,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Unknown user, wrong or missing password.
    BadCredentials,
    /// Anonymous client where those are not allowed, or no certificate identity where the
    /// listener takes the user name from it.
    NotAuthorized,
}

impl DenyReason {
    /// CONNACK reason code in MQTT 5.0: 0x86 Bad User Name or Password, 0x87 Not
    /// authorized.
    pub fn v5_reason_code(self) -> u8 {
        match self {
            DenyReason::BadCredentials => 0x86,
            DenyReason::NotAuthorized => 0x87,
        }
    }

    /// CONNACK return code in MQTT 3.1 and 3.1.1: 4 bad user name or password, 5 not
    /// authorized.
    pub fn v3_return_code(self) -> u8 {
        match self {
            DenyReason::BadCredentials => 4,
            DenyReason::NotAuthorized => 5,
        }
    }
}

/// The answer to a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthDecision {
    /// Accept; `username` is the one to use from now on (for the ACL, `%u`, logs): the
    /// CONNECT user name, or the certificate identity, or `None` for an anonymous client.
    Allow {
        username: Option<String>,
    },
    Deny(DenyReason),
}

/// CONNECT checks: an optional password file and whether anonymous clients are allowed.
#[derive(Debug, Clone)]
pub struct Authenticator {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
}

/// A hash verified for unknown users, so that they take as long as known ones.
fn decoy_hash() -> &'static PasswordHash {
    static DECOY: std::sync::OnceLock<PasswordHash> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        PasswordHash::pbkdf2_with_salt(b"decoy", [0x5a; passwd::SALT_BYTES], DEFAULT_ITERATIONS)
    })
}

impl Authenticator {
    /// `allow_anonymous: None` takes the default: false with a password file, true
    /// without.
    pub fn new(passwords: Option<PasswordFile>, allow_anonymous: Option<bool>) -> Authenticator {
        let allow_anonymous = allow_anonymous.unwrap_or(passwords.is_none());
        Authenticator {
            passwords,
            allow_anonymous,
        }
    }

    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    pub fn password_file(&self) -> Option<&PasswordFile> {
        self.passwords.as_ref()
    }

    /// Decides a CONNECT; see the module documentation for the rules.
    pub fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        if credentials.use_identity_as_username {
            return match credentials.tls_identity {
                Some(identity) if !identity.is_empty() => AuthDecision::Allow {
                    username: Some(identity.to_owned()),
                },
                _ => AuthDecision::Deny(DenyReason::NotAuthorized),
            };
        }
        let Some(passwords) = &self.passwords else {
            return if self.allow_anonymous {
                AuthDecision::Allow {
                    username: credentials.username.map(str::to_owned),
                }
            } else {
                AuthDecision::Deny(DenyReason::NotAuthorized)
            };
        };
        let Some(username) = credentials.username else {
            return if self.allow_anonymous {
                AuthDecision::Allow { username: None }
            } else {
                AuthDecision::Deny(DenyReason::NotAuthorized)
            };
        };
        let password = credentials.password.unwrap_or(b"");
        let verified = match passwords.get(username) {
            Some(hash) => credentials.password.is_some() && hash.verify(password),
            None => {
                let _ = decoy_hash().verify(password);
                false
            }
        };
        if verified {
            AuthDecision::Allow {
                username: Some(username.to_owned()),
            }
        } else {
            AuthDecision::Deny(DenyReason::BadCredentials)
        }
    }
}

/// Which files to load and the anonymous setting; TOML `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct AuthConfig {
    /// A `mosquitto_passwd` file; `None`: no password checks.
    pub password_file: Option<PathBuf>,
    /// An ACL file; `None`: every client may read and write everything.
    pub acl_file: Option<PathBuf>,
    /// `None`: false with a password file, true without.
    pub allow_anonymous: Option<bool>,
}

/// Everything needed to decide CONNECT, PUBLISH and SUBSCRIBE, as loaded at one time.
/// Immutable; shared between shards as `Arc<AuthSnapshot>`.
#[derive(Debug)]
pub struct AuthSnapshot {
    generation: u64,
    authenticator: Authenticator,
    acl: Option<Acl>,
}

impl AuthSnapshot {
    /// Loads the files of `config` (both or neither: an error in one fails the load).
    pub fn load(config: &AuthConfig, generation: u64) -> Result<AuthSnapshot, AuthError> {
        let passwords = match &config.password_file {
            Some(path) => Some(PasswordFile::load(path)?),
            None => None,
        };
        let acl = match &config.acl_file {
            Some(path) => Some(Acl::load(path)?),
            None => None,
        };
        Ok(AuthSnapshot::from_parts(
            generation,
            Authenticator::new(passwords, config.allow_anonymous),
            acl,
        ))
    }

    /// No files: everyone may connect, publish and subscribe (generation 1, as
    /// [`AuthStore::open`]).
    pub fn open() -> AuthSnapshot {
        AuthSnapshot::from_parts(1, Authenticator::new(None, None), None)
    }

    /// A snapshot from parts already loaded (tests, or files read elsewhere).
    pub fn from_parts(generation: u64, authenticator: Authenticator, acl: Option<Acl>) -> Self {
        AuthSnapshot {
            generation,
            authenticator,
            acl,
        }
    }

    /// Grows by one with each successful reload of an [`AuthStore`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// `None` when no ACL file is configured: everything is allowed.
    pub fn acl(&self) -> Option<&Acl> {
        self.acl.as_ref()
    }

    /// A connection's ACL with its decision cache.
    pub fn client_acl(&self, identity: ClientIdentity) -> ClientAcl {
        ClientAcl::new(self, identity)
    }

    /// Whether a client allowed in earlier with `username` (its [`AuthDecision::Allow`]
    /// user name) would still be let in by name under this snapshot, without checking
    /// the password again: false for an anonymous client when anonymous clients are no
    /// longer allowed, and for a user no longer in the password file. Clients let in by
    /// certificate identity (`by_certificate`) stay allowed. For disconnecting clients
    /// after a reload, as Mosquitto does; a changed password is not detected.
    pub fn still_allowed(&self, username: Option<&str>, by_certificate: bool) -> bool {
        if by_certificate {
            return true;
        }
        let authenticator = &self.authenticator;
        match (username, &authenticator.passwords) {
            (None, _) | (Some(_), None) => authenticator.allow_anonymous,
            (Some(username), Some(passwords)) => passwords.get(username).is_some(),
        }
    }
}

/// The current [`AuthSnapshot`], replaced as a whole on reload. Shared by all shards
/// (`Send + Sync`); reading the generation is one atomic load.
#[derive(Debug)]
pub struct AuthStore {
    config: AuthConfig,
    current: RwLock<Arc<AuthSnapshot>>,
    generation: AtomicU64,
    /// Serializes reloads so that generations are handed out in order.
    reloading: Mutex<()>,
}

impl AuthStore {
    /// Loads the files; generation 1.
    pub fn load(config: AuthConfig) -> Result<AuthStore, AuthError> {
        let snapshot = AuthSnapshot::load(&config, 1)?;
        Ok(AuthStore {
            config,
            current: RwLock::new(Arc::new(snapshot)),
            generation: AtomicU64::new(1),
            reloading: Mutex::new(()),
        })
    }

    /// No files: everyone may connect, publish and subscribe.
    pub fn open() -> AuthStore {
        AuthStore::load(AuthConfig::default()).expect("no files to read")
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<AuthSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The generation of [`AuthStore::current`], without taking the lock.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the files again. On success the new snapshot (next generation) replaces the
    /// current one and is returned; on error the current one stays and the error says
    /// which file and line.
    pub fn reload(&self) -> Result<Arc<AuthSnapshot>, AuthError> {
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = self.generation() + 1;
        let snapshot = Arc::new(AuthSnapshot::load(&self.config, next)?);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot.clone();
        self.generation.store(next, Ordering::Release);
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords() -> PasswordFile {
        let mut file = PasswordFile::new();
        file.set("alice", PasswordHash::new(b"secret", 3).unwrap())
            .unwrap();
        file
    }

    fn creds<'a>(username: Option<&'a str>, password: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            username,
            password,
            ..Credentials::default()
        }
    }

    const BAD: AuthDecision = AuthDecision::Deny(DenyReason::BadCredentials);
    const NOT: AuthDecision = AuthDecision::Deny(DenyReason::NotAuthorized);

    fn allow(username: Option<&str>) -> AuthDecision {
        AuthDecision::Allow {
            username: username.map(str::to_owned),
        }
    }

    #[test]
    fn with_a_password_file() {
        let auth = Authenticator::new(Some(passwords()), None);
        assert!(!auth.allow_anonymous());
        assert_eq!(
            auth.authenticate(&creds(Some("alice"), Some(b"secret"))),
            allow(Some("alice"))
        );
        assert_eq!(auth.authenticate(&creds(Some("alice"), Some(b"nope"))), BAD);
        assert_eq!(auth.authenticate(&creds(Some("alice"), None)), BAD);
        assert_eq!(auth.authenticate(&creds(Some("bob"), Some(b"secret"))), BAD);
        assert_eq!(auth.authenticate(&creds(None, None)), NOT);
        assert_eq!(auth.authenticate(&creds(None, Some(b"secret"))), NOT);
        // A NUL byte does not end the password.
        assert_eq!(
            auth.authenticate(&creds(Some("alice"), Some(b"secret\0more"))),
            BAD
        );

        let open = Authenticator::new(Some(passwords()), Some(true));
        assert_eq!(open.authenticate(&creds(None, None)), allow(None));
        assert_eq!(open.authenticate(&creds(Some("bob"), Some(b"x"))), BAD);
    }

    #[test]
    fn without_a_password_file() {
        let auth = Authenticator::new(None, None);
        assert!(auth.allow_anonymous());
        assert_eq!(auth.authenticate(&creds(None, None)), allow(None));
        assert_eq!(
            auth.authenticate(&creds(Some("anyone"), Some(b"x"))),
            allow(Some("anyone"))
        );
        let closed = Authenticator::new(None, Some(false));
        assert_eq!(closed.authenticate(&creds(None, None)), NOT);
        assert_eq!(closed.authenticate(&creds(Some("anyone"), Some(b"x"))), NOT);
    }

    #[test]
    fn certificate_identity() {
        let auth = Authenticator::new(Some(passwords()), None);
        let with_cert = Credentials {
            username: Some("alice"),
            password: Some(b"wrong"),
            tls_identity: Some("device-7"),
            use_identity_as_username: true,
        };
        assert_eq!(auth.authenticate(&with_cert), allow(Some("device-7")));
        let without = Credentials {
            tls_identity: None,
            ..with_cert
        };
        assert_eq!(auth.authenticate(&without), NOT);
        // The listener does not take identities: the certificate is ignored.
        let ignored = Credentials {
            use_identity_as_username: false,
            ..with_cert
        };
        assert_eq!(auth.authenticate(&ignored), BAD);
        assert_eq!(DenyReason::BadCredentials.v5_reason_code(), 0x86);
        assert_eq!(DenyReason::NotAuthorized.v3_return_code(), 5);
    }

    #[test]
    fn still_allowed_after_reload() {
        let snapshot =
            AuthSnapshot::from_parts(2, Authenticator::new(Some(passwords()), None), None);
        assert!(snapshot.still_allowed(Some("alice"), false));
        assert!(!snapshot.still_allowed(Some("bob"), false));
        assert!(!snapshot.still_allowed(None, false));
        assert!(snapshot.still_allowed(Some("bob"), true));
    }

    #[test]
    fn shareable_between_shards() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<AuthStore>();
        send_sync::<AuthSnapshot>();
        send_sync::<Arc<AuthSnapshot>>();
        send::<ClientAcl>();
    }

    #[test]
    fn store_reload_keeps_old_snapshot_on_error() {
        let dir = std::env::temp_dir().join(format!("ferrymq-auth-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let acl_path = dir.join("acl");
        std::fs::write(&acl_path, "topic read a\n").unwrap();
        let store = AuthStore::load(AuthConfig {
            acl_file: Some(acl_path.clone()),
            ..AuthConfig::default()
        })
        .unwrap();
        let first = store.current();
        assert_eq!(first.generation(), 1);
        let anon = ClientIdentity::new("c", None);
        let mut acl = first.client_acl(anon);
        assert!(acl.check(&first, "a", Access::Read));
        assert!(!acl.check(&first, "b", Access::Read));

        std::fs::write(&acl_path, "topic read b\n").unwrap();
        let second = store.reload().unwrap();
        assert_eq!((second.generation(), store.generation()), (2, 2));
        assert!(!acl.check(&second, "a", Access::Read));
        assert!(acl.check(&second, "b", Access::Read));
        assert_eq!(acl.generation(), 2);

        std::fs::write(&acl_path, "topic maybe b\n").unwrap();
        let error = store.reload().unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "{}:1: unknown access \"maybe\" (expected read, write, readwrite or deny)",
                acl_path.display()
            )
        );
        assert_eq!(store.generation(), 2);
        assert!(Arc::ptr_eq(&store.current(), &second));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
