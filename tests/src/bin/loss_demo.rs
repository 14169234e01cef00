//! `cargo xtask demo loss`: a cluster in the middle of its
//! migration to Cilium, built as a namespace lab, crossover on every node,
//! and a live view of what every node pair loses on each overlay while a
//! fault comes and goes.
use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use crossover_tests::{
    fleet::Fleet,
    lab::{Fault, Lab, LabSpec, Overlay, traffic},
};
use observer::{
    connections::{Handshake, SnatSeen},
    loss::delivery::{self, Delivery},
};

const SECONDS: u64 = 20;
const TICK: Duration = Duration::from_secs(2);
const FAULT_FROM_S: u64 = 8;
const FAULT_UNTIL_S: u64 = 16;
const FAULT_PERCENT: f64 = 5.0;

fn main() {
    crossover_tests::require_root();
    if let Err(e) = run() {
        eprintln!("demo: {e:#}");
        std::process::exit(1);
    }
}

fn intro() {
    println!(
        "\
== crossover demo: a live CNI migration, watched ==

A Kubernetes cluster is being moved from Flannel to Cilium one node at a
time. Until the last node is done, two pod networks and two tunnels
(overlays) run side by side on every node:
  legacy  Flannel pods 10.244.0.0/16, tunnel flannel.1     (VXLAN, UDP 8472)
  cilium  Cilium pods  10.245.0.0/16, tunnel cilium_vxlan  (VXLAN, UDP 8473)
A pod talking to a pod of the other network crosses the node's routing
table and leaves SNATed: the receiver sees the sending node, not the pod.

This demo builds such a cluster's datapath from network namespaces: three
nodes, worker-1 already migrated (its pods are Cilium pods), the other two
still on Flannel. Pods talk across nodes and networks. crossover runs on
every node and counts, at each node's network card, what it sent to each
peer and what it received from each peer, per overlay. One node's 'sent'
against its peer's 'received' is the loss on that node pair and overlay:
the figure that tells an SRE whether the migration may go on.

At {FAULT_FROM_S} s the wire starts dropping {FAULT_PERCENT}% of what control-plane sends
worker-1 on the Cilium overlay; at {FAULT_UNTIL_S} s it stops. Watch that row.
"
    );
}

fn run() -> Result<()> {
    intro();
    let name = format!("demo{}", std::process::id() % 100_000);
    let mut lab = Lab::up(&LabSpec {
        name,
        nodes: 3,
        migrated: 1,
        pods: 2,
        ..LabSpec::default()
    })?
    .remove_on_drop();
    let fleet = Fleet::attach(&lab)?;
    for node in lab.nodes() {
        let pods: Vec<String> = node
            .pods
            .iter()
            .map(|p| format!("{} {}", p.name, p.addr))
            .collect();
        let network = if node.migrated { "cilium" } else { "legacy" };
        println!("  {:<14} {network:<7} pods: {}", node.name, pods.join(", "));
    }
    println!("\ncrossover attached on every node; traffic starts.\n");

    let e = |id: &str| lab.endpoint(id);
    // (from, to): legacy to Cilium, Cilium to legacy, legacy to legacy,
    // and the reverse of the faulty path.
    let streams = [
        (e("control-plane/app-1")?, e("worker-1/app-1")?),
        (e("worker-1/app-2")?, e("worker-2/app-1")?),
        (e("worker-2/app-2")?, e("control-plane/app-2")?),
        (e("worker-1/ds")?, e("control-plane/ds")?),
    ];
    let (tcp_from, tcp_to) = (e("control-plane/app-2")?, e("worker-1/app-2")?);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let live = std::io::stdout().is_terminal();

    let totals = thread::scope(|s| -> Result<(Vec<Delivery>, u64)> {
        for (from, to) in &streams {
            let count = 300 * SECONDS;
            s.spawn(move || traffic::udp_stream(from, to, count, 300, 200));
        }
        // Short TCP connections, legacy pod to Cilium pod, 10 a second.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = traffic::tcp_connections(&tcp_from, &tcp_to, 1, Duration::from_secs(1));
                thread::sleep(Duration::from_millis(100));
            }
        });
        let first = fleet.deliveries()?;
        let mut previous = first.clone();
        let mut fault = None;
        let mut drops = 0;
        for tick in 1..=(SECONDS / TICK.as_secs()) {
            let due = TICK * tick as u32;
            thread::sleep(due.saturating_sub(start.elapsed()));
            let t = start.elapsed().as_secs();
            let now = fleet.deliveries()?;
            show(t, &delivery::window(&previous, &now), fault.is_some(), live);
            // The fault changes between windows, so each window is all in
            // or all out of it.
            if fault.is_none() && (FAULT_FROM_S..FAULT_UNTIL_S).contains(&t) {
                fault = Some(lab.inject(Fault::Loss {
                    from: "control-plane".into(),
                    to: "worker-1".into(),
                    overlay: Overlay::Cilium,
                    percent: FAULT_PERCENT,
                })?);
            } else if let Some(id) = fault.filter(|_| t >= FAULT_UNTIL_S) {
                drops += lab.drops(id)?;
                lab.clear(id)?;
                fault = None;
            }
            previous = now;
        }
        if let Some(id) = fault {
            drops += lab.drops(id)?;
            lab.clear(id)?;
        }
        stop.store(true, Ordering::Relaxed);
        Ok((delivery::window(&first, &fleet.deliveries()?), drops))
    });
    let (totals, drops) = totals?;
    summary(&fleet, &totals, drops)?;
    drop(fleet);
    println!("\ncrossover detached; removing the lab.");
    Ok(())
}

