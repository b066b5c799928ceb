//! Starting the broker: one shard per CPU, each with its listeners, its inbox from the
//! other shards, `$SYS` statistics and an orderly stop on SIGINT/SIGTERM.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{error, info, warn};

use crate::auth::AuthStore;
use crate::bridge::health;
use crate::bridge::mapping::Mappings;
use crate::bridge::producer::{is_refused_for_good, KafkaProducer};
use crate::bridge::settings::ClusterSettings;
use crate::bridge::shard_bridge::{self, PendingAck, RefusedReason, ShardBridge};
use crate::config::{BatchingConfig, BrokerConfig, Config, KafkaConfig, OnRefused, SpoolConfig};
use crate::metrics::{self, Board, MappingLabel, ShardSnapshot, SpoolSnapshot};
use crate::protocol::{MqttStr, Packet, PubAck, PubRec, PublishProperties, QoS, ReasonCode};
use crate::runtime::{self, ShardEnv};
use crate::spool::log::{self as spool_log, SpoolLog};
use crate::tls::TlsListener;

use super::connect::{accept_loop, serve};
use super::message::Message;
use super::router;
use super::shard::{Shard, ShardContext, ShardRef};
use super::shard_message::ShardMessage;
use super::stats::{ShardStats, StatsSnapshot};

/// How often a shard checks whether a stop was requested.
const SHUTDOWN_POLL_MS: u64 = 50;
/// Time given to connections to flush their DISCONNECT before the shards exit.
const SHUTDOWN_FLUSH_MS: u64 = 300;

/// Runs the broker until SIGINT or SIGTERM, without reloading Kafka settings on SIGHUP.
pub fn run(config: Config) -> io::Result<()> {
    run_with_reload(config, None)
}

/// Reads the configuration again (SIGHUP): the file, with its `${env:}`/`${file:}` values.
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send>;

/// Runs the broker until SIGINT or SIGTERM. SIGHUP reads the password and ACL files again
/// and, with `reload`, the Kafka clusters' settings.
pub fn run_with_reload(config: Config, reload: Option<Reload>) -> io::Result<()> {
    let allowed = runtime::affinity_cpus()?;
    let cpus = match &config.broker.cores {
        Some(cores) => {
            if let Some(cpu) = cores.iter().find(|c| !allowed.contains(c)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("broker.cores: CPU {cpu} is not in this process's affinity mask {allowed:?}"),
                ));
            }
            cores.clone()
        }
        None => allowed,
    };
    let listeners = resolve_listeners(&config)?;
    let auth = Arc::new(
        AuthStore::load(config.auth.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("auth: {e}")))?,
    );
    let settings = Arc::new(ClusterSettings::new(&config));
    reload_on_sighup(auth.clone(), settings.clone(), reload)?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutting_down.clone())?;
    }
    let kafka = start_kafka_producers(&config, &settings, cpus.len())?;
    let board = Arc::new(metrics_board(&config, &settings, cpus.len())?);
    let metrics_addr = match config.broker.metrics_bind {
        Some(addr) => Some(metrics::serve(addr, board.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("broker.metrics_bind: cannot listen on {addr}: {e}"),
            )
        })?),
        None => None,
    };
    // Logged once every setting has been checked: a config error stays the only line.
    let open_files = raise_open_files_limit(config.broker.connections_max, cpus.len());
    announce_listeners(&listeners, &cpus);
    if let Some(shortfall) = open_files {
        shortfall.log(config.broker.connections_max);
    }
    if let Some(addr) = metrics_addr {
        info!(addr = %addr, "metrics on http://{addr}/metrics");
    }
    let kafka = Arc::new(Mutex::new(kafka.into_iter().map(Some).collect::<Vec<_>>()));
    let shard_config = Arc::new(ShardConfig {
        settings,
        broker: config.broker.clone(),
        kafka: config.kafka.clone(),
        batching: config.batching.clone(),
        spool: config.spool.clone(),
        auth,
    });
    let connections_open = Arc::new(AtomicUsize::new(0));
    let result = runtime::run_shards(
        &cpus,
        config.broker.inter_shard_channel_capacity,
        move |env: ShardEnv<ShardMessage>| {
            // Each shard takes one set of producers; which one does not matter.
            let producers = kafka
                .lock()
                .expect("producer sets")
                .iter_mut()
                .find_map(Option::take)
                .expect("one producer set per shard");
            shard_main(
                env,
                shard_config.clone(),
                board.clone(),
                producers,
                listeners.clone(),
                connections_open.clone(),
                shutting_down.clone(),
            )
        },
    );
    result?;
    info!("stopped");
    Ok(())
}

