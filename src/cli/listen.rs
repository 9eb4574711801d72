//! `hookbridge listen`: a receiver on this machine that prints every webhook it gets (its
//! headers, its body, whether its Standard Webhooks signature verifies) and answers it, to
//! see a subscription's deliveries before pointing it at a real service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use hookbridge::standard_webhooks::Secret;

use super::Output;

/// What `listen` was asked to do.
pub struct Listen {
    pub listen: SocketAddr,
    pub secrets: Vec<String>,
    pub status: u16,
    pub output: Output,
}

struct Receiver {
    secrets: Vec<Secret>,
    status: StatusCode,
    output: Output,
    received: AtomicU64,
}

pub async fn listen(args: Listen) -> anyhow::Result<()> {
    let secrets = args
        .secrets
        .iter()
        .map(|s| Secret::parse(s).context("--secret"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let status = StatusCode::from_u16(args.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .context("--status must be an HTTP status from 200 to 999")?;
    let receiver = Arc::new(Receiver {
        secrets,
        status,
        output: args.output,
        received: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    eprintln!(
        "listening on http://{address}/ (any path), answering {}{}; Ctrl-C to stop",
        status.as_u16(),
        if receiver.secrets.is_empty() {
            ", signatures not checked (--secret whsec_… to check them)"
        } else {
            ", checking signatures"
        }
    );
    let app = axum::Router::new().fallback(receive).with_state(receiver);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let request = Received {
        n: receiver.received.fetch_add(1, Ordering::Relaxed) + 1,
        signature: receiver.signature(&headers, &body),
        method,
        uri,
        headers,
        body,
    };
    match receiver.output {
        Output::Json => println!("{}", request.as_json()),
        Output::Table => print!("{}", request.as_text()),
    }
    receiver.status
}

impl Receiver {
    fn signature(&self, headers: &HeaderMap, body: &[u8]) -> String {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(signature) = header("webhook-signature") else {
            return "unsigned".into();
        };
        let (Some(id), Some(timestamp)) = (header("webhook-id"), header("webhook-timestamp"))
        else {
            return "NOT VERIFIED (webhook-id or webhook-timestamp missing)".into();
        };
        if self.secrets.is_empty() {
            return "not checked".into();
        }
        if !self
            .secrets
            .iter()
            .any(|s| s.verify(id, timestamp, body, signature))
        {
            return "NOT VERIFIED".into();
        }
        // Receivers refuse a timestamp far from their clock (replays); Standard Webhooks
        // suggests five minutes.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match timestamp.parse::<i64>() {
            Ok(t) if (now - t).abs() <= 300 => "verified".into(),
            Ok(t) => format!(
                "verified, but its timestamp is {}s from this clock",
                now - t
            ),
            Err(_) => "NOT VERIFIED (webhook-timestamp is not a number)".into(),
        }
    }
}

/// `text` with control characters escaped, so what a sender sent cannot drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// One request, as printed.
struct Received {
    /// Its number since `listen` started.
    n: u64,
    signature: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn as_text(&self) -> String {
        let (n, method, uri) = (self.n, &self.method, &self.uri);
        let mut text = format!("── #{n} {method} {uri}  signature: {}\n", self.signature);
        for (name, value) in &self.headers {
            let value = printable(&String::from_utf8_lossy(value.as_bytes()));
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.push('\n');
        text.push_str(
            &match serde_json::from_slice::<serde_json::Value>(&self.body) {
                Ok(json) => serde_json::to_string_pretty(&json).expect("JSON prints"),
                Err(_) => printable(&String::from_utf8_lossy(&self.body)),
            },
        );
        text.push_str("\n\n");
        text
    }

    fn as_json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.to_string(), value.into())
            })
            .collect();
        serde_json::json!({
            "n": self.n,
            "method": self.method.as_str(),
            "path": self.uri.to_string(),
            "signature": self.signature,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}
