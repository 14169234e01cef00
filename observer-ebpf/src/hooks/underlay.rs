//! The node's NIC. Encapsulated packets (VXLAN and Geneve on their UDP
//! ports, IP-in-IP) are counted per peer node and overlay (what one node
//! sent against what its peer received is the delivery figure) and then
//! parsed down to the inner flow; plain pod traffic is the native overlay
//! of routed CNIs, and of Calico's CrossSubnet modes within a subnet.
use aya_ebpf::{macros::classifier, programs::TcContext};
use observer_ebpf::{Counter, Direction, Encap, EncapPort, Net, Overlay, PeerKey, Point};

use super::{finish, observe_frame, observe_packet};
use crate::{
    counters::{Tcp, count_peer, count_seen},
    flow::{self, Seen},
    frag,
    maps::CONFIG,
    parse::{Layer, eth, geneve, ipv4, l4, vxlan},
};

const UDP_HLEN: usize = 8;
const IPPROTO_IPIP: u8 = 4;

// `inline(always)`: the macro's wrapper calls this function; a body this
// size would otherwise stay a BPF-to-BPF call, 6-8 ns a packet.
#[classifier]
#[inline(always)]
pub fn crossover_underlay_ingress(ctx: TcContext) -> i32 {
    count_seen(Point::Underlay);
    finish(try_underlay(&ctx, Direction::Ingress))
}

#[classifier]
#[inline(always)]
pub fn crossover_underlay_egress(ctx: TcContext) -> i32 {
    count_seen(Point::Underlay);
    finish(try_underlay(&ctx, Direction::Egress))
}

#[inline(always)]
fn try_underlay(ctx: &TcContext, direction: Direction) -> Result<(), Counter> {
    let l3 = eth::parse(ctx, 0, Layer::Outer)?;
    let ip = ipv4::parse(ctx, l3, Layer::Outer)?;
    if ip.proto == l4::IPPROTO_UDP {
        let ports = l4::udp_ports(ctx, ip.l4_offset, Counter::TruncatedUdp)?;
        if let Some(encap) = CONFIG.get(0).and_then(|config| config.encap_for(ports.dst)) {
            let peer = match direction {
                Direction::Egress => ip.dst,
                Direction::Ingress => ip.src,
            };
            let overlay = Overlay::from_wire(encap.overlay).unwrap_or(Overlay::None);
            let seen = Seen {
                point: Point::Underlay,
                direction,
                overlay,
                outer_peer: peer,
            };
            let result = observe_tunnel(ctx, ip.l4_offset + UDP_HLEN, encap, seen);
            return counted_on_outer(ctx, seen, encap.overlay, result);
        }
    } else if ip.proto == IPPROTO_IPIP
        && let Some(overlay) = CONFIG
            .get(0)
            .map(|config| config.ipip_overlay)
            .filter(|&overlay| overlay != Overlay::None.wire())
    {
        // No header of its own: the inner IPv4 header follows the outer,
        // whose other end is the peer.
        let seen = Seen {
            point: Point::Underlay,
            direction,
            overlay: Overlay::from_wire(overlay).unwrap_or(Overlay::None),
            outer_peer: match direction {
                Direction::Egress => ip.dst,
                Direction::Ingress => ip.src,
            },
        };
        let result = observe_packet(ctx, ip.l4_offset, Layer::Inner, seen);
        return counted_on_outer(ctx, seen, overlay, result);
    }
    if ip.proto == l4::IPPROTO_ICMP && direction == Direction::Ingress {
        frag::crossover_frag_wire(ctx.skb.skb, ip.l4_offset as u32, ip.src, ip.dst);
    }
    let l4 = l4::parse(ctx, &ip)?;
    let seen = Seen {
        point: Point::Underlay,
        direction,
        overlay: Overlay::Native,
        outer_peer: 0,
    };
    flow::record(seen, &ip, &l4, ctx.len())
}

/// What became of a tunnelled packet's inner packet. Whatever is wrong
/// inside, the packet went to (or came from) the peer: delivery is counted
/// on the outer header. Its peer parses the same bytes, so finds the same
/// fault and counts it the same way.
#[inline(always)]
fn counted_on_outer(
    ctx: &TcContext,
    seen: Seen,
    overlay: u8,
    result: Result<(), Counter>,
) -> Result<(), Counter> {
    if matches!(result, Err(reason) if reason != Counter::FlowMapFull) {
        let key = PeerKey {
            peer: seen.outer_peer,
            overlay,
            direction: seen.direction.wire(),
            src_net: Net::Unknown.wire(),
            dst_net: Net::Unknown.wire(),
        };
        count_peer(&key, ctx.len(), Tcp::default());
    }
    result
}

/// Parses the tunnel header at `tunnel` and the frame inside it, and
/// records the flow (and the peer, when that succeeds).
#[inline(always)]
fn observe_tunnel(
    ctx: &TcContext,
    tunnel: usize,
    encap: EncapPort,
    seen: Seen,
) -> Result<(), Counter> {
    let inner = if encap.encap == Encap::Geneve.wire() {
        geneve::parse(ctx, tunnel)?
    } else {
        vxlan::parse(ctx, tunnel)?
    };
    observe_frame(ctx, inner, Layer::Inner, seen)
}
