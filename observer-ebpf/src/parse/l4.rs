//! TCP, UDP and ICMP: what a flow is keyed on and what its counters need.
use aya_ebpf::programs::TcContext;
use observer_ebpf::{Counter, tcp_flag};

use super::{Parsed, ipv4::Ipv4, load};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

#[repr(C)]
struct TcpHdr {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    _ack_seq: u32,
    doff_res: u8,
    flags: u8,
    _window: u16,
    _check: u16,
    _urg_ptr: u16,
}

#[repr(C)]
struct UdpHdr {
    src_port: u16,
    dst_port: u16,
    _len: u16,
    _check: u16,
}

pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    _check: u16,
    id: u16,
    _seq: u16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    None,
    Request,
    Reply,
}

pub struct L4 {
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    /// Sequence space the segment takes: payload, plus one for SYN and FIN.
    pub seq_len: u32,
    pub echo: Echo,
}

impl L4 {
    const fn ports(src_port: u16, dst_port: u16) -> Self {
        Self {
            src_port,
            dst_port,
            tcp_flags: 0,
            seq: 0,
            seq_len: 0,
            echo: Echo::None,
        }
    }
}

/// Reads the UDP header at `offset` (also how encapsulation is recognised);
/// the whole header must be there.
#[inline(always)]
pub fn udp_ports(ctx: &TcContext, offset: usize, short: Counter) -> Parsed<Ports> {
    let udp: UdpHdr = load(ctx, offset, short)?;
    Ok(Ports {
        src: u16::from_be(udp.src_port),
        dst: u16::from_be(udp.dst_port),
    })
}

#[inline(always)]
pub fn parse(ctx: &TcContext, ip: &Ipv4) -> Parsed<L4> {
    match ip.proto {
        IPPROTO_TCP => {
            let tcp: TcpHdr = load(ctx, ip.l4_offset, Counter::TruncatedL4)?;
            let header_len = ((tcp.doff_res >> 4) as u32) * 4;
            let payload = (ip.total_len as u32).saturating_sub(ip.header_len as u32 + header_len);
            let flags = tcp.flags;
            let seq_len =
                payload + (flags & tcp_flag::SYN != 0) as u32 + (flags & tcp_flag::FIN != 0) as u32;
            Ok(L4 {
                src_port: u16::from_be(tcp.src_port),
                dst_port: u16::from_be(tcp.dst_port),
                tcp_flags: flags,
                seq: u32::from_be(tcp.seq),
                seq_len,
                echo: Echo::None,
            })
        }
        IPPROTO_UDP => {
            let ports = udp_ports(ctx, ip.l4_offset, Counter::TruncatedL4)?;
            Ok(L4::ports(ports.src, ports.dst))
        }
        IPPROTO_ICMP => {
            let icmp: IcmpHdr = load(ctx, ip.l4_offset, Counter::TruncatedL4)?;
            Ok(match icmp.kind {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => L4 {
                    echo: if icmp.kind == ICMP_ECHO_REQUEST {
                        Echo::Request
                    } else {
                        Echo::Reply
                    },
                    ..L4::ports(u16::from_be(icmp.id), 0)
                },
                kind => L4::ports(0, ((kind as u16) << 8) | icmp.code as u16),
            })
        }
        // Other protocols (SCTP, GRE, ...) are still a flow, without ports.
        _ => Ok(L4::ports(0, 0)),
    }
}
