//! Pacing: `rate_limit` holds a subscription to its rate, and the Retry-After of a 429 is
//! honoured before the next attempt.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::delivery::{config, post};
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

#[tokio::test]
async fn rate_limit_holds_and_retry_after_is_honoured() {
    let receiver = Receiver::start().await;
    let first_429 = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let seen = first_429.clone();
    receiver.answer(move |headers, _| {
        let id = headers["webhook-id"].to_str().unwrap().to_string();
        if headers["hookbridge-event-type"] == "throttled" && seen.lock().unwrap().insert(id) {
            return Reply {
                status: 429,
                delay: Duration::ZERO,
                retry_after: Some(2),
            };
        }
        Reply::status(200)
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: limited\n    topics: [events]\n    url: {}\n    ordering: none\n    rate_limit: {{ per_second: 50, burst: 1 }}\n    filter: {{ types: [paced] }}\n  - name: polite\n    topics: [events]\n    url: {}\n    filter: {{ types: [throttled] }}\n    retry: {{ initial_backoff: 10ms, max_backoff: 20ms }}\n",
        receiver.url, receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    let throttled = post(
        &client,
        &server,
        "throttled",
        serde_json::json!({"key": "t"}),
    )
    .await;
    for seq in 0..150 {
        post(
            &client,
            &server,
            "paced",
            serde_json::json!({"key": format!("p{seq}"), "seq": seq}),
        )
        .await;
    }
    receiver
        .wait_for(
            "150 paced and the throttled one",
            Duration::from_secs(30),
            |r| {
                r.iter()
                    .filter(|r| r.header("hookbridge-event-type") == "paced")
                    .count()
                    >= 150
                    && r.iter()
                        .filter(|r| r.header("webhook-id") == throttled)
                        .count()
                        >= 2
            },
        )
        .await;
    let received = receiver.received();
    let paced: Vec<Instant> = received
        .iter()
        .filter(|r| r.header("hookbridge-event-type") == "paced")
        .map(|r| r.at)
        .collect();
    let span = paced.last().unwrap().duration_since(paced[0]);
    let rate = (paced.len() - 1) as f64 / span.as_secs_f64();
    eprintln!("rate limit 50/s: measured {rate:.1}/s over {span:?}");
    assert!(
        (45.0..=55.0).contains(&rate),
        "within 10% of 50/s: {rate:.1}"
    );

    let tries: Vec<Instant> = received
        .iter()
        .filter(|r| r.header("webhook-id") == throttled)
        .map(|r| r.at)
        .collect();
    let gap = tries[1].duration_since(tries[0]);
    assert!(
        gap >= Duration::from_millis(1950) && gap < Duration::from_secs(4),
        "Retry-After: 2 honoured: {gap:?}"
    );
}
