//! The sockets of a shard's devices and the epoll set that watches them.
//!
//! Why epoll and not the runtime's streams: an idle device must cost little. A glommio
//! stream keeps an io_uring poll armed per socket, and each armed poll is a reactor
//! `Source` of about 450 bytes; with a task and a timer per device that came to about
//! 3 KiB per connected device (VmRSS, 5,000 devices). An epoll registration lives in the
//! kernel, so a device is its state machine and nothing else in user space.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// An epoll set, edge-triggered: a socket is reported when it becomes readable or
/// writable, and the reader then drains it.
pub struct Epoll {
    fd: OwnedFd,
}

pub const READABLE: u32 = libc::EPOLLIN as u32;
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
pub const CLOSED: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `socket` for reads, writes and hang-ups, reporting `token`.
    pub fn add(&self, socket: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: epoll_ctl on our epoll set with a valid event.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, socket, &mut event) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (0: do not wait) and fills `events`; returns how many.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: `events` is a live buffer of its length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        // EINTR (a signal) reads as "nothing yet".
        n.max(0) as usize
    }

    /// Waits up to `timeout_us` on a high-resolution timer (epoll_pwait2; where the kernel
    /// lacks it, epoll_wait rounded up to whole milliseconds) and fills `events`.
    pub fn wait_us(&self, events: &mut [libc::epoll_event], timeout_us: u64) -> usize {
        static NO_PWAIT2: AtomicBool = AtomicBool::new(false);
        if !NO_PWAIT2.load(Ordering::Relaxed) {
            let timeout = libc::timespec {
                tv_sec: (timeout_us / 1_000_000) as libc::time_t,
                tv_nsec: ((timeout_us % 1_000_000) * 1000) as libc::c_long,
            };
            // SAFETY: `events` is a live buffer of its length, `timeout` a valid timespec,
            // no signal mask.
            let n = unsafe {
                libc::epoll_pwait2(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    &timeout,
                    std::ptr::null(),
                )
            };
            if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return n.max(0) as usize;
            }
            NO_PWAIT2.store(true, Ordering::Relaxed);
        }
        self.wait(events, timeout_us.div_ceil(1000) as i32)
    }
}

/// Starts a non-blocking connection to `target`, from `source` when given. The source
/// address is bound with IP_BIND_ADDRESS_NO_PORT, so the kernel picks the port at connect
/// time, per destination: each source address offers the whole ephemeral range to each
/// target. Returns the socket and whether it is connected already.
pub fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<(OwnedFd, bool)> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // Nagle would hold a PUBLISH behind an unacknowledged one: latency, not throughput,
    // is what a device sees.
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    if let Some(source) = source {
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        let (address, len) = sockaddr(SocketAddr::new(source, 0));
        // SAFETY: `address` holds a sockaddr of `len` bytes.
        if unsafe { libc::bind(fd, (&address as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (address, len) = sockaddr(target);
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&address as *const libc::sockaddr_storage).cast(), len) } == 0 {
        return Ok((socket, true));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok((socket, false))
    } else {
        Err(error)
    }
}

/// The pending error of a socket (SO_ERROR), e.g. after its connect completed.
pub fn take_error(fd: RawFd) -> Option<io::Error> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the given length.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Some(io::Error::last_os_error());
    }
    (value != 0).then(|| io::Error::from_raw_os_error(value))
}

/// What a non-blocking read or write did.
pub enum Transfer {
    Done(usize),
    WouldBlock,
    Closed,
    Failed,
}

pub fn recv(fd: RawFd, buf: &mut [u8]) -> Transfer {
    // SAFETY: recv into a live buffer of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    transfer(n)
}

pub fn send(fd: RawFd, bytes: &[u8]) -> Transfer {
    // SAFETY: send from a live buffer; MSG_NOSIGNAL turns a closed peer into EPIPE.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    transfer(n)
}

/// A socket as `io::Read` and `io::Write`, non-blocking (`WouldBlock` when empty or
/// full): what a TLS connection reads ciphertext from and writes it to.
pub struct Socket(pub RawFd);

impl io::Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv into a live buffer of its length.
        let n = unsafe {
            libc::recv(
                self.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl io::Write for Socket {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: as in `send`.
        let n = unsafe {
            libc::send(
                self.0,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn transfer(n: isize) -> Transfer {
    match n {
        0 => Transfer::Closed,
        n if n > 0 => Transfer::Done(n as usize),
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Transfer::WouldBlock,
            _ => Transfer::Failed,
        },
    }
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt with an int option on a socket we hold. The options set here
    // only tune (Nagle, port choice); failing them is not fatal.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match address {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn connects_from_a_source_address_and_reports_readiness() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let (socket, _) = connect(target, Some(source)).unwrap();
        let epoll = Epoll::new().unwrap();
        epoll.add(socket.as_raw_fd(), 7).unwrap();
        let (mut peer, from) = listener.accept().unwrap();
        assert_eq!(from.ip(), source);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let n = epoll.wait(&mut events, 1000);
        assert!(n >= 1 && events[0].u64 == 7 && events[0].events & WRITABLE != 0);
        assert!(take_error(socket.as_raw_fd()).is_none());
        assert!(matches!(
            send(socket.as_raw_fd(), b"ping"),
            Transfer::Done(4)
        ));
        let mut got = [0; 4];
        peer.read_exact(&mut got).unwrap();
        peer.write_all(b"pong").unwrap();
        let n = epoll.wait(&mut events, 1000);
        assert!(n >= 1 && events[0].events & READABLE != 0);
        let mut buf = [0; 16];
        assert!(matches!(
            recv(socket.as_raw_fd(), &mut buf),
            Transfer::Done(4)
        ));
        assert!(matches!(
            recv(socket.as_raw_fd(), &mut buf),
            Transfer::WouldBlock
        ));
        drop(peer);
        epoll.wait(&mut events, 1000);
        assert!(matches!(
            recv(socket.as_raw_fd(), &mut buf),
            Transfer::Closed
        ));
    }
}
