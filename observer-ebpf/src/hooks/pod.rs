//! Host side of pod veths (`veth*` on a bridge, Cilium's `lxc*`). TC
//! ingress here is what the pod sends; egress is what it receives.
use aya_ebpf::{macros::classifier, programs::TcContext};
use observer_ebpf::{Direction, Overlay, Point};

use super::observe_plain;
use crate::flow::Seen;

const fn seen(direction: Direction) -> Seen {
    Seen {
        point: Point::Pod,
        direction,
        overlay: Overlay::None,
        outer_peer: 0,
    }
}

#[classifier]
pub fn crossover_pod_ingress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Direction::Ingress))
}

#[classifier]
pub fn crossover_pod_egress(ctx: TcContext) -> i32 {
    observe_plain(&ctx, seen(Direction::Egress))
}
