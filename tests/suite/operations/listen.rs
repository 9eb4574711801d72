//! `hookbridge listen`: a receiver that prints what a subscription sends. Two subscriptions
//! deliver one event to it, one signed with the secret it checks and one with another: it
//! prints both, with their bodies, one signature verified and the other not.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::delivery::config;
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER: &str = "whsec_dGVzdC1vbGQtc2VjcmV0LWtleS0xMjM0NQ==";

/// A child process stopped when the test ends, however it ends.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_each_webhook_and_whether_its_signature_verifies() {
    let port = free_port();
    let mut listen = Stopped(
        Command::new(BIN)
            .args(["listen", "--port", &port.to_string(), "--secret", SECRET])
            .args(["--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Its lines, as they come.
    let (lines, printed) = std::sync::mpsc::channel::<String>();
    let stdout = listen.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: right\n    topics: [events]\n    url: http://127.0.0.1:{port}/right\n    signing: {{ secret: {SECRET} }}\n  - name: wrong\n    topics: [events]\n    url: http://127.0.0.1:{port}/wrong\n    signing: {{ secret: {OTHER} }}\n"
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let response = http_client()
        .post(server.hook_url("events"))
        .json(&serde_json::json!({"key": "k", "hello": "listen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let line = tokio::task::block_in_place(|| printed.recv_timeout(Duration::from_secs(20)))
            .expect("listen printed both deliveries");
        let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.insert(printed["path"].as_str().unwrap().to_string(), printed);
    }
    assert_eq!(seen["/right"]["signature"], "verified", "{seen:?}");
    assert_eq!(seen["/wrong"]["signature"], "NOT VERIFIED", "{seen:?}");
    for printed in seen.values() {
        let body: serde_json::Value =
            serde_json::from_str(printed["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["hello"], "listen");
        assert!(printed["headers"]["webhook-id"].is_string());
    }
}
