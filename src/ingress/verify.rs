//! Verifiers: is this webhook really from the sender the route expects?
//!
//! Each scheme is compiled once from the config (secrets decoded, header names parsed) and
//! then checks requests against the raw body bytes. Every comparison of a secret or a
//! signature is constant-time; schemes with timestamps reject requests outside the
//! tolerance in both directions, which bounds replay.

use axum::http::{HeaderMap, HeaderName};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::{SignatureEncoding, VerifyConfig};
use crate::crypto::{constant_time_eq, hmac_sha256};
use crate::standard_webhooks;

/// Why a request failed verification; the message is safe to return to the sender.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("missing header {0}")]
    MissingNamedHeader(String),
    #[error("malformed {header} header: {why}")]
    Malformed { header: String, why: &'static str },
    #[error("the timestamp is {0} seconds away from now, outside the tolerance")]
    Stale(i64),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the token does not match")]
    BadToken,
}

/// Holds secrets: its `Debug` shows the kind only.
pub enum Verifier {
    None,
    Token {
        header: HeaderName,
        value: Vec<u8>,
    },
    HmacSha256 {
        secret: Vec<u8>,
        header: HeaderName,
        prefix: String,
        encoding: SignatureEncoding,
    },
    Github {
        secret: Vec<u8>,
    },
    Stripe {
        secret: Vec<u8>,
        tolerance_secs: i64,
    },
    StandardWebhooks {
        secret: standard_webhooks::Secret,
        tolerance_secs: i64,
    },
    Slack {
        secret: Vec<u8>,
        tolerance_secs: i64,
    },
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Verifier::None => "none",
            Verifier::Token { .. } => "token",
            Verifier::HmacSha256 { .. } => "hmac_sha256",
            Verifier::Github { .. } => "github",
            Verifier::Stripe { .. } => "stripe",
            Verifier::StandardWebhooks { .. } => "standard_webhooks",
            Verifier::Slack { .. } => "slack",
        };
        f.debug_struct("Verifier")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds a verifier from a validated config.
    pub fn from_config(config: &VerifyConfig) -> Verifier {
        let header =
            |name: &str| HeaderName::from_bytes(name.as_bytes()).expect("validated header name");
        match config {
            VerifyConfig::None => Verifier::None,
            VerifyConfig::Token {
                header: name,
                value,
            } => Verifier::Token {
                header: header(name),
                value: value.expose().as_bytes().to_vec(),
            },
            VerifyConfig::HmacSha256 {
                secret,
                header: name,
                prefix,
                encoding,
            } => Verifier::HmacSha256 {
                secret: secret.expose().as_bytes().to_vec(),
                header: header(name),
                prefix: prefix.clone(),
                encoding: *encoding,
            },
            VerifyConfig::Github { secret } => Verifier::Github {
                secret: secret.expose().as_bytes().to_vec(),
            },
            VerifyConfig::Stripe { secret, tolerance } => Verifier::Stripe {
                secret: secret.expose().as_bytes().to_vec(),
                tolerance_secs: tolerance.0.as_secs() as i64,
            },
            VerifyConfig::StandardWebhooks { secret, tolerance } => Verifier::StandardWebhooks {
                secret: standard_webhooks::Secret::parse(secret.expose())
                    .expect("validated webhook secret"),
                tolerance_secs: tolerance.0.as_secs() as i64,
            },
            VerifyConfig::Slack { secret, tolerance } => Verifier::Slack {
                secret: secret.expose().as_bytes().to_vec(),
                tolerance_secs: tolerance.0.as_secs() as i64,
            },
        }
    }

    /// The header that carries a secret itself, which must not be copied into the envelope.
    pub fn secret_header(&self) -> Option<&HeaderName> {
        match self {
            Verifier::Token { header, .. } => Some(header),
            _ => None,
        }
    }

    /// Checks a request; `now` is the current Unix time in seconds.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), VerifyError> {
        match self {
            Verifier::None => Ok(()),
            Verifier::Token { header, value } => {
                let given = headers
                    .get(header)
                    .ok_or_else(|| VerifyError::MissingNamedHeader(header.to_string()))?;
                // Hash both sides so the comparison does not leak the token's length either.
                let (a, b) = (
                    hmac_sha256(b"token", &[given.as_bytes()]),
                    hmac_sha256(b"token", &[value]),
                );
                if constant_time_eq(&a, &b) {
                    Ok(())
                } else {
                    Err(VerifyError::BadToken)
                }
            }
            Verifier::HmacSha256 {
                secret,
                header,
                prefix,
                encoding,
            } => {
                let name = header.as_str();
                let given = text_header(headers, name)?
                    .ok_or_else(|| VerifyError::MissingNamedHeader(name.to_string()))?;
                let encoded =
                    given
                        .strip_prefix(prefix.as_str())
                        .ok_or(VerifyError::Malformed {
                            header: name.to_string(),
                            why: "the expected prefix is missing",
                        })?;
                let signature = match encoding {
                    SignatureEncoding::Hex => hex::decode(encoded.trim()).ok(),
                    SignatureEncoding::Base64 => STANDARD.decode(encoded.trim()).ok(),
                }
                .ok_or(VerifyError::Malformed {
                    header: name.to_string(),
                    why: "the signature is not valid hex or base64",
                })?;
                check_mac(&hmac_sha256(secret, &[body]), &signature)
            }
            Verifier::Github { secret } => {
                const HEADER: &str = "x-hub-signature-256";
                let given = text_header(headers, HEADER)?
                    .ok_or(VerifyError::MissingHeader("X-Hub-Signature-256"))?;
                let signature = given
                    .strip_prefix("sha256=")
                    .and_then(|hex_sig| hex::decode(hex_sig).ok())
                    .ok_or(VerifyError::Malformed {
                        header: "X-Hub-Signature-256".into(),
                        why: "expected sha256=<hex>",
                    })?;
                check_mac(&hmac_sha256(secret, &[body]), &signature)
            }
            Verifier::Stripe {
                secret,
                tolerance_secs,
            } => verify_stripe(headers, body, secret, *tolerance_secs, now),
            Verifier::StandardWebhooks {
                secret,
                tolerance_secs,
            } => {
                let id = text_header(headers, "webhook-id")?
                    .ok_or(VerifyError::MissingHeader("webhook-id"))?;
                let timestamp = text_header(headers, "webhook-timestamp")?
                    .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
                let signatures = text_header(headers, "webhook-signature")?
                    .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
                check_timestamp("webhook-timestamp", timestamp, *tolerance_secs, now)?;
                if secret.verify(id, timestamp, body, signatures) {
                    Ok(())
                } else {
                    Err(VerifyError::BadSignature)
                }
            }
            Verifier::Slack {
                secret,
                tolerance_secs,
            } => {
                let timestamp = text_header(headers, "x-slack-request-timestamp")?
                    .ok_or(VerifyError::MissingHeader("X-Slack-Request-Timestamp"))?;
                let given = text_header(headers, "x-slack-signature")?
                    .ok_or(VerifyError::MissingHeader("X-Slack-Signature"))?;
                check_timestamp("X-Slack-Request-Timestamp", timestamp, *tolerance_secs, now)?;
                let signature = given
                    .strip_prefix("v0=")
                    .and_then(|hex_sig| hex::decode(hex_sig).ok())
                    .ok_or(VerifyError::Malformed {
                        header: "X-Slack-Signature".into(),
                        why: "expected v0=<hex>",
                    })?;
                check_mac(
                    &hmac_sha256(secret, &[b"v0:", timestamp.as_bytes(), b":", body]),
                    &signature,
                )
            }
        }
    }
}

/// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` over `<t>.<body>`.
fn verify_stripe(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), VerifyError> {
    const NAME: &str = "Stripe-Signature";
    let given =
        text_header(headers, "stripe-signature")?.ok_or(VerifyError::MissingHeader(NAME))?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in given.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", sig)) => signatures.push(sig),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed {
        header: NAME.into(),
        why: "no t= timestamp",
    })?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed {
            header: NAME.into(),
            why: "no v1= signature",
        });
    }
    check_timestamp(NAME, timestamp, tolerance_secs, now)?;
    let expected = hmac_sha256(secret, &[timestamp.as_bytes(), b".", body]);
    let matches = signatures
        .iter()
        .filter_map(|sig| hex::decode(sig).ok())
        .any(|sig| constant_time_eq(&sig, &expected));
    if matches {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

fn text_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, VerifyError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| VerifyError::Malformed {
                header: name.to_string(),
                why: "not visible ASCII",
            }),
    }
}

fn check_mac(expected: &[u8], given: &[u8]) -> Result<(), VerifyError> {
    if constant_time_eq(expected, given) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

fn check_timestamp(
    header: &str,
    value: &str,
    tolerance_secs: i64,
    now: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = value.trim().parse().map_err(|_| VerifyError::Malformed {
        header: header.to_string(),
        why: "not a Unix timestamp",
    })?;
    let skew = now.saturating_sub(timestamp);
    if skew.unsigned_abs() > tolerance_secs.unsigned_abs() {
        Err(VerifyError::Stale(skew))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use std::time::Duration;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    fn tolerance() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(300))
    }

    #[test]
    fn standard_webhooks_spec_vector() {
        let verifier = Verifier::from_config(&VerifyConfig::StandardWebhooks {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            tolerance: tolerance(),
        });
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(verifier.verify(&h, body, 1614265330), Ok(()));
        assert_eq!(
            verifier.verify(&h, body, 1614265330 + 301),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verifier.verify(&h, b"{}", 1614265330),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn github_signature() {
        let verifier = Verifier::from_config(&VerifyConfig::Github {
            secret: "It's a Secret to Everybody".into(),
        });
        // The example of GitHub's "Validating webhook deliveries" documentation.
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(verifier.verify(&h, b"Hello, World!", 0), Ok(()));
        assert_eq!(
            verifier.verify(&h, b"Hello, World", 0),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verifier.verify(&HeaderMap::new(), b"", 0),
            Err(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn stripe_accepts_any_v1_and_checks_time() {
        let secret = "whsec_test";
        let verifier = Verifier::from_config(&VerifyConfig::Stripe {
            secret: secret.into(),
            tolerance: tolerance(),
        });
        let body = br#"{"id":"evt_1"}"#;
        let good = hex::encode(hmac_sha256(secret.as_bytes(), &[b"1000.", body]));
        let h = headers(&[(
            "stripe-signature",
            &format!("t=1000,v1=00ff,v1={good},v0=abc"),
        )]);
        assert_eq!(verifier.verify(&h, body, 1100), Ok(()));
        assert!(matches!(
            verifier.verify(&h, body, 2000),
            Err(VerifyError::Stale(1000))
        ));
        let h = headers(&[("stripe-signature", "v1=00")]);
        assert!(matches!(
            verifier.verify(&h, body, 1000),
            Err(VerifyError::Malformed { .. })
        ));
    }

    #[test]
    fn hmac_base64_with_prefix_and_token() {
        let verifier = Verifier::from_config(&VerifyConfig::HmacSha256 {
            secret: "s".into(),
            header: "X-Shopify-Hmac-Sha256".into(),
            prefix: String::new(),
            encoding: SignatureEncoding::Base64,
        });
        let sig = STANDARD.encode(hmac_sha256(b"s", &[b"body"]));
        assert_eq!(
            verifier.verify(&headers(&[("x-shopify-hmac-sha256", &sig)]), b"body", 0),
            Ok(())
        );
        assert_eq!(
            verifier.verify(&headers(&[("x-shopify-hmac-sha256", &sig)]), b"other", 0),
            Err(VerifyError::BadSignature)
        );

        let token = Verifier::from_config(&VerifyConfig::Token {
            header: "X-Token".into(),
            value: "abc".into(),
        });
        assert_eq!(
            token.verify(&headers(&[("x-token", "abc")]), b"", 0),
            Ok(())
        );
        assert_eq!(
            token.verify(&headers(&[("x-token", "abd")]), b"", 0),
            Err(VerifyError::BadToken)
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{ConfigDuration, SignatureEncoding};

    fn verifiers() -> Vec<Verifier> {
        let tolerance = ConfigDuration(std::time::Duration::from_secs(300));
        [
            VerifyConfig::Token {
                header: "X-Token".into(),
                value: "t0ken".into(),
            },
            VerifyConfig::HmacSha256 {
                secret: "s".into(),
                header: "X-Sig".into(),
                prefix: "sha256=".into(),
                encoding: SignatureEncoding::Hex,
            },
            VerifyConfig::HmacSha256 {
                secret: "s".into(),
                header: "X-Sig".into(),
                prefix: String::new(),
                encoding: SignatureEncoding::Base64,
            },
            VerifyConfig::Github { secret: "s".into() },
            VerifyConfig::Stripe {
                secret: "s".into(),
                tolerance,
            },
            VerifyConfig::StandardWebhooks {
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                tolerance,
            },
            VerifyConfig::Slack {
                secret: "s".into(),
                tolerance,
            },
        ]
        .iter()
        .map(Verifier::from_config)
        .collect()
    }

    const HEADERS: [&str; 9] = [
        "x-token",
        "x-sig",
        "x-hub-signature-256",
        "stripe-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-slack-signature",
        "x-slack-request-timestamp",
    ];

    proptest! {
        /// Every verifier, any header values (timestamps of any size included), any body,
        /// any clock: accepted or refused, never a panic, and never accepted by chance.
        #[test]
        fn any_request_is_verified_without_a_panic(
            values in proptest::collection::vec(
                prop_oneof![
                    "[ -~]{0,80}",
                    any::<i64>().prop_map(|n| n.to_string()),
                    "t=-?[0-9]{1,20},v1=[0-9a-f]{0,64}",
                    "v[01],[A-Za-z0-9+/=]{0,50}",
                ],
                HEADERS.len(),
            ),
            body in proptest::collection::vec(any::<u8>(), 0..128),
            now in any::<i64>(),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in HEADERS.iter().zip(&values) {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    headers.insert(*name, value);
                }
            }
            for verifier in verifiers() {
                let accepted = verifier.verify(&headers, &body, now).is_ok();
                // Only the token verifier can be satisfied without the secret's HMAC.
                let is_token = matches!(verifier, Verifier::Token { .. });
                prop_assert!(!accepted || is_token, "accepted by chance: {:?}", verifier);
            }
        }
    }
}