fn show(t: u64, window: &[Delivery], fault_on: bool, live: bool) {
    if live {
        // Redraw in place on a terminal; append when piped.
        print!("\x1b[2J\x1b[H");
        intro();
    }
    let state = if fault_on {
        format!("fault on: {FAULT_PERCENT}% dropped control-plane -> worker-1, cilium")
    } else {
        "no fault".into()
    };
    println!("t={t:>2}s  last {} s, {state}", TICK.as_secs());
    println!(
        "  {:<14} {:<14} {:<8} {:<16} {:>6} {:>9} {:>5} {:>7}",
        "node", "peer", "overlay", "networks", "sent", "received", "lost", "loss"
    );
    for d in window
        .iter()
        .filter(|d| d.overlay != observer_ebpf::Overlay::None)
    {
        let ratio = d.loss_ratio().unwrap_or(0.0) * 100.0;
        let flag = if ratio >= 1.0 { "  <-- loss" } else { "" };
        println!(
            "  {:<14} {:<14} {:<8} {:<16} {:>6} {:>9} {:>5} {:>6.1}%{flag}",
            d.from,
            d.to,
            d.overlay,
            format!("{}->{}", d.src_net, d.dst_net),
            d.sent,
            d.received,
            d.lost(),
            ratio
        );
    }
    println!();
}

fn summary(fleet: &Fleet, totals: &[Delivery], drops: u64) -> Result<()> {
    println!("== over the whole run ==");
    // The faulted path, over all its network pairs.
    let on_path = |d: &&Delivery| {
        d.from == "control-plane"
            && d.to == "worker-1"
            && d.overlay == observer_ebpf::Overlay::Cilium
    };
    let path: Vec<&Delivery> = totals.iter().filter(on_path).collect();
    if !path.is_empty() {
        let (sent, received, lost) = path.iter().fold((0, 0, 0), |(s, r, l), d| {
            (s + d.sent, r + d.received, l + d.lost())
        });
        println!(
            "control-plane -> worker-1 on the Cilium overlay: {sent} sent, {received} received, {lost} lost."
        );
        println!("The fault dropped {drops} packets on the wire; crossover measured {lost}.");
    }
    let clean: u64 = totals
        .iter()
        .filter(|d| !on_path(d))
        .map(Delivery::lost)
        .sum();
    println!("Every other node pair and overlay: {clean} lost.");
    println!("\nWhat control-plane saw of its connections (flows joined across SNAT):");
    let conns = fleet.connections("control-plane")?;
    let snated = conns
        .iter()
        .filter(|c| c.snat_seen == SnatSeen::Translated && c.client_net != c.server_net)
        .count();
    let tcp: Vec<_> = conns.iter().filter(|c| c.proto == 6).collect();
    let answered = tcp
        .iter()
        .filter(|c| c.handshake == Handshake::Answered)
        .count();
    let retried = tcp
        .iter()
        .filter(|c| c.handshake == Handshake::Answered && c.syns > 1)
        .count();
    let unanswered = tcp
        .iter()
        .filter(|c| c.handshake == Handshake::Unanswered)
        .count();
    println!(
        "  {} connections, {snated} of them cross-overlay and SNATed by this node;",
        conns.len()
    );
    println!(
        "  TCP handshakes: {answered} answered ({retried} only after the fault ate a SYN), {unanswered} unanswered."
    );
    if let Some(c) = conns.iter().find(|c| {
        c.snat_seen == SnatSeen::Translated
            && c.client_net == observer_ebpf::Net::Legacy
            && c.server_net == observer_ebpf::Net::Cilium
    }) {
        println!(
            "  e.g. legacy pod {} -> Cilium pod {}: left the node as {} ({} overlay)",
            c.client,
            c.server,
            c.snat.map_or("?".into(), |s| s.to_string()),
            c.overlay
        );
    }
    Ok(())
}
