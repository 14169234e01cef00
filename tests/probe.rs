//! Active probes: the wire format, the responder and prober on loopback,
//! and in a lab, a prober on one node towards its peers' `flannel.1` and
//! `cilium_host` addresses and probe pods, with faults on the wire and no
//! other traffic. Needs root (namespaces).
use std::{
    future::Future,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use crossover_tests::{
    lab::{Fault, Lab, LabSpec, Overlay as LabOverlay, plan},
    netns::{Netns, in_netns, unique},
    require_root,
};
use observer::probe::{
    MeshConfig, Probe, ProbeStats, Prober, ProberConfig, Responder, ResponderConfig,
    ResponderCounters, Schedule, Target, Totals, Window, mesh,
    metrics::{self, Report},
    stats::LossReason,
    wire::{HEADER_LEN, Header, Kind, WireError, reply_in_place},
};
use observer_ebpf::{Net, Overlay};
use tokio::sync::{oneshot, watch};

const CROSSOVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/crossover");
const PORT: u16 = 9191;

/// One lab at a time: loss and RTT figures want the CPU to themselves.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn wire_round_trips_and_refuses_what_is_not_a_probe() {
    let header = Header::request(0xdead_beef_0102_0304, u64::MAX - 1, 123_456_789);
    let bytes = header.encode();
    assert_eq!(bytes.len(), HEADER_LEN);
    assert_eq!(&bytes[..6], b"XOPR\x01\x01");
    assert_eq!(Header::decode(&bytes), Ok(header));

    // The reply is the request with its kind turned, padding echoed.
    let mut datagram = bytes.to_vec();
    datagram.extend_from_slice(b"padding");
    assert_eq!(reply_in_place(&mut datagram), Ok(header));
    let reply = Header::decode(&datagram).unwrap();
    assert_eq!(reply.kind, Kind::Reply);
    assert_eq!(
        (reply.sender, reply.seq, reply.sent_ns),
        (header.sender, header.seq, header.sent_ns)
    );
    assert!(datagram.ends_with(b"padding"));
    // A reply is not answered again: responders never bounce.
    assert_eq!(
        reply_in_place(&mut datagram),
        Err(WireError::Unexpected(Kind::Reply))
    );

    for len in [0, 1, 4, HEADER_LEN - 1] {
        assert_eq!(
            Header::decode(&bytes[..len]),
            Err(WireError::Truncated { len })
        );
    }
    let altered = |at: usize, value: u8| {
        let mut b = bytes;
        b[at] = value;
        Header::decode(&b)
    };
    assert_eq!(altered(0, b'x'), Err(WireError::Magic(*b"xOPR")));
    assert_eq!(altered(4, 2), Err(WireError::Version(2)));
    assert_eq!(altered(4, 0), Err(WireError::Version(0)));
    assert_eq!(altered(5, 0), Err(WireError::Kind(0)));
    assert_eq!(altered(5, 3), Err(WireError::Kind(3)));
    assert_eq!(altered(7, 1), Err(WireError::Reserved([0, 1])));
    // Garbage of every length: an error, never a panic.
    let mut x = 0x9e37_79b9_u32;
    for len in 0..200 {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(Header::decode(&junk).is_err(), "{junk:?}");
    }
    let message = altered(4, 9).unwrap_err().to_string();
    assert!(message.contains("version 9"), "{message}");
}

