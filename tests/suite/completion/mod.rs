//! G8: a crash, a stop, a restart or a partition moving to another replica redelivers only
//! what was not done yet, and all of it.

mod acks;
mod restarts;
mod stops;