/// Logs each listener. The same lines go to stdout, unless it is the same file as stderr
/// (a terminal, `2>&1`): programs that start the broker wait for its first line there.
fn announce_listeners(listeners: &[Listener], cpus: &[usize]) {
    let to_stdout = !stdout_is_stderr();
    for (addr, tls) in listeners {
        let shards = cpus.len();
        let suffix = if tls.is_some() { " (TLS)" } else { "" };
        let line = format!("listening on {addr}{suffix} with {shards} shards (CPUs {cpus:?})");
        info!(addr = %addr, tls = tls.is_some(), shards, cpus = ?cpus, "{line}");
        if to_stdout {
            println!("ferrymq: {line}");
        }
    }
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
fn raise_open_files_limit(connections_max: usize, shards: usize) -> Option<OpenFilesShortfall> {
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
struct OpenFilesShortfall {
    limit: u64,
    /// Connections the limit leaves room for.
    connections: u64,
    /// The limit `connections_max` needs.
    needed: u64,
}

impl OpenFilesShortfall {
    /// One line, after the listeners: a warning when `connections_max` was asked for, only
    /// information when it is the default (which assumes a generous limit).
    fn log(&self, connections_max: usize) {
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
fn stdout_is_stderr() -> bool {
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
fn reload_on_sighup(
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

/// The metrics board, with a Kafka probe per cluster.
fn metrics_board(
    config: &Config,
    settings: &Arc<ClusterSettings>,
    shard_count: usize,
) -> io::Result<Board> {
    let mut kafka_up = Vec::new();
    for (index, name) in config.kafka.clusters.keys().enumerate() {
        let up = health::spawn_probe(name, index, settings.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("kafka.clusters.{name}.config: {}", settings.scrub(&e)),
            )
        })?;
        kafka_up.push(up);
    }
    let mappings = config
        .kafka
        .mappings
        .iter()
        .map(|m| MappingLabel {
            mqtt: m.mqtt.clone(),
            cluster: config.kafka.cluster_of(m).unwrap_or_default().to_string(),
            on_refused: m.on_refused,
        })
        .collect();
    Ok(Board::new(
        shard_count,
        config.kafka.clusters.keys().cloned().collect(),
        mappings,
        kafka_up,
    ))
}

/// How often a shard leaves its snapshot on the metrics board.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

async fn metrics_loop(shard: ShardRef) {
    loop {
        runtime::sleep(METRICS_INTERVAL).await;
        // New Kafka settings from SIGHUP are put in force here, within a second.
        shard.bridge.borrow_mut().follow_settings();
        let bridge = shard.bridge.borrow();
        let (mappings, clusters) = bridge.snapshot();
        let spool = bridge.spool().map(|log| {
            let log = log.borrow();
            SpoolSnapshot {
                bytes: log.bytes(),
                records_unacked: log.records_unacked(),
                oldest_unacked_secs: log
                    .oldest_unacked_age(Instant::now())
                    .map_or(0.0, |age| age.as_secs_f64()),
                flush_latency_us: shard.spool_stats.flush_latency_us.borrow().clone(),
                append_latency_us: shard.spool_stats.append_latency_us.borrow().clone(),
                replayed: shard.spool_stats.replayed.get(),
                write_errors: shard.spool_stats.write_errors.get(),
            }
        });
        let (queued, inflight, writing) = shard.state.borrow().queue_totals();
        shard.stats.session_queued_messages.set(queued);
        shard.stats.inflight_messages.set(inflight);
        shard.stats.connection_queued_packets.set(writing);
        let snapshot = ShardSnapshot {
            spool,
            stats: shard.stats.snapshot(),
            mappings,
            clusters,
            dropped_qos0_ring_full: bridge.dropped_qos0_ring_full,
            pending_acks: bridge.pending_count() as u64,
            // This loop runs on the shard's thread: its CPU time is the shard's.
            busy_seconds: metrics::thread_cpu_seconds(),
        };
        drop(bridge);
        shard.board.publish(shard.id, snapshot);
    }
}

/// What every shard is configured with.
struct ShardConfig {
    settings: Arc<ClusterSettings>,
    broker: BrokerConfig,
    kafka: KafkaConfig,
    batching: BatchingConfig,
    spool: SpoolConfig,
    auth: Arc<AuthStore>,
}

/// The producers of one shard (one per cluster) and the wake-up their delivery reports use.
struct ShardProducers {
    producers: Vec<KafkaProducer>,
    reports: runtime::WakeEnd,
}

/// Makes one producer per (shard, cluster), on this unpinned thread so that librdkafka's
/// threads are not pinned to a shard's CPU.
fn start_kafka_producers(
    config: &Config,
    settings: &ClusterSettings,
    shard_count: usize,
) -> io::Result<Vec<ShardProducers>> {
    let mut sets = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let (wake, wake_end) = runtime::cross_thread_wake()?;
        let mut producers = Vec::new();
        for (index, name) in config.kafka.clusters.keys().enumerate() {
            let client = settings.producer_config(index);
            let producer =
                KafkaProducer::create(format!("kafka-{name}-{shard}"), client, wake.try_clone()?)
                    .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("kafka.clusters.{name}.config: {}", settings.scrub(&e)),
                    )
                })?;
            producers.push(producer);
        }
        sets.push(ShardProducers {
            producers,
            reports: wake_end,
        });
    }
    Ok(sets)
}

