//! The ingress against the real binary: what it accepts becomes an envelope on the log,
//! byte for byte; what it refuses gets its exact status and a problem+json body, and
//! nothing of it is published. (Slow senders: `slow_senders`; the broker's deadline:
//! `durability`.)

mod accepted;
mod line_breaks;
mod rejected;

use crate::support::base_config;

const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(dir: &std::path::Path) -> String {
    base_config(dir)
        + r#"
routes:
  - name: github
    topic: webhooks.github
    verify: { kind: github, secret: gh-secret }
    event_type: { header: X-GitHub-Event }
    key: { json: /repository/full_name }
    idempotency: { header: X-GitHub-Delivery, required: true }
  - name: stripe
    topic: webhooks.stripe
    verify: { kind: stripe, secret: whsec_stripe_test, tolerance: 5m }
    event_type: { json: /type }
    key: { json: /data/object/customer }
    idempotency: { json: /id }
  - name: slack
    topic: webhooks.slack
    verify: { kind: slack, secret: slack-signing-secret }
    event_type: { json: /event/type }
    key: { json: /team_id }
    idempotency: { json: /event_id }
  - name: standard
    topic: webhooks.standard
    verify: { kind: standard_webhooks, secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }
    event_type: { json: /type }
    idempotency: { header: webhook-id }
  - name: spec-vector
    topic: webhooks.standard
    # The spec's vector was signed in 2021: accept it by widening the tolerance.
    verify: { kind: standard_webhooks, secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, tolerance: 100000d }
    idempotency: { header: webhook-id }
  - name: shopify
    topic: webhooks.shopify
    verify: { kind: hmac_sha256, secret: shpss_secret, header: X-Shopify-Hmac-Sha256, encoding: base64 }
    event_type: { header: X-Shopify-Topic }
    key: { header: X-Shopify-Shop-Domain }
  - name: internal
    topic: webhooks.internal
    verify: { kind: token, header: X-Api-Key, value: tok-123 }
    event_type: { value: internal.event }
    drop_headers: [X-Internal-Trace]
  - name: demo
    topic: webhooks.demo
    verify: { kind: none }
    event_type: { header: X-Event-Type, default: demo }
"#
}
