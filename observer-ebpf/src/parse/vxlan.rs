//! VXLAN (RFC 7348). The VNI is not used: Cilium puts the source security
//! identity there, so it says nothing about the overlay; the port does.
use aya_ebpf::programs::TcContext;
use observer_ebpf::Counter;

use super::{Parsed, load};

pub const VXLAN_HLEN: usize = 8;
/// The I flag: the VNI field is valid. RFC 7348 requires it set.
const VXLAN_FLAG_VNI: u8 = 0x08;

#[repr(C)]
struct VxlanHdr {
    flags: u8,
    _reserved: [u8; 3],
    _vni: [u8; 3],
    _reserved2: u8,
}

/// `offset` is the VXLAN header; returns the offset of the inner frame.
#[inline(always)]
pub fn parse(ctx: &TcContext, offset: usize) -> Parsed<usize> {
    let hdr: VxlanHdr = load(ctx, offset, Counter::TruncatedVxlan)?;
    if hdr.flags & VXLAN_FLAG_VNI == 0 {
        return Err(Counter::BadVxlan);
    }
    Ok(offset + VXLAN_HLEN)
}
