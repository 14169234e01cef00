//! NAT mappings read from netfilter conntrack through ctnetlink.
//!
//! Cross-overlay traffic in a migration is MASQUERADEd by Flannel's rules
//! with `--random-fully`, so the source port changes on the way out. The
//! datapath sees the pod-side flow before NAT and the overlay or underlay
//! flow after it; only conntrack knows which is which, so the mapping is
//! taken from there rather than guessed from addresses and timing.
//!
//! The parser is written by hand over a raw netlink socket (as in
//! `datapath/links.rs`): the dump needs a dozen attributes, and must skip
//! and count a bad entry instead of failing the whole dump, which a
//! generic netlink decoding crate does not do without allocating a tree per
//! entry.
use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{Error, Result};

mod departed;

pub use departed::{DEFAULT_CAPACITY as DEPARTED_CAPACITY, DepartedNat, DepartedStats};

/// One conntrack entry that NAT rewrote: `original` is the tuple as the
/// initiator sent it, `reply` as the responder answers it. For SNAT,
/// `reply.dst` / `reply.dst_port` is the translated source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NatEntry {
    /// IP protocol number: 6 TCP, 17 UDP, 1 ICMP.
    pub proto: u8,
    pub original: Tuple,
    pub reply: Tuple,
    pub src_nat: bool,
    pub dst_nat: bool,
}

/// Addresses and ports of one direction. ICMP echo has no ports: its
/// identifier is in both, as `conntrack -L` prints `id=` and as the
/// datapath keys ICMP echo flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl NatEntry {
    /// Address and port the initiator's source became after SNAT (its
    /// original source when only DNAT applied): the reply is addressed to
    /// whatever the responder saw.
    pub fn translated_source(&self) -> (Ipv4Addr, u16) {
        (self.reply.dst, self.reply.dst_port)
    }
}

/// What one dump of the conntrack table gave.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NatDump {
    pub entries: Vec<NatEntry>,
    /// Entries seen but not NATed, or not IPv4 TCP/UDP/ICMP, or malformed.
    pub skipped: u64,
    /// The dump stopped at [`MAX_ENTRIES`] entries read; the rest of the
    /// table was not looked at.
    pub truncated: bool,
}

/// Entries read (NATed or not) before the dump stops: bounds the time and
/// memory of one dump on a node whose `nf_conntrack_max` was raised far.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Every NATed IPv4 TCP, UDP and ICMP entry of the conntrack table of the
/// calling thread's network namespace.
pub fn nat_entries() -> Result<NatDump> {
    let mut overruns = 0;
    loop {
        match dump_once() {
            Ok(dump) => return Ok(dump),
            // The kernel dropped part of the dump: the table read so far
            // has holes that nothing would show later, so read it again.
            Err(Failure::Overrun) if overruns < MAX_OVERRUNS => overruns += 1,
            Err(Failure::Overrun) => {
                return Err(Error::Conntrack {
                    context: "the dump overflowed the socket's receive buffer on every attempt",
                    source: io::Error::from_raw_os_error(libc::ENOBUFS),
                });
            }
            Err(Failure::Fatal(err)) => return Err(err),
        }
    }
}

/// Attempts after the first when the kernel reports lost dump messages.
const MAX_OVERRUNS: u32 = 3;

/// Receive buffer. The kernel builds dump datagrams of at most 32 KiB
/// (`netlink_recvmsg` caps what it remembers of our buffer size), so this
/// one never truncates.
const RECV_BUF: usize = 64 * 1024;

/// How long one `recv` may wait: a dump answers at once, so silence means
/// something is wrong and the caller should hear about it, not hang.
const RECV_TIMEOUT_SECS: libc::time_t = 10;

// From uapi linux/netlink.h, linux/netfilter/nfnetlink.h and
// linux/netfilter/nfnetlink_conntrack.h.
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLA_TYPE_MASK: u16 = !((1 << 15) | (1 << 14));
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CT_GET: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
/// Type of every entry of a dump reply.
const CT_NEW: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
const NFGENMSG_LEN: usize = 4;
const NFNETLINK_V0: u8 = 0;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;

const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

enum Failure {
    /// Dump messages were lost (ENOBUFS or NLMSG_OVERRUN); worth a retry.
    Overrun,
    Fatal(Error),
}

fn fatal(context: &'static str, source: io::Error) -> Failure {
    Failure::Fatal(Error::Conntrack { context, source })
}