/// A tokio runtime on a thread of its own inside network namespace `ns`:
/// the sockets its tasks make belong to `ns`.
struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NsRuntime {
    fn start(ns: &str) -> NsRuntime {
        let ns = ns.to_owned();
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let _guard = observer::netns::enter(&ns).expect("enter netns");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(runtime.handle().clone()).unwrap();
            // Spawned tasks run here, on this thread, in this namespace.
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        NsRuntime {
            handle: handle_rx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the namespace's thread and waits for it.
    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("task on the namespace's runtime")
    }

    /// A responder on `listen`, answering until the runtime stops.
    fn responder(
        &self,
        listen: SocketAddr,
        max_connections: usize,
    ) -> (SocketAddr, Arc<ResponderCounters>) {
        self.run(async move {
            let responder = Responder::bind(ResponderConfig {
                listen,
                max_connections,
                ..ResponderConfig::default()
            })
            .await
            .expect("bind responder");
            let addr = responder.local_addr().unwrap();
            let counters = responder.counters();
            tokio::spawn(responder.run(std::future::pending()));
            (addr, counters)
        })
    }

    fn prober(
        &self,
        config: ProberConfig,
        stats: &ProbeStats,
        targets: Vec<Target>,
    ) -> (Prober, watch::Sender<Vec<Target>>) {
        let (tx, rx) = watch::channel(targets);
        let stats = stats.clone();
        let prober = self.run(async move { Prober::spawn(config, stats, rx).expect("prober") });
        (prober, tx)
    }

    /// A prober following a [`Schedule`], as the agent runs it.
    fn scheduled(
        &self,
        config: ProberConfig,
        stats: &ProbeStats,
        schedule: Schedule,
    ) -> (Prober, watch::Sender<Schedule>) {
        let (tx, rx) = watch::channel(schedule);
        let stats = stats.clone();
        let prober = self.run(async move { Prober::spawn(config, stats, rx).expect("prober") });
        (prober, tx)
    }

    fn stop(&self, prober: Prober) {
        self.run(prober.stop()).expect("prober stops cleanly");
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn totals_of<'a>(
    totals: &'a [Totals],
    peer: &str,
    overlay: Overlay,
    net: Net,
    signal: Probe,
) -> &'a Totals {
    totals
        .iter()
        .find(|t| {
            t.key.peer_node == peer
                && t.key.overlay == overlay
                && t.key.dst_net == net
                && t.key.signal == signal
        })
        .unwrap_or_else(|| panic!("no series {peer} {overlay:?} {net:?} {signal:?} in {totals:#?}"))
}

fn lost_for(t: &Totals, reason: LossReason) -> u64 {
    t.lost_by_reason
        .iter()
        .find(|(r, _)| *r == reason.label())
        .map_or(0, |(_, n)| *n)
}

fn local_target(peer: &str, addr: SocketAddr) -> Target {
    let SocketAddr::V4(addr) = addr else {
        panic!("{addr} is not IPv4")
    };
    Target {
        peer_node: peer.into(),
        overlay: Overlay::None,
        dst_net: Net::Host,
        addr: *addr.ip(),
        port: addr.port(),
    }
}

#[test]
fn responder_counts_garbage_caps_connections_and_still_answers() {
    require_root();
    let ns = Netns::new("prr");
    let rt = NsRuntime::start(&ns.name);
    let (addr, counters) = rt.responder("127.0.0.1:0".parse().unwrap(), 1);

    let (reply, tcp) = in_netns(&ns.name, move || {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let valid = Header::request(7, 42, 99).encode();
        let mut reply_kind = valid;
        reply_kind[5] = Kind::Reply as u8;
        let mut bad_version = valid;
        bad_version[4] = 200;
        for junk in [
            &b"short"[..],
            &[0u8; 64][..],
            &bad_version[..],
            &reply_kind[..],
        ] {
            udp.send_to(junk, addr).unwrap();
        }
        udp.send_to(&valid, addr).unwrap();
        let mut buf = [0u8; 128];
        let (len, _) = udp.recv_from(&mut buf).unwrap();
        let reply = Header::decode(&buf[..len]).unwrap();
        // Nothing came back for the garbage.
        udp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(udp.recv_from(&mut buf).is_err(), "an answer to garbage");

        // One connection at a time: the second is closed unserved.
        let mut first = TcpStream::connect(addr).unwrap();
        first.write_all(b"echo me").unwrap();
        let mut echoed = [0u8; 7];
        first.read_exact(&mut echoed).unwrap();
        let mut second = TcpStream::connect(addr).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let closed = matches!(second.read(&mut [0u8; 8]), Ok(0) | Err(_));
        (reply, (echoed, closed))
    });
    assert_eq!(reply.kind, Kind::Reply);
    assert_eq!((reply.sender, reply.seq, reply.sent_ns), (7, 42, 99));
    assert_eq!(&tcp.0, b"echo me");
    assert!(tcp.1, "the connection over the cap was served");

    let t = counters.totals();
    assert_eq!(t.udp_replies, 1);
    let refused = |reason: &str| t.refused.iter().find(|(r, _)| *r == reason).unwrap().1;
    assert_eq!(refused("truncated"), 1);
    assert_eq!(refused("magic"), 1);
    assert_eq!(refused("version"), 1);
    assert_eq!(refused("unexpected"), 1);
    assert_eq!((t.tcp_accepted, t.tcp_over_cap), (2, 1));
}

#[test]
fn prober_loses_by_reason_and_follows_target_changes() {
    require_root();
    let ns = Netns::new("prp");
    let rt = NsRuntime::start(&ns.name);
    let (addr, counters) = rt.responder("127.0.0.1:0".parse().unwrap(), 64);
    // Nothing listens on port 1: the SYN gets an RST, the datagram an ICMP
    // port unreachable. Both are refusals, not loss: the network delivered
    // the probe and the peer said nobody listens.
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let stats = ProbeStats::new(Duration::from_secs(2));
    let config = ProberConfig {
        rate: 20.0,
        timeout: Duration::from_millis(300),
        late_horizon: Duration::from_millis(300),
        ..ProberConfig::default()
    };
    let (prober, targets) = rt.prober(
        config,
        &stats,
        vec![local_target("up", addr), local_target("closed", closed)],
    );
    thread::sleep(Duration::from_millis(1500));
    let totals = stats.totals();
    for signal in Probe::ALL {
        let up = totals_of(&totals, "up", Overlay::None, Net::Host, signal);
        assert!(up.sent >= 20, "{up:?}");
        assert_eq!(up.lost, 0, "{up:?}");
        // Probes in flight aside, every one answered.
        assert!(up.received + 3 >= up.sent, "{up:?}");
    }
    let udp = totals_of(&totals, "closed", Overlay::None, Net::Host, Probe::Udp);
    assert!(udp.refused >= 20 && udp.lost == 0, "{udp:?}");
    assert_eq!(udp.received, 0);
    assert_eq!(lost_for(udp, LossReason::Timeout), 0);
    let tcp = totals_of(&totals, "closed", Overlay::None, Net::Host, Probe::Tcp);
    assert!(tcp.refused >= 20 && tcp.lost == 0, "{tcp:?}");
    assert_eq!(tcp.received, 0);
    for w in stats
        .window(Instant::now())
        .iter()
        .filter(|w| w.key.peer_node == "closed")
    {
        assert!(w.refused > 0 && w.lost == 0, "{w:?}");
        assert_eq!(w.loss_ratio, None, "refusals are outside the ratio: {w:?}");
    }

    // The peer goes: its probes stop at once, its series once its last
    // probe resolved and the (2 s) window passed.
    targets.send_replace(vec![local_target("up", addr)]);
    thread::sleep(Duration::from_millis(100));
    let before = stats.totals();
    let sent_closed = totals_of(&before, "closed", Overlay::None, Net::Host, Probe::Udp).sent;
    thread::sleep(Duration::from_millis(500));
    let after = stats.totals();
    assert_eq!(
        totals_of(&after, "closed", Overlay::None, Net::Host, Probe::Udp).sent,
        sent_closed,
        "probes to a removed target"
    );
    thread::sleep(Duration::from_millis(3500));
    let totals = stats.totals();
    assert!(
        totals.iter().all(|t| t.key.peer_node == "up"),
        "removed series kept: {totals:#?}"
    );
    assert_eq!(stats.window(Instant::now()).len(), Probe::ALL.len());

    rt.stop(prober);
    // Stopped: everything sent has resolved, and the responder saw it all.
    let totals = stats.totals();
    let udp = totals_of(&totals, "up", Overlay::None, Net::Host, Probe::Udp);
    assert_eq!(udp.received + udp.lost, udp.sent);
    // The responder echoes small and large probes alike.
    let large = totals_of(&totals, "up", Overlay::None, Net::Host, Probe::Mtu);
    assert_eq!(large.received + large.lost, large.sent);
    assert_eq!(counters.totals().udp_replies, udp.received + large.received);
    let tcp = totals_of(&totals, "up", Overlay::None, Net::Host, Probe::Tcp);
    assert_eq!(tcp.received + tcp.lost, tcp.sent);
    assert!(
        stats.unattributed_totals().is_empty(),
        "{:?}",
        stats.unattributed_totals()
    );
}

#[test]
fn probe_subcommand_answers_and_exits_on_sigterm() {
    require_root();
    let ns = Netns::new("prs");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, CROSSOVER, "probe"])
        .args(["--listen", &format!("127.0.0.1:{PORT}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{CROSSOVER}: {e} (cargo build -p observer --bin crossover)"));
    let reply = in_netns(&ns.name, || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", PORT)).is_err() {
            assert!(Instant::now() < deadline, "crossover probe never listened");
            thread::sleep(Duration::from_millis(50));
        }
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        udp.send_to(b"not a probe", ("127.0.0.1", PORT)).unwrap();
        udp.send_to(&Header::request(1, 2, 3).encode(), ("127.0.0.1", PORT))
            .unwrap();
        let mut buf = [0u8; 64];
        let (len, _) = udp.recv_from(&mut buf).unwrap();
        Header::decode(&buf[..len]).unwrap()
    });
    assert_eq!((reply.kind, reply.seq), (Kind::Reply, 2));
    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs it).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 UDP echoes") && stderr.contains("1 datagrams refused"),
        "{stderr}"
    );
}

