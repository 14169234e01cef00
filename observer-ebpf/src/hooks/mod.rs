//! One file per hook. Every entry point is a thin wrapper: it calls its
//! `try_` function, counts the reason if that stopped early, and hands the
//! packet on.
mod drop;
mod floor;
mod host;
mod overlay;
mod pod;
mod underlay;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, tcx_action_base::TCX_NEXT},
    programs::TcContext,
};
use observer_ebpf::{Counter, Direction, Point};

use crate::{
    counters::{count, count_seen},
    flow::{self, Seen},
    frag,
    parse::{Layer, eth, ipv4, l4},
};

/// `TCX_NEXT` for TCX, the same value as `TC_ACT_UNSPEC` for cls_bpf: run
/// the next program on the hook, then let the stack have the packet.
/// Returning anything else would make crossover part of the datapath.
pub const NEXT: i32 = TCX_NEXT;
const _: () = assert!(TCX_NEXT == TC_ACT_UNSPEC);

#[inline(always)]
pub fn finish(result: Result<(), Counter>) -> i32 {
    if let Err(reason) = result {
        count(reason);
    }
    NEXT
}

/// Parses the Ethernet frame at `offset` down to L4 and records its flow.
#[inline(always)]
pub fn observe_frame(
    ctx: &TcContext,
    offset: usize,
    layer: Layer,
    seen: Seen,
) -> Result<(), Counter> {
    let l3 = eth::parse(ctx, offset, layer)?;
    observe_packet(ctx, l3, layer, seen)
}

/// Parses the IPv4 packet at `offset` down to L4 and records its flow.
#[inline(always)]
pub fn observe_packet(
    ctx: &TcContext,
    offset: usize,
    layer: Layer,
    seen: Seen,
) -> Result<(), Counter> {
    let ip = ipv4::parse(ctx, offset, layer)?;
    // Towards a pod: what this node's kernel told it of a packet it
    // refused. `seen` is a constant of each hook, so only the pod's
    // egress program holds this, and ICMP alone pays for it there.
    if seen.point == Point::Pod
        && seen.direction == Direction::Egress
        && ip.proto == l4::IPPROTO_ICMP
    {
        frag::crossover_frag_node(ctx.skb.skb, ip.l4_offset as u32, ip.src, ip.dst);
    }
    let l4 = l4::parse(ctx, &ip)?;
    flow::record(seen, &ip, &l4, ctx.len())
}

/// The whole of a hook that sees plain frames (everything but the underlay).
#[inline(always)]
pub fn observe_plain(ctx: &TcContext, seen: Seen) -> i32 {
    count_seen(seen.point);
    finish(observe_frame(ctx, 0, Layer::Outer, seen))
}

/// The whole of a hook on a device without a link-layer header (`tunl0`,
/// a TUN device): the packet starts at its IPv4 header.
#[inline(always)]
pub fn observe_l3(ctx: &TcContext, seen: Seen) -> i32 {
    count_seen(seen.point);
    finish(observe_packet(ctx, 0, Layer::Outer, seen))
}