/// Each dump has a socket of its own, so the sequence number only guards
/// against the unexpected; distinct ones keep an nlmon trace readable.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

fn dump_once() -> Result<NatDump, Failure> {
    let sock = open_socket()?;
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    send_request(&sock, seq)?;
    let mut collector = Collector::default();
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let len = recv(&sock, &mut buf)?;
        let first = collector.seen == 0;
        match collector.datagram(&buf[..len], seq) {
            Step::More => {}
            Step::Done => return Ok(collector.into_dump()),
            Step::Overrun => return Err(Failure::Overrun),
            Step::Refused(errno) => return Err(refused(errno, first)),
            Step::Malformed(what) => {
                return Err(fatal(what, io::Error::from(io::ErrorKind::InvalidData)));
            }
        }
    }
}

/// The error for an NLMSG_ERROR. Refusals of the request itself tell what
/// the kernel lacks; nfnetlink answers EINVAL for a subsystem that is not
/// there (and could not be loaded).
fn refused(errno: i32, before_any_entry: bool) -> Failure {
    let context = match errno {
        libc::EPERM | libc::EACCES => {
            "the kernel refused the conntrack dump: reading conntrack needs CAP_NET_ADMIN"
        }
        libc::EINVAL | libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT
            if before_any_entry =>
        {
            "the kernel refused the conntrack dump: it has no ctnetlink \
             (CONFIG_NF_CT_NETLINK, module nf_conntrack_netlink)"
        }
        _ => "the kernel ended the conntrack dump with an error",
    };
    fatal(context, io::Error::from_raw_os_error(errno))
}

fn open_socket() -> Result<OwnedFd, Failure> {
    // SAFETY: plain socket syscall; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let context = if err.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
            "this kernel has no nfnetlink (NETLINK_NETFILTER, CONFIG_NETFILTER_NETLINK), \
             hence no ctnetlink"
        } else {
            "opening a NETLINK_NETFILTER socket"
        };
        return Err(fatal(context, err));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: valid fd, option value and length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(fatal(
            "setting a receive timeout on the ctnetlink socket",
            io::Error::last_os_error(),
        ));
    }
    Ok(sock)
}

/// The dump request: an nlmsghdr and an nfgenmsg for AF_INET, no filter.
fn request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
    const LEN: usize = NLMSG_HDRLEN + NFGENMSG_LEN;
    let mut msg = [0u8; LEN];
    msg[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&CT_GET.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0: the kernel fills in our autobound port.
    msg[16] = libc::AF_INET as u8;
    msg[17] = NFNETLINK_V0;
    // res_id 0 (big-endian, so the zero bytes are already right).
    msg
}

fn send_request(sock: &OwnedFd, seq: u32) -> Result<(), Failure> {
    let msg = request(seq);
    // SAFETY: zeroed sockaddr_nl is valid; the kernel (pid 0) is the peer.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: valid fd, buffer, address and lengths.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(fatal("sending the conntrack dump request", err));
        }
    }
}

fn recv(sock: &OwnedFd, buf: &mut [u8]) -> Result<usize, Failure> {
    loop {
        // MSG_TRUNC makes netlink return the datagram's real length, so a
        // cut datagram is detected instead of parsed as if whole.
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n > 0 {
            let n = n as usize;
            if n > buf.len() {
                return Err(fatal(
                    "a ctnetlink datagram was larger than the receive buffer",
                    io::Error::from(io::ErrorKind::InvalidData),
                ));
            }
            return Ok(n);
        }
        if n == 0 {
            return Err(fatal(
                "the ctnetlink socket returned nothing before the end of the dump",
                io::Error::from(io::ErrorKind::UnexpectedEof),
            ));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOBUFS) => return Err(Failure::Overrun),
            Some(libc::EAGAIN) => {
                return Err(fatal("ctnetlink did not answer within 10 s", err));
            }
            _ => return Err(fatal("receiving the conntrack dump", err)),
        }
    }
}

/// What the dump calls for after one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
    Overrun,
    /// NLMSG_ERROR with this (positive) errno.
    Refused(i32),
    /// A reply that cannot be a conntrack dump reply: nothing sensible
    /// can be read after it.
    Malformed(&'static str),
}

#[derive(Default)]
struct Collector {
    entries: Vec<NatEntry>,
    skipped: u64,
    seen: u64,
    truncated: bool,
}

