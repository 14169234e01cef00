//! An empty program: the benchmark's floor, the cost of BPF_PROG_TEST_RUN
//! itself. Never attached.
use aya_ebpf::{macros::classifier, programs::TcContext};

use super::NEXT;

#[classifier]
pub fn crossover_floor(_ctx: TcContext) -> i32 {
    NEXT
}
