//! Runs crossover's real programs on crafted packets in the running kernel.
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use observer::{
    datapath::{LoadOptions, Observer, Snapshot},
    shape::{ClusterShape, Node, NodePodCidr, Role},
};

/// What every crossover program must return: TCX_NEXT / TC_ACT_UNSPEC.
pub const NEXT: i32 = -1;

/// Node A (local): underlay 192.168.50.1, legacy 10.244.0.0/24 with
/// `flannel.1` 10.244.0.0, Cilium 10.245.0.0/24 with `cilium_host`
/// 10.245.0.1. Node B: 192.168.50.2, 10.244.1.0/24, 10.245.1.0/24, the
/// same pattern. Networks: the documented migration defaults.
pub fn two_node_shape() -> ClusterShape {
    let node = |name: &str, i: u8| Node {
        name: name.into(),
        underlay: [192, 168, 50, i + 1].into(),
        overlay_addrs: vec![[10, 244, i, 0].into(), [10, 245, i, 1].into()],
        pod_cidrs: vec![
            NodePodCidr {
                role: Role::Legacy,
                cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            },
            NodePodCidr {
                role: Role::Cilium,
                cidr: format!("10.245.{i}.0/24").parse().unwrap(),
            },
        ],
    };
    ClusterShape {
        local_node: Some("node-a".into()),
        nodes: vec![node("node-a", 0), node("node-b", 1)],
        ..ClusterShape::migration_defaults()
    }
}

pub struct Harness {
    pub observer: Observer,
}

impl Harness {
    pub fn new(shape: &ClusterShape) -> Self {
        Self::with_options(shape, LoadOptions::default())
    }

    pub fn with_options(shape: &ClusterShape, options: LoadOptions) -> Self {
        crate::require_root();
        let mut observer = Observer::load(options).expect("load crossover's programs");
        observer.configure(shape).expect("write the cluster shape");
        Harness { observer }
    }

    /// Runs `program` once on `packet`; returns its verdict and checks the
    /// packet came out byte for byte as it went in.
    pub fn run(&self, program: &str, packet: &[u8]) -> i32 {
        let mut out = vec![0u8; packet.len() + 256];
        let result = self
            .observer
            .program(program)
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(&out[..packet.len()], packet, "{program} changed the packet");
        result.return_value as i32
    }

    /// Runs `program` `repeat` times in the kernel; the kernel's average.
    pub fn time(&self, program: &str, packet: &[u8], repeat: u32) -> Duration {
        self.observer
            .program(program)
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN")
            .duration
    }

    pub fn snapshot(&self) -> Snapshot {
        self.observer.snapshot().expect("snapshot")
    }

    pub fn reset(&mut self) {
        self.observer.reset_counters().expect("reset");
    }
}
