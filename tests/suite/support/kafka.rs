//! Kafka for the tests: the Apache Kafka node scripts/test starts (`HOOKBRIDGE_TEST_KAFKA`),
//! and private nodes a test starts itself with listeners of its own (TLS, SASL), through
//! the same `start_kafka` of scripts/tools.sh that starts the shared one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{events_config, free_port, kafka_bootstrap};

pub fn bootstrap() -> String {
    kafka_bootstrap()
}

pub fn config(bootstrap: &str, topic: &str, subs: &str) -> String {
    let broker =
        format!("  kind: kafka\n  kafka:\n    bootstrap_servers: {bootstrap}\n    partitions: 4\n");
    events_config(&broker, topic, subs)
}

/// A private Apache Kafka node (broker and KRaft controller in one process), killed when
/// dropped. Its PLAINTEXT listener on 127.0.0.1 carries the node's own traffic; a test adds
/// the listeners it wants to try in `extra.properties`.
pub struct KafkaNode {
    pub dir: tempfile::TempDir,
    /// The PLAINTEXT listener's port.
    pub port: u16,
    controller: u16,
    pid: u32,
}

impl KafkaNode {
    /// Starts a node whose server.properties get `extra` appended (later keys win; a
    /// `listeners` line must keep `PLAINTEXT://127.0.0.1:{port}` and the controller's
    /// `CONTROLLER://127.0.0.1:{controller}`, the two ports `extra` is given), with
    /// `format_args` for its storage format (e.g. `--add-scram ...`). Returns once the
    /// node answers on its PLAINTEXT listener.
    pub fn start(extra: impl FnOnce(u16, u16) -> String, format_args: &[String]) -> KafkaNode {
        let dir = tempfile::tempdir().unwrap();
        let (port, controller) = (free_port(), free_port());
        std::fs::write(dir.path().join("extra.properties"), extra(port, controller)).unwrap();
        let mut args = vec![
            dir.path().display().to_string(),
            port.to_string(),
            controller.to_string(),
        ];
        args.extend_from_slice(format_args);
        let pid = tools("start_kafka", &args).trim().parse().unwrap();
        let node = KafkaNode {
            dir,
            port,
            controller,
            pid,
        };
        node.wait_until_serving();
        node
    }

    /// SIGKILL, then the node started again on its data (what it acknowledged is kept);
    /// returns once it answers.
    pub fn restart(&mut self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{}", self.pid)).exists()
            && std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "the Kafka node stopped");
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            self.dir.path().display().to_string(),
            self.port.to_string(),
            self.controller.to_string(),
        ];
        self.pid = tools("start_kafka", &args).trim().parse().unwrap();
        self.wait_until_serving();
    }

    /// The log the node wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kafka.log")).unwrap_or_default()
    }

    fn wait_until_serving(&self) {
        wait_until_serving(self.port, || self.log());
    }
}

/// Three Apache Kafka nodes (each broker and controller), for tests that need a partition's
/// leader to move; every node killed when dropped.
pub struct KafkaCluster {
    pub dir: tempfile::TempDir,
    base: u16,
    pub bootstrap: String,
}

impl KafkaCluster {
    /// Starts the three nodes (`start_kafka_cluster` of scripts/tools.sh) on six free
    /// consecutive ports; returns once every node answers.
    pub fn start() -> KafkaCluster {
        let dir = tempfile::tempdir().unwrap();
        let base = free_ports(6);
        let cluster = KafkaCluster {
            bootstrap: (0..3)
                .map(|n| format!("127.0.0.1:{}", base + n))
                .collect::<Vec<_>>()
                .join(","),
            dir,
            base,
        };
        cluster.start_stopped_nodes();
        cluster
    }

    /// Starts the nodes that are not running (all of them at first, a killed one later),
    /// and waits until every node answers.
    pub fn start_stopped_nodes(&self) {
        tools(
            "start_kafka_cluster",
            &[self.dir.path().display().to_string(), self.base.to_string()],
        );
        for n in 0..3 {
            wait_until_serving(self.base + n, || self.log(n as usize + 1));
        }
        // A node answers before the controller has let it in: topics with replication
        // factor 3 need all three registered.
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map_or(0, |m| m.brokers().len())
            < 3
        {
            assert!(Instant::now() < deadline, "three brokers registered");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills node `n` (1 to 3) with SIGKILL, if it was started.
    pub fn kill(&self, n: usize) {
        let pid = std::fs::read_to_string(self.node(n).join("kafka.pid"));
        if let Some(pid) = pid.ok().and_then(|pid| pid.trim().parse().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn node(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }

    fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.node(n).join("kafka.log")).unwrap_or_default()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for n in 1..=3 {
            self.kill(n);
        }
    }
}

/// Runs `function` of scripts/tools.sh with `args` (passed as they are, unquoted by no
/// shell); its standard output.
fn tools(function: &str, args: &[String]) -> String {
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"source scripts/tools.sh && "$@""#)
        .arg("tools")
        .arg(function)
        .args(args)
        .current_dir(repository())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`{function}` failed (scripts/test installs Kafka): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first of `n` consecutive free ports.
fn free_ports(n: u16) -> u16 {
    loop {
        let base = free_port();
        let listeners: Vec<_> = (0..n)
            .map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base.checked_add(i)?)).ok())
            .collect();
        if listeners.len() == n as usize {
            return base;
        }
    }
}

/// Waits until the Kafka node on `port` answers a metadata request.
fn wait_until_serving(port: u16, log: impl Fn() -> String) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer
        .fetch_metadata(None, Duration::from_secs(2))
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the Kafka node on {port} did not start:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
    }
}

/// The repository's root, where scripts/tools.sh is.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}
