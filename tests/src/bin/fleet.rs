//! `fleet N [--focus I] [--fault FROM:TO:OVERLAY:RATIO]...`: N simulated
//! agents (tests/src/simulated_agents.rs) on loopback, for benchmarks that
//! measure a reader in its own process. Prints one URL per line, then
//! `ready`, and serves until killed.
use std::io::Write;

use crossover_tests::simulated_agents::{Fault, Model, SimulatedAgents};
use observer_ebpf::Overlay;

fn usage(why: &str) -> ! {
    eprintln!(
        "fleet: {why}\nusage: fleet NODES [--fanout K] [--focus I] [--fault FROM:TO:OVERLAY:RATIO]..."
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n >= 2)
        .unwrap_or_else(|| usage("NODES: a number of nodes, at least 2"));
    let mut model = Model {
        nodes,
        ..Model::default()
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--fanout" => {
                model.fanout = value
                    .parse()
                    .unwrap_or_else(|_| usage("--fanout: a number"))
            }
            "--focus" => {
                model.focus = Some(
                    value
                        .parse()
                        .unwrap_or_else(|_| usage("--focus: a node index")),
                )
            }
            "--fault" => {
                let parts: Vec<&str> = value.split(':').collect();
                let [from, to, overlay, ratio] = parts[..] else {
                    usage("--fault FROM:TO:OVERLAY:RATIO");
                };
                model.faults.push(Fault {
                    from: from
                        .parse()
                        .unwrap_or_else(|_| usage("--fault: FROM is a node index")),
                    to: to
                        .parse()
                        .unwrap_or_else(|_| usage("--fault: TO is a node index")),
                    overlay: Overlay::from_label(overlay)
                        .unwrap_or_else(|| usage("--fault: OVERLAY is legacy or cilium")),
                    ratio: ratio
                        .parse()
                        .unwrap_or_else(|_| usage("--fault: RATIO is a fraction")),
                });
            }
            other => usage(&format!("unknown flag {other}")),
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let fleet = SimulatedAgents::start(model)
            .await
            .unwrap_or_else(|e| usage(&format!("listening: {e}")));
        let mut out = std::io::stdout().lock();
        for url in &fleet.urls {
            let _ = writeln!(out, "{url}");
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
        drop(out);
        std::future::pending::<()>().await
    })
}
