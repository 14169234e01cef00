//! ICMP "fragmentation needed" about this node's own packets towards a
//! peer node: counted per peer, overlay and [`MtuHop`] in FRAG_NEEDED,
//! with the latest message's next-hop MTU. Only ICMP pays (a call); any
//! other packet costs the two hooks one compare on its protocol, and an
//! underlay's tunnel packet not even that.
//!
//! Two places tell whose packet did not fit, and only there is it sound
//! to count:
//! * **the underlay's ingress** ([`crossover_frag_wire`], hop `wire`): a
//!   router on the path, or the peer, refused a packet this node sent
//!   and quoted it back. Counted when the quote is this node's tunnel
//!   packet (from its underlay address, UDP to a port CONFIG gives an
//!   overlay, or IP-in-IP when an overlay travels so) to a node of the
//!   cluster, or a routed pod's packet (native overlay) from a pod of
//!   this node to a pod or node of a peer. The message goes to the
//!   quoted source: a message to anyone else, or quoting another host's
//!   packet, says nothing about this node's paths. Linux's own VXLAN and
//!   Geneve set the outer DF only when told (`df set`, `df inherit`),
//!   IP-in-IP (`pmtudisc`) by default: where DF is clear a router
//!   fragments the tunnel packet instead, and no message comes.
//! * **a pod veth's egress** ([`crossover_frag_node`], hop `node`): this
//!   node's own kernel refused a pod's packet (DF set, larger than the
//!   route or overlay device it was routed to: the lowered overlay MTU)
//!   and told the pod, from an address of its own. The quoted packet is
//!   the pod's, before any SNAT, towards a peer node's pod or address. A
//!   message from elsewhere passing to the pod (a router's about a routed
//!   pod's packet) was counted on the underlay already, and is left
//!   alone here.
//!
//!   A message from a peer node's own address, about a pod's packet
//!   whose flow went to that peer through a tunnel, is the peer's kernel
//!   refusing it once out of the tunnel (hop `peer`: its pod's veth or
//!   route smaller, as when two CNIs' MTUs meet in a migration); it came
//!   back inside the tunnel, which the underlay does not parse.
//!
//! Not counted: messages towards the node's own sockets about packets
//! that are not tunnel packets (node-to-node traffic rides no overlay;
//! crossover's own large probes learn theirs from the socket's error
//! queue).
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use observer_ebpf::{
    AddrKind, Config, Counter, Direction, Encap, FlowKey, FragKey, FragNeeded, MtuHop, Net,
    Overlay, Point,
};

use crate::{
    counters::count,
    flow::{add64, lookup, node_of},
    maps::{CONFIG, FLOWS, FRAG_NEEDED},
    parse::{
        Parsed,
        eth::ETH_HLEN,
        geneve::GENEVE_HLEN,
        icmp,
        ipv4::Ipv4,
        l4::{self, IPPROTO_UDP},
        load,
        vxlan::VXLAN_HLEN,
    },
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
const IPPROTO_IPIP: u8 = 4;
const UDP_HLEN: usize = 8;

/// What one message says about one path.
struct Seen {
    key: FragKey,
    next_hop_mtu: u16,
    overhead: u16,
    refused_len: u16,
}

/// The message as its IPv4 header addressed it.
#[derive(Clone, Copy)]
struct Message {
    /// Offset of its ICMP header.
    at: usize,
    src: u32,
    dst: u32,
}

// Both entry points are global functions (exported, so their BTF
// linkage is global), called for ICMP only: the verifier checks a global
// function once, on its own, for any arguments, not once for every state
// its callers reach it in. The underlay's programs are the largest to
// verify (650,000 instructions of the kernel's 1,000,000 for its ingress
// before this): what is added here must not multiply with them. Two of
// them rather than one taking the hop: a program carries the global
// functions it calls whole, and one function made both programs carry
// both paths (the pod's egress 17.9 KB translated instead of 12.2).

/// An ICMP message that came in on the underlay: its ICMP header at
/// `at`, its IPv4 source and destination. Counts it if it is a
/// "fragmentation needed" about a path of this node's; never fails the
/// packet. Returns 0 (a global function returns a scalar).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn crossover_frag_wire(skb: *mut __sk_buff, at: u32, src: u32, dst: u32) -> i32 {
    let msg = Message {
        at: at as usize,
        src,
        dst,
    };
    finish(wire_path(&TcContext::new(skb), msg))
}

