//! crossover: measures, per node pair and per overlay, what a live CNI
//! migration to Cilium loses, from passive TC programs in the kernel.
pub mod agent;
pub mod cli;
pub mod cluster;
pub mod connections;
pub mod conntrack;
pub mod datapath;
pub mod duration;
pub mod error;
pub mod exposition;
pub mod iface;
pub mod loss;
pub mod migrate;
pub mod netns;
pub mod probe;
pub mod shape;
pub mod table;

pub use error::{Error, Result};
