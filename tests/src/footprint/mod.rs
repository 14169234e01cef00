//! The agent's footprint measured from outside (`cargo xtask bench
//! scale`): a namespace lab of one node and a sink, a pod sending real
//! traffic, the release agent as a process, and /proc read around it.
pub mod agent;
pub mod auth;
pub mod dumps;
pub mod probes;
pub mod proc;
pub mod readers;
pub mod requests;
pub mod topology;
pub mod traffic;