/// An ICMP message on its way to a pod, on the pod veth's egress: as
/// [`crossover_frag_wire`], for the node's own messages and its peers'
/// through a tunnel.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn crossover_frag_node(skb: *mut __sk_buff, at: u32, src: u32, dst: u32) -> i32 {
    let msg = Message {
        at: at as usize,
        src,
        dst,
    };
    finish(node_path(&TcContext::new(skb), msg))
}

#[inline(always)]
fn finish(path: Parsed<Option<Seen>>) -> i32 {
    match path {
        Ok(Some(seen)) => record(&seen),
        Ok(None) => {}
        Err(reason) => count(reason),
    }
    0
}

#[inline(always)]
fn wire_path(ctx: &TcContext, ip: Message) -> Parsed<Option<Seen>> {
    let Some(msg) = icmp::parse(ctx, ip.at)? else {
        return Ok(None);
    };
    let quoted = &msg.quoted;
    let config = CONFIG.get(0).ok_or(Counter::FragNeededForeign)?;
    let local = config.local_node;
    // Sent to whoever sent the refused packet, and that is this node.
    if local == 0 || ip.dst != quoted.src {
        return Err(Counter::FragNeededForeign);
    }
    let (overlay, overhead, peer) = if quoted.src == local {
        let (overlay, overhead) = tunnel_of(ctx, config, quoted)?;
        // Tunnels run between nodes: the far end is a peer's underlay
        // address, which names its own node.
        let peer = node_of(&lookup(quoted.dst), local);
        if peer != quoted.dst {
            return Err(Counter::FragNeededForeign);
        }
        (overlay, overhead, peer)
    } else {
        // A routed pod's packet: from a pod of this node to a peer's.
        let src = lookup(quoted.src);
        let pod = src.net == Net::Legacy.wire() || src.net == Net::Cilium.wire();
        let peer = node_of(&lookup(quoted.dst), local);
        if !pod || src.node != local || peer == 0 {
            return Err(Counter::FragNeededForeign);
        }
        (Overlay::Native.wire(), 0, peer)
    };
    Ok(Some(Seen {
        key: key(peer, overlay, MtuHop::Wire),
        next_hop_mtu: msg.next_hop_mtu,
        overhead,
        refused_len: quoted.total_len,
    }))
}

/// The overlay of a tunnel packet of this node's, and the bytes its
/// tunnel adds to an inner packet.
#[inline(always)]
fn tunnel_of(ctx: &TcContext, config: &Config, quoted: &Ipv4) -> Parsed<(u8, u16)> {
    let outer = quoted.header_len;
    if quoted.proto == IPPROTO_UDP {
        let ports = l4::udp_ports(ctx, quoted.l4_offset, Counter::FragNeededForeign)?;
        let encap = config
            .encap_for(ports.dst)
            .ok_or(Counter::FragNeededForeign)?;
        let tunnel = quoted.l4_offset + UDP_HLEN;
        let header = if encap.encap == Encap::Geneve.wire() {
            // Its options, when the quote reaches them (Linux's does);
            // a quote of 8 bytes leaves them out (Cilium sends none).
            // (Read as its first 4 bytes: the verifier bounds a one-byte
            // packet read at a variable offset less well.)
            let options = load::<[u8; 4]>(ctx, tunnel, Counter::FragNeededForeign)
                .map_or(0, |first| (first[0] & 0x3f) as usize * 4);
            GENEVE_HLEN + options
        } else {
            VXLAN_HLEN
        };
        let overhead = outer as usize + UDP_HLEN + header + ETH_HLEN;
        return Ok((encap.overlay, overhead as u16));
    }
    if quoted.proto == IPPROTO_IPIP && config.ipip_overlay != Overlay::None.wire() {
        return Ok((config.ipip_overlay, outer));
    }
    Err(Counter::FragNeededForeign)
}