/// `crossover probe` in a pod's namespace, as the probe DaemonSet runs it.
struct PodResponders(Vec<Child>);

impl PodResponders {
    fn start(netns: &[String]) -> PodResponders {
        let mut children = Vec::new();
        for ns in netns {
            let child = Command::new("ip")
                .args(["netns", "exec", ns, CROSSOVER, "probe"])
                .args(["--listen", &format!("0.0.0.0:{PORT}")])
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{CROSSOVER}: {e} (cargo build -p observer --bin crossover)")
                });
            children.push(child);
        }
        for ns in netns {
            let deadline = Instant::now() + Duration::from_secs(10);
            let up = || in_netns(ns, || TcpStream::connect(("127.0.0.1", PORT)).is_ok());
            while !up() {
                assert!(
                    Instant::now() < deadline,
                    "crossover probe in {ns} never listened"
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        PodResponders(children)
    }
}

impl Drop for PodResponders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// From control-plane: each worker's `flannel.1` address (legacy overlay),
/// its `cilium_host` address (Cilium overlay), and its DaemonSet pod
/// (worker-1 is migrated: a Cilium pod; worker-2's is legacy).
fn lab_targets(lab: &Lab) -> Vec<Target> {
    let mut targets = Vec::new();
    for (j, peer) in [(1, "worker-1"), (2, "worker-2")] {
        let node = |overlay, addr| Target {
            peer_node: peer.into(),
            overlay,
            dst_net: Net::Host,
            addr,
            port: PORT,
        };
        targets.push(node(Overlay::Legacy, plan::flannel_addr(j)));
        targets.push(node(Overlay::Cilium, plan::cilium_host_addr(j)));
        let pod = lab.pod(&format!("{peer}/ds")).unwrap();
        let (overlay, net) = match pod.network {
            plan::Network::Legacy => (Overlay::Legacy, Net::Legacy),
            plan::Network::Cilium => (Overlay::Cilium, Net::Cilium),
        };
        targets.push(Target {
            peer_node: peer.into(),
            overlay,
            dst_net: net,
            addr: pod.addr,
            port: PORT,
        });
    }
    targets
}

fn window_of<'a>(window: &'a [Window], t: &Target, signal: Probe) -> &'a Window {
    window
        .iter()
        .find(|w| w.key == t.key(signal))
        .unwrap_or_else(|| panic!("no window for {t:?} {signal:?}"))
}

