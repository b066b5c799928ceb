//! Checks before a run that the sockets it will open fit this host: open files per process
//! (RLIMIT_NOFILE) and ephemeral ports per (source address, target) pair. A run that does
//! not fit would fail halfway with EMFILE or EADDRNOTAVAIL and blame the broker; instead it
//! stops before starting, says which limit is short and how to get past it.

use std::io;

/// Descriptors a process needs besides its device sockets: stdin/out/err, each shard's
/// io_uring rings, eventfd and timers (about 8 per shard in glommio 0.9), the Kafka
/// consumer's broker connections and wake-up pipes, the files it writes. Generous, since
/// running out halfway costs a whole run.
pub const FDS_BASE: u64 = 48;
pub const FDS_PER_SHARD: u64 = 16;

/// What this host allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// net.ipv4.ip_local_port_range, inclusive.
    pub ports_first: u16,
    pub ports_last: u16,
}

impl Limits {
    pub fn read() -> io::Result<Limits> {
        // SAFETY: getrlimit fills a plain struct.
        let mut rlimit: libc::rlimit = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
        let (ports_first, ports_last) = parse_port_range(&range).ok_or_else(|| {
            io::Error::other(format!("ip_local_port_range: cannot parse {range:?}"))
        })?;
        Ok(Limits {
            nofile_soft: rlimit.rlim_cur,
            nofile_hard: rlimit.rlim_max,
            ports_first,
            ports_last,
        })
    }

    pub fn ports_per_pair(&self) -> u64 {
        u64::from(self.ports_last) - u64::from(self.ports_first) + 1
    }
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<u16>().ok());
    let (first, last) = (fields.next()??, fields.next()??);
    (first <= last).then_some((first, last))
}

/// The sockets a run will hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Connections of the busiest process.
    pub connections_per_process: u64,
    /// Connections of all processes together (they share the port space).
    pub connections_total: u64,
    pub shards: u64,
    pub procs: u64,
    pub source_ips: u64,
    pub targets: u64,
}

impl Demand {
    pub fn fds_per_process(&self) -> u64 {
        self.connections_per_process + FDS_BASE + FDS_PER_SHARD * self.shards
    }

    /// Connections sharing one (source address, target) pair, whose ports come from one
    /// ephemeral range.
    pub fn connections_per_pair(&self) -> u64 {
        self.connections_total
            .div_ceil(self.source_ips.max(1) * self.targets.max(1))
    }
}

/// `Ok(Some(n))`: the soft open-files limit must be raised to `n` (within the hard
/// limit) first; `Err`: the run does not fit, with the reasons and fixes.
pub fn check(demand: &Demand, limits: &Limits) -> Result<Option<u64>, String> {
    let mut problems = Vec::new();
    let fds = demand.fds_per_process();
    if fds > limits.nofile_hard {
        let room = limits
            .nofile_hard
            .saturating_sub(FDS_BASE + FDS_PER_SHARD * demand.shards)
            .max(1);
        let procs = demand.connections_total.div_ceil(room);
        problems.push(format!(
            "open files: {} connections in one process need {fds} descriptors, but its hard \
             limit (RLIMIT_NOFILE) is {}. Fix: --procs {procs} (at most {room} connections \
             each), or raise the hard limit (limits.conf nofile, fs.nr_open); see tuning.md, \
             \"Open files\".",
            demand.connections_per_process, limits.nofile_hard
        ));
    }
    let ports = limits.ports_per_pair();
    let per_pair = demand.connections_per_pair();
    if per_pair > ports {
        let pairs_needed = demand.connections_total.div_ceil(ports);
        let sources_needed = pairs_needed.div_ceil(demand.targets.max(1));
        problems.push(format!(
            "ephemeral ports: {} connections over {} source address(es) x {} target(s) put \
             {per_pair} on one (source, target) pair, but net.ipv4.ip_local_port_range {} {} \
             offers {ports} ports per pair. Fix: --source-ips with {sources_needed} \
             addresses (e.g. 127.0.0.1-127.0.0.{sources_needed} on loopback), more \
             --targets (ports or addresses of the broker), or a wider \
             ip_local_port_range; see tuning.md, \"Ephemeral ports\".",
            demand.connections_total,
            demand.source_ips.max(1),
            demand.targets.max(1),
            limits.ports_first,
            limits.ports_last
        ));
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    Ok((fds > limits.nofile_soft).then_some(fds))
}

/// Raises the soft open-files limit to `target` (at most the hard limit).
pub fn raise_nofile(target: u64) -> io::Result<()> {
    // SAFETY: getrlimit/setrlimit on plain structs.
    unsafe {
        let mut rlimit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) != 0 {
            return Err(io::Error::last_os_error());
        }
        rlimit.rlim_cur = target.min(rlimit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: Limits = Limits {
        nofile_soft: 1024,
        nofile_hard: 20_000,
        ports_first: 32768,
        ports_last: 60999,
    };

    fn demand(per_process: u64, total: u64, procs: u64, sources: u64) -> Demand {
        Demand {
            connections_per_process: per_process,
            connections_total: total,
            shards: 2,
            procs,
            source_ips: sources,
            targets: 1,
        }
    }

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("5 4"), None);
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(HERE.ports_per_pair(), 28_232);
    }

    #[test]
    fn fits_and_raises_the_soft_limit() {
        // 19,000 + 48 + 2 x 16 = 19,080 descriptors: within the hard limit, above the soft.
        assert_eq!(
            check(&demand(19_000, 19_000, 1, 1), &HERE),
            Ok(Some(19_080))
        );
        assert_eq!(check(&demand(500, 500, 1, 1), &HERE), Ok(None));
    }

    #[test]
    fn too_many_files_suggests_procs() {
        let error = check(&demand(40_000, 40_000, 1, 2), &HERE).unwrap_err();
        // 20,000 - 80 = 19,920 per process: 3 processes for 40,000.
        assert!(error.contains("--procs 3"), "{error}");
        assert!(error.contains("tuning.md"), "{error}");
        assert!(!error.contains("ephemeral"), "{error}");
        assert_eq!(
            check(&demand(13_334, 40_000, 3, 2), &HERE),
            Ok(Some(13_414))
        );
    }

    #[test]
    fn too_few_ports_suggests_source_addresses() {
        // 60,000 over one pair of 28,232 ports: 3 source addresses.
        let error = check(&demand(15_000, 60_000, 4, 1), &HERE).unwrap_err();
        assert!(error.contains("--source-ips with 3 addresses"), "{error}");
        assert!(error.contains("127.0.0.1-127.0.0.3"), "{error}");
        assert!(check(&demand(15_000, 60_000, 4, 3), &HERE).is_ok());
        let two_targets = Demand {
            targets: 2,
            ..demand(15_000, 60_000, 4, 2)
        };
        assert_eq!(two_targets.connections_per_pair(), 15_000);
        assert!(check(&two_targets, &HERE).is_ok());
    }
}
