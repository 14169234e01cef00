//! One node's datapath as both CNIs build it during a migration: the legacy
//! CNI's (Flannel's `flannel.1` and `cni0`, Calico's `vxlan.calico`, see
//! `calico.rs`, or the AWS VPC CNI's routes and SNAT, see `aws.rs`), Cilium's `cilium_host`/`cilium_net` pair and
//! `cilium_vxlan`, and the masquerade rules of both.
use anyhow::Result;

use super::{
    aws, calico,
    exec::{IpBatch, batch, sysctls},
    plan::{self, LegacyCni, Network},
    state::LabState,
    tunl0,
};

/// The underlay: one bridge in its own namespace, like the docker network
/// kind's nodes share. A CrossSubnet lab has one bridge per underlay
/// subnet and the namespace routes between them, holding each subnet's
/// gateway address.
pub fn build_underlay(lab: &LabState) -> Result<()> {
    let ns = lab.underlay_ns();
    let mut ip = IpBatch::default();
    ip.add("link set lo up")
        .add("link add underlay type bridge")
        .add("link set underlay up");
    if lab.legacy.cross_subnet() {
        for s in 0..plan::UNDERLAY_SUBNETS {
            let bridge = plan::underlay_bridge(s);
            if s > 0 {
                ip.add(format!("link add {bridge} type bridge"))
                    .add(format!("link set {bridge} up"));
            }
            ip.add(format!(
                "addr add {} dev {bridge}",
                plan::underlay_gateway(s)
            ));
        }
    }
    ip.run(&ns)?;
    sysctls(
        &ns,
        &[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            (
                "net.ipv4.ip_forward",
                u8::from(lab.legacy.cross_subnet()).to_string().as_str(),
            ),
        ],
    )
}

/// The node's namespace, its `eth0` on the underlay bridge, and both
/// overlays with routes to every other node.
pub fn build_node(lab: &LabState, j: usize) -> Result<()> {
    let node = &lab.nodes[j];
    let ns = lab.node_ns(&node.name);
    super::exec::run(&["ip", "netns", "add", &ns])?;
    // IPv6 off keeps router solicitations and MLD out of the counts.
    sysctls(
        &ns,
        &[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ],
    )?;
    let underlay = plan::node_underlay(lab.legacy, j);
    let port = LabState::underlay_port(j);
    let mut ip = IpBatch::default();
    ip.add("link set lo up")
        .add(format!(
            "link add eth0 type veth peer name {port} netns {}",
            lab.underlay_ns()
        ))
        .add(format!("addr add {underlay} dev eth0"))
        .add("link set eth0 up");
    let subnet = plan::underlay_subnet(lab.legacy, j);
    if lab.legacy.cross_subnet() {
        // The other subnets through this one's router (a real node's
        // default gateway; the lab's nodes have no default route).
        let gateway = plan::underlay_gateway(subnet).addr();
        for s in (0..plan::UNDERLAY_SUBNETS).filter(|&s| s != subnet) {
            ip.add(format!(
                "route add {} via {gateway} dev eth0",
                plan::underlay_gateway(s).trunc()
            ));
        }
    }
    if lab.legacy.ipip() {
        tunl0::device(&mut ip, j);
    } else if lab.legacy.tunnelled() {
        legacy_tunnel(&mut ip, lab.legacy, j);
    }
    match lab.legacy {
        LegacyCni::Flannel => flannel(&mut ip, j),
        LegacyCni::CalicoVxlan
        | LegacyCni::CalicoCrossSubnet
        | LegacyCni::CalicoIpip
        | LegacyCni::CalicoIpipCrossSubnet => calico::node(&mut ip, j),
        // Nothing before pods: the fabric's routes come with each pod.
        LegacyCni::AwsNative => {}
    }
    cilium(&mut ip, lab.legacy, j);
    for k in (0..lab.nodes.len()).filter(|&k| k != j) {
        peer_routes(&mut ip, lab.legacy, j, k);
    }
    ip.run(&ns)?;
    let mut bridge = IpBatch::default();
    bridge
        .add(format!(
            "link set {port} master {}",
            plan::underlay_bridge(subnet)
        ))
        .add(format!("link set {port} up"));
    bridge.run(&lab.underlay_ns())?;
    // cilium_net receives packets whose source is a local address (the
    // node's own, after SNAT) on their way into the tunnel.
    sysctls(
        &ns,
        &[
            ("net.ipv4.conf.cilium_net.accept_local", "1"),
            ("net.ipv4.conf.cilium_net.rp_filter", "0"),
        ],
    )?;
    fdb(lab, j)?;
    if lab.legacy.ipip() {
        tunl0::attach(lab, j)?;
    }
    masquerade(&ns, lab.legacy, j)
}

