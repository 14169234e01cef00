//! Network namespaces and veths for real-traffic tests, removed on drop.
use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
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
    format!(
        "{prefix}{}x{}",
        std::process::id() % 10000,
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
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

    /// An nftables table `xodrop` in the namespace dropping one packet in
    /// `every` of those matching `rule` at `hook`, counted (the kernel's
    /// drops with reason NETFILTER_DROP); `nft delete table ip xodrop`
    /// removes it.
    pub fn drop_every(&self, hook: &str, rule: &str, every: u32) {
        self.exec(&["nft", "add", "table", "ip", "xodrop"]);
        self.exec(&[
            "nft",
            "add",
            "chain",
            "ip",
            "xodrop",
            "c",
            &format!("{{ type filter hook {hook} priority 0; }}"),
        ]);
        let rule = format!("{rule} numgen inc mod {every} == 0 counter drop");
        let mut args = vec!["nft", "add", "rule", "ip", "xodrop", "c"];
        args.extend(rule.split(' '));
        self.exec(&args);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two "nodes" joined by a veth underlay (192.168.50.1 and .2 on `u0`),
/// each with both overlays of a migration: `flannel.1` (VXLAN VNI 1, UDP
/// 8472, 10.244.N.0/32) and `cilium_vxlan` (VNI 2, UDP 8473, `cilium_host`
/// style 10.245.N.1/32). Routes are onlink with static FDB and neighbour
/// entries, as Flannel installs them, so no ARP or IPv6 chatter crosses a
/// tunnel and counts stay exact.
pub struct TwoNodes {
    pub a: Netns,
    pub b: Netns,
}

/// (device, VNI, UDP port, second octet of the pod CIDR, host part of the
/// node's address on it, MAC prefix)
const OVERLAYS: [(&str, &str, &str, u8, u8, u8); 2] = [
    ("flannel.1", "1", "8472", 244, 0, 1),
    ("cilium_vxlan", "2", "8473", 245, 1, 2),
];

impl TwoNodes {
    pub fn new() -> Self {
        Self::with_prefix("x")
    }

    /// Namespaces named `{prefix}a…` and `{prefix}b…`, so concurrent test
    /// suites can tell theirs apart.
    pub fn with_prefix(prefix: &str) -> Self {
        let a = Netns::new(&format!("{prefix}a"));
        let b = Netns::new(&format!("{prefix}b"));
        for ns in [&a, &b] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        }
        sh(&[
            "ip", "link", "add", "u0", "netns", &a.name, "type", "veth", "peer", "u0", "netns",
            &b.name,
        ]);
        let nodes = [(&a, 1u8, 0u8), (&b, 2, 1)];
        for (ns, host, subnet) in nodes {
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("192.168.50.{host}/24"),
                "dev",
                "u0",
            ]);
            ns.exec(&["ip", "link", "set", "u0", "up"]);
            for (dev, vni, port, octet, addr, mac) in OVERLAYS {
                ns.exec(&[
                    "ip",
                    "link",
                    "add",
                    dev,
                    "address",
                    &format!("02:00:00:00:0{mac}:0{host}"),
                    "type",
                    "vxlan",
                    "id",
                    vni,
                    "local",
                    &format!("192.168.50.{host}"),
                    "dstport",
                    port,
                    "nolearning",
                ]);
                ns.exec(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.{octet}.{subnet}.{addr}/32"),
                    "dev",
                    dev,
                ]);
                ns.exec(&["ip", "link", "set", dev, "up"]);
            }
        }
        for (ns, host, _) in nodes {
            for (_, peer_host, peer_subnet) in nodes.into_iter().filter(|(_, h, _)| *h != host) {
                for (dev, _, _, octet, addr, mac) in OVERLAYS {
                    let peer_mac = format!("02:00:00:00:0{mac}:0{peer_host}");
                    let peer_ip = format!("10.{octet}.{peer_subnet}.{addr}");
                    let route = format!("10.{octet}.{peer_subnet}.0/24");
                    ns.exec(&[
                        "ip", "route", "add", &route, "via", &peer_ip, "dev", dev, "onlink",
                    ]);
                    ns.exec(&[
                        "ip",
                        "neigh",
                        "add",
                        &peer_ip,
                        "lladdr",
                        &peer_mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ]);
                    let underlay = format!("192.168.50.{peer_host}");
                    ns.exec(&[
                        "bridge", "fdb", "append", &peer_mac, "dev", dev, "dst", &underlay,
                    ]);
                }
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

/// GET `url` from inside namespace `ns` (where a lab node's agent is
/// reachable): (status, body); status 0 when nothing answered in 5 s.
pub fn http_get(ns: &str, url: &str) -> (u16, String) {
    http_get_as(ns, url, None)
}

/// [`http_get`] with `Authorization: Bearer TOKEN` when `token` is given.
pub fn http_get_as(ns: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let url = url.to_owned();
    let token = token.map(|t| format!("Bearer {t}"));
    in_netns(ns, move || {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(5)))
                .http_status_as_error(false)
                .build(),
        );
        let mut request = agent.get(&url);
        if let Some(token) = &token {
            request = request.header("Authorization", token);
        }
        match request.call() {
            Ok(mut response) => (
                response.status().as_u16(),
                response.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    })
}

/// A TUN device (IP only, no link-layer header), as `tunl0` and WireGuard
/// devices are: held open by this process, so its carrier is up; packets
/// the stack routes to it are read from `file`, packets written to `file`
/// arrive on it.
pub struct Tun {
    pub file: std::fs::File,
}

impl Tun {
    /// Creates TUN device `name` in namespace `ns`, up.
    pub fn create(ns: &Netns, name: &'static str) -> Self {
        let file = in_netns(&ns.name, move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("open /dev/net/tun");
            // SAFETY: an ifreq whose name fits IFNAMSIZ with its NUL; the
            // fd is the file's, open for the call.
            let rc = unsafe {
                let mut req: libc::ifreq = std::mem::zeroed();
                for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
                    *dst = src as libc::c_char;
                }
                req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::TUNSETIFF,
                    &mut req,
                )
            };
            assert_eq!(
                rc,
                0,
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            );
            file
        });
        ns.exec(&["ip", "link", "set", name, "up"]);
        Tun { file }
    }
}
