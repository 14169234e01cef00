//! The fuzz run's short form (tests/src/fuzz.rs): 50,000 random and
//! mutated packets (`CROSSOVER_FUZZ_PACKETS`) through every program, each
//! coming out unchanged with the pass-through verdict, every map within
//! its capacity. A new seed each run unless `CROSSOVER_FUZZ_SEED` says
//! which; a failure names it. Needs root. `cargo xtask fuzz` runs 1M.
use crossover_tests::fuzz::{self, Options};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number"))
    })
}

#[test]
fn random_and_mutated_packets_pass_through_every_program_unchanged() {
    let seed = env("CROSSOVER_FUZZ_SEED").unwrap_or_else(|| fastrand::u64(..));
    let packets = env("CROSSOVER_FUZZ_PACKETS").unwrap_or(50_000);
    eprintln!("fuzz seed {seed}, {packets} packets");
    let report = fuzz::run(Options {
        packets,
        seed,
        check_every: 1_000,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", report.summary());
    assert_eq!(report.packets, packets);
    // The run reached past the headers: flows were made and tables filled
    // to their refusals, and the kernel ran most packets.
    assert!(report.most_flows > 0, "{}", report.summary());
    // ICMP "fragmentation needed" about the local node's tunnels reached
    // the counting, and malformed ones the refusal.
    assert!(report.most_frag_paths > 0, "{}", report.summary());
    assert!(
        report.refused_by_kernel * 4 < report.runs,
        "{}",
        report.summary()
    );
    let reason = |r: &str| report.reasons.iter().any(|(name, _)| *name == r);
    for r in [
        "truncated_ipv4",
        "truncated_l4",
        "flow_map_full",
        "frag_needed_foreign",
    ] {
        assert!(reason(r), "never {r}: {}", report.summary());
    }
}
