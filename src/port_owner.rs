//! Who listens on a TCP address: the kernel's socket tables (`/proc/net/tcp`, `tcp6`) and
//! the processes' descriptors (`/proc/PID/fd`).
//!
//! The shards bind with SO_REUSEPORT, which lets them share a port among themselves but
//! would also let them join another process that uses it (a second ferrymq), silently
//! splitting the clients between two brokers. A trial bind cannot tell that case apart from
//! a port whose only sockets are closed connections in TIME-WAIT (every restart of a broker
//! that had clients): a bind without SO_REUSEPORT fails on both, one with it succeeds on
//! both. So the broker looks for a socket in the LISTEN state instead, and names its owner.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP state LISTEN in `/proc/net/tcp`'s `st` column.
const TCP_LISTEN: &str = "0A";

/// A socket in the LISTEN state that a bind of some address would collide with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// The address it listens on, as the kernel shows it.
    pub addr: SocketAddr,
    /// Its socket inode, to find the process holding it.
    pub inode: u64,
}

/// The LISTEN socket, if any, that binding `addr` would share or collide with. Port 0 never
/// collides. An error reading the tables counts as nothing found: the bind then reports
/// what the kernel says.
pub fn listener_on(addr: SocketAddr) -> Option<Listening> {
    if addr.port() == 0 {
        return None;
    }
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|table| listening_sockets(&table))
        .find(|listening| collides(listening.addr, addr))
}

/// Binds `addr` as the shards will (SO_REUSEPORT, no SO_REUSEADDR), from any thread, for
/// the errors a bind can give besides a listener (an address this host does not have, a
/// privileged port) and to choose a free port for port 0. Not listened on: nobody
/// connects to it.
pub fn trial_bind(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("bound address is not an IP address"))
}

/// One line naming a listener for an error message: `pid 4242 (mosquitto) listens on
/// 0.0.0.0:1883`, or the socket's inode when no visible process holds it.
pub fn describe(listening: &Listening) -> String {
    match owner_of(listening.inode) {
        Some((pid, name)) => format!("pid {pid} ({name}) listens on {}", listening.addr),
        None => format!(
            "a process this user cannot see listens on {} (socket inode {})",
            listening.addr, listening.inode
        ),
    }
}

/// The LISTEN sockets of one `/proc/net/tcp` or `tcp6` table.
fn listening_sockets(table: &str) -> Vec<Listening> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() < 10 || fields[3] != TCP_LISTEN {
                return None;
            }
            Some(Listening {
                addr: parse_socket_addr(fields[1])?,
                inode: fields[9].parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:0016` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word of the
/// address is printed in the host's byte order, the port in big-endian hex.
fn parse_socket_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a socket listening on `existing` takes connections that a listener on `wanted`
/// would: the same port, and the same address or a wildcard on either side. An IPv6
/// wildcard takes IPv4 too unless it is IPV6_V6ONLY, which the tables do not show: it is
/// counted as a collision.
fn collides(existing: SocketAddr, wanted: SocketAddr) -> bool {
    if existing.port() != wanted.port() {
        return false;
    }
    let (a, b) = (existing.ip(), wanted.ip());
    match (a, b) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            a == b || a.is_unspecified() || b.is_unspecified()
        }
        // Mixed families meet only through an IPv6 wildcard.
        (IpAddr::V6(v6), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(v6)) => v6.is_unspecified(),
    }
}

/// The process holding socket `inode`, with its command name: the first found in
/// `/proc/PID/fd` (a socket shared after fork has several).
fn owner_of(inode: u64) -> Option<(u32, String)> {
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
        });
        if holds {
            let name = fs::read_to_string(entry.path().join("comm"))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_else(|_| "?".into());
            return Some((pid, name));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0A8C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41414 1 0000000000000000 100 0 0 10 0
   1: 0100007F:49B6 0100007F:C350 06 00000000:00000000 03:00000ED3 00000000     0        0 0 3 0000000000000000
   2: 00000000:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51515 1 0000000000000000 100 0 0 10 0
";

    const TABLE6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 61616 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 71717 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn reads_listen_sockets_and_skips_time_wait() {
        let found = listening_sockets(TABLE4);
        assert_eq!(
            found,
            vec![
                Listening {
                    addr: "127.0.0.1:2700".parse().unwrap(),
                    inode: 41414
                },
                Listening {
                    addr: "0.0.0.0:1883".parse().unwrap(),
                    inode: 51515
                },
            ]
        );
    }

    #[test]
    fn reads_ipv6_and_mapped_ipv4() {
        let found = listening_sockets(TABLE6);
        assert_eq!(found[0].addr, "[::]:8080".parse().unwrap());
        assert_eq!(found[1].addr, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn wildcards_collide_with_every_address_of_their_family_and_ipv6_with_ipv4() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(collides(at("0.0.0.0:1883"), at("127.0.0.1:1883")));
        assert!(collides(at("127.0.0.1:1883"), at("0.0.0.0:1883")));
        assert!(collides(at("127.0.0.1:1883"), at("127.0.0.1:1883")));
        assert!(!collides(at("127.0.0.1:1883"), at("127.0.0.2:1883")));
        assert!(!collides(at("127.0.0.1:1883"), at("127.0.0.1:1884")));
        assert!(collides(at("[::]:1883"), at("127.0.0.1:1883")));
        assert!(collides(at("0.0.0.0:1883"), at("[::]:1883")));
        assert!(!collides(at("[::1]:1883"), at("127.0.0.1:1883")));
    }

    #[test]
    fn finds_a_listener_of_this_process_and_names_it() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let found = listener_on(addr).expect("our own listener is in /proc/net/tcp");
        assert_eq!(found.addr, addr);
        let text = describe(&found);
        assert!(
            text.starts_with(&format!("pid {} (", std::process::id())),
            "{text}"
        );
        assert!(text.ends_with(&format!("listens on {addr}")), "{text}");
        drop(socket);
        assert_eq!(listener_on(addr), None);
    }
}