/// The legacy CNI's VXLAN device as flanneld and Felix both create it:
/// its VNI and port, learning off (peers come as static entries), MTU
/// 1450, the node's tunnel address as a /32.
fn legacy_tunnel(ip: &mut IpBatch, cni: LegacyCni, j: usize) {
    let underlay = plan::node_underlay(cni, j).addr();
    let dev = cni.device();
    ip.add(format!(
        "link add {dev} address {} type vxlan id {} local {underlay} dev eth0 dstport {} nolearning",
        plan::mac(cni.vtep_mac_kind(), j),
        cni.vni(),
        cni.port()
    ))
    .add(format!("link set {dev} mtu {} up", plan::OVERLAY_MTU))
    .add(format!("addr add {}/32 dev {dev}", plan::flannel_addr(j)));
}

/// Flannel's bridge, the legacy pods' gateway.
fn flannel(ip: &mut IpBatch, j: usize) {
    ip.add("link add cni0 type bridge")
        .add(format!("link set cni0 mtu {} up", plan::OVERLAY_MTU))
        .add(format!("addr add {}/24 dev cni0", plan::cni0_addr(j)));
}

/// Cilium with `bpf.hostLegacyRouting`: pods' traffic goes through the
/// kernel's routing table to `cilium_host`, whose BPF program hands it to
/// the tunnel. Without BPF the lab makes that hop a second routing pass:
/// `cilium_host` delivers into its peer `cilium_net`, where a policy rule
/// looks the destination up in the tunnel table.
fn cilium(ip: &mut IpBatch, cni: LegacyCni, j: usize) {
    let host = plan::cilium_host_addr(j);
    let underlay = plan::node_underlay(cni, j).addr();
    let net_mac = plan::mac(plan::MAC_CILIUM_NET, j);
    let local = plan::pod_cidr(j, Network::Cilium);
    // Like real Cilium, cilium_host does no ARP. Its routes name its own
    // address as gateway, which the kernel resolves to the device itself,
    // so frames leave with cilium_host's MAC as destination: cilium_net
    // shares that MAC to take them in.
    ip.add(format!(
        "link add cilium_host address {net_mac} type veth peer name cilium_net address {net_mac}"
    ))
    .add("link set cilium_host arp off")
    .add("link set cilium_net up")
    .add("link set cilium_host up")
    .add(format!("addr add {host}/32 dev cilium_host"))
    .add(format!("route add {host} dev cilium_host scope link"))
    .add(format!(
        "route add {local} via {host} dev cilium_host src {host}"
    ))
    .add(format!(
        "link add cilium_vxlan address {} type vxlan id {} local {underlay} dev eth0 dstport {} nolearning",
        plan::mac(plan::MAC_CILIUM_VXLAN, j),
        plan::CILIUM_VNI,
        plan::CILIUM_PORT
    ))
    .add(format!("link set cilium_vxlan mtu {} up", plan::OVERLAY_MTU))
    .add(format!(
        "rule add iif cilium_net lookup {} pref 100",
        plan::TUNNEL_TABLE
    ))
    // Packets from cilium_net for this node's own range are for pods that
    // do not exist: stop them instead of looping through cilium_host.
    .add(format!(
        "route add unreachable {local} table {}",
        plan::TUNNEL_TABLE
    ));
}

/// What Flannel and Felix alike write for each peer (an onlink route to
/// its subnet or block via its tunnel address, a permanent neighbour for
/// that address with its VTEP MAC) and what Cilium routes for each peer's
/// CIDR (in IPIP mode BIRD's route, `tunl0.rs`). In either CrossSubnet
/// mode the block of a peer in the same underlay subnet is routed via the
/// peer's underlay address on `eth0`, by whoever programs the mode's
/// routes: Felix in VXLAN mode, with its own protocol (80), keeping the
/// VTEP's neighbour and FDB entries all the same; BIRD in IPIP mode
/// (`proto bird`, its kernel filter clearing `krt_tunnel` for a next hop
/// in the node's subnet).
fn peer_routes(ip: &mut IpBatch, cni: LegacyCni, j: usize, k: usize) {
    let legacy = plan::pod_cidr(k, Network::Legacy);
    if plan::native_within_subnet(cni, j, k) {
        let peer = plan::node_underlay(cni, k).addr();
        let proto = if cni.ipip() {
            tunl0::PROTO_BIRD
        } else {
            FELIX_PROTO
        };
        ip.add(format!(
            "route add {legacy} via {peer} dev eth0 proto {proto}"
        ));
    } else if cni.ipip() {
        tunl0::peer_route(ip, cni, k);
    } else if cni.tunnelled() {
        ip.add(format!(
            "route add {legacy} via {} dev {} onlink",
            plan::flannel_addr(k),
            cni.device()
        ));
    }
    if cni.tunnelled() && !cni.ipip() {
        let tunnel_peer = plan::flannel_addr(k);
        let dev = cni.device();
        ip.add(format!(
            "neigh add {tunnel_peer} lladdr {} dev {dev} nud permanent",
            plan::mac(cni.vtep_mac_kind(), k)
        ));
    }
    let cilium = plan::pod_cidr(k, Network::Cilium);
    let host = plan::cilium_host_addr(j);
    let host_peer = plan::cilium_host_addr(k);
    ip.add(format!(
        "route add {cilium} via {host} dev cilium_host src {host} mtu {}",
        plan::OVERLAY_MTU
    ))
    .add(format!(
        "route add {cilium} via {host_peer} dev cilium_vxlan onlink table {}",
        plan::TUNNEL_TABLE
    ))
    .add(format!(
        "neigh add {host_peer} lladdr {} dev cilium_vxlan nud permanent",
        plan::mac(plan::MAC_CILIUM_VXLAN, k)
    ));
}

