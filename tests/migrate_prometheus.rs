//! `crossover migrate --source prometheus=URL` end to end: the migrating
//! lab of tests/migrate.rs (the fake API server with the cluster sim, real
//! agents and probe responders) and a real Prometheus (Debian's) on the
//! lab's underlay, scraping every agent each second with the shipped rules
//! loaded, rendered at a 10 s record window (docs/metrics.md: what an SRE
//! whose Prometheus scrapes that fast would load). The gate reads only
//! Prometheus: a fault towards the node in its soak halts the migration,
//! and it completes once the fault is cleared. Needs root.
use std::time::Duration;

use crossover_tests::{
    kubelab::within,
    lab::{Fault, Overlay},
    migration::{Migrating, RUN, migrating_lab, no_feed_errors, record, state, step_of},
    netns::http_get,
    prometheus::{Server, check_documented, dashboard_queries, write_rules_file_at},
    require_root,
};
use serde_json::Value;

/// The record window the rules are rendered at.
const WINDOW: &str = "10s";

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The migration as Prometheus has it from the agents, once every agent
/// exports `phase`: (agents exporting it, the step at 1 if any, nodes done
/// and planned, decisions by verdict).
struct Progress {
    agents: usize,
    step: Option<String>,
    nodes: (f64, f64),
    decisions: Value,
}

fn progress(server: &Server, phase: &str, agents: usize) -> Progress {
    let (p, _) = within(Duration::from_secs(20), &format!("phase {phase}"), || {
        let now = unix_now();
        let q = |expr: &str| server.query(expr, now).unwrap();
        let exporting = q(&format!(
            "crossover_migration_phase{{phase=\"{phase}\"}} == 1"
        ))
        .len();
        if exporting < agents {
            return None;
        }
        let step = q("max by (step) (crossover_migration_step) == 1")
            .first()
            .map(|(s, _)| s["step"].as_str().unwrap().to_owned());
        let nodes = |p: &str| {
            q(&format!(
                "max(crossover_migration_nodes{{progress=\"{p}\"}})"
            ))[0]
                .1
        };
        let mut decisions = serde_json::Map::new();
        for (s, v) in q("max by (verdict) (crossover_migration_gate_decisions_total)") {
            decisions.insert(
                s["verdict"].as_str().unwrap().to_owned(),
                Value::from(v as u64),
            );
        }
        Some(Progress {
            agents: exporting,
            step,
            nodes: (nodes("done"), nodes("planned")),
            decisions: Value::Object(decisions),
        })
    });
    p
}

