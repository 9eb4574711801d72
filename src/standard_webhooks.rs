//! The Standard Webhooks signature scheme (<https://www.standardwebhooks.com>), used both to
//! verify incoming webhooks and to sign outgoing ones.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature header is
//! a space-separated list of `v1,<base64 HMAC-SHA256>`, one per secret while rotating.
//! Secrets are base64, conventionally prefixed with `whsec_`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::crypto::{constant_time_eq, hmac_sha256};

#[derive(Debug, thiserror::Error)]
#[error("not a Standard Webhooks secret: expected `whsec_` followed by base64 ({0})")]
pub struct SecretError(base64::DecodeError);

/// A decoded signing key.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        STANDARD.decode(encoded).map(Secret).map_err(SecretError)
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mac = hmac_sha256(
            &self.0,
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        format!("v1,{}", STANDARD.encode(mac))
    }

    /// True when any `v1` entry of a `webhook-signature` header is this secret's signature.
    pub fn verify(&self, id: &str, timestamp: &str, body: &[u8], signature_header: &str) -> bool {
        let mac = hmac_sha256(
            &self.0,
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        signature_header
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            .any(|candidate| constant_time_eq(&candidate, &mac))
    }
}

/// The `webhook-signature` header value for a message signed with every secret.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect();
    signatures.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published with the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn spec_vector_signs() {
        assert_eq!(
            Secret::parse(SECRET).unwrap().sign(ID, TIMESTAMP, BODY),
            SIGNATURE
        );
    }

    #[test]
    fn spec_vector_verifies_among_several_signatures() {
        let secret = Secret::parse(SECRET).unwrap();
        let header = format!("v1,bm90IGl0 {SIGNATURE} v2,whatever");
        assert!(secret.verify(ID, "1614265330", BODY, &header));
        assert!(!secret.verify(ID, "1614265331", BODY, &header));
        assert!(!secret.verify(ID, "1614265330", b"{}", &header));
    }

    #[test]
    fn rejects_non_base64_secret() {
        assert!(Secret::parse("whsec_not base64!").is_err());
    }
}
