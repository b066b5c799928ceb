//! TLS for the devices (`--tls`): the rustls client configuration built once from the
//! flags and shared by every device of every shard, and the per-device connection.
//!
//! A TLS device holds a `rustls::ClientConnection` (boxed, in its slot) that the engine
//! drives by hand over the device's non-blocking socket: ciphertext read from the socket
//! goes in with `read_tls` + `process_new_packets`, the plaintext that comes out takes the
//! same decoding path as a plain device's bytes, and what the device sends goes through
//! the connection's writer and out with `write_tls`. A plain device pays one empty
//! pointer in its slot.
//!
//! What TLS costs per device: the `ClientConnection` and its buffers (a few KiB while the
//! device is connected; the report's `memory` figures measure it), and a full handshake per
//! connection: session resumption is off, so that every device pays a handshake as a fleet
//! of distinct devices would.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

/// What `--tls` and its companion flags ask for.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub cafile: Option<String>,
    pub insecure: bool,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: String,
}

/// The client side of TLS, shared read-only by every device.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Builds the configuration: the `--cafile` roots (or, with `--insecure`, no server
    /// verification at all), the client certificate for mutual TLS when given.
    pub fn new(options: &TlsOptions) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("--tls: {e}"))?;
        let builder = match (&options.cafile, options.insecure) {
            (Some(path), _) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "--cafile")? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--cafile: {path}: {e}"))?;
                }
                builder.with_root_certificates(roots)
            }
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
            (None, false) => {
                return Err(
                    "--tls: give --cafile PATH (PEM CA that signed the broker's \
                     certificate) to verify the broker, or --insecure to skip verification"
                        .into(),
                )
            }
        };
        let mut config = match (&options.cert, &options.key) {
            (Some(cert), Some(key)) => {
                let certs = read_certs(cert, "--cert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--key: {key}: {}", pem_error(e)))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("--cert/--key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--cert and --key: give both or neither".into()),
        };
        // Every device makes a full handshake, as distinct devices would.
        config.resumption = Resumption::disabled();
        let server_name = ServerName::try_from(options.server_name.clone())
            .map_err(|e| format!("--tls-server-name {:?}: {e}", options.server_name))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// A connection for one device. Its buffers are not bounded: what a device may send
    /// is bounded by its window, and it publishes only once its ciphertext is out.
    pub fn connect(&self) -> Result<Box<ClientConnection>, rustls::Error> {
        let mut connection = ClientConnection::new(self.config.clone(), self.server_name.clone())?;
        connection.set_buffer_limit(None);
        Ok(Box::new(connection))
    }
}

fn read_certs(path: &str, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag}: {path}: {}", pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{flag}: {path}: no certificate found"));
    }
    Ok(certs)
}

fn pem_error(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item found".into(),
        other => format!("{other:?}"),
    }
}

/// `--insecure`: any server certificate is accepted (the handshake's signatures are still
/// checked, so the server holds the key of the certificate it shows).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What reading a TLS device's socket gave.
pub enum Read {
    /// Plaintext bytes now in the buffer.
    Plaintext(usize),
    /// Nothing more until the socket is readable again.
    WouldBlock,
    /// The broker closed the connection (TCP or close_notify).
    Closed,
    /// The socket failed.
    Failed,
    /// TLS refused what came (bad certificate, alert, corrupt record).
    Refused,
}

/// Reads plaintext into `buf`: first what rustls holds already, else ciphertext from the
/// socket `fd` until some plaintext comes out or the socket has nothing more.
pub fn read(connection: &mut ClientConnection, fd: i32, buf: &mut [u8]) -> Read {
    loop {
        match io::Read::read(&mut connection.reader(), buf) {
            Ok(0) => return Read::Closed, // close_notify
            Ok(n) => return Read::Plaintext(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Read::Closed, // EOF without close_notify
        }
        match connection.read_tls(&mut crate::net::Socket(fd)) {
            Ok(0) => {
                // EOF: let rustls see it, then what it still holds is read above.
                if connection.process_new_packets().is_err() {
                    return Read::Refused;
                }
                return match io::Read::read(&mut connection.reader(), buf) {
                    Ok(n) if n > 0 => Read::Plaintext(n),
                    _ => Read::Closed,
                };
            }
            Ok(_) => {
                if connection.process_new_packets().is_err() {
                    return Read::Refused;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Read::Failed,
        }
    }
}

/// Hands `plaintext` to the connection and writes what ciphertext the socket takes.
/// `false` when the socket failed.
pub fn write(connection: &mut ClientConnection, fd: i32, plaintext: &[u8]) -> bool {
    if !plaintext.is_empty() {
        // The buffers are unbounded (see `TlsClient::connect`): everything is taken.
        let mut writer = connection.writer();
        if io::Write::write_all(&mut writer, plaintext).is_err() {
            return false;
        }
    }
    flush(connection, fd)
}

/// Writes pending ciphertext until the socket is full. `false` when it failed.
pub fn flush(connection: &mut ClientConnection, fd: i32) -> bool {
    while connection.wants_write() {
        match connection.write_tls(&mut crate::net::Socket(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> TlsOptions {
        TlsOptions {
            server_name: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn verification_is_required_unless_insecure() {
        let error = TlsClient::new(&options()).unwrap_err();
        assert!(
            error.contains("--cafile") && error.contains("--insecure"),
            "{error}"
        );
        let client = TlsClient::new(&TlsOptions {
            insecure: true,
            ..options()
        })
        .unwrap();
        assert!(matches!(client.server_name, ServerName::IpAddress(_)));
        // A fresh connection has its ClientHello ready before anything was read.
        let mut connection = client.connect().unwrap();
        assert!(connection.is_handshaking() && connection.wants_write());
        // Plaintext written before the handshake is kept for after it.
        io::Write::write_all(&mut connection.writer(), &[0x10; 100_000]).unwrap();
    }

    #[test]
    fn unusable_files_and_names_are_refused_with_the_flag() {
        let missing = std::env::temp_dir().join("ferrymq-loadgen-no-such.pem");
        let missing = missing.to_str().unwrap().to_string();
        let error = TlsClient::new(&TlsOptions {
            cafile: Some(missing.clone()),
            ..options()
        })
        .unwrap_err();
        assert!(
            error.starts_with("--cafile: ") && error.contains(&missing),
            "{error}"
        );
        let error = TlsClient::new(&TlsOptions {
            insecure: true,
            cert: Some(missing),
            ..options()
        })
        .unwrap_err();
        assert!(error.contains("--cert and --key"), "{error}");
        let error = TlsClient::new(&TlsOptions {
            insecure: true,
            server_name: "not a name!".into(),
            ..options()
        })
        .unwrap_err();
        assert!(error.starts_with("--tls-server-name"), "{error}");
    }
}
