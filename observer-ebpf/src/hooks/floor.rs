//! Empty programs: the benchmark's floors. The classifier's is the cost of
//! BPF_PROG_TEST_RUN itself (never attached); the tracepoint's, attached
//! beside the drop program, the cost of running any program on a drop.
use aya_ebpf::{
    macros::{classifier, tracepoint},
    programs::{TcContext, TracePointContext},
};

use super::NEXT;

#[classifier]
pub fn crossover_floor(_ctx: TcContext) -> i32 {
    NEXT
}

#[tracepoint]
pub fn crossover_tp_floor(_ctx: TracePointContext) -> u32 {
    0
}
