//! Starts the broker: checks what the process needs, starts one shard per CPU, and wires
//! each shard's parts together (its broker state, its Kafka bridge, its listeners, its
//! inboxes, its telemetry). Nothing here runs per message.
//!
//! May import every module: this is the top of the dependency order.

mod startup;
mod telemetry;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::auth::AuthStore;
use crate::bridge::mapping::Mappings;
use crate::bridge::settings::ClusterSettings;
use crate::bridge::source::{self, SourceInbox, SourceThread};
use crate::bridge::{self, Bridge, BridgeParts, ShardProducers};
use crate::broker;
use crate::broker::cluster::ShardCluster;
use crate::broker::context::{ShardContext, ShardRef};
use crate::broker::shard::Shard;
use crate::broker::shard_message::ShardMessage;
use crate::broker::{accept_loop, acknowledge_deferred, inbox, ingress};
use crate::cluster;
use crate::config::{BatchingConfig, BrokerConfig, Config, KafkaConfig, SpoolConfig};
use crate::metrics::stats::{ShardStats, StatsSnapshot};
use crate::metrics::{self, Board, SourceMetrics};
use crate::protocol::ReasonCode;
use crate::runtime::{self, ShardEnv, WakeEnd};

use startup::Listener;

/// How often a shard checks whether a stop was requested.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// Time given to connections to flush their DISCONNECT before the shards exit.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(300);
/// How long a stopping broker waits for its Kafka sources' last commits before it closes
/// its connections.
const SOURCES_STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a stopping broker waits for Kafka to take what its producers hold.
const PRODUCER_STOP_FLUSH: Duration = Duration::from_secs(5);

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
    let listeners = startup::resolve_listeners(&config)?;
    let auth = Arc::new(
        AuthStore::load(config.auth.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("auth: {e}")))?,
    );
    let settings = Arc::new(ClusterSettings::new(&config));
    startup::reload_on_sighup(auth.clone(), settings.clone(), reload)?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutting_down.clone())?;
    }
    let kafka = bridge::start_producers(&config, &settings, cpus.len())?;
    let mut source_metrics: Vec<Arc<SourceMetrics>> = config
        .kafka
        .sources
        .iter()
        .map(|source| {
            let cluster = config.kafka.source_cluster(source).unwrap_or_default();
            Arc::new(SourceMetrics::new(&source.name, cluster))
        })
        .collect();
    // A node of a cluster knows the cluster's state before it listens.
    let cluster = cluster::start(&config, cpus.len()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            config
                .shown_error(crate::config::ConfigError::new(e))
                .to_string(),
        )
    })?;
    let cluster_source_metrics = cluster::messages_source(&config).map(|source| {
        let metrics = Arc::new(SourceMetrics::new(
            &source.name,
            source.cluster.as_deref().unwrap_or_default(),
        ));
        source_metrics.push(metrics.clone());
        metrics
    });
    let board = Arc::new(
        telemetry::metrics_board(&config, &settings, cpus.len())?
            .with_sources(source_metrics.clone())
            .with_cluster(cluster.as_ref().map(|c| c.node.metrics.clone())),
    );
    let source_ends = SourceEnds::new(&config, cpus.len())?;
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
    let open_files = startup::raise_open_files_limit(config.broker.connections_max, cpus.len());
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
    // The consumers start once everything else is checked: a source's error is then the
    // only line. Records they read before the shards serve wait in the bounded inboxes.
    let mut sources = source::start_sources(&config, &source_ends.inboxes, &source_metrics)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let node = cluster.as_ref().map(|c| c.node.clone());
    if let (Some(node), Some(metrics)) = (&node, cluster_source_metrics) {
        let consumer =
            cluster::start_messages_consumer(&config, node, source_ends.inboxes.clone(), metrics)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        sources.push(consumer);
    }
    let cluster_parts = cluster.map(|started| {
        Arc::new(ClusterParts {
            node: started.node,
            snapshot: started.snapshot,
            links: Mutex::new(started.links.into_iter().map(Some).collect()),
        })
    });
    let sources_done = Arc::new(AtomicBool::new(false));
    let sources_stopped =
        stop_sources_on_shutdown(sources, shutting_down.clone(), sources_done.clone());
    let source_ends = Arc::new(source_ends);
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
            let shared = SharedParts {
                source_inbox: source_ends.take(env.shard_id),
                cluster: cluster_parts.clone().map(|parts| {
                    let link = parts.links.lock().expect("cluster links")[env.shard_id]
                        .take()
                        .expect("one cluster link per shard");
                    (parts, link)
                }),
                sources_done: sources_done.clone(),
                config: shard_config.clone(),
                board: board.clone(),
                listeners: listeners.clone(),
                connections_open: connections_open.clone(),
                shutting_down: shutting_down.clone(),
            };
            shard_main(env, shared, producers)
        },
    );
    let _ = sources_stopped.join();
    if let Some(node) = node {
        node.close(PRODUCER_STOP_FLUSH);
    }
    result?;
    info!("stopped");
    Ok(())
}

