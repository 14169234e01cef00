//! `skb:kfree_skb`: packets the kernel dropped, and why. Passive like the
//! TC programs (a tracepoint cannot change the packet's fate); it reads
//! the dropped packet's headers from the `sk_buff` (offsets from userspace:
//! tracefs for the record, BTF for `struct sk_buff`, so one object serves
//! every kernel) and counts cluster traffic per reason, peer node, overlay
//! and network pair in DROPS. Everything else (not IPv4, not the cluster's)
//! is left alone uncounted: a node drops plenty that is none of ours.
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};
use observer_ebpf::{Counter, Direction, DropConfig, DropKey, Encap, Net, Overlay};

use crate::{
    counters::count,
    flow::{lookup, node_of},
    maps::{CONFIG, DROP_CONFIG, DROPS},
    parse::l4::IPPROTO_UDP,
};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_IPIP: u8 = 4;
/// `network_header` when the stack never set one.
const NO_HEADER: u16 = u16::MAX;
const UDP_HLEN: u64 = 8;
const VXLAN_HLEN: u64 = 8;
const GENEVE_HLEN: u64 = 8;
const ETH_HLEN: u64 = 14;
const BPF_NOEXIST: u64 = 1;

#[tracepoint]
pub fn crossover_kfree_skb(ctx: TracePointContext) -> u32 {
    if let Err(Some(reason)) = try_kfree_skb(&ctx) {
        count(reason);
    }
    0
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    _tos: u8,
    _tot_len: u16,
    _id: u16,
    _frag_off: u16,
    _ttl: u8,
    proto: u8,
    _check: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UdpHdr {
    _src: u16,
    dst: u16,
    _len: u16,
    _check: u16,
}

/// `Err(None)`: not ours to count.
type Outcome = Result<(), Option<Counter>>;

#[inline(always)]
fn read<T>(addr: u64) -> Result<T, Option<Counter>> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one fails.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| None)
}

#[inline(always)]
fn try_kfree_skb(ctx: &TracePointContext) -> Outcome {
    let config: DropConfig = *DROP_CONFIG.get(0).ok_or(None)?;
    if config.skb_head == 0 {
        return Err(None);
    }
    // SAFETY: offsets into this tracepoint's record, from its format.
    let (skb, protocol, reason) = unsafe {
        (
            ctx.read_at::<u64>(config.record_skb as usize)
                .map_err(|_| None)?,
            ctx.read_at::<u16>(config.record_protocol as usize)
                .map_err(|_| None)?,
            ctx.read_at::<u32>(config.record_reason as usize)
                .map_err(|_| None)?,
        )
    };
    if protocol != ETH_P_IP || !in_our_netns(&config, skb) {
        return Err(None);
    }
    let head: u64 = read(skb + config.skb_head as u64)?;
    let network: u16 = read(skb + config.skb_network_header as u64)?;
    if network == NO_HEADER {
        return Err(None);
    }
    let at = head + network as u64;
    let outer: Ipv4Hdr = read(at)?;
    let outer_len = header_len(&outer)?;
    let node = CONFIG.get(0).ok_or(None)?;
    let local = node.local_node;
    // The tunnel's other end, when the packet is one of ours in a tunnel.
    let other_end = match (outer.src == local, outer.dst == local) {
        (true, false) => outer.dst,
        (false, true) => outer.src,
        _ => 0,
    };
    let (inner_at, overlay) = if other_end == 0 {
        (0, Overlay::None.wire())
    } else if outer.proto == IPPROTO_UDP {
        let udp: UdpHdr = read(at + outer_len)?;
        let port = u16::from_be(udp.dst);
        match node.encap_for(port) {
            Some(slot) => {
                let tunnel = at + outer_len + UDP_HLEN;
                let frame = if slot.encap == Encap::Geneve.wire() {
                    let ver_opt_len: u8 = read(tunnel)?;
                    tunnel + GENEVE_HLEN + ((ver_opt_len & 0x3f) as u64) * 4
                } else {
                    tunnel + VXLAN_HLEN
                };
                let ethertype: u16 = read(frame + 12)?;
                if u16::from_be(ethertype) != ETH_P_IP {
                    return Err(None);
                }
                (frame + ETH_HLEN, slot.overlay)
            }
            None => (0, Overlay::None.wire()),
        }
    } else if outer.proto == IPPROTO_IPIP && node.ipip_overlay != Overlay::None.wire() {
        (at + outer_len, node.ipip_overlay)
    } else {
        (0, Overlay::None.wire())
    };
    let (packet, peer_hint) = if inner_at != 0 {
        (read::<Ipv4Hdr>(inner_at)?, other_end)
    } else {
        (outer, 0)
    };
    let src = lookup(packet.src);
    let dst = lookup(packet.dst);
    let cluster = |net: u8| net != Net::External.wire() && net != Net::Unknown.wire();
    if !cluster(src.net) && !cluster(dst.net) {
        return Err(None);
    }
    let pod = |net: u8| net == Net::Legacy.wire() || net == Net::Cilium.wire();
    let overlay = if inner_at != 0 {
        overlay
    } else if pod(src.net) || pod(dst.net) {
        Overlay::Native.wire()
    } else {
        Overlay::None.wire()
    };
    // Towards the tunnel's other end or the destination's node: egress;
    // from the tunnel's other end or the source's node: ingress.
    let (peer, direction) = match peer_hint {
        0 => match node_of(&dst, local) {
            0 => match node_of(&src, local) {
                0 => (0, Direction::Egress),
                node => (node, Direction::Ingress),
            },
            node => (node, Direction::Egress),
        },
        hint if outer.src == local => (hint, Direction::Egress),
        hint => (hint, Direction::Ingress),
    };
    let key = DropKey {
        reason,
        peer,
        overlay,
        src_net: src.net,
        dst_net: dst.net,
        direction: direction.wire(),
    };
    match DROPS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: this CPU's, nobody else writes it.
        Some(value) => unsafe { *value += 1 },
        None => {
            if DROPS.insert(key, 1, BPF_NOEXIST).is_err() {
                // Another program on this CPU cannot have raced us: the
                // map is full.
                return Err(Some(Counter::DropMapFull));
            }
        }
    }
    Ok(())
}

/// Whether the packet was dropped in the node's network namespace: the
/// one of its device, else of its socket; unknown counts.
#[inline(always)]
fn in_our_netns(config: &DropConfig, skb: u64) -> bool {
    if config.netns_inum == 0 {
        return true;
    }
    let dev: u64 = read(skb + config.skb_dev as u64).unwrap_or(0);
    let net: u64 = if dev != 0 {
        read(dev + config.dev_net as u64).unwrap_or(0)
    } else {
        match read::<u64>(skb + config.skb_sk as u64).unwrap_or(0) {
            0 => 0,
            sk => read(sk + config.sk_net as u64).unwrap_or(0),
        }
    };
    if net == 0 {
        return true;
    }
    read::<u32>(net + config.net_inum as u64).is_ok_and(|inum| inum == config.netns_inum)
}

#[inline(always)]
fn header_len(ip: &Ipv4Hdr) -> Result<u64, Option<Counter>> {
    let len = ((ip.version_ihl & 0x0f) as u64) * 4;
    if ip.version_ihl >> 4 != 4 || len < 20 {
        return Err(None);
    }
    Ok(len)
}
