//! Preflight checks: is this cluster ready for a live migration to Cilium?
