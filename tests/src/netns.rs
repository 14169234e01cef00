//! Network namespaces and veths for real-traffic tests, removed on drop.
use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique short prefix for names in this test process.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 10000, NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two "nodes" joined by a veth underlay (192.168.50.1 and .2 on `u0`),
/// each with a Flannel-style VXLAN device `flannel.1` (VNI 1, UDP 8472,
/// 10.244.N.0/32 with onlink routes and static FDB and neighbour entries,
/// so no ARP or IPv6 chatter crosses the tunnel and counts stay exact).
pub struct TwoNodes {
    pub a: Netns,
    pub b: Netns,
}

impl TwoNodes {
    pub fn new() -> Self {
        let a = Netns::new("xa");
        let b = Netns::new("xb");
        for ns in [&a, &b] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        }
        sh(&["ip", "link", "add", "u0", "netns", &a.name, "type", "veth", "peer", "u0", "netns", &b.name]);
        let nodes = [(&a, 1u8, 0u8), (&b, 2, 1)];
        for (ns, host, subnet) in nodes {
            let mac = format!("02:00:00:00:01:0{host}");
            ns.exec(&["ip", "addr", "add", &format!("192.168.50.{host}/24"), "dev", "u0"]);
            ns.exec(&["ip", "link", "set", "u0", "up"]);
            ns.exec(&[
                "ip", "link", "add", "flannel.1", "address", &mac, "type", "vxlan", "id", "1",
                "local", &format!("192.168.50.{host}"), "dstport", "8472", "nolearning",
            ]);
            ns.exec(&["ip", "addr", "add", &format!("10.244.{subnet}.0/32"), "dev", "flannel.1"]);
            ns.exec(&["ip", "link", "set", "flannel.1", "up"]);
        }
        for (ns, _, _) in nodes {
            for (_, peer_host, peer_subnet) in nodes {
                let peer_mac = format!("02:00:00:00:01:0{peer_host}");
                let peer_ip = format!("10.244.{peer_subnet}.0");
                if ns.exec(&["ip", "-br", "addr", "show", "flannel.1"]).contains(&peer_ip) {
                    continue;
                }
                ns.exec(&["ip", "route", "add", &format!("10.244.{peer_subnet}.0/24"), "via", &peer_ip, "dev", "flannel.1", "onlink"]);
                ns.exec(&["ip", "neigh", "add", &peer_ip, "lladdr", &peer_mac, "dev", "flannel.1", "nud", "permanent"]);
                ns.exec(&["bridge", "fdb", "append", &peer_mac, "dev", "flannel.1", "dst", &format!("192.168.50.{peer_host}")]);
            }
        }
        // Resolve the underlay neighbours now, so ARP is over before counting.
        a.exec(&["ping", "-c1", "-W2", "192.168.50.2"]);
        TwoNodes { a, b }
    }
}

impl Default for TwoNodes {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `f` on a thread inside network namespace `name`.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_owned();
    std::thread::spawn(move || {
        let _guard = observer::netns::enter(&name).expect("enter netns");
        f()
    })
    .join()
    .expect("netns thread")
}
