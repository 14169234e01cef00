//! The loss model: what a node pair lost, on which overlay and network
//! pair, by which signal. The agent serves its half (its own counters,
//! read on aligned ticks into a short ring); readers (the migration gate,
//! `crossover loss`) fetch every agent once per reading and compute the
//! pairs from both halves. No agent reads another.
//!
//! * [`signal`]: the one list of signals.
//! * [`row`]: a row of the loss matrix.
//! * [`delivery`]: delivery from two nodes' cumulative counters.
//! * [`ring`]: an agent's aligned reads of its own counters.
//! * [`dropped`]: the kernel's drops over a window, and which lie behind
//!   a row.
//! * [`kept`]: the ring's ticks kept across an agent restart.
//! * [`mtu`]: what the large probes know of a path's MTU.
//! * [`reading`]: `/api/v1/reading`, an agent's half of a window.
//! * [`client`]: the readers' keep-alive HTTP client.
//! * [`cluster`]: a reading of the whole cluster from every agent's half.
//! * [`prometheus`]: the same reading from the shipped recording rules'
//!   records in Prometheus.
//! * [`source`]: which of the two a reader uses.
//! * [`blind`]: a node's blind hooks, as a reading carries them.
pub mod blind;
pub mod client;
pub mod cluster;
pub mod delivery;
pub mod dropped;
pub mod kept;
pub mod mtu;
pub mod prometheus;
pub mod reading;
pub mod ring;
pub mod row;
pub mod signal;
pub mod source;

pub use row::{CLUSTER, LossRow};
pub use signal::Signal;
pub use source::Source;
