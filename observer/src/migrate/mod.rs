//! `crossover migrate`: walks Cilium's documented live migration node by
//! node over the cluster's API, and steps forward only while the loss the
//! agents measure stays under the threshold.
pub mod preflight;
