//! NAT mappings of connections conntrack has already forgotten.
//!
//! A dump shows the mappings alive now. A connection that ended before its
//! flows were joined (a RST, a short request, an entry that timed out) is
//! gone from it, and its two halves, the pod's flow before SNAT and the
//! wire's after, would show as two connections, each counted. ctnetlink
//! announces every entry it destroys, both tuples and status, to the
//! `NFNLGRP_CONNTRACK_DESTROY` multicast group: this log keeps the NATed
//! ones for as long as their flows can still be in the flow table, so a
//! join finds every mapping, however short the connection.
//!
//! Bounded: at most `capacity` mappings (the oldest go first, counted), a
//! kernel receive buffer of [`RECV_BUFFER`]; announcements the kernel could
//! not queue are counted as lost (ENOBUFS), never silently missing.
use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use super::{NLMSG_HDRLEN, NatEntry, align4, parse_entry, u16_ne, u32_ne};
use crate::{Error, Result};

/// `NFNLGRP_CONNTRACK_DESTROY` (linux/netfilter/nfnetlink.h).
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// `IPCTNL_MSG_CT_DELETE` of the ctnetlink subsystem: a destroyed entry.
const CT_DELETE: u16 = (super::NFNL_SUBSYS_CTNETLINK << 8) | 2;
/// What the kernel may queue between two drains (one a second): about
/// 20,000 announcements of ~200 bytes.
pub const RECV_BUFFER: usize = 4 << 20;
/// Mappings kept by default: ~40 bytes each.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Counts since the subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DepartedStats {
    /// Destroyed NATed entries announced and kept.
    pub kept_total: u64,
    /// Announcements of entries without NAT, or not IPv4 TCP/UDP/ICMP.
    pub skipped_total: u64,
    /// Kept mappings dropped early because the log was full.
    pub evicted_total: u64,
    /// Times the kernel could not queue announcements (ENOBUFS): some
    /// mappings were never seen.
    pub overruns_total: u64,
    /// Mappings held now.
    pub held: u64,
}

pub struct DepartedNat {
    sock: OwnedFd,
    ledger: Ledger,
    buf: Vec<u8>,
}

/// The mappings kept, bounded in number and age.
struct Ledger {
    /// (when it was read, CLOCK_MONOTONIC ns; the mapping), oldest first.
    kept: VecDeque<(u64, NatEntry)>,
    retention_ns: u64,
    capacity: usize,
    stats: DepartedStats,
}

impl DepartedNat {
    /// Subscribes in the calling thread's network namespace; mappings are
    /// kept for `retention` (the longest a departed connection's flows stay
    /// in the flow table) and at most `capacity` of them.
    pub fn subscribe(retention: Duration, capacity: usize) -> Result<Self> {
        let fail = |context: &'static str| Error::Conntrack {
            context,
            source: io::Error::last_os_error(),
        };
        // SAFETY: plain socket/bind/setsockopt calls; the fd is owned at once.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            );
            if fd < 0 {
                return Err(fail(
                    "opening a NETLINK_NETFILTER socket for conntrack events",
                ));
            }
            let sock = OwnedFd::from_raw_fd(fd);
            let size = RECV_BUFFER as libc::c_int;
            // FORCE passes rmem_max (root); without it the kernel caps the
            // size, which only makes overruns likelier, and counted.
            for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
                if libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
                {
                    break;
                }
            }
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = 1 << (NFNLGRP_CONNTRACK_DESTROY - 1);
            if libc::bind(
                sock.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) < 0
            {
                return Err(fail(
                    "subscribing to conntrack's destroy events (needs CAP_NET_ADMIN and ctnetlink)",
                ));
            }
            Ok(DepartedNat {
                sock,
                ledger: Ledger::new(retention, capacity),
                buf: vec![0; 64 * 1024],
            })
        }
    }

    /// Takes every pending announcement without blocking and forgets
    /// mappings older than the retention. `now_ns` is CLOCK_MONOTONIC.
    pub fn drain(&mut self, now_ns: u64) -> Result<()> {
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        self.ledger.stats.overruns_total += 1;
                        continue;
                    }
                    _ => {
                        return Err(Error::Conntrack {
                            context: "receiving conntrack destroy events",
                            source: err,
                        });
                    }
                }
            }
            // A datagram longer than the buffer is cut: what fits is read.
            let len = (n as usize).min(self.buf.len());
            let mut datagram = std::mem::take(&mut self.buf);
            self.datagram(&datagram[..len], now_ns);
            std::mem::swap(&mut self.buf, &mut datagram);
        }
        self.ledger.expire(now_ns);
        Ok(())
    }

    fn datagram(&mut self, mut buf: &[u8], now_ns: u64) {
        while let Some(header) = buf.get(..NLMSG_HDRLEN) {
            let len = u32_ne(&header[0..4]) as usize;
            if len < NLMSG_HDRLEN || len > buf.len() {
                return;
            }
            if u16_ne(&header[4..6]) == CT_DELETE {
                match parse_entry(&buf[NLMSG_HDRLEN..len]) {
                    Some(entry) => self.ledger.keep(now_ns, entry),
                    None => self.ledger.stats.skipped_total += 1,
                }
            }
            buf = buf.get(align4(len)..).unwrap_or_default();
        }
    }

    /// The mappings kept, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &NatEntry> {
        self.ledger.kept.iter().map(|(_, entry)| entry)
    }

    pub fn stats(&self) -> DepartedStats {
        DepartedStats {
            held: self.ledger.kept.len() as u64,
            ..self.ledger.stats
        }
    }
}

impl Ledger {
    fn new(retention: Duration, capacity: usize) -> Self {
        Ledger {
            kept: VecDeque::new(),
            retention_ns: retention.as_nanos().min(u64::MAX as u128) as u64,
            capacity: capacity.max(1),
            stats: DepartedStats::default(),
        }
    }

    fn keep(&mut self, now_ns: u64, entry: NatEntry) {
        if self.kept.len() >= self.capacity {
            self.kept.pop_front();
            self.stats.evicted_total += 1;
        }
        self.kept.push_back((now_ns, entry));
        self.stats.kept_total += 1;
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(&(at, _)) = self.kept.front() {
            if now_ns.saturating_sub(at) < self.retention_ns {
                break;
            }
            self.kept.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::Tuple;

    fn entry(port: u16) -> NatEntry {
        let tuple = Tuple {
            src: [10, 244, 0, 5].into(),
            dst: [10, 245, 1, 7].into(),
            src_port: port,
            dst_port: 80,
        };
        NatEntry {
            proto: 6,
            original: tuple,
            reply: tuple,
            src_nat: true,
            dst_nat: false,
        }
    }

    fn ports(ledger: &Ledger) -> Vec<u16> {
        ledger
            .kept
            .iter()
            .map(|(_, e)| e.original.src_port)
            .collect()
    }

    #[test]
    fn keeps_within_capacity_and_retention_counting_the_rest() {
        let mut ledger = Ledger::new(Duration::from_secs(10), 3);
        for port in 1..=5 {
            ledger.keep(u64::from(port) * 1_000_000_000, entry(port));
        }
        assert_eq!(ports(&ledger), vec![3, 4, 5], "the oldest go first");
        assert_eq!(
            (ledger.stats.kept_total, ledger.stats.evicted_total),
            (5, 2)
        );
        ledger.expire(14_000_000_000);
        assert_eq!(ports(&ledger), vec![5], "older than 10 s forgotten");
    }
}
