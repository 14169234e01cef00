//! `cargo xtask demo`: the whole job. A 4-node cluster moves from Flannel
//! to Cilium node by node under `crossover migrate`; a fault on one node's
//! new network closes the gate and the migration halts naming the pair;
//! the fault is cleared, `resume` finishes; the HTML report is written.
//! The cluster is a namespace lab whose API is the fake API server with
//! the cluster sim; the agents and the driver are the real `crossover`.
use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use crossover_tests::{
    kubelab::{CROSSOVER, KubeLab},
    migration::{
        Driver, Migrating, RUN, cilium_loss_towards, migrating_lab, node, state, step_of,
        wait_clean_window,
    },
};

const NODES: usize = 4;
/// The node whose move the fault spoils.
const FAULTED: &str = "worker-3";

fn main() {
    crossover_tests::require_root();
    let started = Instant::now();
    if let Err(e) = run(started) {
        eprintln!("\ndemo: {e:#}");
        std::process::exit(1);
    }
}

fn intro() {
    println!(
        "\
== crossover demo: a CNI migration, node by node, gated on packet loss ==

A Kubernetes cluster's pod network (its CNI) is being replaced: Flannel out,
Cilium in, without downtime. Nodes move one at a time: cordon, drain, switch
the node to Cilium, restart what runs on it. Until the last node is done both
networks run side by side, and traffic between pods on old and new nodes
crosses between them. If a moved node cannot reach the others, the next
nodes would follow it into an outage.

crossover measures, with eBPF programs on every node, what each node sent
each peer and what the peer received, per network (overlay): the loss on
every node pair. `crossover migrate` moves the nodes and, after each one,
holds a soak: if loss on a pair goes over the threshold (2% here), it
stops, leaves the node cordoned and names the pair.

Here the cluster is 4 network namespaces (control-plane, worker-1..3) with
real tunnels and pods; its Kubernetes API is a fake API server with a
simulator (scheduler, controllers, evictions). The agents on every node and
the migration driver are the real crossover binary. When worker-3's turn
comes, the wire starts dropping 5% of what the other nodes send it over
Cilium's tunnel: watch the migration stop there.
"
    );
}

fn say(step: usize, title: &str, text: &str) {
    println!("\n[{step}/6] {title}");
    for line in text.lines() {
        println!("      {line}");
    }
}