/// The faulty pair's targets: worker-2 over the legacy overlay.
fn faulty(t: &Target) -> bool {
    t.peer_node == "worker-2" && t.overlay == Overlay::Legacy
}

/// Sum over the faulty pair's series of `signal`.
fn faulty_totals(stats: &ProbeStats, targets: &[Target], signal: Probe) -> (u64, u64, u64) {
    let totals = stats.totals();
    targets
        .iter()
        .filter(|t| faulty(t))
        .map(|t| {
            let s = totals.iter().find(|s| s.key == t.key(signal)).unwrap();
            (s.sent, s.received, s.lost)
        })
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

#[test]
fn probes_measure_each_overlay_of_each_node_pair_in_the_lab() {
    let _serial = serial();
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("pr"),
        nodes: 3,
        migrated: 1,
        pods: 0,
        ..LabSpec::default()
    })
    .expect("lab up")
    .remove_on_drop();
    let cp = lab.node_ns("control-plane");
    // The agent's responder on each worker's host network, and
    // `crossover probe` in each worker's DaemonSet pod.
    let mut node_runtimes = Vec::new();
    let mut node_counters = Vec::new();
    for worker in ["worker-1", "worker-2"] {
        let rt = NsRuntime::start(&lab.node_ns(worker));
        let (_, counters) = rt.responder(SocketAddr::from(([0, 0, 0, 0], PORT)), 1024);
        node_runtimes.push(rt);
        node_counters.push(counters);
    }
    let pods: Vec<String> = ["worker-1/ds", "worker-2/ds"]
        .iter()
        .map(|p| lab.pod(p).unwrap().netns.clone())
        .collect();
    let _pod_responders = PodResponders::start(&pods);
    let targets = lab_targets(&lab);
    assert_eq!(targets.iter().filter(|t| faulty(t)).count(), 2);

    // Clean: every series answers, with a lab's RTTs.
    let prober_rt = NsRuntime::start(&cp);
    let stats = ProbeStats::new(Duration::from_secs(10));
    let (prober, _targets_tx) = prober_rt.prober(ProberConfig::default(), &stats, targets.clone());
    thread::sleep(Duration::from_secs(3));
    let window = stats.window(Instant::now());
    // Large probes go to the nodes' own overlay addresses, not to pods.
    let series: usize = targets
        .iter()
        .map(|t| Probe::ALL.iter().filter(|s| t.takes(**s)).count())
        .sum();
    assert_eq!(window.len(), series);
    assert!(targets.iter().any(|t| !t.takes(Probe::Mtu)));
    for t in &targets {
        for signal in Probe::ALL.into_iter().filter(|s| t.takes(*s)) {
            let w = window_of(&window, t, signal);
            assert!(w.sent >= 20, "{w:?}");
            assert_eq!((w.lost, w.late), (0, 0), "loss with no fault: {w:?}");
            assert!(w.received + 2 >= w.sent, "{w:?}");
            let rtt = w.rtt.expect("RTTs");
            assert!(
                rtt.p50 > 0.0 && rtt.p50 <= rtt.p90 && rtt.p90 <= rtt.p99 && rtt.p99 <= rtt.max,
                "{rtt:?}"
            );
            assert!(rtt.p99 < 0.1, "{t:?} {signal:?}: {rtt:?}");
        }
    }

    // Blackhole control-plane -> worker-2 on the legacy overlay: both
    // signals of both its targets (flannel.1, the legacy pod) lose within
    // 5 s; nothing else does.
    let hole = lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-2".into(),
            overlay: LabOverlay::Legacy,
            percent: 100.0,
        })
        .unwrap();
    let injected = Instant::now();
    let detected = loop {
        let window = stats.window(Instant::now());
        let all = targets.iter().filter(|t| faulty(t)).all(|t| {
            Probe::ALL
                .iter()
                .filter(|s| t.takes(**s))
                .all(|s| window_of(&window, t, *s).lost > 0)
        });
        if all {
            break injected.elapsed();
        }
        assert!(
            injected.elapsed() < Duration::from_secs(5),
            "blackhole not reported within 5 s: {window:#?}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    eprintln!("blackhole reported on every faulty series after {detected:?}");
    thread::sleep(Duration::from_secs(2));
    let window = stats.window(Instant::now());
    let totals = stats.totals();
    for t in &targets {
        for signal in Probe::ALL.into_iter().filter(|s| t.takes(*s)) {
            let total = totals.iter().find(|s| s.key == t.key(signal)).unwrap();
            if faulty(t) {
                let w = window_of(&window, t, signal);
                assert!(w.loss_ratio.unwrap() > 0.2, "{w:?}");
                assert_eq!(
                    lost_for(total, LossReason::Timeout),
                    total.lost,
                    "{total:?}"
                );
            } else {
                assert_eq!(total.lost, 0, "loss outside the blackhole: {total:?}");
            }
        }
    }
    // As /metrics shows it.
    let unattributed = stats.unattributed_totals();
    let mut text = String::new();
    metrics::write(
        &mut text,
        "control-plane",
        &Report {
            totals: &totals,
            unattributed: &unattributed,
            responder: None,
            ladder_packets: 0,
        },
    );
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let labels = |overlay: &str, net: &str, signal: &str| {
        format!(
            "{{node=\"control-plane\",peer_node=\"worker-2\",overlay=\"{overlay}\",dst_net=\"{net}\",signal=\"{signal}\""
        )
    };
    let lost = |overlay, net, signal| {
        sample(&format!(
            "crossover_probes_lost_total{},reason=\"timeout\"}}",
            labels(overlay, net, signal)
        ))
    };
    assert!(lost("legacy", "host", "probe_udp") > 0.0);
    assert!(lost("legacy", "legacy", "probe_tcp") > 0.0);
    assert_eq!(lost("cilium", "host", "probe_udp"), 0.0);
    assert_eq!(lost("cilium", "host", "probe_tcp"), 0.0);
    // Every RTT in the lab is under 100 ms: the 0.1 bucket holds them all.
    let answered = sample(&format!(
        "crossover_probe_rtt_seconds_count{}}}",
        labels("cilium", "host", "probe_udp")
    ));
    let under_100ms = sample(&format!(
        "crossover_probe_rtt_seconds_bucket{},le=\"0.1\"}}",
        labels("cilium", "host", "probe_udp")
    ));
    assert!(
        answered > 0.0 && under_100ms == answered,
        "{under_100ms} of {answered}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            (line.starts_with("crossover_probe") || line.starts_with("crossover_path_mtu_bytes"))
                && value.parse::<f64>().is_ok(),
            "{line}"
        );
    }
    prober_rt.stop(prober);
    lab.clear(hole).unwrap();

    // 10% loss, UDP only, no other traffic: each lost probe is exactly one
    // request the wire dropped (the fault is one way: replies all pass), so
    // the fault's counter equals the lost probes of that pair and overlay.
    let answered_before: Vec<u64> = node_counters
        .iter()
        .map(|c| c.totals().udp_replies)
        .collect();
    let loss = lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-2".into(),
            overlay: LabOverlay::Legacy,
            percent: 10.0,
        })
        .unwrap();
    let stats = ProbeStats::new(Duration::from_secs(10));
    let config = ProberConfig {
        rate: 50.0,
        signals: vec![Probe::Udp],
        ..ProberConfig::default()
    };
    let (prober, _targets_tx) = prober_rt.prober(config, &stats, targets.clone());
    thread::sleep(Duration::from_secs(10));
    prober_rt.stop(prober);
    let drops = lab.drops(loss).unwrap();
    let (sent, received, lost) = faulty_totals(&stats, &targets, Probe::Udp);
    eprintln!("UDP at 10%: {lost} of {sent} probes lost, the wire dropped {drops}");
    assert_eq!(received + lost, sent);
    assert_eq!(
        lost, drops,
        "lost UDP probes are the requests the wire dropped"
    );
    let ratio = lost as f64 / sent as f64;
    assert!(
        sent >= 800 && (0.05..0.15).contains(&ratio),
        "{lost} of {sent}"
    );
    let totals = stats.totals();
    for t in targets.iter().filter(|t| !faulty(t)) {
        let s = totals.iter().find(|s| s.key == t.key(Probe::Udp)).unwrap();
        assert_eq!((s.lost, s.received), (0, s.sent), "{s:?}");
    }
    // Every probe that arrived was answered, by the node or its pod.
    let node_answers: Vec<u64> = node_counters
        .iter()
        .zip(&answered_before)
        .map(|(c, before)| c.totals().udp_replies - before)
        .collect();
    let host = |peer: &str| -> u64 {
        totals
            .iter()
            .filter(|s| s.key.peer_node == peer && s.key.dst_net == Net::Host)
            .map(|s| s.received)
            .sum()
    };
    assert_eq!(node_answers, vec![host("worker-1"), host("worker-2")]);
    lab.clear(loss).unwrap();

    // 10% loss, TCP only. A probe is lost when its SYN is dropped; with a
    // timeout under the kernel's 1 s initial SYN retransmission, exactly
    // then. Dropped ACKs and RSTs (and what the server retransmits for
    // them) also reach the fault's counter, so it only bounds the loss.
    let loss = lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-2".into(),
            overlay: LabOverlay::Legacy,
            percent: 10.0,
        })
        .unwrap();
    let stats = ProbeStats::new(Duration::from_secs(10));
    let config = ProberConfig {
        rate: 50.0,
        timeout: Duration::from_millis(900),
        signals: vec![Probe::Tcp],
        ..ProberConfig::default()
    };
    let (prober, _targets_tx) = prober_rt.prober(config, &stats, targets.clone());
    thread::sleep(Duration::from_secs(10));
    prober_rt.stop(prober);
    let drops = lab.drops(loss).unwrap();
    let (sent, received, lost) = faulty_totals(&stats, &targets, Probe::Tcp);
    eprintln!("TCP at 10%: {lost} of {sent} handshakes lost, the wire dropped {drops}");
    assert_eq!(received + lost, sent);
    let ratio = lost as f64 / sent as f64;
    assert!(
        sent >= 800 && (0.05..0.15).contains(&ratio),
        "{lost} of {sent}"
    );
    assert!(
        drops >= lost && drops < sent,
        "{drops} dropped, {lost} of {sent} lost"
    );
    let totals = stats.totals();
    for t in targets.iter().filter(|t| !faulty(t)) {
        let s = totals.iter().find(|s| s.key == t.key(Probe::Tcp)).unwrap();
        assert_eq!((s.lost, s.received), (0, s.sent), "{s:?}");
    }
    for t in targets.iter().filter(|t| faulty(t)) {
        let s = totals.iter().find(|s| s.key == t.key(Probe::Tcp)).unwrap();
        assert_eq!(lost_for(s, LossReason::Timeout), s.lost, "{s:?}");
    }
    lab.clear(loss).unwrap();

    // worker-2 migrates, DaemonSet pods restarted: its probe pod comes back
    // on a Cilium address. The new target list replaces the old one while
    // the prober runs: the new pod is probed over the Cilium overlay and
    // answers; the old address is probed no more.
    let stats = ProbeStats::new(Duration::from_secs(10));
    let (prober, targets_tx) = prober_rt.prober(ProberConfig::default(), &stats, targets.clone());
    thread::sleep(Duration::from_secs(1));
    let old_pod = lab.pod("worker-2/ds").unwrap().clone();
    lab.migrate("worker-2", true).unwrap();
    let new_pod = lab.pod("worker-2/ds").unwrap().clone();
    assert_eq!(new_pod.network, plan::Network::Cilium);
    let _new_pod_responder = PodResponders::start(std::slice::from_ref(&new_pod.netns));
    let migrated = lab_targets(&lab);
    assert!(migrated.iter().all(|t| t.addr != old_pod.addr));
    targets_tx.send_replace(migrated.clone());
    thread::sleep(Duration::from_millis(100));
    let old_key = |signal| observer::probe::SeriesKey {
        peer_node: "worker-2".into(),
        overlay: Overlay::Legacy,
        dst_net: Net::Legacy,
        signal,
    };
    let old_sent = |stats: &ProbeStats| -> Vec<u64> {
        let totals = stats.totals();
        [Probe::Udp, Probe::Tcp]
            .iter()
            .map(|s| {
                totals
                    .iter()
                    .find(|t| t.key == old_key(*s))
                    .map_or(0, |t| t.sent)
            })
            .collect()
    };
    let before = old_sent(&stats);
    assert!(before.iter().all(|n| *n >= 5), "{before:?}");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        old_sent(&stats),
        before,
        "the old pod address is still probed"
    );
    let window = stats.window(Instant::now());
    let new_target = migrated
        .iter()
        .find(|t| t.addr == new_pod.addr)
        .expect("the new pod is a target");
    assert_eq!(
        (new_target.overlay, new_target.dst_net),
        (Overlay::Cilium, Net::Cilium)
    );
    for signal in Probe::ALL.into_iter().filter(|s| new_target.takes(*s)) {
        let w = window_of(&window, new_target, signal);
        assert!(
            w.sent >= 10 && w.lost == 0 && w.received + 2 >= w.sent,
            "{w:?}"
        );
    }
    prober_rt.stop(prober);
}

