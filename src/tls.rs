//! TLS listeners: the rustls configuration of each, built once at startup from the PEM files
//! its `[[listener]]` names and shared by every shard (it is `Send + Sync`); the identity of
//! a verified client certificate; and the log lines of failed handshakes, at most one per
//! kind of failure every [`FAILURE_LOG_INTERVAL`]. The I/O is in `runtime::tls`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, RootCertStore, ServerConfig};

use crate::config::ListenerConfig;
use crate::log_budget::{unlogged_suffix, LogBudget};

/// What a TLS listener's connections are served with.
pub struct TlsListener {
    /// `listener[N] ADDR`, for log lines.
    pub label: String,
    pub server_config: Arc<ServerConfig>,
    /// The client certificate's identity replaces the CONNECT's user name.
    pub use_identity_as_username: bool,
}

/// The TLS setup of `listener` (`listener[index]` in the file, bound to `addr`), or None for
/// plain TCP. The error is one line naming the key and the file: `listener[1].tls_key:
/// /x/key.pem: no private key found`.
pub fn listener(
    index: usize,
    listener: &ListenerConfig,
    addr: SocketAddr,
) -> Result<Option<TlsListener>, String> {
    let (Some(cert_path), Some(key_path)) = (&listener.tls_cert, &listener.tls_key) else {
        // The configuration's validation refuses one without the other.
        return Ok(None);
    };
    let key_of = |name: &str| format!("listener[{index}].{name}");
    let chain = read_certificates(cert_path)
        .map_err(|e| format!("{}: {}: {e}", key_of("tls_cert"), cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => "no private key found".to_string(),
            other => describe_pem_error(other),
        };
        format!("{}: {}: {problem}", key_of("tls_key"), key_path.display())
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // TLS 1.2 and 1.3 only (rustls has nothing older).
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("listener[{index}]: TLS: {e}"))?;
    let builder = match &listener.tls_client_ca {
        Some(ca_path) => {
            let key = key_of("tls_client_ca");
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca_path)
                .map_err(|e| format!("{key}: {}: {e}", ca_path.display()))?
            {
                roots.add(certificate).map_err(|e| {
                    format!(
                        "{key}: {}: not a usable CA certificate: {e}",
                        ca_path.display()
                    )
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if listener.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{key}: {}: {e}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        let problem = match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("does not match the certificate in {}", cert_path.display())
            }
            other => other.to_string(),
        };
        format!("{}: {}: {problem}", key_of("tls_key"), key_path.display())
    })?;
    Ok(Some(TlsListener {
        label: format!("listener[{index}] {addr}"),
        server_config: Arc::new(config),
        use_identity_as_username: listener.use_identity_as_username,
    }))
}

/// The certificates of a PEM file, in order; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(describe_pem_error)?;
    if certificates.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(certificates)
}

fn describe_pem_error(error: pem::Error) -> String {
    match error {
        pem::Error::Io(error) => format!("cannot read: {error}"),
        pem::Error::NoItemsFound => "nothing found".into(),
        other => format!("not valid PEM: {other}"),
    }
}

/// The identity of a client certificate (DER): its subject's Common Name or, without one,
/// its first DNS name or email address among the Subject Alternative Names. None when it has
/// none of these or cannot be parsed.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .filter_map(|name| name.as_str().ok())
        .find(|name| !name.is_empty());
    if let Some(name) = common_name {
        return Some(name.to_string());
    }
    let alternative_names = certificate.subject_alternative_name().ok()??;
    alternative_names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(name) | GeneralName::RFC822Name(name) if !name.is_empty() => {
                Some(name.to_string())
            }
            _ => None,
        })
}

/// Why a TLS handshake failed, as counted in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No complete handshake within `broker.connect_timeout_ms`.
    Timeout,
    /// The peer does not speak TLS (plain MQTT to the TLS port, HTTP, a scanner).
    NotTls,
    /// No TLS version or cipher suite in common: TLS 1.1 or older, say.
    Incompatible,
    /// A client certificate missing or refused, or the client refused ours.
    Certificate,
    /// The peer closed or reset the connection before the end of the handshake.
    Closed,
    Other,
}

const FAILURE_KINDS: usize = 6;

