//! What a probe case runs in the sink: a probe responder on every peer's
//! overlay addresses (the sink owns them all), peer agents' APIs answering
//! (an agent that probes only peers whose API answered, as agents before
//! the probe mesh did, then probes them all), and nftables counters of
//! the probe packets the agent sends: the measurement, from outside.
use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use axum::{Json, Router, http::HeaderMap, routing::get};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::topology::underlay;
use crate::netns::{Netns, sh};

pub const PROBE_PORT: u16 = 9191;
pub const AGENT_PORT: u16 = 9190;

/// `crossover probe` in the sink, answering on every address it owns.
pub struct Responder(Child);

impl Responder {
    pub fn start(sink: &Netns, binary: &Path) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &sink.name])
            .arg(binary)
            .args(["probe", "--listen", &format!("0.0.0.0:{PROBE_PORT}")])
            .args(["--max-connections", "65536"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn crossover probe");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sh(&["ip", "netns", "exec", &sink.name, "ss", "-ltnH"])
            .contains(&format!(":{PROBE_PORT}"))
        {
            assert!(Instant::now() < deadline, "crossover probe never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Responder(child)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Node i from its underlay address (the inverse of [`underlay`]).
fn node_of(addr: Ipv4Addr) -> Option<usize> {
    let [_, _, c, d] = addr.octets();
    let i = (usize::from(c).checked_sub(50)?) * 250 + usize::from(d).checked_sub(1)?;
    (underlay(i) == addr).then_some(i)
}

/// Every peer agent's `/api/v1/peers`, answered from the sink (which owns
/// every peer's underlay): a report with no counters, named after the
/// peer the request was addressed to.
pub struct FakePeers {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakePeers {
    pub fn start(sink: &Netns) -> Self {
        let ns = sink.name.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _guard = observer::netns::enter(&ns).expect("enter the sink's netns");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("0.0.0.0", AGENT_PORT))
                    .await
                    .expect("bind the fake peer agents");
                let app = Router::new().route("/api/v1/peers", get(peers_report));
                let _ = ready_tx.send(());
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake peer agents never listened");
        FakePeers {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

async fn peers_report(headers: HeaderMap) -> Json<Value> {
    let addr: Ipv4Addr = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(':').next())
        .and_then(|h| h.parse().ok())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let node = node_of(addr).map_or_else(|| addr.to_string(), |i| format!("node-{i}"));
    Json(json!({
        "version": 1,
        "node": node,
        "underlay": addr.to_string(),
        "taken_ns": 0,
        "peers": [],
    }))
}

impl Drop for FakePeers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Probe packets from the agent into the sink, counted by nftables on the
/// sink's input: UDP and TCP to the probe port, and of those, the ones to
/// the node under migration's overlay addresses.
pub struct Counter {
    ns: String,
}

/// Packets counted so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counted {
    pub udp: u64,
    pub tcp: u64,
    pub focus: u64,
}

impl Counter {
    pub fn install(sink: &Netns, from: Ipv4Addr, focus: &[Ipv4Addr]) -> Self {
        let focus: Vec<String> = focus.iter().map(|a| a.to_string()).collect();
        let focus_rule = if focus.is_empty() {
            String::new()
        } else {
            format!(
                "ip saddr {from} ip daddr {{ {} }} th dport {PROBE_PORT} counter comment \"focus\"\n",
                focus.join(", ")
            )
        };
        let ruleset = format!(
            "table inet xoprobe {{\n\
               chain input {{\n\
                 type filter hook input priority 0; policy accept;\n\
                 {focus_rule}\
                 ip saddr {from} udp dport {PROBE_PORT} counter comment \"udp\"\n\
                 ip saddr {from} tcp dport {PROBE_PORT} counter comment \"tcp\"\n\
               }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(crate::netns::unique("xoprobe-") + ".nft");
        std::fs::write(&path, ruleset).expect("write the nft ruleset");
        sh(&[
            "ip",
            "netns",
            "exec",
            &sink.name,
            "nft",
            "-f",
            path.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&path);
        Counter {
            ns: sink.name.clone(),
        }
    }

    pub fn read(&self) -> Counted {
        let text = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "list", "table", "inet", "xoprobe",
        ]);
        let packets = |comment: &str| nft_packets(&text, comment);
        Counted {
            udp: packets("udp"),
            tcp: packets("tcp"),
            focus: packets("focus"),
        }
    }
}

/// The packets of the nftables counter with this comment in `nft list`
/// output (0 when absent).
pub fn nft_packets(text: &str, comment: &str) -> u64 {
    text.lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .and_then(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}