impl Collector {
    fn into_dump(self) -> NatDump {
        NatDump {
            entries: self.entries,
            skipped: self.skipped,
            truncated: self.truncated,
        }
    }

    /// Takes in one datagram of the dump, which holds any number of
    /// messages of the multipart reply.
    fn datagram(&mut self, mut buf: &[u8], seq: u32) -> Step {
        while !buf.is_empty() {
            let Some(header) = buf.get(..NLMSG_HDRLEN) else {
                return Step::Malformed("a ctnetlink datagram ended inside a message header");
            };
            let len = u32_ne(&header[0..4]) as usize;
            let kind = u16_ne(&header[4..6]);
            let msg_seq = u32_ne(&header[8..12]);
            if len < NLMSG_HDRLEN || len > buf.len() {
                return Step::Malformed("a ctnetlink message had an impossible length");
            }
            let payload = &buf[NLMSG_HDRLEN..len];
            buf = buf.get(align4(len)..).unwrap_or_default();
            if msg_seq != seq {
                continue;
            }
            match kind {
                NLMSG_NOOP => {}
                NLMSG_ERROR => {
                    let Some(code) = payload.get(..4) else {
                        return Step::Malformed("a netlink error message was too short");
                    };
                    // Zero is an acknowledgement, not an error.
                    let code = u32_ne(code) as i32;
                    if code != 0 {
                        return Step::Refused(code.saturating_neg());
                    }
                }
                NLMSG_DONE => {
                    // The dump's own return value follows: an error that
                    // stopped the dump early is reported here.
                    if let Some(code) = payload.get(..4) {
                        let code = u32_ne(code) as i32;
                        if code < 0 {
                            return Step::Refused(code.saturating_neg());
                        }
                    }
                    return Step::Done;
                }
                NLMSG_OVERRUN => return Step::Overrun,
                CT_NEW => {
                    self.seen += 1;
                    match parse_entry(payload) {
                        Some(entry) => self.entries.push(entry),
                        None => self.skipped += 1,
                    }
                    if self.seen >= MAX_ENTRIES {
                        // Closing the socket ends the dump in the kernel.
                        self.truncated = true;
                        return Step::Done;
                    }
                }
                _ => {}
            }
        }
        Step::More
    }
}

/// A NATed IPv4 TCP/UDP/ICMP entry from one IPCTNL_MSG_CT_NEW payload;
/// `None` for anything else, malformed included.
fn parse_entry(payload: &[u8]) -> Option<NatEntry> {
    let nfgen = payload.get(..NFGENMSG_LEN)?;
    if nfgen[0] != libc::AF_INET as u8 {
        return None;
    }
    let mut original = None;
    let mut reply = None;
    let mut status = None;
    for_each_attr(&payload[NFGENMSG_LEN..], |kind, value| {
        match kind {
            CTA_TUPLE_ORIG => original = Some(parse_tuple(value)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(value)?),
            CTA_STATUS => status = Some(u32::from_be_bytes(value.try_into().ok()?)),
            _ => {}
        }
        Some(())
    })?;
    let status = status?;
    let src_nat = status & IPS_SRC_NAT != 0;
    let dst_nat = status & IPS_DST_NAT != 0;
    if !src_nat && !dst_nat {
        return None;
    }
    let (proto, original) = original?.finish()?;
    let (reply_proto, reply) = reply?.finish()?;
    if proto != reply_proto {
        return None;
    }
    Some(NatEntry {
        proto,
        original,
        reply,
        src_nat,
        dst_nat,
    })
}

/// A tuple as the attributes give it, each part possibly missing.
#[derive(Default)]
struct RawTuple {
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    proto: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    icmp_id: Option<u16>,
}

impl RawTuple {
    fn finish(self) -> Option<(u8, Tuple)> {
        let proto = self.proto?;
        let (src_port, dst_port) = match proto {
            IPPROTO_TCP | IPPROTO_UDP => (self.src_port?, self.dst_port?),
            IPPROTO_ICMP => (self.icmp_id?, self.icmp_id?),
            _ => return None,
        };
        Some((
            proto,
            Tuple {
                // IPv6 addresses come in other attributes: left unset here.
                src: self.src?,
                dst: self.dst?,
                src_port,
                dst_port,
            },
        ))
    }
}

