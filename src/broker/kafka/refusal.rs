//! Telling a refused connection from an unreachable broker.
//!
//! librdkafka keeps retrying a connection whose SASL authentication or TLS handshake the
//! broker refused, and tells only its error callback why; a metadata request meanwhile just
//! times out ("all brokers down"). [`RefusalWatch`] is the producer's client context (its
//! polling thread is the one that serves the error callback) and remembers such a refusal,
//! so start-up can stop at once with the broker's (or the verifier's) own reason and the
//! key to fix, instead of a timeout that reads like a network problem.

use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::broker::BrokerError;

/// Clones share what they saw: one goes into the client as its context, another stays
/// with whoever asks.
#[derive(Clone, Default)]
pub struct RefusalWatch {
    refusal: Arc<Mutex<Option<String>>>,
}

impl RefusalWatch {
    /// The last refusal seen, as the error start-up reports: it names the key that holds
    /// librdkafka's security settings, then the broker's answer.
    pub fn refusal(&self) -> Option<BrokerError> {
        self.refusal
            .lock()
            .expect("refusal lock")
            .clone()
            .map(BrokerError::Rejected)
    }

    /// Forgets the refusal seen: the broker answered since (a handshake refused while a
    /// broker restarted is not a reason to refuse a later reload).
    pub fn clear(&self) {
        *self.refusal.lock().expect("refusal lock") = None;
    }
}

/// Whether librdkafka's reason is an alert the broker's TLS sent (OpenSSL writes it as
/// `... alert bad certificate: SSL alert number 42`).
fn is_tls_alert(reason: &str) -> bool {
    reason.contains("SSL alert number")
}

impl ClientContext for RefusalWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", %error, reason, "Kafka client error");
        let what = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                "the broker refused the SASL authentication"
            }
            Some(RDKafkaErrorCode::SSL) => "the TLS handshake with the broker failed",
            // Under TLS 1.3 a broker that refuses the client's certificate (none, or one its
            // CA did not sign) says so with an alert after the handshake looked done to the
            // client, which librdkafka reports as a transport failure.
            Some(RDKafkaErrorCode::BrokerTransportFailure) if is_tls_alert(reason) => {
                "the broker refused the TLS handshake"
            }
            _ => return,
        };
        *self.refusal.lock().expect("refusal lock") =
            Some(format!("broker.kafka.properties: {what}: {reason}"));
    }
}
