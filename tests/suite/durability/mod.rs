//! G1: a webhook answered 202 is stored, whatever happens next: the process killed with -9
//! or stopped under load, a broker that does not acknowledge in time, a broker down or
//! restarted. A webhook that cannot be stored in time gets 503 with Retry-After, never 202.

mod broker_down;
mod broker_restart;
mod crash;
mod deadline;
