//! The egress guard (`server.egress`): with `guard_config: true`, a subscriber on this
//! machine is refused in every spelling of its address (a name, `127.1`, `0x7f000001`,
//! `[::ffff:127.0.0.1]`): nothing reaches it, and the attempts fail with `egress-denied`
//! in status and metrics; inside `allow_networks` it is delivered to.

use std::time::{Duration, Instant};

use crate::support::delivery::config;
use crate::support::receiver::Receiver;
use crate::support::scrape::{scrape, value};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_deliveries_never_reach_a_private_address_however_it_is_written() {
    let receiver = Receiver::start().await;
    assert!(
        receiver.url.starts_with("http://127.0.0.1:"),
        "{}",
        receiver.url
    );
    let spelled = |host: &str| receiver.url.replacen("127.0.0.1", host, 1);
    let spellings = [
        spelled("localhost"),
        spelled("127.1"),
        spelled("0x7f000001"),
        spelled("[::ffff:127.0.0.1]"),
    ];
    let subs: String = spellings
        .iter()
        .enumerate()
        .map(|(i, url)| format!("  - name: s{i}\n    topics: [events]\n    url: {url}\n    retry: {{ initial_backoff: 100ms, max_backoff: 200ms }}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let guarded = config(dir.path(), &subs).replace(
        "  max_body: 64KiB\n",
        "  max_body: 64KiB\n  egress: { guard_config: true, allow_networks: [10.99.0.0/16] }\n",
    );
    let server = Hookbridge::start(dir.path(), &guarded);
    post_accepted(&server, 1, |_| "k".into()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, spelling) in spellings.iter().enumerate() {
        loop {
            let status = admin_get(&server.admin, &format!("/v1/subscriptions/s{i}"), "").await;
            let error = status["last_error"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if error.contains("egress-denied") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "s{i} ({spelling}) refused: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, metrics) = scrape(&server.admin).await;
    for i in 0..spellings.len() {
        let denied = value(
            &metrics,
            "hookbridge_delivery_attempts_total",
            &[
                ("subscription", &format!("s{i}")),
                ("outcome", "egress_denied"),
            ],
        );
        assert!(denied >= 1.0, "s{i}: {denied} attempts egress_denied");
    }
    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    drop(server);

    // Inside allow_networks, delivered.
    let dir = tempfile::tempdir().unwrap();
    let allowed = config(
        dir.path(),
        &format!(
            "  - name: allowed\n    topics: [events]\n    url: {}\n",
            spelled("127.1")
        ),
    )
    .replace(
        "  max_body: 64KiB\n",
        "  max_body: 64KiB\n  egress: { guard_config: true, allow_networks: [127.0.0.0/8] }\n",
    );
    let server = Hookbridge::start(dir.path(), &allowed);
    post_accepted(&server, 1, |_| "k".into()).await;
    receiver
        .wait_for("the delivery", Duration::from_secs(20), |r| !r.is_empty())
        .await;
}

#[test]
fn a_network_that_is_not_cidr_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config(dir.path(), "").replace(
        "  max_body: 64KiB\n",
        "  max_body: 64KiB\n  egress: { allow_networks: [10.0.0.0/8, 10.0.0/33] }\n",
    );
    let said = refused_at_start(&bad);
    assert_names(&said, "server.egress.allow_networks[1]", "cidr");
}
