//! ICMP "fragmentation needed" (destination unreachable, code 4; RFC
//! 1191): the next-hop MTU and the quoted packet's IPv4 header. RFC 792
//! quotes the header and 8 bytes of what followed (a tunnel packet's UDP
//! header, a TCP segment's ports); Linux quotes up to 576 bytes in all,
//! enough for the tunnel header too.
use aya_ebpf::programs::TcContext;
use observer_ebpf::Counter;

use super::{
    Layer, Parsed,
    ipv4::{self, Ipv4},
    l4::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    load,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_HLEN: usize = 8;

#[repr(C)]
struct FragNeededHdr {
    kind: u8,
    code: u8,
    _check: u16,
    _unused: u16,
    next_hop_mtu: u16,
}

pub struct FragNeeded {
    /// As sent; 0 from a router older than RFC 1191.
    pub next_hop_mtu: u16,
    /// The quoted packet's IPv4 header: `l4_offset` is where its quoted
    /// transport bytes start, `total_len` the size that did not fit.
    pub quoted: Ipv4,
}

/// Reads the ICMP message whose header is at `at`: `None` when it is no
/// "fragmentation needed" (or its header is cut short, which its flow
/// counts). A quote too short or not IPv4 is
/// [`Counter::FragNeededForeign`]: nothing says whose packet it was.
#[inline(always)]
pub fn parse(ctx: &TcContext, at: usize) -> Parsed<Option<FragNeeded>> {
    let Ok(hdr) = load::<FragNeededHdr>(ctx, at, Counter::TruncatedL4) else {
        return Ok(None);
    };
    if hdr.kind != ICMP_DEST_UNREACH || hdr.code != ICMP_FRAG_NEEDED {
        return Ok(None);
    }
    let quoted =
        ipv4::parse(ctx, at + ICMP_HLEN, Layer::Inner).map_err(|_| Counter::FragNeededForeign)?;
    Ok(Some(FragNeeded {
        next_hop_mtu: u16::from_be(hdr.next_hop_mtu),
        quoted,
    }))
}

/// The quoted transport header's first 8 bytes (all RFC 792 promises) as
/// a flow keys them: TCP and UDP ports; an echo's identifier; other ICMP
/// by type and code; (0, 0) for the rest.
#[inline(always)]
pub fn quoted_ports(ctx: &TcContext, quoted: &Ipv4) -> Parsed<(u16, u16)> {
    let b: [u8; 8] = load(ctx, quoted.l4_offset, Counter::FragNeededForeign)?;
    Ok(match quoted.proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ),
        IPPROTO_ICMP if b[0] == ICMP_ECHO_REPLY || b[0] == ICMP_ECHO_REQUEST => {
            (u16::from_be_bytes([b[4], b[5]]), 0)
        }
        IPPROTO_ICMP => (0, u16::from_be_bytes([b[0], b[1]])),
        _ => (0, 0),
    })
}