#[inline(always)]
fn node_path(ctx: &TcContext, ip: Message) -> Parsed<Option<Seen>> {
    let Some(msg) = icmp::parse(ctx, ip.at)? else {
        return Ok(None);
    };
    let quoted = &msg.quoted;
    let config = CONFIG.get(0).ok_or(Counter::FragNeededForeign)?;
    let local = config.local_node;
    // From a node's own address (its underlay, overlay or pod range's
    // gateway address): this node's, or the peer's its flow went to; to
    // the pod whose packet it was. A local pod could forge one: it would
    // only count towards its own paths.
    let from = lookup(ip.src);
    let from_a_node = from.kind == AddrKind::NodeUnderlay.wire()
        || from.kind == AddrKind::NodeOverlay.wire()
        || from.kind == AddrKind::PodNetwork.wire();
    if local == 0 || from.node == 0 || !from_a_node || ip.dst != quoted.src {
        return Err(Counter::FragNeededForeign);
    }
    let (peer, overlay, hop) = match (from.node == local, taken_by(ctx, quoted)?) {
        (true, Some((peer, overlay))) => (peer, overlay, MtuHop::Node),
        (true, None) => {
            let dst = lookup(quoted.dst);
            (
                node_of(&dst, local),
                overlay_of(config, dst.net),
                MtuHop::Node,
            )
        }
        // The peer's own message about a packet its flow took to that
        // peer through a tunnel. A routed (native) flow's came in on the
        // underlay, counted on the wire already.
        (false, Some((peer, overlay)))
            if peer == from.node && overlay != Overlay::Native.wire() =>
        {
            (peer, overlay, MtuHop::Peer)
        }
        (false, _) => return Err(Counter::FragNeededForeign),
    };
    if peer == 0 {
        return Err(Counter::FragNeededForeign);
    }
    Ok(Some(Seen {
        key: key(peer, overlay, hop),
        next_hop_mtu: msg.next_hop_mtu,
        overhead: 0,
        refused_len: quoted.total_len,
    }))
}

/// The peer and overlay the quoted packet's flow took on the underlay,
/// when its earlier packets crossed it (a TCP connection's handshake
/// fits any MTU): exact, CrossSubnet's native pairs included. None for a
/// flow not seen there under these addresses (its first packet refused,
/// or SNATed on the way out).
#[inline(always)]
fn taken_by(ctx: &TcContext, quoted: &Ipv4) -> Parsed<Option<(u32, u8)>> {
    let (src_port, dst_port) = icmp::quoted_ports(ctx, quoted)?;
    let key = FlowKey {
        src: quoted.src,
        dst: quoted.dst,
        src_port,
        dst_port,
        proto: quoted.proto,
        point: Point::Underlay.wire(),
        direction: Direction::Egress.wire(),
        _pad: 0,
    };
    // SAFETY: plain values copied out at once.
    Ok(unsafe { FLOWS.get(key) }
        .filter(|stats| stats.peer != 0)
        .map(|stats| (stats.peer, stats.overlay)))
}

/// The overlay a packet towards an address of network `net` takes, when
/// its flow does not say: a pod network's tunnel if CONFIG has one for
/// it (cross-overlay traffic follows the destination's, README's
/// masquerade table), else native; none for a node's address.
#[inline(always)]
fn overlay_of(config: &Config, net: u8) -> u8 {
    let overlay = if net == Net::Legacy.wire() {
        Overlay::Legacy.wire()
    } else if net == Net::Cilium.wire() {
        Overlay::Cilium.wire()
    } else {
        return Overlay::None.wire();
    };
    if config.tunnels(overlay) {
        overlay
    } else {
        Overlay::Native.wire()
    }
}

#[inline(always)]
fn key(peer: u32, overlay: u8, hop: MtuHop) -> FragKey {
    FragKey {
        peer,
        overlay,
        hop: hop.wire(),
        _pad: [0; 2],
    }
}

/// Adds a message to its path's entry, creating it if need be.
#[inline(always)]
fn record(seen: &Seen) {
    let latest = |entry: *mut FragNeeded| {
        // SAFETY: `entry` points into FRAG_NEEDED, live while the program
        // runs; the count is added atomically, the rest is the latest
        // message's (two CPUs racing each write a whole message's).
        unsafe {
            add64(&raw mut (*entry).messages, 1);
            (*entry).next_hop_mtu = seen.next_hop_mtu;
            (*entry).overhead = seen.overhead;
            (*entry).refused_len = seen.refused_len;
        }
    };
    if let Some(entry) = FRAG_NEEDED.get_ptr_mut(seen.key) {
        latest(entry);
        return;
    }
    let fresh = FragNeeded {
        messages: 1,
        next_hop_mtu: seen.next_hop_mtu,
        overhead: seen.overhead,
        refused_len: seen.refused_len,
        _pad: 0,
    };
    match FRAG_NEEDED.insert(seen.key, fresh, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU created it between our lookup and insert.
        Err(e) if e == -EEXIST => {
            if let Some(entry) = FRAG_NEEDED.get_ptr_mut(seen.key) {
                latest(entry);
            }
        }
        Err(_) => count(Counter::FragMapFull),
    }
}
