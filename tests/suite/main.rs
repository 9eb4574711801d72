//! hookbridge's integration suite, one test binary: the real `hookbridge` binary over real
//! sockets, against real brokers, one module per thing proven. `support` holds what the
//! modules share (the binary as a subprocess, the HTTP receiver, the brokers, certificates).

mod support;

mod brokers;
mod chaos;
mod completion;
mod config;
mod delivery;
mod durability;
mod handover;
mod ingress;
mod observability;
mod operations;
mod ordering;
mod parking;
mod reload;
mod roles;
mod security;
mod slow_senders;
