//! IPv4, options allowed; non-first fragments stop here.
use aya_ebpf::programs::TcContext;
use observer_ebpf::Counter;

use super::{Layer, Parsed, ensure, load};

const IPV4_MIN_HLEN: usize = 20;
/// Fragment offset bits of `frag_off`; MF alone still carries the L4 header.
const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    _tos: u8,
    tot_len: u16,
    _id: u16,
    frag_off: u16,
    _ttl: u8,
    proto: u8,
    _check: u16,
    src: u32,
    dst: u32,
}

pub struct Ipv4 {
    /// Network byte order, as on the wire.
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    /// Header length in bytes, options included.
    pub header_len: u16,
    pub total_len: u16,
    pub l4_offset: usize,
}

#[inline(always)]
pub fn parse(ctx: &TcContext, offset: usize, layer: Layer) -> Parsed<Ipv4> {
    let ip: Ipv4Hdr = load(
        ctx,
        offset,
        layer.pick(Counter::TruncatedIpv4, Counter::TruncatedInnerIpv4),
    )?;
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    let total_len = u16::from_be(ip.tot_len);
    if ip.version_ihl >> 4 != 4 || header_len < IPV4_MIN_HLEN || (total_len as usize) < header_len {
        return Err(Counter::BadIpv4);
    }
    if header_len > IPV4_MIN_HLEN {
        ensure(ctx, offset, header_len, Counter::TruncatedIpv4Options)?;
    }
    if u16::from_be(ip.frag_off) & IP_OFFSET_MASK != 0 {
        return Err(layer.pick(Counter::Fragment, Counter::InnerFragment));
    }
    Ok(Ipv4 {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        header_len: header_len as u16,
        total_len,
        l4_offset: offset + header_len,
    })
}
