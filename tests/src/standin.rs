//! A stand-in for Cilium's TC programs (`tests/bpf/cilium_standin.c`),
//! attached the way Cilium's loader attaches them: on TCX at the tail of
//! the chain (`link.Tail()`), updated in place on an agent restart
//! (`BPF_LINK_UPDATE`); on older kernels a direct-action cls_bpf filter at
//! priority 1, handle 1, replaced in place on restart. It returns a final
//! verdict (TC_ACT_OK, or a redirect into a pod as BPF host routing does),
//! so nothing behind it on its hook sees a packet.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcHandle},
    },
};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/cilium_standin.c");

/// Where on a hook the stand-in goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// TCX, at the tail of the chain: where Cilium's loader puts it.
    TcxTail,
    /// TCX, at the head: something that pushes in front of everyone.
    TcxHead,
    /// cls_bpf on clsact, direct action, priority 1 handle 1 (Cilium's
    /// filter on kernels without TCX).
    Clsact,
}

/// The object file, compiled once per test process.
fn object() -> &'static PathBuf {
    static OBJECT: OnceLock<PathBuf> = OnceLock::new();
    OBJECT.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("cilium_standin-{}.o", std::process::id()));
        compile(SOURCE, &[], &out).unwrap_or_else(|e| panic!("{e}"));
        out
    })
}

/// Compiles the eBPF C program `source` into `out` with clang, `extra`
/// arguments before it (defines, `-include`). The error names the source
/// and quotes clang, or says how to install it.
pub fn compile(source: &str, extra: &[&str], out: &Path) -> Result<(), String> {
    // linux/types.h includes asm/types.h, which Debian keeps under the
    // multiarch directory.
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let result = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-I", &multiarch])
        .args(extra)
        .args(["-c", source, "-o"])
        .arg(out)
        .output();
    match result {
        Err(err) => Err(format!(
            "clang is needed to build {source} but could not be run: {err}; \
             `cargo xtask setup` installs it (Debian package clang)"
        )),
        Ok(o) if !o.status.success() => Err(format!(
            "clang could not build {source}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Ok(_) => Ok(()),
    }
}

/// What the stand-in does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// TC_ACT_OK: up the stack or out of the device, final.
    Pass,
    /// `bpf_redirect_peer` into the pod a packet is addressed to, for the
    /// pods given with [`Standin::pod`] (BPF host routing), from an ingress
    /// hook; others pass.
    RedirectPeer,
}

impl Verdict {
    fn program(self) -> &'static str {
        match self {
            Verdict::Pass => "cilium_standin",
            Verdict::RedirectPeer => "cilium_standin_redirect_peer",
        }
    }
}

/// One loaded stand-in and the hooks it is attached to.
pub struct Standin {
    ebpf: Ebpf,
    verdict: Verdict,
    /// Pods redirected into: address and host-side ifindex.
    pods: Vec<(Ipv4Addr, u32)>,
    links: Vec<SchedClassifierLinkId>,
    /// The namespace of its hooks: links are taken off there on drop (a
    /// netlink filter would otherwise be looked for in this thread's).
    netns: Option<String>,
}

impl Standin {
    /// A stand-in that passes every packet on (TC_ACT_OK).
    pub fn load() -> Standin {
        Standin::with(Verdict::Pass)
    }

    pub fn with(verdict: Verdict) -> Standin {
        crate::require_root();
        let mut ebpf = Ebpf::load_file(object()).expect("loading the Cilium stand-in");
        program(&mut ebpf, verdict)
            .load()
            .expect("verifying the Cilium stand-in");
        Standin {
            ebpf,
            verdict,
            pods: Vec::new(),
            links: Vec::new(),
            netns: None,
        }
    }

