//! Geneve (RFC 8926) with its variable-length options.
use aya_ebpf::programs::TcContext;
use observer_ebpf::Counter;

use super::{Parsed, ensure, load};

pub const GENEVE_HLEN: usize = 8;
/// Transparent Ethernet Bridging: the payload is an Ethernet frame.
const ETH_P_TEB: u16 = 0x6558;

#[repr(C)]
struct GeneveHdr {
    /// Version (2 bits) and option length in 4-byte words (6 bits).
    ver_opt_len: u8,
    _flags: u8,
    proto: u16,
    _vni: [u8; 3],
    _reserved: u8,
}

/// `offset` is the Geneve header; returns the offset of the inner frame.
#[inline(always)]
pub fn parse(ctx: &TcContext, offset: usize) -> Parsed<usize> {
    let hdr: GeneveHdr = load(ctx, offset, Counter::TruncatedGeneve)?;
    if hdr.ver_opt_len >> 6 != 0 || u16::from_be(hdr.proto) != ETH_P_TEB {
        return Err(Counter::BadGeneve);
    }
    let options_len = ((hdr.ver_opt_len & 0x3f) as usize) * 4;
    let inner = offset + GENEVE_HLEN + options_len;
    if options_len != 0 {
        ensure(
            ctx,
            offset + GENEVE_HLEN,
            options_len,
            Counter::TruncatedGeneveOptions,
        )?;
    }
    Ok(inner)
}
