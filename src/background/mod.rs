//! Tasks beside the forwarding path: the watchdog (stalls, cursor idling),
//! auto-explain of slow aggregates, and the upstream health probe.

pub mod explain;
pub mod health;
pub mod topology;
pub mod watchdog;