    /// Redirects packets to `addr` into the pod behind the host-side veth
    /// `host_ifindex` ([`Verdict::RedirectPeer`]).
    pub fn pod(&mut self, addr: Ipv4Addr, host_ifindex: u32) {
        let mut map: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut("STANDIN_PODS").unwrap()).unwrap();
        map.insert(u32::from_ne_bytes(addr.octets()), host_ifindex, 0)
            .unwrap();
        self.pods.push((addr, host_ifindex));
    }

    /// Packets the stand-in has seen, in every hook it is on.
    pub fn seen(&self) -> u64 {
        self.counter(0)
    }

    /// Of those, redirected into a pod ([`Verdict::RedirectPeer`]).
    pub fn redirected(&self) -> u64 {
        self.counter(1)
    }

    fn counter(&self, index: u32) -> u64 {
        let map: Array<_, u64> = Array::try_from(self.ebpf.map("STANDIN_SEEN").unwrap()).unwrap();
        map.get(&index, 0).unwrap()
    }

    /// The kernel's id of the program (as TCX queries and `tc filter
    /// show` name it).
    pub fn program_id(&self) -> u32 {
        let program: &SchedClassifier = self
            .ebpf
            .program(self.verdict.program())
            .unwrap()
            .try_into()
            .unwrap();
        program.info().unwrap().id()
    }

    /// Attaches to `iface` of the network namespace named `netns` at
    /// `place`.
    pub fn attach(&mut self, netns: &str, iface: &str, direction: TcAttachType, place: Place) {
        let _ns = observer::netns::enter(netns).expect("enter netns");
        self.netns = Some(netns.to_owned());
        let options = match place {
            Place::TcxTail => TcAttachOptions::TcxOrder(LinkOrder::last()),
            Place::TcxHead => TcAttachOptions::TcxOrder(LinkOrder::first()),
            Place::Clsact => {
                // Cilium adds clsact if missing and never removes it.
                let _ = aya::programs::tc::qdisc_add_clsact(iface);
                TcAttachOptions::Netlink(NlOptions {
                    priority: 1,
                    handle: TcHandle::from(1u32),
                    ..NlOptions::default()
                })
            }
        };
        let id = program(&mut self.ebpf, self.verdict)
            .attach_with_options(iface, direction, options)
            .unwrap_or_else(|e| panic!("attaching the stand-in to {iface} ({place:?}): {e:?}"));
        self.links.push(id);
    }

    /// A Cilium agent restart: a new stand-in takes over every link of
    /// this one in place (TCX: `BPF_LINK_UPDATE`; clsact: the filter at
    /// the same priority and handle replaced), as Cilium's loader does.
    pub fn restart(self) -> Standin {
        let next = self.successor();
        self.hand_over(next)
    }

    /// A new stand-in doing what this one does, loaded but not attached:
    /// the first half of a restart.
    pub fn successor(&self) -> Standin {
        let mut next = Standin::with(self.verdict);
        for &(addr, ifindex) in &self.pods {
            next.pod(addr, ifindex);
        }
        next
    }

    /// The second half of a restart, `next` loaded beforehand (as Cilium
    /// loads its new programs before swapping them in).
    pub fn hand_over(mut self, mut next: Standin) -> Standin {
        let netns = self.netns.clone().expect("restarting an attached stand-in");
        let _ns = observer::netns::enter(&netns).expect("enter netns");
        next.netns = Some(netns);
        for id in std::mem::take(&mut self.links) {
            let link = program(&mut self.ebpf, self.verdict).take_link(id).unwrap();
            let id = program(&mut next.ebpf, next.verdict)
                .attach_to_link(link)
                .expect("replacing the stand-in in place");
            next.links.push(id);
        }
        next
    }

    /// Takes the stand-in off every hook it is on.
    pub fn detach(&mut self) {
        let links = std::mem::take(&mut self.links);
        let Some(netns) = &self.netns else {
            return;
        };
        let _ns = observer::netns::enter(netns).expect("enter netns");
        for id in links {
            // Fails only when the namespace or interface is already gone.
            let _ = program(&mut self.ebpf, self.verdict).detach(id);
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.detach();
    }
}

fn program(ebpf: &mut Ebpf, verdict: Verdict) -> &mut SchedClassifier {
    ebpf.program_mut(verdict.program())
        .expect("the stand-in's program")
        .try_into()
        .expect("a TC program")
}

/// Holds priority 1 of `iface`'s clsact `direction` ("ingress" or
/// "egress") in the network namespace `netns` with a filter crossover
/// cannot share it with: classic BPF for IPv4 only, returning TC_ACT_OK, a
/// final verdict. crossover attaches behind it and the hook stays blind
/// whatever it re-asserts, until `tc filter del ... pref 1` takes it away.
pub fn hold_priority_1(netns: &str, iface: &str, direction: &str) {
    let tc = |args: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", netns, "tc"];
        all.extend(args);
        crate::netns::sh(&all);
    };
    tc(&["qdisc", "add", "dev", iface, "clsact"]);
    tc(&[
        "filter",
        "add",
        "dev",
        iface,
        direction,
        "prio",
        "1",
        "protocol",
        "ip",
        "bpf",
        "da",
        "bytecode",
        "1,6 0 0 0,",
    ]);
}
