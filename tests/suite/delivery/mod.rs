//! What a delivery is and what becomes of a failed one, on the embedded log against a real
//! HTTP receiver: payload modes, signatures, forwarded headers, filters and records of other
//! producers; dead letters, timeouts and redirects; rate limits and Retry-After; bounded
//! memory behind a subscriber that never answers. (Order and head-of-line blocking: the
//! `ordering` module; what a restart delivers again: `completion`.)

mod adaptive;
mod backlog;
mod expressions;
mod failures;
mod pacing;
mod payload;
mod refusals;
