//! Overlay devices: `flannel.1`, `vxlan.calico` and `tunl0` (legacy),
//! `cilium_vxlan` and `cilium_geneve` (Cilium). The kernel has already
//! removed (ingress) or not yet added (egress) the tunnel header, so packets
//! here are the inner ones; which overlay they belong to is a property of
//! the device. IP-in-IP devices (`tunl0`) have no link-layer header: their
//! `_l3` programs read from the IPv4 header.
use aya_ebpf::{macros::classifier, programs::TcContext};
use observer_ebpf::{Direction, Overlay, Point};

use super::{observe_l3, observe_plain};
use crate::flow::Seen;

const fn seen(overlay: Overlay, direction: Direction) -> Seen {
    Seen {
        point: Point::Overlay,
        direction,
        overlay,
        outer_peer: 0,
    }
}

#[classifier]
pub fn crossover_overlay_legacy_ingress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Overlay::Legacy, Direction::Ingress))
}

#[classifier]
pub fn crossover_overlay_legacy_egress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Overlay::Legacy, Direction::Egress))
}

#[classifier]
pub fn crossover_overlay_cilium_ingress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Overlay::Cilium, Direction::Ingress))
}

#[classifier]
pub fn crossover_overlay_cilium_egress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Overlay::Cilium, Direction::Egress))
}

#[classifier]
pub fn crossover_overlay_legacy_l3_ingress(ctx: TcContext) -> i32 {
    observe_l3(&ctx, seen(Overlay::Legacy, Direction::Ingress))
}

#[classifier]
pub fn crossover_overlay_legacy_l3_egress(ctx: TcContext) -> i32 {
    observe_l3(&ctx, seen(Overlay::Legacy, Direction::Egress))
}

#[classifier]
pub fn crossover_overlay_cilium_l3_ingress(ctx: TcContext) -> i32 {
    observe_l3(&ctx, seen(Overlay::Cilium, Direction::Ingress))
}

#[classifier]
pub fn crossover_overlay_cilium_l3_egress(ctx: TcContext) -> i32 {
    observe_l3(&ctx, seen(Overlay::Cilium, Direction::Egress))
}
