//! Header parsers. A header inside the skb's linear area is read directly;
//! one beyond it (GRO'd tunnel traffic, paged frags) through
//! `bpf_skb_load_bytes`, which works on non-linear skbs. Neither changes the
//! skb: `bpf_skb_pull_data` would, and a passive observer must not.
//!
//! A parser returns the `Counter` naming why it stopped; the hook counts it.
pub mod eth;
pub mod geneve;
pub mod icmp;
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

/// Largest header offset a parser reaches: outer Ethernet, VLAN, IPv4 with
/// options, UDP, Geneve with 252 bytes of options, inner Ethernet, VLAN and
/// IPv4 with options. Masking offsets with it tells the verifier they are
/// bounded.
const MAX_OFFSET: usize = 0x1ff;

/// Reads a `T` at `offset`, or fails with `short` when the packet ends first.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, offset: usize, short: Counter) -> Parsed<T> {
    let offset = offset & MAX_OFFSET;
    let start = ctx.data();
    if start + offset + size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie between data and data_end, checked above
        // (and by the verifier). A header may sit at any offset (an IPv4
        // header at 14): as in the kernel's own C programs, the fields are
        // read with loads of their width, which the BPF ISA performs at
        // any address on every architecture whose kernel does not demand
        // strict alignment; where it does, the verifier refuses the
        // program at load, never reads wrongly. `read_unaligned` would
        // split every header into byte loads: 9 ns of a known packet's 56
        // over the floor (`cargo xtask bench`).
        return Ok(unsafe { core::ptr::read((start + offset) as *const T) });
    }
    ctx.load::<T>(offset).map_err(|_| short)
}

/// Fails with `short` unless the packet holds `len` bytes from `offset`.
#[inline(always)]
pub fn ensure(ctx: &TcContext, offset: usize, len: usize, short: Counter) -> Parsed<()> {
    if offset + len > ctx.len() as usize {
        Err(short)
    } else {
        Ok(())
    }
}
