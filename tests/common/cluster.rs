//! A ferrymq cluster for integration tests: nodes (separate processes, ports and metrics
//! endpoints) sharing the test Kafka under a cluster name of their own, and HAProxy
//! (Debian's package) in front of them, round-robin, as a deployment would have it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::Broker;
use super::kafka::{bootstrap, unique, write_config, ConfigFile};
use super::metrics::http_get;
use super::ports::free_port;

/// One node: its process (None while stopped), its ports and its configuration file.
pub struct Node {
    pub broker: Option<Broker>,
    pub port: u16,
    pub metrics_port: u16,
    config: ConfigFile,
}

pub struct Cluster {
    pub name: String,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `count` nodes named `n0`, `n1`... of a new cluster.
    pub fn start(count: usize) -> Cluster {
        Cluster::start_with(count, "")
    }

    /// [`Cluster::start`], with `extra` appended to each node's configuration (tables
    /// other than `[broker]`, `[kafka.clusters.main]` and `[cluster]`: a Kafka source, say).
    pub fn start_with(count: usize, extra: &str) -> Cluster {
        let name = unique("cl");
        let nodes = (0..count)
            .map(|index| {
                let metrics_port = free_port();
                let config = write_config(&format!(
                    "[broker]\nmetrics_bind = \"127.0.0.1:{metrics_port}\"\n\n\
                     [kafka.clusters.main]\nbootstrap = \"{}\"\n\n\
                     [cluster]\nname = \"{name}\"\nnode = \"n{index}\"\npartitions = 4\n\n{extra}",
                    bootstrap()
                ));
                let port = free_port();
                let broker = Broker::start_on(port, &["--config", config.path_str()]);
                Node {
                    broker: Some(broker),
                    port,
                    metrics_port,
                    config,
                }
            })
            .collect();
        Cluster { name, nodes }
    }

    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// SIGKILL of node `node`.
    pub fn kill9(&mut self, node: usize) {
        if let Some(broker) = self.nodes[node].broker.take() {
            broker.kill9();
        }
    }

    /// Starts node `node` again with its configuration (its name, so the same node of the
    /// cluster), on a free port: its old one may have been taken meanwhile by another
    /// test's broker.
    pub fn restart(&mut self, node: usize) {
        let node = &mut self.nodes[node];
        assert!(node.broker.is_none(), "stop the node first");
        let broker = Broker::start_with(&["--config", node.config.path_str()]);
        node.port = broker.port;
        node.broker = Some(broker);
    }

    /// The value of the cluster metric `name` (`ferrymq_cluster_NAME`) on node `node`.
    pub fn metric(&self, node: usize, name: &str) -> u64 {
        let body = http_get(self.nodes[node].metrics_port, "/metrics");
        let prefix = format!("ferrymq_cluster_{name}{{");
        body.lines()
            .find(|line| line.starts_with(&prefix))
            .and_then(|line| line.rsplit_once(' '))
            .and_then(|(_, value)| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    }

    /// Waits until node `node` knows of at least `count` filters on other nodes (their
    /// subscriptions reached it through the state topic).
    pub fn wait_remote_filters(&self, node: usize, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let known = self.metric(node, "remote_filters");
            if known >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} knows {known} remote filters, expected {count}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every node counts `count` members.
    pub fn wait_members(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in 0..self.nodes.len() {
            while self.nodes[node].broker.is_some() && self.metric(node, "members") < count {
                assert!(
                    Instant::now() < deadline,
                    "node {node} does not see {count} members"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// HAProxy in TCP mode, round-robin over `ports`, on a port of its own.
pub struct Haproxy {
    child: Child,
    pub port: u16,
    _config: ConfigFile,
}

impl Haproxy {
    pub fn start(ports: &[u16]) -> Haproxy {
        let port = free_port();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server n{i} 127.0.0.1:{p}\n"))
            .collect();
        let config = write_config(&format!(
            "global\n    maxconn 4000\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n\n\
             frontend mqtt\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\n\
             backend nodes\n    balance roundrobin\n{servers}"
        ));
        let child = Command::new("haproxy")
            .args(["-db", "-f", config.path_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy (Debian package haproxy; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            port,
            _config: config,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
