//! `GET /metrics`: the contract's names count what happened, and a real Prometheus server
//! (Debian's `prometheus`, installed by scripts/test) scrapes them.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::backend::Backend;
use crate::support::receiver::{Receiver, Reply, seq_of};
use crate::support::scrape::{scrape, value};
use crate::support::*;

/// 50 events delivered, 2 refused by the subscriber with a 400 (dead-lettered as `failed`),
/// one POST to a route that does not exist: each counted under its contract name.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_attempts_deliveries_and_dead_letters() {
    let backend = Backend::embedded();
    let topic = unique("metrics");
    let receiver = Receiver::start().await;
    receiver.answer(|_, body| {
        let bad = serde_json::from_slice::<serde_json::Value>(body)
            .map(|v| v["key"] == "bad")
            .unwrap_or(false);
        Reply::status(if bad { 400 } else { 200 })
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &events_config(&backend.broker(4), &topic, &subs),
    );
    let mut events: Vec<(String, u64)> = (0..50).map(|s| (format!("k{}", s % 5), s)).collect();
    events.push(("bad".into(), 50));
    events.push(("bad".into(), 51));
    post_events(
        Arc::new(Mutex::new(vec![server.ingress.clone()])),
        events,
        4,
        Duration::ZERO,
    )
    .await;
    let unknown = http_client()
        .post(server.hook_url("no-such-route"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    receiver
        .wait_for("every event answered", Duration::from_secs(30), |r| {
            let seqs: std::collections::HashSet<u64> = r.iter().map(|r| seq_of(r).1).collect();
            (0..52).all(|s| seqs.contains(&s))
        })
        .await;

    let sub = topic.as_str();
    // Dead letters are published after the 400; give the counters a moment to settle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (content_type, text) = loop {
        let (content_type, text) = scrape(&server.admin).await;
        let settled = value(
            &text,
            "hookbridge_dead_letters_total",
            &[("subscription", sub)],
        ) == 2.0
            && value(
                &text,
                "hookbridge_delivered_total",
                &[("subscription", sub)],
            ) == 50.0;
        if settled || Instant::now() > deadline {
            break (content_type, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        let got = value(&text, name, labels);
        assert_eq!(got, want, "{name}{labels:?}\n{text}");
    };
    expect(
        "hookbridge_ingress_requests_total",
        &[("route", "events"), ("status", "202")],
        52.0,
    );
    expect(
        "hookbridge_ingress_requests_total",
        &[("route", "_unknown"), ("status", "404")],
        1.0,
    );
    expect(
        "hookbridge_ingress_publish_duration_seconds_count",
        &[("route", "events")],
        52.0,
    );
    expect("hookbridge_delivered_total", &[("subscription", sub)], 50.0);
    expect(
        "hookbridge_delivery_attempts_total",
        &[("subscription", sub), ("outcome", "delivered")],
        50.0,
    );
    expect(
        "hookbridge_delivery_attempts_total",
        &[("subscription", sub), ("outcome", "failed")],
        2.0,
    );
    expect(
        "hookbridge_delivery_attempt_duration_seconds_count",
        &[("subscription", sub)],
        52.0,
    );
    expect(
        "hookbridge_delivery_end_to_end_seconds_count",
        &[("subscription", sub)],
        50.0,
    );
    expect(
        "hookbridge_dead_letters_total",
        &[("subscription", sub), ("reason", "failed")],
        2.0,
    );
    // Four partitions each of the topic, its parking topic and its resend topic.
    expect(
        "hookbridge_partitions_owned",
        &[("subscription", sub)],
        12.0,
    );
    expect("hookbridge_in_flight", &[("subscription", sub)], 0.0);
    expect("hookbridge_breaker_open", &[("subscription", sub)], 0.0);
    expect("hookbridge_parked_keys", &[("subscription", sub)], 0.0);
    expect(
        "hookbridge_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    assert!(
        value(&text, "process_resident_memory_bytes", &[]) > 1e6,
        "{text}"
    );
    assert!(value(&text, "process_open_fds", &[]) > 3.0, "{text}");
    assert!(
        value(&text, "process_cpu_seconds_total", &[]) > 0.0,
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
}

/// A private Prometheus server scraping one target every second.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\nscrape_configs:\n  - job_name: hookbridge\n    static_configs: [{{ targets: ['{target}'] }}]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the prometheus binary (Debian package prometheus; scripts/test installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of an instant PromQL query, if it has a result.
    async fn query(&self, promql: &str) -> Option<f64> {
        let query =
            percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        let response = http_client()
            .get(format!("{}/api/v1/query?query={query}", self.url))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `promql` gives `want`, at most `timeout`.
    async fn wait_for(&self, promql: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query(promql).await;
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: `{promql}` is {got:?}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus scrapes hookbridge on NATS: the target is up, and after 200 events PromQL
/// over the scraped series says 200 were accepted and 200 delivered.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_contract_metrics() {
    let backend = Backend::nats();
    let topic = unique("scraped");
    let receiver = Receiver::start().await;
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &events_config(&backend.broker(4), &topic, &subs),
    );
    let prometheus = Prometheus::start(server.admin.trim_start_matches("http://"));
    prometheus
        .wait_for("up{job=\"hookbridge\"}", 1.0, Duration::from_secs(60))
        .await;
    let events: Vec<(String, u64)> = (0..200).map(|s| (format!("k{}", s % 10), s)).collect();
    post_events(
        Arc::new(Mutex::new(vec![server.ingress.clone()])),
        events,
        8,
        Duration::ZERO,
    )
    .await;
    // What PromQL over the scraped series says, once the scrapes caught up.
    let expected = [
        (
            "sum(hookbridge_ingress_requests_total{route=\"events\",status=\"202\"})".to_string(),
            200.0,
        ),
        (
            format!("sum(hookbridge_delivered_total{{subscription=\"{topic}\"}})"),
            200.0,
        ),
        (
            format!("hookbridge_partitions_owned{{subscription=\"{topic}\"}}"),
            12.0,
        ),
        (
            format!("sum(hookbridge_consumer_lag{{subscription=\"{topic}\"}})"),
            0.0,
        ),
        (
            "count(hookbridge_build_info{job=\"hookbridge\"})".to_string(),
            1.0,
        ),
    ];
    for (promql, want) in &expected {
        prometheus
            .wait_for(promql, *want, Duration::from_secs(30))
            .await;
    }
}

/// `hookbridge_consumer_lag` rises behind a receiver that answers 503 and falls to 0 once it
/// recovers and everything is delivered and committed.
async fn lag_rises_behind_a_failing_receiver_and_falls_after(backend: Backend) {
    const EVENTS: u64 = 60;
    let topic = unique("lag");
    let receiver = Receiver::start().await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = failing.clone();
    receiver.answer(move |_, _| {
        Reply::status(if flag.load(std::sync::atomic::Ordering::SeqCst) {
            503
        } else {
            200
        })
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    retry: {{ initial_backoff: 100ms, max_backoff: 200ms, max_attempts: 1000, max_age: 1h }}\n    breaker: {{ failures: 1000000 }}\n",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &events_config(&backend.broker(2), &topic, &subs),
    );
    server
        .wait_assigned(4, "the replica owns its partitions")
        .await;
    let events: Vec<(String, u64)> = (0..EVENTS).map(|s| (format!("k{}", s % 6), s)).collect();
    post_events(
        Arc::new(Mutex::new(vec![server.ingress.clone()])),
        events,
        4,
        Duration::ZERO,
    )
    .await;
    let lag = |text: &str| value(text, "hookbridge_consumer_lag", &[("subscription", &topic)]);
    let wait_lag = |want: fn(f64) -> bool, what: &'static str| {
        let admin = server.admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, text) = scrape(&admin).await;
                if want(lag(&text)) {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: lag is {}", lag(&text));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_lag(
        |l| l >= EVENTS as f64,
        "the lag counts every event behind the failing receiver",
    )
    .await;
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_lag(
        |l| l == 0.0,
        "the lag falls to 0 once everything is delivered",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_lag_rises_behind_a_failing_receiver_and_falls_after() {
    lag_rises_behind_a_failing_receiver_and_falls_after(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_lag_rises_behind_a_failing_receiver_and_falls_after() {
    lag_rises_behind_a_failing_receiver_and_falls_after(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_lag_rises_behind_a_failing_receiver_and_falls_after() {
    lag_rises_behind_a_failing_receiver_and_falls_after(Backend::kafka()).await;
}
