//! A randomized fault-schedule checker, as Jepsen checks databases: hookbridge replicas on a
//! real broker, a recording receiver, steady traffic of a few keys, and a seeded schedule of
//! receiver faults per key (5xx runs, 400s, 429 with `Retry-After`, slow answers, answers
//! past `timeout`), `kill -9` and SIGTERM of replicas, replicas joining, broker restarts
//! and stalled broker connections (NATS and Kafka, each a private server behind a proxy),
//! config reloads (in place, rejoining with another ordering or parking topic, a second
//! subscription added and removed), pause and resume, and redrives and replays while
//! traffic flows. Then the
//! faults stop, everything settles, and `check` reads the receiver's history and the dead
//! letters: nothing accepted lost, per-key order, never two requests of a key at once, and
//! memory within its bound.
//!
//! A few short seeds per backend run in the suite; `scripts/chaos --backend B --seed S
//! --duration D` runs any (the `chaos_from_the_environment` test, ignored otherwise). A
//! failing run keeps its history under `target/tmp/chaos/` and says what to rerun.

mod check;
mod schedule;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use check::Accepted;
use schedule::{Action, Answer, Reload};

use crate::support::backend::Backend;
use crate::support::kafka::KafkaNode;
use crate::support::nats::StallableProxy;
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const TOKEN: &str = "chaos-admin-token-0123456789";
const KEYS: usize = 8;
/// A replica's resident memory may not pass this (G7).
const MEMORY_BOUND_MIB: u64 = 512;

