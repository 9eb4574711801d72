//! The resend topic (`hookbridge.resend.<subscription>`): where an operator's redrive of
//! dead letters and replay of past events put the events to send again. Only the
//! subscription's own group reads it, so they reach that subscription and no other; they
//! are delivered like any event (in key order, retried, parked, dead-lettered), so a
//! redrive is as durable as a webhook (see `operations`).
//!
//! A resent copy is the original record, value and headers unchanged, plus `hb-resend-*`
//! headers: the operation, where the original sits, who asked and when, and the event's
//! webhook id (a foreign record's id is derived from where it sits, which a copy changes).

use std::time::SystemTime;

use bytestring::ByteString;

use super::event::Event;

/// The operation that resent the event.
pub const HEADER_OPERATION: &str = "hb-resend-operation";
/// Where the original sits: `<topic>/<partition>/<offset>`.
pub const HEADER_SOURCE: &str = "hb-resend-source";
/// Who asked (as the operator's client said).
pub const HEADER_BY: &str = "hb-resend-by";
/// When the operation started (RFC 3339).
pub const HEADER_AT: &str = "hb-resend-at";
/// The event's webhook id.
pub const HEADER_ID: &str = "hb-resend-id";

/// An event read from the resend topic takes back its webhook id, and starts afresh: its
/// retries and `max_age` count from when it was resent, not from its first arrival.
pub fn restore(event: &mut Event) {
    if let Some(id) = event
        .record
        .header(HEADER_ID)
        .and_then(|v| ByteString::try_from(v.clone()).ok())
        .filter(|id| !id.is_empty())
    {
        event.id = id;
    }
    let resent = super::event::record_time(&event.record);
    event.received_at = resent.min(SystemTime::now());
    event.prior_attempts = 0;
}
