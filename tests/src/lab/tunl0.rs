//! Calico's `tunl0` in IP-in-IP mode, in a kernel without the ipip driver
//! (`ip link add type ipip` fails "Unknown device type" here). `tunl0` is
//! one end of a veth pair, `tunl0p` the other; a TC stand-in
//! (`tests/bpf/ipip_standin.c`) does what ipip_tunnel_xmit and ipip_rcv
//! would: on `tunl0p` ingress it puts the outer header on what the node
//! routed into `tunl0` and sends it out of `eth0`; on `eth0` ingress,
//! behind crossover, it takes the outer header off what a peer sent and
//! hands the inner packet to `tunl0`. Everything around it (addresses,
//! routes, MTU, pods, NAT) is Calico's own; docs/lab.md says where each
//! detail comes from.
//!
//! The stand-in is attached with `tc` as a direct-action cls_bpf filter on
//! clsact: the filter holds the program, so it outlives `lab up`, and on
//! `eth0` it runs after the TCX programs crossover puts at the head (TCX
//! runs first; a program returning TCX_NEXT, as crossover's do, passes the
//! packet on to clsact). Each node's parameters (its addresses, ifindexes
//! and which peer owns which block) are compiled in from a header the lab
//! writes per node, so nothing needs a map filled or pinned.
use std::{fmt::Write as _, net::Ipv4Addr};

use anyhow::{Context, Result, anyhow};

use super::{
    exec::{IpBatch, in_ns},
    plan::{self, LegacyCni, Network},
    state::LabState,
};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/ipip_standin.c");
/// The device `tunl0`'s packets come out of, where the encapsulation runs.
const FAR_END: &str = "tunl0p";
/// Felix's routes in IPIP mode are BIRD's (`proto bird`, number 12 in
/// iproute2's rt_protos).
pub const PROTO_BIRD: u8 = 12;

/// `tunl0` and its far end: the node's IPIP tunnel address (Calico's IPAM
/// gives the tunnel the block's first free address, the block's `.0`) as
/// a /32, MTU 1480, no ARP (a real `tunl0` is NOARP: the kernel sends
/// without resolving a neighbour).
pub fn device(ip: &mut IpBatch, j: usize) {
    let mac = plan::mac(plan::MAC_CALICO_TUNL0, j);
    let mtu = plan::IPIP_MTU;
    ip.add(format!(
        "link add tunl0 address {mac} type veth peer name {FAR_END}"
    ))
    .add(format!("link set tunl0 mtu {mtu} arp off up"))
    .add(format!("link set {FAR_END} mtu {mtu} up"))
    .add(format!("addr add {}/32 dev tunl0", plan::flannel_addr(j)));
}

/// BIRD's route to peer `k`'s block in IPIP mode: via the peer's underlay
/// address, onlink, out of `tunl0` (the kernel picks `tunl0`'s address as
/// the source of the node's own traffic).
pub fn peer_route(ip: &mut IpBatch, cni: LegacyCni, k: usize) {
    ip.add(format!(
        "route add {} via {} dev tunl0 onlink proto {PROTO_BIRD}",
        plan::pod_cidr(k, Network::Legacy),
        plan::node_underlay(cni, k).addr()
    ));
}

/// Compiles node `j`'s stand-in and attaches it: encapsulation on
/// `tunl0p` ingress, decapsulation on `eth0` ingress. Run after
/// [`device`]'s links exist (their ifindexes are compiled in).
pub fn attach(lab: &LabState, j: usize) -> Result<()> {
    let ns = lab.node_ns(&lab.nodes[j].name);
    let ifindex = |dev: &str| -> Result<u32> {
        let out = in_ns(&ns, &["cat", &format!("/sys/class/net/{dev}/ifindex")])?;
        out.trim()
            .parse()
            .with_context(|| format!("{dev}'s ifindex in {ns}: {out:?}"))
    };
    let header = header(lab, j, ifindex("eth0")?, ifindex(FAR_END)?);
    let file = |ext: &str| std::env::temp_dir().join(format!("crossover-{ns}-ipip.{ext}"));
    let (h, o) = (file("h"), file("o"));
    std::fs::write(&h, header).with_context(|| format!("writing {}", h.display()))?;
    let built = crate::standin::compile(SOURCE, &["-include", &h.to_string_lossy()], &o)
        .map_err(|e| anyhow!(e));
    let attached = built.and_then(|()| {
        let obj = o.to_string_lossy();
        for (dev, sec) in [(FAR_END, "classifier/encap"), ("eth0", "classifier/decap")] {
            in_ns(&ns, &["tc", "qdisc", "add", "dev", dev, "clsact"])?;
            in_ns(
                &ns,
                &[
                    "tc", "filter", "add", "dev", dev, "ingress", "bpf", "da", "obj", &obj, "sec",
                    sec,
                ],
            )?;
        }
        Ok(())
    });
    // The kernel holds the programs now: the files are not needed.
    let _ = std::fs::remove_file(&h);
    let _ = std::fs::remove_file(&o);
    attached.with_context(|| format!("attaching the IP-in-IP stand-in in {ns}"))
}

/// Node `j`'s parameters for `ipip_standin.c` (its header comment names
/// them). Addresses in host order. The peers are those the node reaches
/// through `tunl0`: in a CrossSubnet lab only the other subnet's. A
/// same-subnet peer's block is routed natively and that peer sends no
/// IP-in-IP, so the decapsulation takes none from it (stricter than
/// Felix's `cali-INPUT`, which allows IPIP from every Calico host).
fn header(lab: &LabState, j: usize, eth0: u32, far_end: u32) -> String {
    let hex = |a: Ipv4Addr| format!("{:#010x}", u32::from(a));
    let pool = plan::cluster_cidr(Network::Legacy);
    let block = plan::pod_cidr(j, Network::Legacy);
    let mac: Vec<String> = plan::mac(plan::MAC_CALICO_TUNL0, j)
        .split(':')
        .map(|b| format!("0x{b}"))
        .collect();
    let (mut peers, mut sources) = (String::new(), String::new());
    let tunnelled = |&k: &usize| k != j && !plan::native_within_subnet(lab.legacy, j, k);
    for k in (0..lab.nodes.len()).filter(tunnelled) {
        let underlay = hex(plan::node_underlay(lab.legacy, k).addr());
        let block = hex(plan::pod_cidr(k, Network::Legacy).network());
        let _ = write!(peers, " case {block}: return {underlay};");
        let _ = write!(sources, " case {underlay}:");
    }
    format!(
        "#define LOCAL_UNDERLAY {local}\n\
         #define ETH0_IFINDEX {eth0}\n\
         #define TUNL0P_IFINDEX {far_end}\n\
         #define TUNL0_MAC {{{mac}}}\n\
         #define POOL_NET {pool_net}\n\
         #define POOL_MASK {pool_mask}\n\
         #define BLOCK_MASK {block_mask}\n\
         #define PEER_CASES{peers}\n\
         #define PEER_SOURCES{sources}\n",
        local = hex(plan::node_underlay(lab.legacy, j).addr()),
        mac = mac.join(","),
        pool_net = hex(pool.network()),
        pool_mask = hex(pool.netmask()),
        block_mask = hex(block.netmask()),
    )
}