fn failure(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_gate_reads_prometheus_halts_on_the_faulted_node_and_completes() {
    require_root();
    let Migrating {
        kl,
        sim: _sim,
        driver,
        errors,
    } = migrating_lab("mp", 2, false);
    let dir = kl.lock().unwrap().dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    write_rules_file_at(&dir, WINDOW);
    let server = Server::on_lab(&kl.lock().unwrap().lab, &dir).unwrap();
    let source = format!("prometheus={}", server.url());

    // Bad sources are refused before anything changes, naming the problem.
    let run_with = |source: &str| {
        let mut args = RUN.to_vec();
        args.extend(["--source", source]);
        driver.output(&args)
    };
    let said = failure(&run_with("prometheus="));
    assert!(said.contains("names no Prometheus"), "{said}");
    let said = failure(&run_with("prometheus=http://127.0.0.1:1"));
    assert!(
        said.contains("Prometheus at http://127.0.0.1:1: GET http://127.0.0.1:1/api/v1/rules"),
        "{said}"
    );
    // An agent answers HTTP, but is no Prometheus.
    let agent = kl.lock().unwrap().url(0, "");
    let said = failure(&run_with(&format!("prometheus={agent}")));
    assert!(
        said.contains(&format!("Prometheus at {agent}")) && said.contains("404"),
        "{said}"
    );
    assert_eq!(state(&kl), Value::Null, "nothing started");

    // An agent with Kubernetes serves the migration's families, each in
    // the metrics reference; no migration yet.
    let (status, body) = {
        let kl = kl.lock().unwrap();
        http_get(&kl.lab.underlay_ns(), &kl.url(0, "/metrics"))
    };
    assert_eq!(status, 200);
    check_documented(&body);
    let none = progress(&server, "none", 2);
    assert_eq!((none.step, none.nodes), (None, (0.0, 0.0)));

    // The delivery records exist once a pair's series are two windows old.
    let delivery = format!("crossover:signal_sent:increase{WINDOW}{{signal=\"delivery\"}}");
    within(Duration::from_secs(40), "delivery records", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let found = server.query(&delivery, now).ok()?;
        (found.len() >= 2).then_some(())
    });

    // worker-1 first: 10% of control-plane's packets to it on the Cilium
    // overlay from its soak on. The ceiling off: what halts is the breach
    // held over two record windows.
    let mut args = RUN.to_vec();
    args.extend(["--source", &source, "--hard-ceiling", "off"]);
    let mut run = driver.spawn(&args);
    within(Duration::from_secs(120), "worker-1's soak", || {
        if let Some(status) = run.try_wait().unwrap() {
            let log = std::fs::read_to_string(&driver.log).unwrap();
            panic!("the driver stopped ({status}):\n{log}");
        }
        (step_of(&state(&kl), "worker-1") == "soak").then_some(())
    });
    let fault = kl
        .lock()
        .unwrap()
        .lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-1".into(),
            overlay: Overlay::Cilium,
            percent: 10.0,
        })
        .unwrap();
    let (status, _) = within(Duration::from_secs(120), "the gate closing", || {
        run.try_wait().unwrap()
    });
    let log = std::fs::read_to_string(&driver.log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("from Prometheus at {}", server.url())),
        "{log}"
    );
    let halted = state(&kl);
    assert_eq!(halted["phase"]["phase"], "halted", "{halted:#}");
    assert_eq!(halted["phase"]["node"], "worker-1", "{halted:#}");
    assert_eq!(halted["phase"]["step"], "soak", "{halted:#}");
    let reason = halted["phase"]["reason"].as_str().unwrap();
    eprintln!("halted: {reason}");
    assert!(
        reason.contains("control-plane -> worker-1 overlay cilium")
            && reason.contains("windows in a row"),
        "the halt names the pair, held: {reason}"
    );
    // Every decision says it read Prometheus, and the halt's covered a
    // record window.
    let w1 = record(&kl, "worker-1");
    let gate = w1["gate"].as_array().unwrap();
    assert!(
        gate.iter()
            .all(|e| e["source"]["prometheus"] == server.url()),
        "{w1:#}"
    );
    let last = gate.last().unwrap();
    assert_eq!(last["verdict"], "halt", "{last:#}");
    let breach = &last["breaches"][0];
    assert_eq!(breach["seconds"], 10.0, "{breach:#}");
    assert!(breach["held"].as_u64() >= Some(2), "{breach:#}");

    // Prometheus has the halt from every agent: the step it stopped at,
    // no node done, the decisions the state counted; the alert fires.
    let halted_progress = progress(&server, "halted", 2);
    assert_eq!(halted_progress.agents, 2);
    assert_eq!(halted_progress.step.as_deref(), Some("soak"));
    assert_eq!(halted_progress.nodes, (0.0, 2.0));
    assert_eq!(halted_progress.decisions, halted["gate"], "{halted:#}");
    assert!(halted["gate"]["halt"] == 1 && halted["gate"]["pass"].as_u64() >= Some(1));
    // (at the alerts' next evaluation)
    let alert = r#"ALERTS{alertname="CrossoverMigrationHalted", alertstate="firing"}"#;
    within(Duration::from_secs(10), "the halted alert", || {
        let alerts = server.query(alert, unix_now()).unwrap();
        (alerts.len() == 1).then_some(())
    });
    // The dashboard's migration panels show it.
    for (panel, expr) in dashboard_queries() {
        let found = server
            .query(&expr, unix_now())
            .unwrap_or_else(|e| panic!("panel {panel:?}: {e}"));
        if panel == "Migration phase" {
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].0["phase"], "halted");
        }
    }

    // The fault cleared and a window past, resume completes on Prometheus'
    // readings.
    kl.lock().unwrap().lab.clear(fault).unwrap();
    std::thread::sleep(Duration::from_secs(12));
    let done = driver.output(&["migrate", "resume", "--yes", "--source", &source]);
    assert!(
        done.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    let finished = state(&kl);
    assert_eq!(finished["phase"]["phase"], "done");
    let done_progress = progress(&server, "done", 2);
    assert_eq!(done_progress.step, None);
    assert_eq!(done_progress.nodes, (2.0, 2.0));
    assert_eq!(done_progress.decisions, finished["gate"], "{finished:#}");
    let passed = record(&kl, "control-plane")["gate"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["verdict"] == "pass" && e["source"]["prometheus"] == server.url())
        .count();
    assert!(passed >= 2, "the control plane's baseline and soak passed");
    no_feed_errors(&errors);
}
