//! Starting the broker: one shard per CPU, each with its listeners, its inbox from the
//! other shards, `$SYS` statistics and an orderly stop on SIGINT/SIGTERM.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{BrokerConfig, Config};
use crate::protocol::{MqttStr, PublishProperties, QoS, ReasonCode};
use crate::runtime::{self, ShardEnv};

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

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(config: Config) -> io::Result<()> {
    let allowed = runtime::affinity_cpus()?;
    let cpus = match &config.broker.cores {
        Some(cores) => {
            if let Some(cpu) = cores.iter().find(|c| !allowed.contains(c)) {
                return Err(io::Error::other(format!(
                    "broker.cores: CPU {cpu} is not in this process's affinity mask {allowed:?}"
                )));
            }
            cores.clone()
        }
        None => allowed,
    };
    let listeners = resolve_listeners(&config)?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutting_down.clone())?;
    }
    for addr in &listeners {
        println!(
            "ferrymq: listening on {addr} with {} shards (CPUs {cpus:?})",
            cpus.len()
        );
    }
    let broker = Arc::new(config.broker.clone());
    let connections_open = Arc::new(AtomicUsize::new(0));
    runtime::run_shards(
        &cpus,
        config.broker.inter_shard_channel_capacity,
        move |env: ShardEnv<ShardMessage>| {
            shard_main(
                env,
                (*broker).clone(),
                listeners.clone(),
                connections_open.clone(),
                shutting_down.clone(),
            )
        },
    )?;
    println!("ferrymq: stopped");
    Ok(())
}

/// Port 0 means "any free port"; every shard must bind the same one, so it is chosen once
/// here.
fn resolve_listeners(config: &Config) -> io::Result<Vec<SocketAddr>> {
    config
        .listeners
        .iter()
        .map(|listener| {
            let mut addr = listener.bind;
            if addr.port() == 0 {
                addr = std::net::TcpListener::bind(addr)?.local_addr()?;
            }
            Ok(addr)
        })
        .collect()
}

async fn shard_main(
    mut env: ShardEnv<ShardMessage>,
    config: BrokerConfig,
    listeners: Vec<SocketAddr>,
    connections_open: Arc<AtomicUsize>,
    shutting_down: Arc<AtomicBool>,
) {
    let config = Rc::new(config);
    let stats = Rc::new(ShardStats::default());
    let receivers = runtime::take_receivers(&mut env.receivers);
    let shard: ShardRef = Rc::new(ShardContext {
        id: env.shard_id,
        count: env.shard_count,
        config: config.clone(),
        stats: stats.clone(),
        senders: env.senders,
        state: RefCell::new(Shard::new(
            env.shard_id,
            env.shard_count,
            config.clone(),
            stats,
        )),
        interest_acks: RefCell::new(HashMap::new()),
        next_ack_id: Cell::new(1),
        remote_stats: RefCell::new(vec![StatsSnapshot::default(); env.shard_count]),
        connections_open,
        shutting_down: shutting_down.clone(),
        started_at: Instant::now(),
    });
    for addr in listeners {
        match runtime::bind(addr) {
            Ok(listener) => runtime::spawn(accept_loop(shard.clone(), listener)),
            Err(error) => {
                eprintln!("ferrymq: listener.bind: cannot listen on {addr}: {error}");
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
}

fn on_shard_message(shard: &ShardRef, message: ShardMessage) {
    let now = Instant::now();
    match message {
        ShardMessage::Handoff {
            fd,
            connect,
            buffered,
            assigned_client_id,
        } => {
            let stream = runtime::adopt_stream(fd);
            runtime::spawn(serve(
                shard.clone(),
                stream,
                connect,
                buffered,
                assigned_client_id,
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