/// A listener as every shard binds it: its address, and its TLS setup for a TLS listener.
type Listener = (SocketAddr, Option<Arc<TlsListener>>);

/// Port 0 means "any free port"; every shard must bind the same one, so it is chosen once
/// here. TLS listeners read their certificate and key files here, once for all shards; a
/// file that cannot be used is a config error naming the key and the file.
fn resolve_listeners(config: &Config) -> io::Result<Vec<Listener>> {
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

async fn shard_main(
    mut env: ShardEnv<ShardMessage>,
    shard_config: Arc<ShardConfig>,
    board: Arc<Board>,
    producers: ShardProducers,
    listeners: Vec<Listener>,
    connections_open: Arc<AtomicUsize>,
    shutting_down: Arc<AtomicBool>,
) {
    let config = Rc::new(shard_config.broker.clone());
    let stats = Rc::new(ShardStats::default());
    let mappings = Mappings::new(&shard_config.kafka).expect("validated with the config");
    let mut bridge = ShardBridge::new(
        mappings,
        producers.producers,
        shard_config.batching.clone(),
        shard_config.settings.clone(),
    );
    let spool = if bridge.has_durable_mappings() {
        match open_spool(&shard_config.spool, env.shard_id, env.shard_count).await {
            Ok(spool) => {
                bridge.attach_spool(
                    spool.clone(),
                    shard_config.spool.max_bytes,
                    shard_config.spool.when_full,
                );
                Some(spool)
            }
            Err(error) => {
                let data_dir = shard_config.spool.data_dir.display();
                error!(
                    shard = env.shard_id,
                    data_dir = %data_dir,
                    error = %error,
                    "spool.data_dir: cannot open the spool of shard {} in {data_dir}: {error}",
                    env.shard_id,
                );
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let receivers = runtime::take_receivers(&mut env.receivers);
    let shard: ShardRef = Rc::new(ShardContext {
        id: env.shard_id,
        count: env.shard_count,
        config: config.clone(),
        stats: stats.clone(),
        senders: env.senders,
        state: RefCell::new({
            let mut state = Shard::new(env.shard_id, env.shard_count, config.clone(), stats);
            state.set_auth(shard_config.auth.clone());
            state
        }),
        interest_acks: RefCell::new(HashMap::new()),
        next_ack_id: Cell::new(1),
        remote_stats: RefCell::new(vec![StatsSnapshot::default(); env.shard_count]),
        connections_open,
        shutting_down: shutting_down.clone(),
        started_at: Instant::now(),
        bridge: RefCell::new(bridge),
        bridge_activity: runtime::Signal::new(),
        backlog_waiters: runtime::WaitList::default(),
        spool_activity: runtime::Signal::new(),
        spool_feed: runtime::Signal::new(),
        spool_stats: Default::default(),
        board,
    });
    runtime::spawn(metrics_loop(shard.clone()));
    if let Some(spool) = spool {
        runtime::spawn(spool_flush_loop(
            shard.clone(),
            spool.clone(),
            shard_config.spool.clone(),
        ));
        runtime::spawn(spool_feed_loop(shard.clone(), spool));
    }
    runtime::spawn(kafka_reports_loop(
        shard.clone(),
        producers.reports.listen(),
    ));
    runtime::spawn(kafka_linger_loop(shard.clone()));
    for (addr, tls) in listeners {
        match runtime::bind(addr) {
            Ok(listener) => runtime::spawn(accept_loop(shard.clone(), listener, tls)),
            Err(error) => {
                error!(
                    addr = %addr,
                    error = %error,
                    "listener.bind: cannot listen on {addr}: {error}"
                );
                std::process::exit(1);
            }
        }
    }
    for (_, receiver) in receivers {
        let shard = shard.clone();
        runtime::spawn(async move {
            while let Some(message) = receiver.recv().await {
                on_shard_message(&shard, message);
                // Subscribers here that fall behind hold this inbox (bounded): the channel
                // from the publishing shard fills and that shard stops reading its
                // publishers, so QoS 1/2 wait instead of piling up.
                let congested = shard.state.borrow_mut().take_congested();
                router::slow_down_for(&shard, congested).await;
            }
        });
    }
    if config.sys_interval_secs > 0 {
        runtime::spawn(sys_loop(shard.clone()));
    }
    while !shutting_down.load(Ordering::Relaxed) {
        runtime::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    // [MQTT-3.14.0-?]: tell 5.0 clients why they are dropped.
    for connection in shard.state.borrow().connections() {
        connection.close(Some(ReasonCode::ServerShuttingDown));
    }
    runtime::sleep(Duration::from_millis(SHUTDOWN_FLUSH_MS)).await;
    // Deliver what the producers still hold (for at most a few seconds) before the process
    // ends; this shard serves nothing else now.
    let producers = shard.bridge.borrow_mut().take_producers();
    for producer in producers {
        producer.close(PRODUCER_STOP_FLUSH);
    }
}

/// How long a stopping broker waits for Kafka to take what its producers hold.
const PRODUCER_STOP_FLUSH: Duration = Duration::from_secs(5);

fn on_shard_message(shard: &ShardRef, message: ShardMessage) {
    let now = Instant::now();
    match message {
        ShardMessage::Handoff {
            stream,
            connect,
            buffered,
            assigned_client_id,
            cert_identity,
        } => {
            let stream = runtime::share(runtime::adopt_stream(stream));
            runtime::spawn(serve(
                shard.clone(),
                stream,
                connect,
                buffered,
                assigned_client_id,
                cert_identity,
            ));
        }
        ShardMessage::Publish(message) => {
            shard
                .state
                .borrow_mut()
                .deliver_local(&Rc::new(message), now);
        }
        ShardMessage::SharedPublish { group, message } => {
            shard
                .state
                .borrow_mut()
                .deliver_shared(&Rc::new(message), &group, now);
        }
        ShardMessage::Interest {
            from,
            filter,
            added,
            ack_id,
        } => {
            shard
                .state
                .borrow_mut()
                .apply_interest(from, &filter, added);
            if let Some(ack_id) = ack_id {
                // Answer from a task of its own: the inbox loop never waits on a channel,
                // so two shards acknowledging each other cannot deadlock.
                let shard = shard.clone();
                runtime::spawn(async move {
                    let _ = shard
                        .senders
                        .send(from, ShardMessage::InterestAck { ack_id })
                        .await;
                });
            }
        }
        ShardMessage::InterestAck { ack_id } => router::interest_acked(shard, ack_id),
        ShardMessage::Retained(message) => {
            shard.state.borrow_mut().set_retained(&Rc::new(message));
        }
        ShardMessage::Stats { from, snapshot } => {
            shard.remote_stats.borrow_mut()[from] = snapshot;
        }
    }
}

/// Opens this shard's spool, replaying its own segments and those of shards that no
/// longer exist (`shard-J` with J ≥ the shard count goes to shard J mod count).
async fn open_spool(
    config: &SpoolConfig,
    shard_id: usize,
    shard_count: usize,
) -> io::Result<Rc<RefCell<SpoolLog>>> {
    let own = config.data_dir.join(format!("shard-{shard_id}"));
    std::fs::create_dir_all(&own)?;
    lock_directory(&own)?;
    let mut replay = vec![own.clone()];
    if let Ok(entries) = std::fs::read_dir(&config.data_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_prefix("shard-"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if number >= shard_count && number % shard_count == shard_id {
                replay.push(entry.path());
            }
        }
    }
    let (log, cuts) = spool_log::open(&own, &replay, config.segment_bytes).await?;
    for cut in &cuts {
        let path = cut.path.display();
        warn!(
            shard = shard_id,
            path = %path,
            offset = cut.offset,
            bytes_cut = cut.bytes_cut,
            reason = %cut.reason,
            "spool: cut {} damaged bytes at offset {} of {path} ({}); the records before it are kept",
            cut.bytes_cut,
            cut.offset,
            cut.reason
        );
    }
    let unacked = log.records_unacked();
    if unacked > 0 {
        info!(
            shard = shard_id,
            records = unacked,
            "spool of shard {shard_id}: replaying {unacked} records to Kafka"
        );
    }
    Ok(Rc::new(RefCell::new(log)))
}

/// Takes an exclusive lock on `dir` for the life of the process: two brokers appending to
/// one spool would corrupt it.
fn lock_directory(dir: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is locked: another ferrymq uses this spool",
                path.display()
            ),
        ));
    }
    // Held until the process exits.
    std::mem::forget(file);
    Ok(())
}

/// Group commit: waits up to `sync_us` (or until `sync_bytes` wait), writes and syncs, then
/// acknowledges the records the flush made durable and wakes the feeder.
async fn spool_flush_loop(shard: ShardRef, spool: Rc<RefCell<SpoolLog>>, config: SpoolConfig) {
    let window = Duration::from_micros(config.sync_us);
    loop {
        if !shard.spool_activity.wait().await {
            return;
        }
        loop {
            let pending = spool.borrow().pending_bytes();
            if pending == 0 {
                break;
            }
            if pending < config.sync_bytes && !window.is_zero() {
                runtime::sleep(window).await;
            }
            let started = Instant::now();
            match spool_log::flush(&spool).await {
                Ok(Some(flushed)) => {
                    shard.spool_stats.record_flush(started.elapsed());
                    let completed = shard.bridge.borrow_mut().spool_flushed(
                        flushed.last_seq,
                        Instant::now(),
                        &shard.spool_stats,
                    );
                    for done in completed {
                        acknowledge_pending(&shard, done.ack);
                    }
                    shard.spool_feed.notify();
                }
                Ok(None) => {}
                Err(error) => {
                    // Disk full or failing: say so, count it, hold the acknowledgements
                    // (publishers wait) and try again.
                    shard
                        .spool_stats
                        .write_errors
                        .set(shard.spool_stats.write_errors.get() + 1);
                    // One line per retry, at most every SPOOL_RETRY.
                    error!(
                        shard = shard.id,
                        error = %error,
                        "spool of shard {}: write failed: {error}; retrying",
                        shard.id
                    );
                    runtime::sleep(SPOOL_RETRY).await;
                }
            }
            if let Err(error) = spool_log::rotate_if_full(&spool).await {
                shard
                    .spool_stats
                    .write_errors
                    .set(shard.spool_stats.write_errors.get() + 1);
                error!(
                    shard = shard.id,
                    error = %error,
                    "spool of shard {}: new segment failed: {error}",
                    shard.id
                );
                runtime::sleep(SPOOL_RETRY).await;
            }
        }
    }
}

/// Pause before retrying a failed spool write or read.
const SPOOL_RETRY: Duration = Duration::from_millis(100);
/// How often the feeder looks again when its rings were full.
const SPOOL_FEED_POLL: Duration = Duration::from_millis(5);

/// Reads durable records back from the spool, oldest first, into the Kafka producers;
/// stops while one is full. Deletes segments Kafka has every record of.
async fn spool_feed_loop(shard: ShardRef, spool: Rc<RefCell<SpoolLog>>) {
    loop {
        // Woken by flushes; polls while producers are full or segments wait for deletion.
        let _ = runtime::timeout(SPOOL_FEED_POLL * 20, shard.spool_feed.wait()).await;
        loop {
            let done = std::mem::take(&mut shard.bridge.borrow_mut().spool_done_segments);
            let freed = !done.is_empty();
            for segment in done {
                drop(segment.file);
                let _ = std::fs::remove_file(&segment.path);
            }
            if freed {
                wake_backlogged_publishers(&shard);
            }
            if !shard
                .bridge
                .borrow_mut()
                .drain_spool_backlog(Instant::now())
            {
                // A producer is full and records are held: only the linger loop retries, and
                // with no publisher left to wake that loop nothing else would.
                shard.bridge_activity.notify();
                runtime::sleep(SPOOL_FEED_POLL).await;
                continue;
            }
            match spool_log::read_back(&spool).await {
                Ok(read) if read.records.is_empty() => break,
                Ok(read) => {
                    let count = read.records.len() as u64;
                    shard
                        .spool_stats
                        .replayed
                        .set(shard.spool_stats.replayed.get() + count);
                    let timer_wanted = {
                        let mut bridge = shard.bridge.borrow_mut();
                        bridge.feed_spooled(read.records, Instant::now());
                        bridge.take_timer_wanted()
                    };
                    if timer_wanted {
                        // A replayed batch found its producer full: the linger loop retries.
                        shard.bridge_activity.notify();
                    }
                }
                Err(error) => {
                    error!(
                        shard = shard.id,
                        error = %error,
                        "spool of shard {}: read failed: {error}",
                        shard.id
                    );
                    runtime::sleep(SPOOL_RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Turns Kafka delivery reports into PUBACK/PUBREC as they arrive.
async fn kafka_reports_loop(shard: ShardRef, mut reports: runtime::WakeListener) {
    while reports.wait().await {
        let (completed, timer_wanted) = {
            let mut bridge = shard.bridge.borrow_mut();
            let completed = bridge.drain_reports(Instant::now());
            (completed, bridge.take_timer_wanted())
        };
        if timer_wanted {
            // A dead letter opened a batch: the linger loop sends it.
            shard.bridge_activity.notify();
        }
        for done in completed {
            acknowledge_pending(&shard, done.ack);
        }
        wake_backlogged_publishers(&shard);
    }
}

/// Wakes the publishers held back by a full producer or spool once neither is full. (One
/// whose topic's producer has room while another cluster's is still full finds out at its
/// next look, within `BACKLOG_RECHECK`.)
fn wake_backlogged_publishers(shard: &ShardRef) {
    if shard.backlog_waiters.waiting() > 0 && !shard.bridge.borrow().is_backlogged() {
        shard.backlog_waiters.wake_all();
    }
}

/// Sends the PUBACK/PUBREC of a PUBLISH whose records are safe (in Kafka or the spool).
fn acknowledge_pending(shard: &ShardRef, ack: PendingAck) {
    let connection = &ack.connection;
    let reason = match ack.error {
        None => ReasonCode::Success,
        // 3.1.1 has no way to say "refused": Kafka will refuse the same message again, so
        // the client gets its PUBACK (the record is counted as refused and dropped) rather
        // than publishing it again after every reconnect, for ever.
        Some(code) if !connection.protocol.is_v5() && is_refused_for_good(code) => {
            ReasonCode::Success
        }
        // Any other failure (a producer's fatal error): close without an ack, so the
        // client publishes again after reconnecting.
        Some(_) if !connection.protocol.is_v5() => {
            connection.close(None);
            return;
        }
        Some(code) => shard_bridge::failure_reason(code),
    };
    match ack.qos {
        QoS::AtLeastOnce => {
            connection.send(Packet::PubAck(PubAck::with_reason(ack.packet_id, reason)))
        }
        QoS::ExactlyOnce => {
            if reason.is_error() {
                // A PUBREC with an error ends the exchange: no PUBREL will come.
                if let Some(session) = shard.state.borrow_mut().session(&ack.client_id) {
                    session.inbound_qos2.remove(&ack.packet_id);
                }
            }
            connection.send(Packet::PubRec(PubRec::with_reason(ack.packet_id, reason)));
        }
        QoS::AtMostOnce => {}
    }
}

/// Sends each Kafka batch when its lane's linger has passed since its first record (at
/// most `linger_us`), and retries records that found their producer full. Sleeps while no
/// batch is open or held: the bridge asks for it (`take_timer_wanted`) when one opens.
async fn kafka_linger_loop(shard: ShardRef) {
    let tick_min = Duration::from_micros(LINGER_TICK_US_MIN);
    while shard.bridge_activity.wait().await {
        loop {
            let now = Instant::now();
            // Bound here, not in a `while let`: that borrow would last across the sleep.
            let due = shard.bridge.borrow_mut().tick(now);
            wake_backlogged_publishers(&shard);
            let Some(due) = due else { break };
            runtime::sleep(due.saturating_duration_since(now).max(tick_min)).await;
        }
    }
}

/// The finest linger timer we run: below this, timer wake-ups cost more than they save.
const LINGER_TICK_US_MIN: u64 = 100;

/// Every `sys_interval_secs`, shards send their counters to shard 0, which publishes the
/// sums as retained `$SYS/broker/...` messages.
async fn sys_loop(shard: ShardRef) {
    let interval = Duration::from_secs(shard.config.sys_interval_secs.into());
    loop {
        runtime::sleep(interval).await;
        let snapshot = shard.stats.snapshot();
        if shard.id != 0 {
            let message = ShardMessage::Stats {
                from: shard.id,
                snapshot,
            };
            let _ = shard.senders.send(0, message).await;
            continue;
        }
        shard.remote_stats.borrow_mut()[0] = snapshot;
        let mut total = StatsSnapshot::default();
        for other in shard.remote_stats.borrow().iter() {
            total.add(other);
        }
        let uptime = shard.started_at.elapsed().as_secs();
        let mut topics = vec![
            (
                "$SYS/broker/version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (
                "$SYS/broker/uptime".to_string(),
                format!("{uptime} seconds"),
            ),
            ("$SYS/broker/shards".to_string(), shard.count.to_string()),
        ];
        let kafka = shard.board.totals();
        for (index, name) in shard.board.cluster_names.iter().enumerate() {
            let (in_ring, in_librdkafka, latency) = &kafka.clusters[index];
            let up = shard.board.kafka_up[index].load(Ordering::Relaxed);
            let prefix = format!("$SYS/broker/kafka/clusters/{name}");
            topics.push((format!("{prefix}/up"), u8::from(up).to_string()));
            topics.push((format!("{prefix}/records_in_ring"), in_ring.to_string()));
            topics.push((
                format!("{prefix}/records_in_librdkafka"),
                in_librdkafka.to_string(),
            ));
            for (label, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
                topics.push((
                    format!("{prefix}/delivery_latency_us/{label}"),
                    latency.value_at_quantile(quantile).to_string(),
                ));
            }
        }
        for (index, counters) in kafka.mappings.iter().enumerate() {
            let prefix = format!("$SYS/broker/kafka/mappings/{index}");
            topics.push((format!("{prefix}/matched"), counters.matched.to_string()));
            topics.push((format!("{prefix}/produced"), counters.produced.to_string()));
            topics.push((
                format!("{prefix}/acknowledged"),
                counters.acknowledged.to_string(),
            ));
            topics.push((format!("{prefix}/failed"), counters.failed.to_string()));
            topics.push((
                format!("{prefix}/dropped_ring_full"),
                counters.dropped_ring_full.to_string(),
            ));
            topics.push((
                format!("{prefix}/dead_lettered"),
                counters.dead_lettered.to_string(),
            ));
            // Records refused for good: one topic per reason and what became of them.
            for reason in RefusedReason::ALL {
                for action in OnRefused::ALL {
                    let count = counters.refused[reason as usize][action.index()];
                    if count > 0 {
                        topics.push((
                            format!("{prefix}/refused/{}/{}", reason.as_str(), action.as_str()),
                            count.to_string(),
                        ));
                    }
                }
            }
        }
        for (name, value) in total.fields() {
            topics.push((
                format!("$SYS/broker/{}", name.replacen('_', "/", 1)),
                value.to_string(),
            ));
        }
        for (topic, value) in topics {
            let message = Message {
                topic: MqttStr::from(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                publisher: MqttStr::from_static("$SYS"),
                expires_at: None,
            };
            router::publish(&shard, message).await;
        }
    }
}
