//! TLS on a shard's TCP streams: the server handshake (futures-rustls), then the socket and
//! rustls's session kept together, so that a connection's reader and writer tasks can share
//! them as they share a plain socket, and hand both to another shard.
//!
//! After the handshake the futures-rustls stream is taken apart into the glommio socket and
//! the [`ServerConnection`]; I/O then goes through the session by hand:
//!
//! - reading decrypts: plaintext the session holds first, then ciphertext read from the
//!   socket with the reader's waker (glommio's read wake-up);
//! - writing encrypts: the session's queued records are written with the writer's waker
//!   (glommio's write wake-up), then the plaintext is handed to the session;
//! - records that reading makes the session queue (an alert, a TLS 1.3 key update answer) are
//!   sent at once if the socket takes them without waiting, else with the next write: the
//!   reader never waits on the write side, whose single waker slot belongs to the writer.
//!
//! Each call borrows the session only for one poll, as for a plain stream.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::pki_types::CertificateDer;
use rustls::{ServerConfig, ServerConnection};

use super::TcpStream;

/// A TLS connection after its handshake: the socket and the session, owned together.
pub struct TlsStream {
    tcp: TcpStream,
    session: ServerConnection,
}

/// Runs the server side of the TLS handshake on `tcp`. The error of a failed handshake is
/// the rustls error when there is one (inside an `io::Error` of kind `InvalidData`; the
/// alert that tells the client was sent if the socket took it), else the socket's.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let stream = futures_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await?;
    let (tcp, session) = stream.into_inner();
    Ok(TlsStream { tcp, session })
}

impl TlsStream {
    /// Rebuilds a stream from a session handed over from another shard and its socket.
    pub(super) fn from_parts(tcp: TcpStream, session: ServerConnection) -> TlsStream {
        TlsStream { tcp, session }
    }

    pub(super) fn into_parts(self) -> (TcpStream, ServerConnection) {
        (self.tcp, self.session)
    }

    pub(super) fn fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// The client's certificate chain, end entity first, when it presented one (it was
    /// verified during the handshake).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.session.peer_certificates()
    }

    /// Decrypted bytes into `buf`; `Ok(0)` at the end of the stream (close_notify or the
    /// socket's end; a socket that ends without close_notify gives `UnexpectedEof`).
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.session.reader().read(buf) {
                Ok(read) => return Poll::Ready(Ok(read)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            // Nothing decrypted is left: read ciphertext. The session takes what it has room
            // for, straight from the socket (glommio's stream does not buffer), so nothing
            // read is held outside the session when it is handed to another shard.
            let mut socket = PollReader {
                tcp: &mut self.tcp,
                cx,
            };
            match self.session.read_tls(&mut socket) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(error)),
            }
            let processed = self.session.process_new_packets();
            // An alert about a bad record, a key update answer: send what the socket takes.
            self.flush_without_waiting();
            if let Err(error) = processed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
            // At the socket's end the session now answers Ok(0) or UnexpectedEof.
        }
    }

    /// Encrypts and writes all of `bytes`, advancing it past what the session took.
    pub(super) fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &mut &[u8],
    ) -> Poll<io::Result<()>> {
        loop {
            // Records queued first (by earlier writes or by the reader) go first.
            while self.session.wants_write() {
                let mut socket = PollWriter {
                    tcp: &mut self.tcp,
                    cx,
                };
                match self.session.write_tls(&mut socket) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return Poll::Pending
                    }
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
            if bytes.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // The session queues up to its buffer limit (64 KiB) of records per call.
            let taken = self.session.writer().write(bytes)?;
            if taken == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *bytes = &bytes[taken..];
        }
    }

    /// Queues close_notify and sends what the socket takes without waiting: the clean end of
    /// a TLS connection, just before the socket is shut down.
    pub(super) fn close(&mut self) {
        self.session.send_close_notify();
        self.flush_without_waiting();
    }

    /// Writes queued records while the socket takes them at once; registers no waker.
    fn flush_without_waiting(&mut self) {
        let mut socket = NoWaitWriter(self.tcp.as_raw_fd());
        while self.session.wants_write() {
            match self.session.write_tls(&mut socket) {
                Ok(written) if written > 0 => {}
                _ => break,
            }
        }
    }
}

/// The socket as a `Read` for rustls: `WouldBlock` when glommio would wait, with the
/// waker of `cx` registered for the read wake-up.
struct PollReader<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for PollReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The socket as a `Write` for rustls, for the writer task: `WouldBlock` when glommio would
/// wait, with the waker of `cx` registered for the write wake-up.
struct PollWriter<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for PollWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// All queued records in one system call when the socket has room; otherwise through
    /// glommio, which registers the waker.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match send_vectored(self.tcp.as_raw_fd(), bufs) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                self.write(first)
            }
            result => result,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket as a `Write` that never waits and registers nothing.
struct NoWaitWriter(RawFd);

impl Write for NoWaitWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_vectored(self.0, &[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One non-blocking `sendmsg` of `bufs`; `WouldBlock` when the socket is full.
fn send_vectored(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix.
    header.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = bufs.len() as _;
    // SAFETY: the iovecs point into `bufs`, alive for the call; the socket is ours.
    let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