fn parse_tuple(buf: &[u8]) -> Option<RawTuple> {
    let mut t = RawTuple::default();
    for_each_attr(buf, |kind, value| {
        match kind {
            CTA_TUPLE_IP => for_each_attr(value, |kind, value| {
                match kind {
                    CTA_IP_V4_SRC => t.src = Some(ipv4(value)?),
                    CTA_IP_V4_DST => t.dst = Some(ipv4(value)?),
                    _ => {}
                }
                Some(())
            })?,
            CTA_TUPLE_PROTO => for_each_attr(value, |kind, value| {
                match kind {
                    CTA_PROTO_NUM => t.proto = Some(u8_exact(value)?),
                    CTA_PROTO_SRC_PORT => t.src_port = Some(be16(value)?),
                    CTA_PROTO_DST_PORT => t.dst_port = Some(be16(value)?),
                    CTA_PROTO_ICMP_ID => t.icmp_id = Some(be16(value)?),
                    _ => {}
                }
                Some(())
            })?,
            _ => {}
        }
        Some(())
    })?;
    Some(t)
}

/// Calls `f` on the (type, value) of each attribute in `buf`; `None` as
/// soon as an attribute's length does not fit or `f` says so. Nesting is
/// read from the attribute type the caller expects, not from NLA_F_NESTED,
/// which old kernels did not set; the flag is masked off the type.
fn for_each_attr<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u16, &'a [u8]) -> Option<()>,
) -> Option<()> {
    while !buf.is_empty() {
        let header = buf.get(..NLA_HDRLEN)?;
        let len = usize::from(u16_ne(&header[0..2]));
        let kind = u16_ne(&header[2..4]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN {
            return None;
        }
        f(kind, buf.get(NLA_HDRLEN..len)?)?;
        // The last attribute's padding may be missing.
        buf = buf.get(align4(len)..).unwrap_or_default();
    }
    Some(())
}

fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

fn ipv4(value: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))
}

fn u8_exact(value: &[u8]) -> Option<u8> {
    match value {
        [b] => Some(*b),
        _ => None,
    }
}

fn be16(value: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(value.try_into().ok()?))
}

/// Callers pass exactly 2 bytes.
fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

