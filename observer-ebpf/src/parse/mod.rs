//! Header parsers. Each reads through `bpf_skb_load_bytes`, which works on
//! non-linear skbs (GRO'd tunnel traffic, paged frags) where direct packet
//! access would see only the linear head, and never changes the skb.
//!
//! A parser returns the `Counter` naming why it stopped; the hook counts it.
pub mod eth;
pub mod geneve;
pub mod ipv4;
pub mod l4;
pub mod vxlan;

use aya_ebpf::programs::TcContext;
use observer_ebpf::Counter;

pub type Parsed<T> = Result<T, Counter>;

/// Which layer of an encapsulated packet a parser is reading, so a failure
/// is counted against the right header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Outer,
    Inner,
}

impl Layer {
    #[inline(always)]
    pub fn pick(self, outer: Counter, inner: Counter) -> Counter {
        match self {
            Layer::Outer => outer,
            Layer::Inner => inner,
        }
    }
}

/// Reads a `T` at `offset`, or fails with `short` when the packet ends first.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, offset: usize, short: Counter) -> Parsed<T> {
    ctx.load::<T>(offset).map_err(|_| short)
}

/// Fails with `short` unless the packet holds `len` bytes from `offset`.
#[inline(always)]
pub fn ensure(ctx: &TcContext, offset: usize, len: usize, short: Counter) -> Parsed<()> {
    if offset + len > ctx.len() as usize { Err(short) } else { Ok(()) }
}