/// Packets `iface` of namespace `ns` sent, from the kernel's counters.
fn tx_packets(ns: &str, iface: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", "dev", iface])
        .output()
        .expect("ip -s link");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    links[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx packets for {iface} in {ns}: {links}"))
}

/// The probe mesh in the lab, from control-plane with a budget so small
/// that only the node under migration fits steadily: its targets are
/// probed every second and a blackhole towards it shows within 5 s; the
/// other worker is swept (one target a second) and a blackhole towards it
/// shows within the rotation period. The budget holds on the wire
/// (control-plane's `eth0`), and changing the plan while probes are in
/// flight loses nothing.
#[test]
fn mesh_finds_blackholes_towards_the_focus_within_5_s_and_elsewhere_within_the_period() {
    let _serial = serial();
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("pm"),
        nodes: 3,
        migrated: 1,
        pods: 0,
        ..LabSpec::default()
    })
    .expect("lab up")
    .remove_on_drop();
    let cp = lab.node_ns("control-plane");
    let mut node_runtimes = Vec::new();
    for worker in ["worker-1", "worker-2"] {
        let rt = NsRuntime::start(&lab.node_ns(worker));
        rt.responder(SocketAddr::from(([0, 0, 0, 0], PORT)), 1024);
        node_runtimes.push(rt);
    }
    let pods: Vec<String> = ["worker-1/ds", "worker-2/ds"]
        .iter()
        .map(|p| lab.pod(p).unwrap().netns.clone())
        .collect();
    let _pod_responders = PodResponders::start(&pods);
    let targets = lab_targets(&lab);
    let nodes = ["control-plane", "worker-1", "worker-2"];

    // Three nodes: control-plane covers one worker on the ring; the other
    // is under migration (both cases are then exercised whatever the
    // hashes say).
    let ring = mesh::ring(nodes);
    let rotated = mesh::half_ring(&ring, "control-plane")[0].to_string();
    let focus = nodes[1..]
        .iter()
        .find(|n| **n != rotated)
        .unwrap()
        .to_string();
    // 25 packets/s: the focus's 3 targets at 1/s (15: UDP 1, TCP 3,
    // large 1), 2.5 kept for MTU ladders, 7.5 left for the other's 3,
    // swept: 1.5 visits (UDP + TCP + large) a second, a 2 s round.
    let config = MeshConfig {
        budget: 25.0,
        ..MeshConfig::default()
    };
    let plan_for = |focus: &str| {
        let focus = [focus.to_string()].into();
        mesh::plan("control-plane", &nodes, &targets, &focus, &config)
    };
    let plan = plan_for(&focus);
    eprintln!("{}", plan.summary);
    assert_eq!(plan.summary.focus, vec![focus.clone()]);
    assert_eq!(plan.summary.focus_targets, 3);
    assert_eq!(plan.summary.rotation_targets, 3);
    assert!(!plan.summary.rotation_steady);
    assert!(
        plan.schedule
            .sweep
            .targets
            .iter()
            .all(|t| t.peer_node == rotated)
    );
    let period = plan.summary.period;
    assert!((period.as_secs_f64() - 2.0).abs() < 1e-9, "{period:?}");

    let prober_rt = NsRuntime::start(&cp);
    let stats = ProbeStats::new(Duration::from_secs(10));
    let prober_config = ProberConfig {
        rate: config.rate,
        ..ProberConfig::default()
    };
    let tx0 = tx_packets(&cp, "eth0");
    let (prober, schedule_tx) = prober_rt.scheduled(prober_config, &stats, plan.schedule.clone());
    let started = Instant::now();
    thread::sleep(Duration::from_secs(10));
    let tx1 = tx_packets(&cp, "eth0");
    let measured = (tx1 - tx0) as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "control-plane's eth0 sent {measured:.1} packets/s (budget {}, planned {})",
        config.budget,
        plan.summary.packets()
    );
    // Nothing else runs in the lab: the underlay carries the probes (one
    // underlay packet each), and ARP now and then.
    assert!(measured <= config.budget * 1.1 + 1.0, "{measured}");
    assert!(measured >= plan.summary.packets() * 0.7, "{measured}");
    // Clean: every target probed, nothing lost.
    let window = stats.window(Instant::now());
    for t in &targets {
        for signal in Probe::ALL.into_iter().filter(|s| t.takes(*s)) {
            let w = window_of(&window, t, signal);
            assert!(w.sent >= 1 && w.lost == 0, "{w:?}");
        }
    }

    // Blackhole towards the node under migration on the legacy overlay:
    // seen within 5 s on both signals of its legacy targets.
    let took = blackhole_seen(
        &mut lab,
        &stats,
        &targets,
        &focus,
        &Probe::ALL,
        Duration::from_secs(5),
    );
    eprintln!("blackhole towards the node under migration {focus} seen after {took:?}");

    // Towards the other worker: a swept target is visited once a round,
    // so within the round (jitter aside) and the timeout. UDP is enough to
    // call it seen: each visit probes with both signals.
    let bound = period.mul_f64(1.2) + ProberConfig::default().timeout + Duration::from_secs(1);
    let took = blackhole_seen(&mut lab, &stats, &targets, &rotated, &[Probe::Udp], bound);
    eprintln!("blackhole towards {rotated} (rotation, {period:?} round) seen after {took:?}");

    // The blackholes gone, swap the focus while probes are in flight: the
    // probes of targets leaving the steady set resolve as they do, so
    // nothing is lost beyond what the faults took.
    let lost_before: u64 = stats.totals().iter().map(|t| t.lost).sum();
    thread::sleep(Duration::from_secs(2));
    let settled: u64 = stats.totals().iter().map(|t| t.lost).sum();
    for _ in 0..5 {
        schedule_tx.send_replace(plan_for(&rotated).schedule);
        thread::sleep(Duration::from_millis(300));
        schedule_tx.send_replace(plan.schedule.clone());
        thread::sleep(Duration::from_millis(300));
    }
    thread::sleep(Duration::from_secs(3));
    let lost_after: u64 = stats.totals().iter().map(|t| t.lost).sum();
    assert_eq!(
        lost_after, settled,
        "plan changes lost probes (before the changes: {lost_before}, settled {settled})"
    );
    prober_rt.stop(prober);
    let totals = stats.totals();
    for t in &totals {
        assert_eq!(t.received + t.lost + t.refused, t.sent, "{t:?}");
    }
    drop(node_runtimes);
}