/// One run: a backend, a seed, how long the faults go on.
struct Plan {
    backend: &'static str,
    seed: u64,
    duration: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_embedded_seed_1() {
    run(Plan {
        backend: "embedded",
        seed: 1,
        duration: Duration::from_secs(45),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nats_seed_1() {
    run(Plan {
        backend: "nats",
        seed: 1,
        duration: Duration::from_secs(45),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nats_seed_2() {
    run(Plan {
        backend: "nats",
        seed: 2,
        duration: Duration::from_secs(45),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kafka_seed_1() {
    run(Plan {
        backend: "kafka",
        seed: 1,
        duration: Duration::from_secs(45),
    })
    .await;
}

/// The run `scripts/chaos` asks for, through HOOKBRIDGE_CHAOS_{BACKEND,SEED,DURATION}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/chaos"]
async fn chaos_from_the_environment() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let backend: &'static str = match var("HOOKBRIDGE_CHAOS_BACKEND").as_str() {
        "embedded" => "embedded",
        "nats" => "nats",
        "kafka" => "kafka",
        other => panic!("unknown backend {other}: embedded, nats or kafka"),
    };
    let seed = var("HOOKBRIDGE_CHAOS_SEED").parse().expect("a number");
    let duration = hookbridge::config::units::parse_duration(&var("HOOKBRIDGE_CHAOS_DURATION"))
        .expect("a duration such as 60s");
    run(Plan {
        backend,
        seed,
        duration,
    })
    .await;
}

/// What the receiver answers each key now.
type Faults = Arc<Mutex<HashMap<String, (Answer, Instant)>>>;

struct Run {
    plan: Plan,
    backend: Backend,
    /// Kafka's private node (restarted by the schedule), behind `proxy`.
    kafka: Option<KafkaNode>,
    /// Between the replicas and the broker (NATS, Kafka): stalls on the schedule.
    proxy: Option<StallableProxy>,
    /// When a stalled proxy moves bytes again.
    unstall_at: Option<Instant>,
    /// The second subscription's receiver (always 200; its history is not checked).
    second_url: String,
    config_path: std::path::PathBuf,
    name: String,
    replicas: Vec<Hookbridge>,
    /// Replicas to start again, and when.
    comebacks: Vec<Instant>,
    /// When paused replicas resume.
    resume_at: Option<Instant>,
    ingresses: Arc<Mutex<Vec<String>>>,
    most_replicas: usize,
    peak_mib: u64,
    applied: Vec<String>,
    dir: tempfile::TempDir,
}

async fn run(plan: Plan) {
    let (backend, kafka, proxy) = match plan.backend {
        "embedded" => (Backend::embedded(), None, None),
        "nats" => {
            let nats = Backend::nats();
            let Backend::Nats(server) = &nats else {
                unreachable!()
            };
            let proxy = StallableProxy::start(server.port).await;
            (nats, None, Some(proxy))
        }
        _ => {
            // The node advertises the proxy, so that every connection goes through it.
            let proxy_port = free_port();
            let node = tokio::task::block_in_place(|| {
                KafkaNode::start(
                    |_, _| format!("advertised.listeners=PLAINTEXT://127.0.0.1:{proxy_port}\n"),
                    &[],
                )
            });
            let proxy = StallableProxy::start_on(proxy_port, node.port).await;
            let bootstrap = format!("127.0.0.1:{proxy_port}");
            (Backend::Kafka(bootstrap), Some(node), Some(proxy))
        }
    };
    let receiver = Receiver::start().await;
    let second = Receiver::start().await;
    let faults: Faults = Arc::default();
    answer_by_faults(&receiver, faults.clone());
    let name = unique("chaos");
    let dir = tempfile::tempdir().unwrap();
    let most_replicas = if plan.backend == "embedded" { 1 } else { 3 };
    let mut run = Run {
        config_path: dir.path().join("config.yaml"),
        name: name.clone(),
        replicas: Vec::new(),
        comebacks: Vec::new(),
        resume_at: None,
        ingresses: Arc::default(),
        most_replicas,
        peak_mib: 0,
        applied: Vec::new(),
        dir,
        backend,
        kafka,
        proxy,
        unstall_at: None,
        second_url: second.url.clone(),
        plan,
    };
    run.write_config(&receiver.url, &Reload::first());
    for _ in 0..most_replicas.min(2) {
        run.start_replica();
    }
    let steps = schedule::schedule(
        run.plan.seed,
        run.plan.duration,
        KEYS,
        most_replicas > 1,
        run.plan.backend != "embedded",
    );

    let stop_load = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<Accepted>>> = Arc::default();
    let load = start_load(run.ingresses.clone(), stop_load.clone(), accepted.clone());
    let started = Instant::now();
    let mut operations = Vec::new();
    for (at, action) in steps {
        while started.elapsed() < at {
            run.tend().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run.applied
            .push(format!("{:>6.1}s {action:?}", at.as_secs_f64()));
        if let Some(operation) = run.apply(action, &faults, &receiver.url).await {
            operations.push(operation);
        }
    }
    while started.elapsed() < run.plan.duration {
        run.tend().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The faults end; what is left must settle.
    stop_load.store(true, Ordering::SeqCst);
    faults.lock().unwrap().clear();
    run.resume_at = Some(Instant::now());
    run.unstall_at = Some(Instant::now());
    run.comebacks.iter_mut().for_each(|at| *at = Instant::now());
    run.tend().await;
    if run.replicas.is_empty() {
        run.start_replica();
    }
    load.await.unwrap();
    for operation in operations {
        let _ = operation.await;
    }
    let accepted = accepted.lock().unwrap().clone();
    let dead = run.settle(&receiver, &accepted).await;
    let verdict = check::check(&accepted, &receiver.received(), &dead);
    let mut problems = verdict.problems.clone();
    if run.peak_mib > MEMORY_BOUND_MIB {
        problems.push(format!("a replica's memory reached {} MiB", run.peak_mib));
    }
    eprintln!(
        "chaos {} seed {}: {} faults applied, {} accepted, {} delivered, {} dead-lettered, {} requests, {} repeats of delivered events, peak memory {} MiB",
        run.plan.backend,
        run.plan.seed,
        run.applied.len(),
        accepted.len(),
        verdict.delivered,
        verdict.dead_lettered,
        verdict.requests,
        verdict.repeats,
        run.peak_mib
    );
    eprintln!("  {}", run.applied.join("\n  "));
    if !problems.is_empty() {
        let kept = run.keep_history(&receiver, &accepted);
        panic!(
            "chaos {} seed {} broke a guarantee:\n  {}\nhistory kept in {}; rerun: scripts/chaos --backend {} --seed {} --duration {}s",
            run.plan.backend,
            run.plan.seed,
            problems.join("\n  "),
            kept.display(),
            run.plan.backend,
            run.plan.seed,
            run.plan.duration.as_secs()
        );
    }
}

/// The receiver answers a key as its current fault says, 200 otherwise.
fn answer_by_faults(receiver: &Receiver, faults: Faults) {
    receiver.answer(move |_, body| {
        let key = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default()["key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let answer = match faults.lock().unwrap().get(&key) {
            Some((answer, until)) if Instant::now() < *until => *answer,
            _ => Answer::Fine,
        };
        let (status, delay, retry_after) = match answer {
            Answer::Fine => (200, 0, None),
            Answer::ServerError => (500, 0, None),
            Answer::Refused => (400, 0, None),
            Answer::TooMany => (429, 0, Some(1)),
            Answer::Slow => (200, 300, None),
            Answer::PastTimeout => (200, 1_500, None),
        };
        Reply {
            status,
            delay: Duration::from_millis(delay),
            retry_after,
        }
    });
}

/// Posts events of `KEYS` keys, each key's next only once its previous one was accepted
/// (so that publish order per key is known), to whichever replica is up.
fn start_load(
    ingresses: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
) -> tokio::task::JoinHandle<()> {
    let next_seq = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let client = http_client();
        let keys = (0..KEYS).map(|k| {
            let (client, ingresses, stop, accepted, next_seq) = (
                client.clone(),
                ingresses.clone(),
                stop.clone(),
                accepted.clone(),
                next_seq.clone(),
            );
            async move {
                let key = format!("k{k}");
                let mut attempt = k;
                while !stop.load(Ordering::SeqCst) {
                    let seq = next_seq.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::json!({"key": key, "seq": seq});
                    // Sent until accepted: a replica may be down or stopping.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        attempt += 1;
                        let target = {
                            let up = ingresses.lock().unwrap();
                            (!up.is_empty()).then(|| up[attempt % up.len()].clone())
                        };
                        let Some(target) = target else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let sent = client
                            .post(format!("{target}/hooks/events"))
                            .json(&body)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        if let Ok(response) = sent
                            && response.status() == 202
                            && let Ok(answer) = response.json::<serde_json::Value>().await
                        {
                            let id = answer["id"].as_str().unwrap_or_default().to_string();
                            accepted.lock().unwrap().push(Accepted {
                                key: key.clone(),
                                seq,
                                id,
                            });
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(100 + (seq % 7) * 20)).await;
                }
            }
        });
        futures_util::future::join_all(keys).await;
    })
}

/// An operator's verb (`dlq redrive NAME`, `replay NAME --since 5s`) run through the
/// CLI against `admin`, while the schedule goes on.
fn operate(admin: String, args: Vec<String>) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let _ = std::process::Command::new(BIN)
            .args(&args)
            .args(["--admin-url", &admin, "--output", "json"])
            .env("HOOKBRIDGE_ADMIN_TOKEN", TOKEN)
            .output();
    })
}

impl Run {
    /// Applies one step of the schedule; a redrive runs on while the schedule goes on.
    async fn apply(
        &mut self,
        action: Action,
        faults: &Faults,
        url: &str,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match action {
            Action::Answer { key, answer, for_ } => {
                faults
                    .lock()
                    .unwrap()
                    .insert(format!("k{key}"), (answer, Instant::now() + for_));
            }
            Action::Kill { replica, down } => self.stop_replica(replica, down, false),
            Action::Terminate { replica, down } => self.stop_replica(replica, down, true),
            Action::Join => {
                if self.replicas.len() + self.comebacks.len() < self.most_replicas {
                    self.comebacks.push(Instant::now());
                }
            }
            Action::BrokerRestart => {
                // A stall ends first: the restart waits until the broker answers, through
                // the proxy for Kafka (it advertises the proxy), and nothing would end the
                // stall while it waits.
                self.unstall_at = None;
                if let Some(proxy) = &self.proxy {
                    proxy.stall(false);
                }
                if let Backend::Nats(nats) = &mut self.backend {
                    tokio::task::block_in_place(|| nats.restart());
                }
                if let Some(kafka) = &mut self.kafka {
                    tokio::task::block_in_place(|| kafka.restart());
                }
            }
            Action::Stall { for_ } => {
                if let Some(proxy) = &self.proxy {
                    proxy.stall(true);
                    self.unstall_at = Some(Instant::now() + for_);
                }
            }
            Action::Reload(reload) => self.write_config(url, &reload),
            Action::Pause { for_ } => self.pause(for_).await,
            Action::Redrive => {
                let admin = self.replicas.first()?.admin.clone();
                let args = ["dlq", "redrive", &self.name].map(String::from).to_vec();
                return Some(operate(admin, args));
            }
            Action::Replay { span } => {
                let admin = self.replicas.first()?.admin.clone();
                let since = format!("{}s", span.as_secs());
                let args = ["replay", &self.name, "--since", &since].map(String::from);
                return Some(operate(admin, args.to_vec()));
            }
        }
        None
    }

    fn write_config(&mut self, url: &str, reload: &Reload) {
        let partitions = 4;
        let Reload {
            max_in_flight,
            max_backoff_ms,
            url_version,
            ordering_by_key,
            parking_version,
            second,
        } = reload;
        let ordering = if *ordering_by_key { "key" } else { "partition" };
        let mut subs = format!(
            "  - name: {name}\n    topics: [{name}]\n    url: {url}?v={url_version}\n    ordering: {ordering}\n    parking_topic: {name}.park.{parking_version}\n    timeout: 1s\n    max_in_flight: {max_in_flight}\n    breaker: {{ failures: 50, cool_down: 1s }}\n    retry: {{ initial_backoff: 50ms, max_backoff: {max_backoff_ms}ms, max_attempts: 1000000, max_age: 1h, park_after: 2s }}\n",
            name = self.name
        );
        if *second {
            subs.push_str(&format!(
                "  - name: {name}-second\n    topics: [{name}]\n    url: {second_url}\n",
                name = self.name,
                second_url = self.second_url
            ));
        }
        let broker = match (&self.backend, &self.proxy) {
            (Backend::Nats(_), Some(proxy)) => nats_broker(&proxy.url(), partitions),
            (backend, _) => backend.broker(partitions),
        };
        let config = with_admin_token(&events_config(&broker, &self.name, &subs), TOKEN);
        std::fs::write(&self.config_path, config).unwrap();
    }

    fn start_replica(&mut self) {
        let replica = Hookbridge::start_file(&self.config_path, &[], &[]);
        self.ingresses.lock().unwrap().push(replica.ingress.clone());
        self.replicas.push(replica);
    }

    /// Stops a running replica (`kill -9`, or SIGTERM when `graceful`) and plans its return.
    fn stop_replica(&mut self, which: usize, down: Duration, graceful: bool) {
        if self.replicas.is_empty() {
            return;
        }
        let mut replica = self.replicas.remove(which % self.replicas.len());
        self.ingresses
            .lock()
            .unwrap()
            .retain(|i| *i != replica.ingress);
        if graceful {
            tokio::task::block_in_place(|| replica.terminate());
        } else {
            replica.kill();
        }
        self.keep_log(&replica);
        self.comebacks.push(Instant::now() + down);
    }

    /// Ends a stall that is over, brings back the replicas whose time has come (not while
    /// the broker is out of reach: a replica waits for it before it serves), resumes a
    /// pause that is over, and samples memory.
    async fn tend(&mut self) {
        let now = Instant::now();
        if self.unstall_at.is_some_and(|at| at <= now) {
            self.unstall_at = None;
            if let Some(proxy) = &self.proxy {
                proxy.stall(false);
            }
        }
        if self.unstall_at.is_none() {
            let due = self.comebacks.iter().filter(|at| **at <= now).count();
            self.comebacks.retain(|at| *at > now);
            for _ in 0..due {
                self.start_replica();
            }
        }
        if self.resume_at.is_some_and(|at| at <= now) {
            self.resume_at = None;
            for replica in &self.replicas {
                self.admin_post(replica, "resume").await;
            }
        }
        for replica in &self.replicas {
            self.peak_mib = self.peak_mib.max(rss_mib(replica.pid()));
        }
    }

    async fn pause(&mut self, for_: Duration) {
        for replica in &self.replicas {
            self.admin_post(replica, "pause").await;
        }
        self.resume_at = Some(Instant::now() + for_);
    }

    async fn admin_post(&self, replica: &Hookbridge, verb: &str) {
        let _ = http_client()
            .post(format!(
                "{}/v1/subscriptions/{}/{verb}",
                replica.admin, self.name
            ))
            .bearer_auth(TOKEN)
            .send()
            .await;
    }

    /// Waits until every accepted event is delivered or dead-lettered (at most three
    /// minutes); returns the dead letters' ids.
    async fn settle(&mut self, receiver: &Receiver, accepted: &[Accepted]) -> HashSet<String> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            self.tend().await;
            // A listing that fails (a replica starting or stopping) is asked again: a
            // partial one would make dead letters look lost.
            let Some(dead) = self.dead_letters().await else {
                assert!(
                    Instant::now() < deadline,
                    "the dead letters could not be listed"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let delivered: HashSet<String> = receiver
                .received()
                .iter()
                .filter(|r| r.ok())
                .map(|r| r.header("webhook-id").to_string())
                .collect();
            let open = accepted
                .iter()
                .filter(|a| !delivered.contains(&a.id) && !dead.contains(&a.id))
                .count();
            if open == 0 || Instant::now() >= deadline {
                return dead;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Every dead letter's id, through a running replica's admin API; `None` if the
    /// listing failed on the way.
    async fn dead_letters(&self) -> Option<HashSet<String>> {
        let mut ids = HashSet::new();
        let replica = self.replicas.first()?;
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/dead-letters/{}?limit=500", replica.admin, self.name);
            if let Some(after) = &after {
                url.push_str(&format!("&after={after}"));
            }
            let response = http_client()
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())?;
            let page: serde_json::Value = response.json().await.ok()?;
            for letter in page["dead_letters"].as_array()? {
                ids.insert(letter["id"].as_str()?.to_string());
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return Some(ids),
            }
        }
    }

    fn keep_log(&self, replica: &Hookbridge) {
        let logs = self.dir.path().join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let name = format!("{}.log", replica.ingress.replace([':', '/'], "_"));
        let _ = std::fs::write(logs.join(name), replica.log_text());
    }

    /// Writes the schedule applied, the accepted events, every request and the replicas'
    /// logs where they outlive the run.
    fn keep_history(&self, receiver: &Receiver, accepted: &[Accepted]) -> std::path::PathBuf {
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("chaos")
            .join(format!("{}-seed{}", self.plan.backend, self.plan.seed));
        let _ = std::fs::remove_dir_all(&kept);
        std::fs::create_dir_all(kept.join("logs")).unwrap();
        std::fs::write(kept.join("schedule.txt"), self.applied.join("\n")).unwrap();
        let accepted: Vec<String> = accepted
            .iter()
            .map(|a| format!("{} {} {}", a.key, a.seq, a.id))
            .collect();
        std::fs::write(kept.join("accepted.txt"), accepted.join("\n")).unwrap();
        let t0 = receiver.received().iter().map(|r| r.at).min();
        let requests: Vec<String> = receiver
            .received()
            .iter()
            .map(|r| {
                let since = |t: Instant| t0.map_or(0.0, |t0| (t - t0).as_secs_f64());
                let (key, seq) = crate::support::receiver::seq_of(r);
                format!(
                    "{:.3} {:.3} {key} {seq} {} {} {}",
                    since(r.at),
                    since(r.finished),
                    r.status,
                    if r.abandoned { "abandoned" } else { "answered" },
                    r.header("webhook-id")
                )
            })
            .collect();
        std::fs::write(kept.join("requests.txt"), requests.join("\n")).unwrap();
        for replica in &self.replicas {
            self.keep_log(replica);
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) {
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), kept.join("logs").join(entry.file_name()));
            }
        }
        kept
    }
}