/// Felix's route protocol (`dataplanedefs.DefaultRouteProto`).
const FELIX_PROTO: u8 = 80;

/// Forwarding entries: which underlay address each peer's VTEP MAC is at.
fn fdb(lab: &LabState, j: usize) -> Result<()> {
    let mut bridge = String::new();
    for k in (0..lab.nodes.len()).filter(|&k| k != j) {
        let dst = lab.underlay_addr(k);
        // IP-in-IP has no VTEP: the outer header comes from the route.
        let legacy = (lab.legacy.tunnelled() && !lab.legacy.ipip())
            .then(|| (lab.legacy.vtep_mac_kind(), lab.legacy.device()));
        for (kind, dev) in legacy
            .into_iter()
            .chain([(plan::MAC_CILIUM_VXLAN, "cilium_vxlan")])
        {
            bridge += &format!("fdb append {} dev {dev} dst {dst}\n", plan::mac(kind, k));
        }
    }
    if bridge.is_empty() {
        return Ok(());
    }
    batch(
        &lab.node_ns(&lab.nodes[j].name),
        &["bridge", "-batch", "-"],
        &bridge,
    )
}

/// The NAT rules both CNIs install. Flannel's `--ip-masq` chain verbatim
/// (with this node's subnet) or Calico's `natOutgoing`, Cilium's iptables
/// masquerade for traffic leaving its cluster pool, and the lab's
/// `NOTRACK` for the second routing pass, so conntrack sees each flow once
/// and de-NATs replies.
fn masquerade(ns: &str, cni: LegacyCni, j: usize) -> Result<()> {
    let legacy = plan::cluster_cidr(Network::Legacy);
    let subnet = plan::pod_cidr(j, Network::Legacy);
    let cilium = plan::cluster_cidr(Network::Cilium);
    let cilium_subnet = plan::pod_cidr(j, Network::Cilium);
    let flannel = r#"-m comment --comment "flanneld masq""#;
    let legacy_rules = match cni {
        LegacyCni::Flannel => format!(
            r#":FLANNEL-POSTRTG - [0:0]
-A POSTROUTING {flannel} -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {flannel} -j RETURN
-A FLANNEL-POSTRTG -s {subnet} -d {legacy} {flannel} -j RETURN
-A FLANNEL-POSTRTG -s {legacy} -d {subnet} {flannel} -j RETURN
-A FLANNEL-POSTRTG ! -s {legacy} -d {subnet} {flannel} -j RETURN
-A FLANNEL-POSTRTG -s {legacy} ! -d 224.0.0.0/4 {flannel} -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s {legacy} -d {legacy} {flannel} -j MASQUERADE --random-fully
"#
        ),
        LegacyCni::CalicoVxlan
        | LegacyCni::CalicoCrossSubnet
        | LegacyCni::CalicoIpip
        | LegacyCni::CalicoIpipCrossSubnet => calico::masquerade_rules(cni),
        LegacyCni::AwsNative => aws::snat_rules(j),
    };
    let rules = format!(
        r#"*nat
:CILIUM_POST_nat - [0:0]
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
{legacy_rules}-A CILIUM_POST_nat -s {cilium_subnet} ! -d {cilium} ! -o cilium_+ -m comment --comment "cilium masquerade non-cluster" -j MASQUERADE
COMMIT
*raw
-A PREROUTING -i cilium_net -m comment --comment "crossover lab: second routing pass, BPF in real Cilium" -j CT --notrack
COMMIT
"#
    );
    batch(ns, &["iptables-restore", "--noflush"], &rules)?;
    if cni == LegacyCni::AwsNative {
        batch(
            ns,
            &["iptables-restore", "--noflush"],
            &aws::cilium_delivery_rules(),
        )?;
    }
    Ok(())
}
