//! The node's NIC. Encapsulated packets (VXLAN and Geneve on their UDP
//! ports, IP-in-IP) are counted per peer node and overlay (what one node
//! sent against what its peer received is the delivery figure) and then
//! parsed down to the inner flow; plain pod traffic is the native overlay
//! of routed CNIs, and of Calico's CrossSubnet modes within a subnet.
use aya_ebpf::{macros::classifier, programs::TcContext};
use observer_ebpf::{Config, Counter, Direction, Encap, EncapPort, Net, Overlay, PeerKey, Point};

use super::{finish, observe_frame, observe_packet};
use crate::{
    counters::{Tcp, count_peer, count_seen},
    flow::{self, Seen},
    maps::CONFIG,
    parse::{Layer, eth, geneve, ipv4, l4, vxlan},
};

const UDP_HLEN: usize = 8;
const IPPROTO_IPIP: u8 = 4;

#[classifier]
pub fn crossover_underlay_ingress(ctx: TcContext) -> i32 {
    count_seen(Point::Underlay);
    finish(try_underlay(&ctx, Direction::Ingress))
}

#[classifier]
pub fn crossover_underlay_egress(ctx: TcContext) -> i32 {
    count_seen(Point::Underlay);
    finish(try_underlay(&ctx, Direction::Egress))
}

#[inline(always)]
fn try_underlay(ctx: &TcContext, direction: Direction) -> Result<(), Counter> {
    let l3 = eth::parse(ctx, 0, Layer::Outer)?;
    let ip = ipv4::parse(ctx, l3, Layer::Outer)?;
    // The other end of a tunnel: its outer address.
    let outer_peer = match direction {
        Direction::Egress => ip.dst,
        Direction::Ingress => ip.src,
    };
    let config = CONFIG.get(0);
    if ip.proto == l4::IPPROTO_UDP {
        let ports = l4::udp_ports(ctx, ip.l4_offset, Counter::TruncatedUdp)?;
        if let Some(encap) = config.and_then(|config| encap_for(config, ports.dst)) {
            let seen = tunnel(direction, encap.overlay, outer_peer);
            let tunnel = ip.l4_offset + UDP_HLEN;
            let inner = if encap.encap == Encap::Geneve.wire() {
                geneve::parse(ctx, tunnel)
            } else {
                vxlan::parse(ctx, tunnel)
            };
            let result = inner.and_then(|frame| observe_frame(ctx, frame, Layer::Inner, seen));
            return counted_on_outer(ctx, seen, encap.overlay, result);
        }
    } else if ip.proto == IPPROTO_IPIP
        && let Some(overlay) = config
            .map(|config| config.ipip_overlay)
            .filter(|&overlay| overlay != Overlay::None.wire())
    {
        // No header of its own: the inner IPv4 header follows the outer.
        let seen = tunnel(direction, overlay, outer_peer);
        let result = observe_packet(ctx, ip.l4_offset, Layer::Inner, seen);
        return counted_on_outer(ctx, seen, overlay, result);
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

#[inline(always)]
fn tunnel(direction: Direction, overlay: u8, outer_peer: u32) -> Seen {
    Seen {
        point: Point::Underlay,
        direction,
        overlay: Overlay::from_wire(overlay).unwrap_or(Overlay::None),
        outer_peer,
    }
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

/// The encapsulation configured on UDP destination port `port`, if any.
#[inline(always)]
fn encap_for(config: &Config, port: u16) -> Option<EncapPort> {
    config.encap_ports.into_iter().find(|&slot| {
        slot.port == port
            && (slot.encap == Encap::Vxlan.wire() || slot.encap == Encap::Geneve.wire())
    })
}
