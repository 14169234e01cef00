//! `crossover migrate` end to end: a 4-node lab whose cluster is the fake
//! API server with the cluster sim (evictions with budgets, DaemonSet and
//! ReplicaSet controllers, a scheduler, kubelets addressing pods from their
//! node's network), real agents and probe responders on every node, and
//! every pod the sim places made a real lab pod. The driver migrates the
//! nodes, is killed in the middle of a drain a disruption budget holds up,
//! resumes, halts on loss injected towards the third node, and completes
//! once the fault is gone. Needs root.
use std::time::Duration;

use crossover_tests::{
    apiserver::{Gvr, fixtures::PodBuilder},
    browser,
    kubelab::within,
    lab::{Fault, Overlay, plan::Network},
    migration::{
        Migrating, RUN, cilium_loss_towards, migrating, migrating_lab, no_feed_errors, node,
        record, state, step_of, steps, wait_clean_window,
    },
    require_root,
};
use k8s_openapi::api::{core::v1::Pod, policy::v1::PodDisruptionBudget};
use serde_json::{Value, json};

const NODES: usize = 4;
#[test]
fn a_migration_halts_on_loss_survives_a_crash_and_completes() {
    require_root();
    let Migrating {
        kl,
        sim,
        driver,
        errors,
    } = migrating_lab("m", NODES, true);
    let log = driver.log.clone();

    // The plan changes nothing and passes preflight.
    let plan = driver.output(&["migrate", "plan"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let order: Vec<usize> = ["worker-1", "worker-2", "worker-3", "control-plane"]
        .iter()
        .map(|n| {
            text.find(n)
                .unwrap_or_else(|| panic!("{n} not in the plan:\n{text}"))
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "workers first:\n{text}"
    );
    assert_eq!(state(&kl), Value::Null, "plan wrote no state");

    // Run: worker-1 migrates; worker-2's drain waits on the budget; the
    // driver dies there.
    let mut run = driver.spawn(RUN);
    within(
        Duration::from_secs(90),
        "worker-2 draining behind the budget",
        || (step_of(&state(&kl), "worker-2") == "drain").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    run.kill().unwrap();
    run.wait().unwrap();
    let w1 = record(&kl, "worker-1");
    assert!(
        steps(&w1).iter().all(|(_, outcome)| outcome == "ok"),
        "{w1:#}"
    );
    assert_eq!(step_of(&state(&kl), "worker-1"), "done");
    assert_eq!(node(&kl, "worker-2")["spec"]["unschedulable"], true);
    // The node being migrated is annotated from its first step; a node
    // done is not any more.
    assert!(migrating(&kl, "worker-2"));
    assert!(!migrating(&kl, "worker-1"));

    // The budget relaxed, the driver resumes (after the dead one's lease
    // expires); loss towards worker-3 on the Cilium overlay starts when its
    // turn comes.
    kl.lock()
        .unwrap()
        .server
        .patch(
            &Gvr::of::<PodDisruptionBudget>(),
            Some("default"),
            "db",
            json!({"spec": {"minAvailable": 0}}),
        )
        .unwrap();
    let mut resume = driver.spawn(&["migrate", "resume", "--yes"]);
    within(Duration::from_secs(120), "worker-3's turn", || {
        (step_of(&state(&kl), "worker-3") == "drain").then_some(())
    });
    let faults = cilium_loss_towards(&kl, &["worker-1", "worker-2", "control-plane"], "worker-3");
    let (status, _) = within(Duration::from_secs(120), "the gate closing", || {
        resume.try_wait().unwrap()
    });
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "halted: {out}");
    let halted = state(&kl);
    assert_eq!(halted["phase"]["phase"], "halted", "{halted:#}");
    assert_eq!(halted["phase"]["node"], "worker-3", "{halted:#}");
    assert_eq!(halted["phase"]["step"], "soak", "{halted:#}");
    let reason = halted["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("-> worker-3 overlay cilium"),
        "the halt names the pair and overlay: {reason}"
    );
    assert_eq!(node(&kl, "worker-3")["spec"]["unschedulable"], true);
    assert_eq!(step_of(&halted, "worker-2"), "done");
    // Halted, worker-3 stays under migration: every agent probes it.
    assert!(migrating(&kl, "worker-3"));
    assert!(!migrating(&kl, "worker-2"));
    let status = {
        let kl = kl.lock().unwrap();
        kl.get_json(&kl.url(0, "/api/v1/status"))
    };
    assert_eq!(status["view"]["focus"], json!(["worker-3"]), "{status:#}");
    for f in faults {
        kl.lock().unwrap().lab.clear(f).unwrap();
    }

    // The report names the pair.
    let report = driver.report(&["--format", "json"]);
    assert!(report.status.success(), "{report:?}");
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let w3 = report["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "worker-3")
        .unwrap();
    let closed = w3["readings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["decision"]["passed"] == false)
        .expect("a closed gate in worker-3's record");
    // Every breach is on the Cilium overlay and involves worker-3: towards
    // it, or a TCP probe from it whose answer the faulted way back lost.
    let breaches = closed["decision"]["breaches"].as_array().unwrap();
    assert!(!breaches.is_empty(), "{closed:#}");
    assert!(
        breaches.iter().all(|b| b["overlay"] == "cilium"
            && (b["peer_node"] == "worker-3" || b["node"] == "worker-3")),
        "{closed:#}"
    );
    assert!(
        w3["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "MigrationHalted" && e["warning"] == true),
        "{w3:#}"
    );
    let markdown = driver.report(&[]);
    let markdown = String::from_utf8_lossy(&markdown.stdout);
    assert!(
        markdown.contains("**closed**") && markdown.contains("## worker-3"),
        "{markdown}"
    );
    // The HTML page, drawn by a browser, leads with the pair that stopped it.
    let html = driver.report(&["-o", "html"]);
    assert!(html.status.success(), "{html:?}");
    let page = kl.lock().unwrap().dir.join("halted.html");
    std::fs::write(&page, &html.stdout).unwrap();
    let dom = browser::rendered(&page, 1100, 2400).unwrap();
    assert!(
        dom.contains("Stopped at worker-3, step soak: worker-3 lost")
            && dom.contains("data-node=\"worker-3\"")
            && dom.contains("<code>crossover migrate rollback worker-3</code>"),
        "{dom}"
    );

    // worker-3 back on the legacy CNI by hand: label gone, uncordoned, its
    // probe pod on a legacy address again; resume migrates it from scratch.
    let back = driver.output(&["migrate", "rollback", "worker-3", "--yes"]);
    assert!(back.status.success(), "{back:?}");
    let w3 = node(&kl, "worker-3");
    assert!(
        w3["metadata"]["labels"]["io.cilium.migration/cilium-default"].is_null(),
        "{w3:#}"
    );
    assert!(w3["spec"]["unschedulable"].is_null(), "{w3:#}");
    assert!(!migrating(&kl, "worker-3"), "rolled back: {w3:#}");
    assert_eq!(sim.network("worker-3"), Some(Network::Legacy));
    assert_eq!(step_of(&state(&kl), "worker-3"), "baseline");

    // The fault gone, resume completes: once the agents' windows no longer
    // hold what the fault left behind (segments TCP retransmits on its
    // backoff, handshakes that end after it), as an SRE would check with
    // `crossover loss` before resuming. A gate that rides out such a tail
    // by itself (consecutive-breach limits) is the CLI and report issue's.
    wait_clean_window(&kl, NODES);
    let done = driver.output(&["migrate", "resume", "--yes"]);
    let text = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(text.contains("what is left to do"), "{text}");
    let finished = state(&kl);
    assert_eq!(finished["phase"]["phase"], "done", "{finished:#}");
    for name in ["worker-1", "worker-2", "worker-3", "control-plane"] {
        let n = node(&kl, name);
        assert_eq!(
            n["metadata"]["labels"]["io.cilium.migration/cilium-default"],
            "true"
        );
        assert!(
            n["spec"]["unschedulable"].is_null(),
            "{name} uncordoned: {n:#}"
        );
        assert!(!migrating(&kl, name), "{name} done: {n:#}");
        assert_eq!(sim.network(name), Some(Network::Cilium), "{name}");
    }
    // Finished steps were not done again: worker-1 once each; worker-2's
    // drain twice, the first interrupted by the kill.
    let w1 = steps(&record(&kl, "worker-1"));
    assert_eq!(w1.len(), 10, "{w1:?}");
    let w2 = steps(&record(&kl, "worker-2"));
    let count = |s: &str| w2.iter().filter(|(step, _)| step == s).count();
    assert_eq!(count("cordon"), 1, "{w2:?}");
    assert_eq!(count("drain"), 2, "{w2:?}");
    assert!(
        w2.contains(&("drain".into(), "interrupted".into())),
        "{w2:?}"
    );
    assert_eq!(count("label"), 1, "{w2:?}");
    // Every probe pod moved to Cilium: no legacy goldpinger left.
    let pods = kl
        .lock()
        .unwrap()
        .server
        .list(&Gvr::of::<Pod>(), Some("default"));
    for p in pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "goldpinger")
    {
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(ip.starts_with("10.245."), "{p:#}");
    }
    no_feed_errors(&errors);
}

/// The gate's policy in the lab: a burst of loss the gate sees in one
/// window (1 s of 30% loss, well inside the first window the soak judges,
/// its consequences too) is a pending breach and does not halt the
/// migration; the node's record keeps the pending decision with its
/// figures. A fault that holds halts it once its breach was seen over two
/// windows in a row. (Pairs without the node under migration carry too
/// few probes here to reach --min-sent, so the noisy pair is one of the
/// node's: the policy does not look at which pair.)
#[test]
fn a_breach_for_one_window_is_pending_and_a_held_one_halts() {
    require_root();
    let Migrating {
        kl,
        sim: _sim,
        driver,
        errors,
    } = migrating_lab("g", 3, false);
    let log = driver.log.clone();
    let driver_log = || std::fs::read_to_string(&log).unwrap();
    // Soaks long enough to see a breach come and go; the ceiling out of
    // the way of the burst, so that what decides is how long a breach
    // holds (the ceiling has its unit tests).
    let mut args = RUN.to_vec();
    let soak = args.iter().position(|a| *a == "--soak").unwrap() + 1;
    args[soak] = "20s";
    args.extend(["--hard-ceiling", "50%"]);
    let mut run = driver.spawn(&args);
    within(Duration::from_secs(90), "worker-1's soak", || {
        (step_of(&state(&kl), "worker-1") == "soak").then_some(())
    });
    // The soak waits one window (6 s) before it judges, a window that
    // starts about when the soak does: the burst 1.5 s in, for 1 s.
    std::thread::sleep(Duration::from_millis(1500));
    let burst = kl
        .lock()
        .unwrap()
        .lab
        .inject(Fault::Loss {
            from: "worker-2".into(),
            to: "worker-1".into(),
            overlay: Overlay::Cilium,
            percent: 30.0,
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    kl.lock().unwrap().lab.clear(burst).unwrap();
    let pending = || {
        driver_log()
            .lines()
            .find(|l| {
                l.starts_with("crossover: worker-1: soak reading ") && l.contains("): pending: ")
            })
            .map(str::to_string)
    };
    let (line, _) = within(Duration::from_secs(30), "a pending breach", pending);
    eprintln!("burst seen: {line}");
    assert!(line.contains("-> worker-1 overlay cilium"), "{line}");
    within(Duration::from_secs(90), "worker-1 done", || {
        if run.try_wait().unwrap().is_some() {
            panic!("the driver stopped:\n{}", driver_log());
        }
        (step_of(&state(&kl), "worker-1") == "done").then_some(())
    });
    let w1 = record(&kl, "worker-1");
    let gate: Vec<&Value> = w1["gate"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "soak")
        .collect();
    let pending_entry = gate
        .iter()
        .find(|e| e["verdict"] == "pending")
        .unwrap_or_else(|| panic!("a pending decision in the record: {w1:#}"));
    let breach = &pending_entry["breaches"][0];
    assert_eq!(breach["held"], 1, "{pending_entry:#}");
    assert_eq!(pending_entry["consecutive"], 2);
    assert!(breach["lost"].as_u64().unwrap() > 0 && breach["ratio"].as_f64().unwrap() > 0.02);
    assert_eq!(pending_entry["passed"], true, "pending goes on");
    assert!(gate.iter().all(|e| e["verdict"] != "halt"), "{w1:#}");
    assert_eq!(gate.last().unwrap()["verdict"], "pass", "{w1:#}");

    // A fault that holds, towards worker-2 in its soak: halts.
    within(Duration::from_secs(120), "worker-2's soak", || {
        (step_of(&state(&kl), "worker-2") == "soak").then_some(())
    });
    let faults = cilium_loss_towards(&kl, &["worker-1", "control-plane"], "worker-2");
    let (status, _) = within(Duration::from_secs(120), "the gate closing", || {
        run.try_wait().unwrap()
    });
    for f in faults {
        kl.lock().unwrap().lab.clear(f).unwrap();
    }
    assert!(!status.success());
    let halted = state(&kl);
    assert_eq!(halted["phase"]["phase"], "halted", "{halted:#}");
    assert_eq!(halted["phase"]["node"], "worker-2", "{halted:#}");
    let reason = halted["phase"]["reason"].as_str().unwrap();
    eprintln!("held fault: {reason}");
    assert!(reason.contains("windows in a row"), "{reason}");
    let w2 = record(&kl, "worker-2");
    let gate = w2["gate"].as_array().unwrap();
    let last = gate.last().unwrap();
    assert_eq!(last["verdict"], "halt", "{w2:#}");
    assert_eq!(last["passed"], false);
    let held = last["breaches"].as_array().unwrap();
    assert!(
        held.iter()
            .any(|b| b["held"].as_u64() >= Some(2) && b["over_ceiling"].is_null()),
        "{last:#}"
    );
    assert!(
        gate.iter()
            .any(|e| e["step"] == "soak" && e["verdict"] == "pending"),
        "the halt was pending first: {w2:#}"
    );
    no_feed_errors(&errors);
}

/// `--on-breach rollback` puts the node back on the legacy CNI by itself;
/// the reboot hook runs per node; `status` tells where it stopped; `abort`
/// from another terminal stops a running driver at its next step, and
/// `resume` finishes the job.
#[test]
fn a_breach_rolls_the_node_back_and_abort_stops_the_driver() {
    require_root();
    let Migrating {
        kl,
        sim,
        driver,
        errors,
    } = migrating_lab("r", 3, false);
    let rebooted = kl.lock().unwrap().dir.join("rebooted");
    let hook = format!("echo $NODE >> {}", rebooted.display());
    let mut args = RUN.to_vec();
    args.extend(["--on-breach", "rollback", "--reboot-hook", &hook]);
    let mut run = driver.spawn(&args);
    let changing = [
        "restart_cilium",
        "reboot",
        "restart_legacy",
        "verify",
        "soak",
    ];
    within(Duration::from_secs(90), "worker-1 moving to Cilium", || {
        changing
            .contains(&step_of(&state(&kl), "worker-1").as_str())
            .then_some(())
    });
    let faults = cilium_loss_towards(&kl, &["worker-2", "control-plane"], "worker-1");
    let (status, _) = within(Duration::from_secs(120), "the gate closing", || {
        run.try_wait().unwrap()
    });
    assert!(!status.success());
    let halted = state(&kl);
    assert_eq!(halted["phase"]["phase"], "halted", "{halted:#}");
    assert_eq!(halted["phase"]["node"], "worker-1", "{halted:#}");
    let reason = halted["phase"]["reason"].as_str().unwrap();
    assert!(reason.contains("rolled back: "), "{reason}");
    let w1 = node(&kl, "worker-1");
    assert!(w1["metadata"]["labels"]["io.cilium.migration/cilium-default"].is_null());
    assert!(w1["spec"]["unschedulable"].is_null(), "uncordoned: {w1:#}");
    assert!(!migrating(&kl, "worker-1"), "rolled back: {w1:#}");
    assert_eq!(sim.network("worker-1"), Some(Network::Legacy));
    assert_eq!(step_of(&halted, "worker-1"), "baseline");
    let record = record(&kl, "worker-1");
    assert_eq!(record["rollbacks"][0]["outcome"], "ok", "{record:#}");
    let hooked = std::fs::read_to_string(&rebooted).unwrap();
    assert_eq!(hooked.lines().collect::<Vec<_>>(), ["worker-1"]);
    let status = driver.output(&["migrate", "status", "--format", "json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["phase"]["phase"], "halted");
    for f in faults {
        kl.lock().unwrap().lab.clear(f).unwrap();
    }
    wait_clean_window(&kl, 3);

    // Abort from another terminal while worker-1 is migrated again.
    let mut resume = driver.spawn(&["migrate", "resume", "--yes"]);
    within(Duration::from_secs(90), "worker-1 draining again", || {
        (step_of(&state(&kl), "worker-1") != "baseline").then_some(())
    });
    // One driver at a time: a second one waits out the Lease, then refuses.
    let second = driver.output(&["migrate", "resume", "--yes"]);
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("holds Lease"), "{said}");
    let abort = driver.output(&["migrate", "abort", "--yes"]);
    assert!(abort.status.success(), "{abort:?}");
    let (status, _) = within(Duration::from_secs(60), "the driver stopping", || {
        resume.try_wait().unwrap()
    });
    assert!(!status.success());
    let aborted = state(&kl);
    assert_eq!(aborted["phase"]["phase"], "aborted", "{aborted:#}");
    let at = step_of(&aborted, "worker-1");
    assert_ne!(at, "baseline", "the step that ran is kept: {aborted:#}");

    let done = driver.output(&["migrate", "resume", "--yes"]);
    assert!(done.status.success(), "{done:?}");
    assert_eq!(state(&kl)["phase"]["phase"], "done");
    for name in ["worker-1", "worker-2", "control-plane"] {
        assert_eq!(sim.network(name), Some(Network::Cilium), "{name}");
    }
    let hooked = std::fs::read_to_string(&rebooted).unwrap();
    assert_eq!(
        hooked.lines().collect::<Vec<_>>(),
        ["worker-1", "worker-1", "worker-2", "control-plane"],
        "one reboot per migration of a node"
    );
    no_feed_errors(&errors);
}

/// A node whose IPAM is exhausted once it moved to Cilium: its restarted
/// DaemonSet pod never gets an address, and the driver halts naming the
/// pod and the sandbox failure ("No more IPs available"), node cordoned.
/// Before that, a pod no controller would recreate stops the drain; after
/// it, a drain a disruption budget holds past `--drain-timeout` halts
/// naming the pod and the budget.
#[test]
fn a_pod_without_an_address_or_a_drain_timing_out_halts_the_node() {
    require_root();
    let Migrating {
        kl,
        sim,
        mut driver,
        errors,
    } = migrating_lab("s", 3, true);
    driver.ready_timeout = "8s";
    driver.drain_timeout = "3s";
    // A pod no controller would recreate: the drain refuses to lose it.
    let bare = PodBuilder::new("default", "bare-1")
        .label("app", "bare")
        .node("worker-1", "172.18.0.3")
        .ip("10.244.1.60")
        .ready(true)
        .value();
    kl.lock().unwrap().server.apply(bare).unwrap();
    let refused = driver.output(RUN);
    assert!(!refused.status.success());
    let halted = state(&kl);
    assert_eq!(halted["phase"]["node"], "worker-1", "{halted:#}");
    assert_eq!(halted["phase"]["step"], "drain", "{halted:#}");
    let reason = halted["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("default/bare-1") && reason.contains("--evict-bare-pods"),
        "{reason}"
    );
    kl.lock()
        .unwrap()
        .server
        .delete(&Gvr::of::<Pod>(), Some("default"), "bare-1")
        .unwrap();

    // Only new pods on worker-1 need an address: the DaemonSet pod the
    // driver restarts there (evicted pods land elsewhere).
    sim.exhaust_ipam("worker-1", true);
    let mut run = driver.spawn(&["migrate", "resume", "--yes"]);
    let (status, _) = within(Duration::from_secs(90), "the driver halting", || {
        run.try_wait().unwrap()
    });
    assert!(!status.success());
    let halted = state(&kl);
    assert_eq!(halted["phase"]["node"], "worker-1", "{halted:#}");
    assert_eq!(halted["phase"]["step"], "restart_legacy", "{halted:#}");
    let reason = halted["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("goldpinger") && reason.contains("No more IPs available"),
        "{reason}"
    );
    // The 8 s wait said where it was on the way, with the time left.
    let said = std::fs::read_to_string(&driver.log).unwrap();
    assert!(
        said.lines()
            .any(|l| l.starts_with("crossover: waiting for ") && l.ends_with("s left)")),
        "{said}"
    );
    assert_eq!(node(&kl, "worker-1")["spec"]["unschedulable"], true);

    // Addresses again: worker-1 completes; worker-2's singleton cannot be
    // evicted within 3 s.
    sim.exhaust_ipam("worker-1", false);
    let resumed = driver.output(&["migrate", "resume", "--yes"]);
    assert!(!resumed.status.success());
    let halted = state(&kl);
    assert_eq!(step_of(&halted, "worker-1"), "done", "{halted:#}");
    assert_eq!(halted["phase"]["node"], "worker-2", "{halted:#}");
    assert_eq!(halted["phase"]["step"], "drain", "{halted:#}");
    let reason = halted["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("timed out") && reason.contains("default/db-0 (429"),
        "{reason}"
    );
    // The drain counted down.
    let said = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        said.lines().any(
            |l| l.starts_with("crossover: worker-2: drain: 1 pod left, ")
                && l.contains("before --drain-timeout")
        ),
        "{said}"
    );
    no_feed_errors(&errors);
}