impl HandshakeFailure {
    /// The kind of a failed handshake's error.
    pub fn of(error: &io::Error) -> HandshakeFailure {
        use rustls::Error as E;
        let tls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls_error {
            Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) => HandshakeFailure::NotTls,
            Some(E::PeerIncompatible(_)) => HandshakeFailure::Incompatible,
            Some(E::NoCertificatesPresented | E::InvalidCertificate(_)) => {
                HandshakeFailure::Certificate
            }
            Some(E::AlertReceived(alert)) => match alert {
                AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
                    HandshakeFailure::Incompatible
                }
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateRequired => HandshakeFailure::Certificate,
                _ => HandshakeFailure::Other,
            },
            Some(_) => HandshakeFailure::Other,
            None => match error.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                io::ErrorKind::TimedOut => HandshakeFailure::Timeout,
                _ => HandshakeFailure::Other,
            },
        }
    }

    fn describe(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "no handshake within broker.connect_timeout_ms",
            HandshakeFailure::NotTls => "the client does not speak TLS",
            HandshakeFailure::Incompatible => "no TLS version or cipher suite in common",
            HandshakeFailure::Certificate => "certificate refused",
            HandshakeFailure::Closed => "the client closed the connection",
            HandshakeFailure::Other => "TLS error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Shortest time between two log lines about handshakes failing the same way: a scanner or a
/// fleet with an expired certificate must not flood the log. The count of all failures is in
/// `$SYS/broker/tls/handshake_failures` and the metrics.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Over all shards: one line per kind per interval is the point.
static FAILURE_LOGS: Mutex<[LogBudget; FAILURE_KINDS]> =
    Mutex::new([LogBudget::new(); FAILURE_KINDS]);

/// Logs a failed handshake on `listener` from `peer`, unless one of the same kind was
/// logged less than [`FAILURE_LOG_INTERVAL`] ago; the next line then says how many were
/// not.
pub fn log_handshake_failure(
    listener: &str,
    peer: Option<SocketAddr>,
    failure: HandshakeFailure,
    detail: Option<&dyn fmt::Display>,
) {
    let now = Instant::now();
    let admitted = FAILURE_LOGS.lock().unwrap_or_else(|e| e.into_inner())[failure.index()]
        .admit(now, FAILURE_LOG_INTERVAL);
    let Some(unlogged) = admitted else {
        return;
    };
    let peer = peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string());
    let detail = detail.map(|d| d.to_string());
    let more = unlogged_suffix(unlogged);
    let failure = failure.describe();
    tracing::warn!(
        listener,
        peer = %peer,
        failure,
        detail = detail.as_deref(),
        unlogged,
        "{listener}: TLS handshake with {peer} failed: {failure}{}{more}",
        detail.as_ref().map_or_else(String::new, |d| format!(" ({d})")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate (DER) with `common_name` (if any) and `alternative_names`.
    fn certificate(common_name: Option<&str>, alternative_names: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ferrymq tests");
        if let Some(name) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
        }
        params.subject_alt_names = alternative_names;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_is_the_common_name_else_the_first_dns_or_email_name() {
        use rcgen::SanType;
        let dns = |name: &str| SanType::DnsName(name.try_into().unwrap());
        let email = |name: &str| SanType::Rfc822Name(name.try_into().unwrap());
        let ip = SanType::IpAddress("10.0.0.7".parse().unwrap());
        let cases = [
            (
                certificate(Some("device-42"), vec![dns("d42.example")]),
                Some("device-42"),
            ),
            (
                certificate(
                    None,
                    vec![ip.clone(), dns("d42.example"), email("a@b.example")],
                ),
                Some("d42.example"),
            ),
            (
                certificate(
                    None,
                    vec![ip.clone(), email("ops@example.com"), dns("x.example")],
                ),
                Some("ops@example.com"),
            ),
            (certificate(None, vec![ip]), None),
            (certificate(None, vec![]), None),
        ];
        for (der, expected) in cases {
            assert_eq!(certificate_identity(&der).as_deref(), expected);
        }
        assert_eq!(certificate_identity(b"not a certificate"), None);
    }

    fn tls_error(error: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn failures_are_classified_by_their_rustls_error() {
        use rustls::{InvalidMessage, PeerIncompatible};
        let cases = [
            (
                tls_error(rustls::Error::InvalidMessage(
                    InvalidMessage::InvalidContentType,
                )),
                HandshakeFailure::NotTls,
            ),
            (
                tls_error(rustls::Error::PeerIncompatible(
                    PeerIncompatible::SupportedVersionsExtensionRequired,
                )),
                HandshakeFailure::Incompatible,
            ),
            (
                tls_error(rustls::Error::NoCertificatesPresented),
                HandshakeFailure::Certificate,
            ),
            (
                tls_error(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                HandshakeFailure::Certificate,
            ),
            (
                io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof"),
                HandshakeFailure::Closed,
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset),
                HandshakeFailure::Closed,
            ),
            (io::Error::other("?"), HandshakeFailure::Other),
        ];
        for (error, expected) in cases {
            assert_eq!(HandshakeFailure::of(&error), expected, "{error}");
        }
    }
}
