//! Packets built byte by byte, so every header can be cut, bent or
//! repeated the way the malformed-input tests need.
use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
/// IP-in-IP: an IPv4 packet inside IPv4.
pub const IPIP: u8 = 4;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

/// The transport part of an IPv4 packet.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        seq: u32,
        flags: u8,
        payload: usize,
    },
    Udp {
        src: u16,
        dst: u16,
        payload: Vec<u8>,
    },
    IcmpEcho {
        request: bool,
        id: u16,
        seq: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
    },
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

/// An IPv4 packet and how to frame it.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub l4: L4,
    /// Raw option bytes (padded to 4 by the builder).
    pub options: Vec<u8>,
    /// Fragment offset in 8-byte units, and the MF flag.
    pub frag_offset: u16,
    pub more_fragments: bool,
}

pub fn ip(src: [u8; 4], dst: [u8; 4], l4: L4) -> Ipv4 {
    Ipv4 {
        src: src.into(),
        dst: dst.into(),
        l4,
        options: Vec::new(),
        frag_offset: 0,
        more_fragments: false,
    }
}

pub fn tcp(src: u16, dst: u16, seq: u32, flags: u8, payload: usize) -> L4 {
    L4::Tcp {
        src,
        dst,
        seq,
        flags,
        payload,
    }
}

/// `len` zero bytes of protocol `proto` after the IPv4 header: a non-first
/// fragment's payload, or a protocol crossover does not parse.
pub fn raw(proto: u8, len: usize) -> L4 {
    L4::Raw {
        proto,
        payload: vec![0; len],
    }
}

pub fn udp(src: u16, dst: u16, payload: &[u8]) -> L4 {
    L4::Udp {
        src,
        dst,
        payload: payload.to_vec(),
    }
}

/// ICMP "fragmentation needed" (type 3, code 4) with next-hop MTU `mtu`,
/// quoting the first `quote` bytes of the IPv4 packet `refused` (RFC 792
/// asks for its header and 8 bytes; Linux sends up to 576 bytes in all,
/// 548 of the packet).
pub fn frag_needed(mtu: u16, refused: &[u8], quote: usize) -> L4 {
    let mut payload = vec![3, 4, 0, 0, 0, 0];
    payload.extend(mtu.to_be_bytes());
    payload.extend(&refused[..quote.min(refused.len())]);
    L4::Raw {
        proto: ICMP,
        payload,
    }
}

/// What Linux quotes of a refused packet: 576 bytes of ICMP message in all.
pub const LINUX_QUOTE: usize = 576 - 20 - 8;

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl L4 {
    fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::IcmpEcho { .. } | L4::Icmp { .. } => ICMP,
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            L4::Tcp {
                src,
                dst,
                seq,
                flags,
                payload,
            } => {
                out.extend(src.to_be_bytes());
                out.extend(dst.to_be_bytes());
                out.extend(seq.to_be_bytes());
                out.extend(0u32.to_be_bytes());
                out.push(5 << 4);
                out.push(*flags);
                out.extend(65535u16.to_be_bytes());
                out.extend([0; 4]);
                out.extend(std::iter::repeat_n(0xab, *payload));
            }
            L4::Udp { src, dst, payload } => {
                out.extend(src.to_be_bytes());
                out.extend(dst.to_be_bytes());
                out.extend(((8 + payload.len()) as u16).to_be_bytes());
                out.extend([0; 2]);
                out.extend(payload);
            }
            L4::IcmpEcho { request, id, seq } => {
                out.push(if *request { 8 } else { 0 });
                out.push(0);
                out.extend([0; 2]);
                out.extend(id.to_be_bytes());
                out.extend(seq.to_be_bytes());
                out.extend([0x42; 16]);
            }
            L4::Icmp { kind, code } => {
                out.extend([*kind, *code, 0, 0, 0, 0, 0, 0]);
                out.extend([0x45; 28]);
            }
            L4::Raw { payload, .. } => out.extend(payload),
        }
        out
    }
}

impl Ipv4 {
    pub fn with_options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    pub fn fragment(mut self, offset_units: u16, more: bool) -> Self {
        self.frag_offset = offset_units;
        self.more_fragments = more;
        self
    }

    /// The IPv4 header and payload.
    pub fn bytes(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let payload = self.l4.bytes();
        let header_len = 20 + options.len();
        let total = header_len + payload.len();
        let mut out = vec![0x40 | (header_len / 4) as u8, 0];
        out.extend((total as u16).to_be_bytes());
        out.extend(0x1234u16.to_be_bytes());
        let frag = self.frag_offset | if self.more_fragments { 0x2000 } else { 0 };
        out.extend(frag.to_be_bytes());
        out.extend([64, self.l4.proto(), 0, 0]);
        out.extend(self.src.octets());
        out.extend(self.dst.octets());
        out.extend(&options);
        let sum = checksum(&out);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend(payload);
        out
    }

    /// In an Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(0x0800, &self.bytes())
    }

    /// In an Ethernet frame with one 802.1Q tag.
    pub fn vlan_frame(&self, vid: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAC_B);
        out.extend(MAC_A);
        out.extend(0x8100u16.to_be_bytes());
        out.extend(vid.to_be_bytes());
        out.extend(0x0800u16.to_be_bytes());
        out.extend(self.bytes());
        out
    }

    /// This packet in an Ethernet frame, tunnelled in VXLAN from `outer_src`
    /// to `outer_dst` on UDP `port`.
    pub fn vxlan(&self, outer_src: [u8; 4], outer_dst: [u8; 4], port: u16) -> Vec<u8> {
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        payload.extend(self.frame());
        ip(outer_src, outer_dst, udp(40000, port, &payload)).frame()
    }

    /// This packet tunnelled in IP-in-IP (IPv4 protocol 4, Calico's
    /// `tunl0`) from `outer_src` to `outer_dst`: the outer header, then
    /// this packet, no header between.
    pub fn ipip(&self, outer_src: [u8; 4], outer_dst: [u8; 4]) -> Ipv4 {
        ip(
            outer_src,
            outer_dst,
            L4::Raw {
                proto: IPIP,
                payload: self.bytes(),
            },
        )
    }

    /// This packet tunnelled in Geneve with `option_words` 4-byte words of
    /// options (one TLV-shaped block).
    pub fn geneve(&self, outer_src: [u8; 4], outer_dst: [u8; 4], option_words: u8) -> Vec<u8> {
        let mut payload = geneve_header(option_words, 0x6558);
        payload.extend(self.frame());
        ip(outer_src, outer_dst, udp(40001, 6081, &payload)).frame()
    }
}

/// A Geneve base header plus `option_words` words of option data.
pub fn geneve_header(option_words: u8, proto: u16) -> Vec<u8> {
    let mut out = vec![option_words & 0x3f, 0];
    out.extend(proto.to_be_bytes());
    out.extend([0, 0, 7, 0]);
    for word in 0..option_words {
        // Option class 0x0102, type, length of the rest, data.
        out.extend(if word == 0 {
            [0x01, 0x02, 0x80, option_words - 1]
        } else {
            [0xee; 4]
        });
    }
    out
}

pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(MAC_B);
    out.extend(MAC_A);
    out.extend(ethertype.to_be_bytes());
    out.extend(payload);
    out
}

/// A minimal IPv6 packet (UDP, no extension headers) in a frame.
pub fn ipv6_frame() -> Vec<u8> {
    let mut ip6 = vec![0x60, 0, 0, 0, 0, 8, UDP, 64];
    ip6.extend([0xfd; 16]);
    ip6.extend([0xfe; 16]);
    ip6.extend([0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
    ethernet(0x86DD, &ip6)
}
