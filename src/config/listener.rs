//! TOML `[[listener]]`: the sockets MQTT clients connect to, plain TCP or TLS.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::ConfigError;

/// Port of the default listener: the IANA port for MQTT without TLS.
pub const PORT_DEFAULT: u16 = 1883;

/// One listening socket; TOML `[[listener]]`. With `tls_cert` and `tls_key` it speaks
/// MQTT over TLS (1.2 or 1.3); the key names follow Mosquitto's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a `bind` key")]
pub struct ListenerConfig {
    /// IP address and port, e.g. `0.0.0.0:1883` or `[::]:1883`. Port 0 picks a free port.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub bind: SocketAddr,
    /// PEM file with the server's certificate chain, its own certificate first. With
    /// `tls_key`, makes this a TLS listener.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM file with the CA certificates that client certificates are verified against.
    /// Setting it asks clients for a certificate; one that is given must verify.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls_client_ca`: refuse clients that give no certificate. Default false: a
    /// certificate is verified if given.
    #[serde(default)]
    pub require_certificate: bool,
    /// With `tls_client_ca`: the client certificate's identity (subject Common Name, else
    /// its first DNS or email Subject Alternative Name) becomes the user name, whatever the
    /// CONNECT says; a client without one is refused as with a bad user name (CONNACK 0x86,
    /// or 0x04 in 3.1.1).
    #[serde(default)]
    pub use_identity_as_username: bool,
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn new(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }

    /// Whether connections to it start with a TLS handshake.
    pub fn is_tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Checks that the TLS keys go together; the error starts with the key inside the
    /// listener (`tls_key: ...`). The files themselves are read when the broker starts.
    fn check_tls(&self) -> Result<(), String> {
        let empty =
            |path: &Option<PathBuf>| path.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        for (name, path) in [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_client_ca", &self.tls_client_ca),
        ] {
            if empty(path) {
                return Err(format!("{name}: cannot be empty"));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err("tls_key: missing; tls_cert needs its private key".into())
            }
            (None, Some(_)) => {
                return Err("tls_cert: missing; tls_key needs its certificate".into())
            }
            _ => {}
        }
        if !self.is_tls() && self.tls_client_ca.is_some() {
            return Err("tls_client_ca: needs tls_cert and tls_key (a TLS listener)".into());
        }
        if self.tls_client_ca.is_none() {
            if self.require_certificate {
                return Err(
                    "require_certificate: needs tls_client_ca to verify certificates against"
                        .into(),
                );
            }
            if self.use_identity_as_username {
                return Err(
                    "use_identity_as_username: needs tls_client_ca to verify certificates against"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

pub(super) fn deserialize_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an IP address and port")))
}

/// Checks the listeners: at least one, no address bound twice, TLS keys that go together.
/// The error names the listener (`listener[1].bind: ...`).
pub(super) fn check_listeners(listeners: &[ListenerConfig]) -> Result<(), ConfigError> {
    if listeners.is_empty() {
        return Err(ConfigError(
            "listener: at least one listener is needed".into(),
        ));
    }
    for (i, listener) in listeners.iter().enumerate() {
        // Port 0 asks the kernel for a free port, so two of them do not collide.
        let taken = listeners[..i]
            .iter()
            .position(|other| other.bind == listener.bind && listener.bind.port() != 0);
        if let Some(first) = taken {
            return Err(ConfigError(format!(
                "listener[{i}].bind: {} is already bound by listener[{first}]",
                listener.bind
            )));
        }
        listener
            .check_tls()
            .map_err(|e| ConfigError(format!("listener[{i}].{e}")))?;
    }
    Ok(())
}
