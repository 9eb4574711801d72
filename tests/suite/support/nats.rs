//! NATS for the tests: a private nats-server that a test can stop and restart, a proxy in
//! front of it whose traffic can stall; the config on four partitions, the topic's stream
//! as hookbridge made it, and messages published straight to its subjects.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use hookbridge::broker::nats::stream_name;

use super::receiver::{Receiver, Reply};
use super::{events_config, free_port, nats_broker, unique};

/// The nats-server the tests run: `HOOKBRIDGE_NATS_SERVER` (scripts/test sets a current
/// release there, and Debian's 2.9.10 for the oldest supported version's run), else the
/// one on PATH.
pub fn nats_server_binary() -> String {
    std::env::var("HOOKBRIDGE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

/// A private nats-server with JetStream on a free port and a temporary store, so a test can
/// stop and restart it. The binary must be installed (scripts/test does): a missing one
/// fails the test.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    /// More arguments for nats-server (auth, TLS, a config file).
    extra: Vec<String>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(Vec::new())
    }

    /// A server with more arguments: `--user`/`--pass`, `--auth`, `--tls...`, `-c FILE`. A
    /// config file given with `-c` may use `{PORT}` and `{STORE}` for the server's own.
    pub fn start_with(extra: Vec<String>) -> NatsServer {
        let port = free_port();
        let mut server = NatsServer {
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
            extra,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server process dies at once (what it acknowledged is in its files).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the server (again) on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.store.path().join("nats-server.log")).unwrap())
            .spawn()
            .expect("nats-server is not installed: run scripts/test, which installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}: {}",
                self.port,
                std::fs::read_to_string(self.store.path().join("nats-server.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on a loopback port in front of `upstream`, whose traffic can be stalled:
/// while stalled it moves no byte in either direction, as a network partition would, and the
/// connections stay open.
pub struct StallableProxy {
    pub port: u16,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl StallableProxy {
    pub async fn start(upstream: u16) -> StallableProxy {
        StallableProxy::start_on(0, upstream).await
    }

    /// A proxy listening on `port` (0: any free one): for a server that must advertise the
    /// proxy's address before the proxy can know the server's (Kafka).
    pub async fn start_on(port: u16, upstream: u16) -> StallableProxy {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, flag.clone()));
                tokio::spawn(pump(server_read, client_write, flag.clone()));
            }
        });
        StallableProxy { port, stalled }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stall(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies bytes from one side to the other except while `stalled`.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    stalled: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buffer)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => continue, // nothing to move; look again
        };
        // Bytes read just as a stall began are held back too.
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

pub fn config(nats: &NatsServer, topic: &str, subs: &str) -> String {
    events_config(&nats_broker(&nats.url(), 4), topic, subs)
}

/// A JetStream client, once hookbridge has created the topic's stream.
pub async fn stream_created(nats: &NatsServer, topic: &str) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while js.get_stream(stream_name(topic)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "hookbridge created the stream of {topic}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js
}

/// Every message of a topic's stream, read by a plain client.
pub async fn stream_messages(nats: &NatsServer, topic: &str) -> Vec<jetstream::Message> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream_name(topic)).await.unwrap();
    let count = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        out.push(message);
    }
    out
}

/// Publishes `events` foreign messages (`{"key", "seq"}` bodies over `keys` keys, the key in
/// `Hb-Key`) straight to the subjects of `topic`'s `partitions`, once hookbridge has made its
/// stream, and waits until JetStream has stored them all.
pub async fn publish_foreign(
    nats: &NatsServer,
    topic: &str,
    events: u64,
    keys: u64,
    partitions: u32,
) {
    use hookbridge::broker::nats::stream_name;
    use hookbridge::broker::partitioner::partition_for_key;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while js.get_stream(stream_name(topic)).await.is_err() {
        assert!(Instant::now() < deadline, "the stream exists");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acks = Vec::new();
    for seq in 0..events {
        let key = format!("k{}", seq % keys);
        let partition = partition_for_key(key.as_bytes(), partitions);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Hb-Key", key.as_str());
        let body = serde_json::json!({"key": key, "seq": seq}).to_string();
        acks.push(
            js.publish_with_headers(format!("{topic}.{partition}"), headers, body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// A private nats-server reached through a proxy that can stall, a receiver answering 200
/// after a delay, and a subscription (named as its topic) delivering to it.
pub struct Proxied {
    pub nats: NatsServer,
    pub proxy: StallableProxy,
    pub topic: String,
    pub receiver: Receiver,
    pub subs: String,
}

impl Proxied {
    pub async fn start(prefix: &str, answer_after: Duration, max_in_flight: u32) -> Proxied {
        let nats = NatsServer::start();
        let proxy = StallableProxy::start(nats.port).await;
        let topic = unique(prefix);
        let receiver = Receiver::start().await;
        receiver.answer(move |_, _| Reply {
            status: 200,
            delay: answer_after,
            retry_after: None,
        });
        let subs = format!(
            "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: {max_in_flight}\n",
            receiver.url
        );
        Proxied {
            nats,
            proxy,
            topic,
            receiver,
            subs,
        }
    }
}