/// Logs each listener. The same lines go to stdout, unless it is the same file as stderr
/// (a terminal, `2>&1`): programs that start the broker wait for its first line there.
fn announce_listeners(listeners: &[Listener], cpus: &[usize]) {
    let to_stdout = !startup::stdout_is_stderr();
    for (addr, tls) in listeners {
        let shards = cpus.len();
        let suffix = if tls.is_some() { " (TLS)" } else { "" };
        let line = format!("listening on {addr}{suffix} with {shards} shards (CPUs {cpus:?})");
        info!(addr = %addr, tls = tls.is_some(), shards, cpus = ?cpus, "{line}");
        if to_stdout {
            // Not println!: a closed stdout (a parent that stopped reading) must not stop
            // the broker; the line is in the log anyway.
            let _ = writeln!(std::io::stdout(), "ferrymq: {line}");
        }
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

/// Each shard's inbox of records from the Kafka sources, with the end it listens on.
struct SourceEnds {
    inboxes: Arc<Vec<Arc<SourceInbox>>>,
    /// Taken by each shard when it starts.
    ends: Mutex<Vec<Option<WakeEnd>>>,
}

impl SourceEnds {
    /// Inboxes for `shard_count` shards; none when no source is configured.
    fn new(config: &Config, shard_count: usize) -> io::Result<SourceEnds> {
        let mut inboxes = Vec::new();
        let mut ends = Vec::new();
        if !config.kafka.sources.is_empty() || config.cluster.is_some() {
            for _ in 0..shard_count {
                let (inbox, end) = SourceInbox::new()?;
                inboxes.push(Arc::new(inbox));
                ends.push(Some(end));
            }
        }
        Ok(SourceEnds {
            inboxes: Arc::new(inboxes),
            ends: Mutex::new(ends),
        })
    }

    fn take(&self, shard: usize) -> Option<(Arc<SourceInbox>, WakeEnd)> {
        let end = self
            .ends
            .lock()
            .expect("source ends")
            .get_mut(shard)?
            .take()?;
        Some((self.inboxes[shard].clone(), end))
    }
}

/// Stops the sources (last commits, leaving their groups) as soon as a stop is asked for,
/// while the shards still serve: what the consumers handed over is settled first.
fn stop_sources_on_shutdown(
    sources: Vec<SourceThread>,
    shutting_down: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sources-stop".into())
        .spawn(move || {
            if !sources.is_empty() {
                while !shutting_down.load(Ordering::Relaxed) {
                    std::thread::sleep(SHUTDOWN_POLL);
                }
                for source in sources {
                    source.stop();
                }
            }
            done.store(true, Ordering::Release);
        })
        .expect("a thread to stop the sources")
}

/// A shard's link to the cluster's threads, with the end it waits on.
type ShardLinkEnd = (Arc<cluster::ShardLink>, WakeEnd);

/// What the cluster gives every shard: the node, the state it read at start, and one link
/// per shard (taken by each as it starts).
struct ClusterParts {
    node: Arc<cluster::Node>,
    snapshot: cluster::StateSnapshot,
    links: Mutex<Vec<Option<ShardLinkEnd>>>,
}

/// What the shards share with each other and with the process.
struct SharedParts {
    /// This shard's part in a cluster, when `[cluster]` is set.
    cluster: Option<(Arc<ClusterParts>, ShardLinkEnd)>,
    /// This shard's inbox of Kafka source records, when there are sources.
    source_inbox: Option<(Arc<SourceInbox>, WakeEnd)>,
    /// Set once the sources made their last commit: connections are closed after that,
    /// so that what a closing session settles is not committed undelivered.
    sources_done: Arc<AtomicBool>,
    config: Arc<ShardConfig>,
    board: Arc<Board>,
    listeners: Vec<Listener>,
    connections_open: Arc<AtomicUsize>,
    shutting_down: Arc<AtomicBool>,
}

async fn shard_main(
    mut env: ShardEnv<ShardMessage>,
    shared: SharedParts,
    producers: ShardProducers,
) {
    let shard_config = &shared.config;
    let config = Rc::new(shard_config.broker.clone());
    let stats = Rc::new(ShardStats::default());
    let mappings = Mappings::new(&shard_config.kafka).expect("validated with the config");
    let parts = BridgeParts {
        shard_id: env.shard_id,
        shard_count: env.shard_count,
        mappings,
        producers,
        batching: shard_config.batching.clone(),
        settings: shard_config.settings.clone(),
        spool: shard_config.spool.clone(),
    };
    let bridge = match Bridge::start(parts).await {
        Ok(bridge) => bridge,
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
        connections_open: shared.connections_open.clone(),
        shutting_down: shared.shutting_down.clone(),
        started_at: Instant::now(),
        bridge: bridge.clone(),
        deferred_acks: RefCell::new(HashMap::new()),
        source_tickets: RefCell::new(HashMap::new()),
        congestion_eased: Default::default(),
        board: shared.board.clone(),
        cluster: shared
            .cluster
            .as_ref()
            .map(|(parts, (link, _))| ShardCluster::new(parts.node.clone(), link.clone())),
    });
    let cluster_wake = shared.cluster.map(|(parts, (_, wake))| {
        broker::cluster::load_snapshot(&shard, &parts.snapshot);
        wake
    });
    // The bridge holds this for as long as the shard runs: a weak reference, so that the
    // two do not keep each other alive.
    let weak = Rc::downgrade(&shard);
    bridge.on_acknowledged(move |completed| {
        if let Some(shard) = weak.upgrade() {
            acknowledge_deferred(&shard, completed);
        }
    });
    runtime::spawn(telemetry::metrics_loop(shard.clone()));
    for (addr, tls) in shared.listeners.iter().cloned() {
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
        runtime::spawn(inbox::serve_inbox(shard.clone(), receiver));
    }
    if let Some(wake) = cluster_wake {
        runtime::spawn(broker::cluster::serve_cluster(shard.clone(), wake));
    }
    if let Some((source_inbox, wake)) = shared.source_inbox {
        runtime::spawn(ingress::serve_sources(shard.clone(), source_inbox, wake));
    }
    if config.sys_interval_secs > 0 {
        runtime::spawn(telemetry::sys_loop(shard.clone()));
    }
    while !shared.shutting_down.load(Ordering::Relaxed) {
        runtime::sleep(SHUTDOWN_POLL).await;
    }
    let sources_wait = Instant::now() + SOURCES_STOP_WAIT;
    while !shared.sources_done.load(Ordering::Acquire) && Instant::now() < sources_wait {
        runtime::sleep(SHUTDOWN_POLL).await;
    }
    // [MQTT-3.14.0-?]: tell 5.0 clients why they are dropped.
    for connection in shard.state.borrow().connections() {
        connection.close(Some(ReasonCode::ServerShuttingDown));
    }
    runtime::sleep(SHUTDOWN_FLUSH).await;
    // Deliver what the producers still hold (for at most a few seconds) before the process
    // ends; this shard serves nothing else now.
    bridge.close(PRODUCER_STOP_FLUSH);
}