/// Blackholes control-plane -> `peer` on the legacy overlay until every
/// legacy target of `peer` shows loss on each of `signals`; how long that
/// took, which must be under `within`. The fault is cleared after.
fn blackhole_seen(
    lab: &mut Lab,
    stats: &ProbeStats,
    targets: &[Target],
    peer: &str,
    signals: &[Probe],
    within: Duration,
) -> Duration {
    let id = lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: peer.into(),
            overlay: LabOverlay::Legacy,
            percent: 100.0,
        })
        .unwrap();
    let injected = Instant::now();
    let faulty = || {
        targets
            .iter()
            .filter(|t| t.peer_node == peer && t.overlay == Overlay::Legacy)
    };
    assert!(faulty().count() > 0);
    let took = loop {
        let window = stats.window(Instant::now());
        let seen = faulty().all(|t| {
            signals
                .iter()
                .filter(|s| t.takes(**s))
                .all(|s| window.iter().any(|w| w.key == t.key(*s) && w.lost > 0))
        });
        if seen {
            break injected.elapsed();
        }
        assert!(
            injected.elapsed() < within,
            "blackhole towards {peer} not seen within {within:?}: {window:#?}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    lab.clear(id).unwrap();
    took
}

/// The prober's CPU at 200 targets, 10 probes a second each, UDP and TCP
/// (4000 probes a second), towards a responder on loopback. A measurement
/// more than a test: run it with `--ignored --nocapture`.
#[test]
#[ignore]
fn prober_cpu_at_200_targets() {
    require_root();
    let ns = Netns::new("prc");
    let responder_rt = NsRuntime::start(&ns.name);
    let (addr, _) = responder_rt.responder("127.0.0.1:0".parse().unwrap(), 4096);
    let targets: Vec<Target> = (0..200)
        .map(|i| local_target(&format!("peer-{i:03}"), addr))
        .collect();
    let prober_rt = NsRuntime::start(&ns.name);
    let thread_cpu = || {
        // SAFETY: rusage is plain integers, for which zero is valid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct it is given.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    let mut shares = Vec::new();
    for signals in [vec![Probe::Udp], Probe::ALL.to_vec()] {
        let stats = ProbeStats::new(Duration::from_secs(10));
        let config = ProberConfig {
            signals: signals.clone(),
            ..ProberConfig::default()
        };
        let (prober, _targets_tx) = prober_rt.prober(config, &stats, targets.clone());
        thread::sleep(Duration::from_secs(2));
        let (cpu0, wall0) = (prober_rt.run(async move { thread_cpu() }), Instant::now());
        let answering0 = responder_rt.run(async move { thread_cpu() });
        thread::sleep(Duration::from_secs(10));
        let (cpu1, wall1) = (prober_rt.run(async move { thread_cpu() }), Instant::now());
        let answering1 = responder_rt.run(async move { thread_cpu() });
        prober_rt.stop(prober);
        let wall = (wall1 - wall0).as_secs_f64();
        let share = (cpu1 - cpu0) / wall;
        let totals = stats.totals();
        let sent: u64 = totals.iter().map(|t| t.sent).sum();
        let lost: u64 = totals.iter().map(|t| t.lost).sum();
        eprintln!(
            "prober, 200 targets x 10/s x {signals:?}: {:.1}% of a core (user + system, \
             loopback: the kernel's receive path is charged to the sender), the responder \
             {:.1}%; {sent} probes, {lost} lost",
            share * 100.0,
            (answering1 - answering0) / wall * 100.0
        );
        assert_eq!(lost, 0);
        shares.push(share);
    }
    assert!(shares.iter().all(|s| *s < 0.5), "{shares:?}");
}
