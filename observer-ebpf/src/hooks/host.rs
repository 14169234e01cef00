//! `cilium_host`: where legacy-to-Cilium traffic is SNATed to the node's
//! `cilium_host` address on its way into the Cilium overlay.
use aya_ebpf::{macros::classifier, programs::TcContext};
use observer_ebpf::{Direction, Overlay, Point};

use super::observe_plain;
use crate::flow::Seen;

const fn seen(direction: Direction) -> Seen {
    Seen {
        point: Point::Host,
        direction,
        overlay: Overlay::None,
        outer_peer: 0,
    }
}

#[classifier]
pub fn crossover_host_ingress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Direction::Ingress))
}

#[classifier]
pub fn crossover_host_egress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Direction::Egress))
}
