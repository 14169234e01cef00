//! Overlay devices: `flannel.1` (legacy), `cilium_vxlan` and `cilium_geneve`
//! (Cilium). The kernel has already removed (ingress) or not yet added
//! (egress) the tunnel header, so frames here are the inner ones; which
//! overlay they belong to is a property of the device.
use aya_ebpf::{macros::classifier, programs::TcContext};
use observer_ebpf::{Direction, Overlay, Point};

use super::observe_plain;
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
