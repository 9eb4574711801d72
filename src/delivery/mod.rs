//! Delivery (ARCHITECTURE.md §5): events on topics become signed, retried, ordered webhooks.
//!
//! The data path, one module per step, none using one before it:
//! [`engine`] runs the configured subscriptions →
//! [`subscription`] joins a consumer group and gets partition streams →
//! [`partition`] fans records out into [`lanes`] and tracks commits ([`commit`]), handing
//! the partition back through [`release`] →
//! [`lane`] delivers one event at a time, retrying in place ([`retry`], [`breaker`]),
//! as many on the wire at once as [`limit`] lets →
//! [`attempt`] signs and POSTs the request [`payload`] built through the [`client`]
//! (each attempt written to its [`attempt_log`]) → done,
//! or [`dead_letter`], or, for a key failing too long, [`parking`] (its keys kept in
//! [`parked_keys`]). Dead letters and parked events are copies of a consumed record published
//! to side topics the same way ([`side_topic`]); an operator's redrives and replays write
//! such copies to the resend topic ([`resend`]), which the subscription reads like any
//! other.
//!
//! [`runtime`] is what every step reads about its subscription: settings, limits, breaker,
//! status. One engine serves every broker: it only sees the `Subscriber` and `Publisher`
//! traits.

mod attempt;
mod attempt_log;
mod breaker;
mod client;
mod commit;
mod dead_letter;
mod engine;
mod event;
mod filter;
mod key_locks;
mod lane;
mod lanes;
mod limit;
mod parked_keys;
mod parking;
mod parking_carry;
mod partition;
mod payload;
mod progress;
mod release;
pub mod resend;
mod retry;
mod runtime;
mod side_topic;
mod status;
mod subscription;

pub use attempt_log::AttemptRecord;
pub use engine::{Delivery, leave_out_unbuildable, unbuildable};
pub use event::{Decode, Event};
pub use filter::{Filter, TypeFilter};
pub use payload::envelope_json;
pub use runtime::{DeliveryError, SubscriptionRuntime};
pub use side_topic::copy as copy_record;