fn run(started: Instant) -> Result<()> {
    intro();
    say(
        1,
        "Building the cluster",
        "4 nodes on Flannel, pods on each, crossover's agent on every node, and\n\
         probe pods that answer the agents' probes (takes a minute).",
    );
    let Migrating {
        kl,
        sim: _sim,
        driver,
        errors,
    } = migrating_lab("d", NODES, false);
    describe_cluster(&kl);

    say(
        2,
        "The plan: `crossover migrate plan`",
        "Preflight checks of the cluster and the order the nodes will move in.\n\
         It changes nothing.",
    );
    let plan = driver.output(&["migrate", "plan"]);
    indent(&String::from_utf8_lossy(&plan.stdout));
    if !plan.status.success() {
        bail!("the plan failed: {}", String::from_utf8_lossy(&plan.stderr));
    }

    say(
        3,
        "The migration: `crossover migrate run`",
        "Node by node. The driver's own lines are marked |.",
    );
    let seen = Seen::default();
    let mut run = relayed(&driver, RUN, true, &seen)?;
    wait_for("worker-3's turn", Duration::from_secs(240), || {
        if let Some(status) = run.try_wait()? {
            bail!("the driver ended before {FAULTED}'s turn: {status}");
        }
        Ok(step_of(&state(&kl), FAULTED) == "drain")
    })?;
    println!(
        "\n  >>> FAULT: the wire now drops 5% of what worker-1, worker-2 and control-plane\n  \
         >>> send {FAULTED} over the Cilium tunnel (as a bad MTU, a firewall rule or a\n  \
         >>> broken route would). {FAULTED} is moving to Cilium right now.\n"
    );
    let faults = cilium_loss_towards(&kl, &["worker-1", "worker-2", "control-plane"], FAULTED);
    let status = wait_exit(&mut run, Duration::from_secs(240))?;
    if status.success() {
        bail!("the migration finished although {FAULTED}'s network lost 5%");
    }

    let halted = state(&kl);
    let reason = halted["phase"]["reason"].as_str().unwrap_or_default();
    let breaches: Vec<&str> = reason.lines().filter(|l| l.contains(" -> ")).collect();
    let involved = breaches.iter().filter(|l| l.contains(FAULTED)).count();
    let on_cilium = breaches
        .iter()
        .filter(|l| l.contains("overlay cilium"))
        .count();
    say(
        4,
        "Halted: why",
        &format!(
            "The gate closed at {}'s {} step: {} rows over the 2% threshold, {involved}\n\
             of them to or from {FAULTED}, {on_cilium} on the Cilium overlay. Each row is one node\n\
             pair (* = every node summed), one overlay, the networks at each end (host,\n\
             legacy or Cilium pods) and one signal (delivered packets, TCP handshakes\n\
             and retransmits, crossover's UDP/TCP probes). The worst five:",
            halted["phase"]["node"].as_str().unwrap_or("?"),
            halted["phase"]["step"].as_str().unwrap_or("?"),
            breaches.len(),
        ),
    );
    for line in breaches.iter().take(5) {
        println!("        {}", line.trim());
    }
    let cordoned = node(&kl, FAULTED)["spec"]["unschedulable"] == true;
    println!(
        "\n      {FAULTED} {} cordoned (no new pods); worker-1 and worker-2 stay migrated,\n      \
         control-plane was not touched. An SRE sees the same with `crossover loss`\n      \
         (delivery on the Cilium overlay, towards {FAULTED}):",
        if cordoned { "is left" } else { "is NOT" }
    );
    indent(&loss_view(&kl, &driver)?);

    say(
        5,
        "The fault fixed: `crossover migrate resume`",
        "The fault is cleared; once the agents' window no longer holds lost\n\
         packets, the migration resumes at the step where it stopped.",
    );
    for f in faults {
        kl.lock()
            .unwrap()
            .lab
            .clear(f)
            .context("clearing the fault")?;
    }
    wait_clean_window(&kl, NODES);
    let mut resume = relayed(&driver, &["migrate", "resume", "--yes"], false, &seen)?;
    let status = wait_exit(&mut resume, Duration::from_secs(300))?;
    if !status.success() {
        bail!("resume did not complete: {status}");
    }
    let feed = errors.lock().unwrap();
    if !feed.is_empty() {
        println!("      (the lab missed pods the sim placed: {feed:?})");
    }

    say(
        6,
        "The report: `crossover report -o html`",
        "One self-contained page for the change board: timeline, loss over time\n\
         with the gate's decisions, node-pair heatmaps, worst pairs, what is left.",
    );
    let dir = std::env::current_dir()?.join("target/crossover-demo");
    std::fs::create_dir_all(&dir)?;
    // The Markdown and JSON beside the page, for a look at what it is made of.
    let mut page = PathBuf::new();
    for (format, file) in [
        ("markdown", "report.md"),
        ("json", "report.json"),
        ("html", "report.html"),
    ] {
        let out = driver.report(&["-o", format]);
        if !out.status.success() {
            bail!(
                "report -o {format}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        page = dir.join(file);
        std::fs::write(&page, &out.stdout)
            .with_context(|| format!("writing {}", page.display()))?;
    }
    let done = state(&kl);
    println!(
        "      migration {} in {}s of demo; every node on Cilium.",
        done["phase"]["phase"].as_str().unwrap_or("?"),
        started.elapsed().as_secs()
    );
    println!("\nThe report: {}", page.display());
    Ok(())
}

/// Nodes and what runs on them, from the API.
fn describe_cluster(kl: &Arc<Mutex<KubeLab>>) {
    let kl = kl.lock().unwrap();
    let pods = kl.server.list(
        &crossover_tests::apiserver::Gvr::of::<k8s_openapi::api::core::v1::Pod>(),
        None,
    );
    let mut by_node: Vec<(String, usize)> = Vec::new();
    for p in &pods {
        let n = p["spec"]["nodeName"].as_str().unwrap_or("-").to_string();
        match by_node.iter_mut().find(|(name, _)| *name == n) {
            Some(e) => e.1 += 1,
            None => by_node.push((n, 1)),
        }
    }
    by_node.sort();
    let list: Vec<String> = by_node
        .iter()
        .map(|(n, c)| format!("{n} ({c} pods)"))
        .collect();
    println!(
        "      ready: {}; agents answering on :9190.",
        list.join(", ")
    );
}

/// `crossover loss` for the faulted node, as an SRE would run it.
fn loss_view(kl: &Arc<Mutex<KubeLab>>, driver: &Driver) -> Result<String> {
    let urls = kl.lock().unwrap().agent_urls();
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &driver.underlay, CROSSOVER, "loss"])
        .args(["--kubeconfig", &driver.kubeconfig])
        .args([
            "--peer",
            FAULTED,
            "--overlay",
            "cilium",
            "--signal",
            "delivery",
        ])
        .args(["--top", "6", "--min-sent", "50"])
        .args(["--window", "6s", "--sample-interval", "500ms"]);
    for u in &urls {
        c.args(["--agent", u]);
    }
    let out = c.output().context("running crossover loss")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Breach lines of a halt the relay shows; step 4 sums them all up.
const BREACH_LINES: usize = 3;

/// The driver with its output relayed line by line: each step explained
/// the first time it starts, then only its outcome; with `after_plan`,
/// nothing before the first step (the plan, shown already).
fn relayed(driver: &Driver, args: &[&str], after_plan: bool, seen: &Seen) -> Result<Child> {
    let mut child = driver
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting crossover migrate")?;
    let quiet = Arc::new(AtomicBool::new(after_plan));
    relay(
        child.stdout.take().context("stdout")?,
        seen.clone(),
        quiet.clone(),
    );
    relay(child.stderr.take().context("stderr")?, seen.clone(), quiet);
    Ok(child)
}

/// Steps already explained, across the driver's runs.
type Seen = Arc<Mutex<HashSet<String>>>;

fn relay(stream: impl Read + Send + 'static, seen: Seen, quiet: Arc<AtomicBool>) {
    thread::spawn(move || {
        let mut breaches = 0;
        for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
            let line = line
                .strip_prefix("crossover: ")
                .unwrap_or(&line)
                .to_string();
            // "worker-1: drain..." starts a step.
            let started = line.strip_suffix("...").and_then(|l| l.split_once(": "));
            if let Some((node, step)) = started {
                quiet.store(false, Ordering::Relaxed);
                if step == "baseline" {
                    println!("\n      -- {node}'s turn --");
                }
                let first = seen.lock().unwrap().insert(step.to_string());
                match gloss(step) {
                    Some(gloss) if first => println!("      | {line}  ({gloss})"),
                    _ if step == "soak" => println!("      | {line}"),
                    _ => {}
                }
                continue;
            }
            if quiet.load(Ordering::Relaxed) {
                continue;
            }
            // A halt lists every breach: the first few here.
            if line.starts_with("  ") && line.contains(" -> ") && line.contains(" lost (") {
                breaches += 1;
                if breaches > BREACH_LINES {
                    if breaches == BREACH_LINES + 1 {
                        println!("      |   ... (every breach in step 4)");
                    }
                    continue;
                }
            } else {
                breaches = 0;
            }
            println!("      | {line}");
        }
    });
}

/// What a step does, for someone new to CNI migrations.
fn gloss(step: &str) -> Option<&'static str> {
    Some(match step {
        "baseline" => "loss measured before the node is touched: the reference",
        "cordon" => "no new pods are scheduled on the node",
        "drain" => "its pods are evicted; their controllers recreate them elsewhere",
        "label" => "the node is labelled for Cilium: pods started here get Cilium addresses",
        "restart_cilium" => "the node's Cilium agent restarts and takes the node over",
        "reboot" => "no reboot hook given: nothing to do",
        "restart_legacy" => "pods left on the node (DaemonSets) restart onto Cilium",
        "verify" => "probes must cross both networks both ways",
        "soak" => "THE GATE: loss is measured again; over the threshold, the migration stops",
        "uncordon" => "pods may be scheduled on the node again",
        _ => return None,
    })
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("        {line}");
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let until = Instant::now() + limit;
    while !done()? {
        if Instant::now() > until {
            bail!("{what}: not within {limit:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn wait_exit(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let mut status = None;
    wait_for("the driver to stop", limit, || {
        status = child.try_wait()?;
        Ok(status.is_some())
    })?;
    // Let the relays print the driver's last lines.
    thread::sleep(Duration::from_millis(300));
    status.context("no exit status")
}
