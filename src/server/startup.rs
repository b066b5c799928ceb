//! What the process sets up before the shards start: the listeners (chosen once for all
//! shards), the open-files limit, the SIGHUP reload thread, the first lines on stdout.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use crate::auth::AuthStore;
use crate::bridge::settings::ClusterSettings;
use crate::config::{BrokerConfig, Config};
use crate::tls::TlsListener;

use super::Reload;

/// A listener as every shard binds it: its address, and its TLS setup for a TLS listener.
pub(super) type Listener = (SocketAddr, Option<Arc<TlsListener>>);

/// Port 0 means "any free port"; every shard must bind the same one, so it is chosen once
/// here. TLS listeners read their certificate and key files here, once for all shards; a
/// file that cannot be used is a config error naming the key and the file.
pub(super) fn resolve_listeners(config: &Config) -> io::Result<Vec<Listener>> {
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(index, listener)| {
            let requested = listener.bind;
            let cannot = |what: String| {
                format!("listener[{index}].bind: cannot listen on {requested}: {what}")
            };
            // Only a real listener stops us: the shards' SO_REUSEPORT would join another
            // process's (crate::port_owner says why a trial bind cannot tell).
            if let Some(listening) = crate::port_owner::listener_on(requested) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    cannot(format!(
                        "{} (ferrymq shares a port only among its own shards)",
                        crate::port_owner::describe(&listening)
                    )),
                ));
            }
            // A trial bind as the shards will bind, for the other errors (an address this
            // host does not have, a privileged port) and to choose port 0 once for all.
            let addr = crate::port_owner::trial_bind(requested)
                .map_err(|error| io::Error::new(error.kind(), cannot(error.to_string())))?;
            let tls = crate::tls::listener(index, listener, addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                .map(Arc::new);
            Ok((addr, tls))
        })
        .collect()
}

/// Descriptors the broker holds besides its connections: listeners, io_uring rings and
/// eventfds per shard (7 per shard and 3 more, measured without Kafka), the spool's segment
/// files, librdkafka's sockets and pipes per producer. An estimate with room to spare;
/// connections are the part that grows.
const FDS_BASE: u64 = 64;
const FDS_PER_SHARD: u64 = 32;

/// Raises the soft open-files limit as far as `connections_max` needs (each connection is
/// one descriptor) and the hard limit allows. Returns what falls short when the limit
/// holds fewer connections than `connections_max`: beyond it accepts fail (counted in
/// `accept_errors`) while clients wait in the listen backlog.
pub(super) fn raise_open_files_limit(
    connections_max: usize,
    shards: usize,
) -> Option<OpenFilesShortfall> {
    let overhead = FDS_BASE + FDS_PER_SHARD * shards as u64;
    let needed = connections_max as u64 + overhead;
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let wanted = needed.min(limit.rlim_max);
    if wanted > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    (limit.rlim_cur < needed).then(|| OpenFilesShortfall {
        limit: limit.rlim_cur,
        connections: limit.rlim_cur.saturating_sub(overhead),
        needed,
    })
}

/// The open-files limit holds fewer connections than `connections_max`.
#[derive(Clone, Copy)]
pub(super) struct OpenFilesShortfall {
    limit: u64,
    /// Connections the limit leaves room for.
    connections: u64,
    /// The limit `connections_max` needs.
    needed: u64,
}

impl OpenFilesShortfall {
    /// One line, after the listeners: a warning when `connections_max` was asked for, only
    /// information when it is the default (which assumes a generous limit).
    pub(super) fn log(&self, connections_max: usize) {
        let OpenFilesShortfall {
            limit,
            connections,
            needed,
        } = *self;
        let line = format!(
            "open files: the limit of {limit} descriptors (RLIMIT_NOFILE) holds about \
             {connections} connections, fewer than broker.connections_max = {connections_max}; \
             raise ulimit -n (LimitNOFILE=) and fs.nr_open to {needed} (tuning.md, \"Open files\")"
        );
        if connections_max == BrokerConfig::default().connections_max {
            info!(open_files_limit = limit, connections_max, "{line}");
        } else {
            warn!(open_files_limit = limit, connections_max, "{line}");
        }
    }
}

/// Whether file descriptors 1 and 2 are the same file.
pub(super) fn stdout_is_stderr() -> bool {
    let identity = |fd| {
        // SAFETY: fstat writes into the zeroed struct we own.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some((stat.st_dev, stat.st_ino))
    };
    matches!((identity(1), identity(2)), (Some(out), Some(err)) if out == err)
}

/// SIGHUP reads the password and ACL files again, without dropping anyone: each shard
/// decides with the new snapshot from its next decision on, connected clients included. A
/// file with an error keeps the files loaded before in force, and the log says which line.
/// With `reload`, it also reads the configuration again and puts the Kafka clusters' new
/// settings in force (shards and probes pick them up within a second); a configuration
/// with an error, or with other clusters, keeps the settings in force.
pub(super) fn reload_on_sighup(
    auth: Arc<AuthStore>,
    settings: Arc<ClusterSettings>,
    reload: Option<Reload>,
) -> io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("ferrymq-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                match auth.reload() {
                    Ok(snapshot) => {
                        let generation = snapshot.generation();
                        info!(
                            generation,
                            "SIGHUP: password and ACL files reloaded (generation {generation})"
                        );
                    }
                    Err(e) => warn!(
                        error = %e,
                        "SIGHUP: reload failed, the files loaded before stay in force: {e}"
                    ),
                }
                let Some(reload) = &reload else { continue };
                match reload().and_then(|config| settings.reload(&config)) {
                    Ok(changed) if changed.is_empty() => {
                        info!("SIGHUP: Kafka cluster settings unchanged")
                    }
                    Ok(changed) => {
                        let changed = changed.join(", ");
                        info!(clusters = %changed, "SIGHUP: new settings for Kafka clusters {changed}")
                    }
                    Err(e) => warn!(
                        error = %e,
                        "SIGHUP: Kafka cluster settings not reloaded, those in force stay: {e}"
                    ),
                }
            }
        })?;
    Ok(())
}