/// Callers pass exactly 4 bytes.
fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | (1 << 15), &parts.concat())
    }

    fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4], proto: u8, ports: (u16, u16)) -> Vec<u8> {
        let l4 = if proto == IPPROTO_ICMP {
            vec![
                attr(CTA_PROTO_NUM, &[proto]),
                attr(CTA_PROTO_ICMP_ID, &ports.0.to_be_bytes()),
                attr(5, &[8]),
                attr(6, &[0]),
            ]
        } else {
            vec![
                attr(CTA_PROTO_NUM, &[proto]),
                attr(CTA_PROTO_SRC_PORT, &ports.0.to_be_bytes()),
                attr(CTA_PROTO_DST_PORT, &ports.1.to_be_bytes()),
            ]
        };
        nested(
            kind,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)],
                ),
                nested(CTA_TUPLE_PROTO, &l4),
            ],
        )
    }

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    fn entry(status: u32, proto: u8, orig_ports: (u16, u16), reply_ports: (u16, u16)) -> Vec<u8> {
        let mut payload = vec![libc::AF_INET as u8, 0, 0, 0];
        payload.extend(tuple(
            CTA_TUPLE_ORIG,
            [10, 99, 0, 2],
            [10, 98, 0, 2],
            proto,
            orig_ports,
        ));
        payload.extend(tuple(
            CTA_TUPLE_REPLY,
            [10, 98, 0, 2],
            [10, 98, 0, 1],
            proto,
            reply_ports,
        ));
        payload.extend(attr(CTA_STATUS, &status.to_be_bytes()));
        payload.extend(attr(7, &120u32.to_be_bytes())); // CTA_TIMEOUT
        payload
    }

    #[test]
    fn snat_tcp_entry() {
        let got = parse_entry(&entry(
            IPS_SRC_NAT | 0xe,
            IPPROTO_TCP,
            (40000, 80),
            (80, 1234),
        ));
        let e = got.expect("parsed");
        assert_eq!(e.proto, IPPROTO_TCP);
        assert_eq!(e.original.src, Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(e.original.src_port, 40000);
        assert_eq!(e.original.dst_port, 80);
        assert!(e.src_nat && !e.dst_nat);
        assert_eq!(e.translated_source(), (Ipv4Addr::new(10, 98, 0, 1), 1234));
    }

    #[test]
    fn icmp_id_is_both_ports() {
        let e = parse_entry(&entry(IPS_SRC_NAT, IPPROTO_ICMP, (7, 0), (9, 0))).unwrap();
        assert_eq!((e.original.src_port, e.original.dst_port), (7, 7));
        assert_eq!(e.translated_source().1, 9);
    }

    #[test]
    fn not_nated_or_other_protocol_is_skipped() {
        assert_eq!(parse_entry(&entry(0xe, IPPROTO_TCP, (1, 2), (2, 1))), None);
        assert_eq!(parse_entry(&entry(IPS_SRC_NAT, 132, (1, 2), (2, 1))), None);
    }

    #[test]
    fn malformed_never_panics() {
        let good = entry(IPS_SRC_NAT, IPPROTO_UDP, (1, 2), (2, 3));
        assert!(parse_entry(&good).is_some());
        for cut in 0..good.len() {
            let _ = parse_entry(&good[..cut]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 3, 4, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = parse_entry(&bad);
            }
        }
        // An attribute claiming more than is there drops the entry.
        let mut bad = good.clone();
        bad[NFGENMSG_LEN..NFGENMSG_LEN + 2].copy_from_slice(&0xfff0u16.to_ne_bytes());
        assert_eq!(parse_entry(&bad), None);
    }

    #[test]
    fn multipart_dump() {
        let seq = 42;
        let mut c = Collector::default();
        let mut first = message(
            CT_NEW,
            seq,
            &entry(IPS_SRC_NAT, IPPROTO_TCP, (1, 2), (2, 3)),
        );
        first.extend(message(CT_NEW, seq, &entry(0, IPPROTO_TCP, (1, 2), (2, 1))));
        let mut bad = entry(IPS_SRC_NAT, IPPROTO_TCP, (1, 2), (2, 3));
        bad.truncate(bad.len() - 3);
        first.extend(message(CT_NEW, seq, &bad));
        // A message of another request is not ours.
        first.extend(message(
            CT_NEW,
            seq + 1,
            &entry(IPS_SRC_NAT, IPPROTO_UDP, (1, 2), (2, 3)),
        ));
        assert_eq!(c.datagram(&first, seq), Step::More);
        let second = message(
            CT_NEW,
            seq,
            &entry(IPS_DST_NAT, IPPROTO_UDP, (5, 6), (6, 5)),
        );
        assert_eq!(c.datagram(&second, seq), Step::More);
        let done = message(NLMSG_DONE, seq, &0i32.to_ne_bytes());
        assert_eq!(c.datagram(&done, seq), Step::Done);
        let dump = c.into_dump();
        assert_eq!(dump.entries.len(), 2);
        assert_eq!(dump.skipped, 2);
        assert!(!dump.truncated);
        assert!(dump.entries[1].dst_nat);
    }

    #[test]
    fn errors_and_framing() {
        let seq = 7;
        let mut c = Collector::default();
        let err = message(
            NLMSG_ERROR,
            seq,
            &[(-libc::EINVAL).to_ne_bytes(), [0; 4]].concat(),
        );
        assert_eq!(c.datagram(&err, seq), Step::Refused(libc::EINVAL));
        let ack = message(NLMSG_ERROR, seq, &0i32.to_ne_bytes());
        assert_eq!(c.datagram(&ack, seq), Step::More);
        let done = message(NLMSG_DONE, seq, &(-libc::EBUSY).to_ne_bytes());
        assert_eq!(c.datagram(&done, seq), Step::Refused(libc::EBUSY));
        assert_eq!(
            c.datagram(&message(NLMSG_OVERRUN, seq, &[]), seq),
            Step::Overrun
        );
        let mut long = message(NLMSG_NOOP, seq, &[]);
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(c.datagram(&long, seq), Step::Malformed(_)));
        assert!(matches!(c.datagram(&[1, 2, 3], seq), Step::Malformed(_)));
    }

    #[test]
    fn request_layout() {
        let r = request(5);
        assert_eq!(u32_ne(&r[0..4]), 20);
        assert_eq!(u16_ne(&r[4..6]), 0x101);
        assert_eq!(u16_ne(&r[6..8]), 0x301);
        assert_eq!(u32_ne(&r[8..12]), 5);
        assert_eq!(r[16], 2);
    }
}
