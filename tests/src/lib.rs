//! Fixtures shared by crossover's integration tests: crafted packets,
//! a harness that runs the real programs on them with `BPF_PROG_TEST_RUN`,
//! network namespaces for real traffic, and a fake Kubernetes API server.
pub mod agents;
pub mod apiserver;
pub mod browser;
pub mod counting;
pub mod fleet;
pub mod footprint;
pub mod fuzz;
pub mod harness;
pub mod kubelab;
pub mod lab;
pub mod migration;
pub mod mtu;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod prometheus;
pub mod simulated_agents;
pub mod standin;

/// Every test here loads programs into the running kernel or builds
/// network namespaces: it needs root. CI runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN): run it as root"
    );
}
