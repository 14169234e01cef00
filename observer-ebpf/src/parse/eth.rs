//! Ethernet, with at most one 802.1Q/802.1ad tag.
use aya_ebpf::programs::TcContext;
use observer_ebpf::Counter;

use super::{Layer, Parsed, load};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

#[repr(C)]
struct EthHdr {
    _dst: [u8; 6],
    _src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct VlanTag {
    _tci: u16,
    proto: u16,
}

/// Returns the offset of the IPv4 header that follows the frame at `offset`.
#[inline(always)]
pub fn parse(ctx: &TcContext, offset: usize, layer: Layer) -> Parsed<usize> {
    let eth: EthHdr = load(
        ctx,
        offset,
        layer.pick(Counter::TruncatedEth, Counter::TruncatedInnerEth),
    )?;
    let mut proto = u16::from_be(eth.proto);
    let mut next = offset + ETH_HLEN;
    if is_vlan(proto) {
        let tag: VlanTag = load(
            ctx,
            next,
            layer.pick(Counter::TruncatedVlan, Counter::TruncatedInnerEth),
        )?;
        proto = u16::from_be(tag.proto);
        next += 4;
        if is_vlan(proto) {
            return Err(Counter::StackedVlan);
        }
    }
    match proto {
        ETH_P_IP => Ok(next),
        ETH_P_IPV6 => Err(layer.pick(Counter::Ipv6, Counter::InnerIpv6)),
        _ => Err(layer.pick(Counter::NonIp, Counter::InnerNonIp)),
    }
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}
