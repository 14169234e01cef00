//! Where crossover's programs stand on each hook, relative to Cilium's.
//!
//! Cilium's programs end a packet's journey on their hook (TC_ACT_OK /
//! TCX_PASS are final, redirects move it elsewhere): a program that runs
//! after them never sees it. So crossover must run first. On TCX it
//! attaches at the head and Cilium at the tail (`link.Tail()`); on clsact
//! it shares Cilium's priority 1, where cls_bpf runs the most recently
//! added filter first and Cilium's restarts replace their filter in place.
//! Either can be upset (something attached at the TCX head after us, a
//! Cilium filter added after ours): this module finds out from the kernel
//! which programs run ahead of ours; the Observer re-attaches in front, and
//! a hook it cannot put first is reported blind rather than trusted.
use std::io;

use aya::programs::{SchedClassifier, TcAttachType};
use observer_ebpf::Direction;
use serde::{Deserialize, Serialize};

use super::{AttachMode, Hook};
use crate::{Error, Result};

/// How a hook's program stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Ours runs before every other program on the hook: it sees every
    /// packet that crosses it.
    First,
    /// Another program runs before ours and may end a packet's journey:
    /// what this hook counts is not what crossed it.
    Blind,
}

/// How many hooks of each kind and direction are blind: what `/metrics`
/// shows (bounded: a series per hook kind and direction, whatever the
/// number of pod veths).
pub fn blind_by_hook(order: &[HookOrder]) -> Vec<(Hook, Direction, u64)> {
    let mut out = Vec::new();
    for hook in Hook::ALL {
        for &direction in Direction::ALL {
            let blind = order
                .iter()
                .filter(|o| o.hook == hook && o.direction == direction)
                .filter(|o| o.is_blind())
                .count();
            out.push((hook, direction, blind as u64));
        }
    }
    out
}

/// One hook's placement, as last checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOrder {
    pub iface: String,
    pub hook: Hook,
    pub direction: Direction,
    pub placement: Placement,
    /// Kernel ids of the programs that run before ours (empty when first).
    pub ahead: Vec<u32>,
}

impl HookOrder {
    /// A hook's placement from the programs found ahead of ours: first
    /// when none; blind behind any, or when ours is not on the hook at all
    /// (`None`: taken off by someone else).
    pub fn from_ahead(
        iface: &str,
        hook: Hook,
        direction: Direction,
        ahead: Option<Vec<u32>>,
    ) -> HookOrder {
        let placement = match &ahead {
            Some(ahead) if ahead.is_empty() => Placement::First,
            _ => Placement::Blind,
        };
        HookOrder {
            iface: iface.to_owned(),
            hook,
            direction,
            placement,
            ahead: ahead.unwrap_or_default(),
        }
    }

    pub fn is_blind(&self) -> bool {
        self.placement == Placement::Blind
    }
}

/// Programs ahead of the program `ours` on `iface`'s `direction` hook, in
/// the current network namespace; `None` when ours is not on the hook.
pub(crate) fn ahead_of(
    mode: AttachMode,
    iface: &str,
    direction: TcAttachType,
    ours: u32,
) -> Result<Option<Vec<u32>>> {
    let chain = match mode {
        AttachMode::Netlink => filter_chain(iface, direction)?,
        _ => tcx_chain(iface, direction)?,
    };
    Ok(chain
        .iter()
        .position(|&id| id == ours)
        .map(|at| chain[..at].to_vec()))
}

/// Program ids on a TCX hook, in the order they run.
fn tcx_chain(iface: &str, direction: TcAttachType) -> Result<Vec<u32>> {
    let (_, programs) = SchedClassifier::query_tcx(iface, direction).map_err(|e| {
        Error::io(
            format!("querying the TCX programs of {iface}"),
            io::Error::other(e.to_string()),
        )
    })?;
    Ok(programs.iter().map(|p| p.id()).collect())
}

/// True when any filter is left on `iface`'s clsact (either direction),
/// or when that cannot be told (then the qdisc is better left in place).
pub(crate) fn filters_remain(iface: &str) -> bool {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .any(|direction| !matches!(filter_chain(iface, direction), Ok(f) if f.is_empty()))
}

/// Program ids of the cls_bpf filters on a clsact hook, in the order they
/// run (by priority, then as the kernel lists them within one: newest
/// first), from one `RTM_GETTFILTER` dump (no process spawned: the agent
/// checks every pod veth every few seconds). Filters of other kinds, which
/// carry no program, count as unknown programs (id 0) ahead of whatever
/// follows.
fn filter_chain(iface: &str, direction: TcAttachType) -> Result<Vec<u32>> {
    let parent = super::direction_label(direction);
    let fail = |e: io::Error| Error::io(format!("listing the {parent} filters of {iface}"), e);
    let ifindex =
        super::ifindex(iface).ok_or_else(|| fail(io::Error::from_raw_os_error(libc::ENODEV)))?;
    let socket = netlink::Socket::open().map_err(fail)?;
    let replies = socket.dump_filters(ifindex, direction).map_err(fail)?;
    parse_filters(&replies).map_err(|e| fail(io::Error::other(e)))
}

/// The programs named by a dump's `RTM_NEWTFILTER` messages (each message
/// a byte vector, `tcmsg` and attributes after the netlink header). A
/// message without `TCA_OPTIONS` heads a priority and is skipped.
fn parse_filters(messages: &[Vec<u8>]) -> std::result::Result<Vec<u32>, String> {
    const TCMSG_LEN: usize = 20;
    const TCA_OPTIONS: u16 = 2;
    const TCA_BPF_ID: u16 = 11;
    let mut ids = Vec::new();
    for message in messages {
        let attrs = message
            .get(TCMSG_LEN..)
            .ok_or_else(|| format!("a filter message of {} bytes", message.len()))?;
        let Some(options) = netlink::attrs(attrs)?
            .into_iter()
            .find(|(kind, _)| *kind == TCA_OPTIONS)
        else {
            continue;
        };
        let id = netlink::attrs(options.1)?
            .into_iter()
            .find(|(kind, _)| *kind == TCA_BPF_ID)
            .and_then(|(_, v)| v.get(..4))
            .map_or(0, |v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
        ids.push(id);
    }
    Ok(ids)
}

/// The few rtnetlink calls aya has no public form of.
mod netlink {
    use std::{
        io,
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    use aya::programs::TcAttachType;

    const NLMSG_HDR_LEN: usize = 16;
    const RTM_NEWTFILTER: u16 = 44;
    const RTM_GETTFILTER: u16 = 46;
    /// clsact's parent handles: `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`
    /// and `..._EGRESS`.
    const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
    const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;
    /// Messages one dump may return before it is refused: a hook has a
    /// handful of filters, not thousands.
    const MAX_MESSAGES: usize = 4096;

    pub struct Socket(OwnedFd);

    impl Socket {
        pub fn open() -> io::Result<Socket> {
            // SAFETY: a socket call; the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by socket(2) and is ours.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let timeout = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: a valid timeval of the size given.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as u32,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Socket(fd))
        }

        /// Every filter message of `ifindex`'s clsact `direction`, in the
        /// order the kernel dumps them; each without its netlink header.
        pub fn dump_filters(
            &self,
            ifindex: u32,
            direction: TcAttachType,
        ) -> io::Result<Vec<Vec<u8>>> {
            let parent = match direction {
                TcAttachType::Ingress => CLSACT_INGRESS,
                _ => CLSACT_EGRESS,
            };
            let mut request = Vec::with_capacity(NLMSG_HDR_LEN + 20);
            request.extend_from_slice(&((NLMSG_HDR_LEN + 20) as u32).to_ne_bytes());
            request.extend_from_slice(&RTM_GETTFILTER.to_ne_bytes());
            request.extend_from_slice(
                &((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes(),
            );
            request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
            request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
            // tcmsg: family, 3 bytes of padding, ifindex, handle, parent, info.
            request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
            request.extend_from_slice(&(ifindex as i32).to_ne_bytes());
            request.extend_from_slice(&0u32.to_ne_bytes());
            request.extend_from_slice(&parent.to_ne_bytes());
            request.extend_from_slice(&0u32.to_ne_bytes());
            // SAFETY: a valid buffer of the length given.
            let sent = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut out = Vec::new();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                // SAFETY: a valid buffer of the length given.
                let n = unsafe {
                    libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut rest = &buf[..n as usize];
                while rest.len() >= NLMSG_HDR_LEN {
                    let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                    let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
                    if len < NLMSG_HDR_LEN || len > rest.len() {
                        return Err(io::Error::other(format!(
                            "a netlink message of {len} bytes"
                        )));
                    }
                    match kind {
                        k if k == libc::NLMSG_DONE as u16 => return Ok(out),
                        k if k == libc::NLMSG_ERROR as u16 => {
                            let errno = rest
                                .get(NLMSG_HDR_LEN..NLMSG_HDR_LEN + 4)
                                .map_or(0, |e| i32::from_ne_bytes(e.try_into().unwrap()));
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        RTM_NEWTFILTER => {
                            if out.len() == MAX_MESSAGES {
                                return Err(io::Error::other(format!(
                                    "more than {MAX_MESSAGES} filters on one hook"
                                )));
                            }
                            out.push(rest[NLMSG_HDR_LEN..len].to_vec());
                        }
                        _ => {}
                    }
                    rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                }
            }
        }
    }

    /// A buffer of netlink attributes as (type, value) pairs, the nested
    /// flag cleared.
    pub fn attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
        let mut out = Vec::new();
        while buf.len() >= 4 {
            let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
            let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
            if len < 4 || len > buf.len() {
                return Err(format!("an attribute of {len} bytes in {}", buf.len()));
            }
            out.push((kind, &buf[4..len]));
            buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_filters;

    /// A netlink attribute, padded to 4 bytes.
    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// A filter message: a zero tcmsg, then attributes.
    fn message(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0u8; 20];
        for a in attrs {
            out.extend_from_slice(a);
        }
        out
    }

    #[test]
    fn filters_in_dump_order_with_unknown_kinds_as_zero() {
        let bpf = |id: u32| {
            let options = [attr(7, b"prog\0"), attr(11, &id.to_ne_bytes())].concat();
            message(&[attr(1, b"bpf\0"), attr(2 | 0x8000, &options)])
        };
        let dump = vec![
            message(&[attr(1, b"bpf\0")]),
            bpf(41),
            bpf(17),
            message(&[attr(1, b"u32\0")]),
            message(&[attr(1, b"u32\0"), attr(2 | 0x8000, &attr(1, &[0; 4]))]),
        ];
        assert_eq!(parse_filters(&dump).unwrap(), vec![41, 17, 0]);
        assert_eq!(parse_filters(&[]).unwrap(), Vec::<u32>::new());
        assert!(
            parse_filters(&[vec![0; 3]]).is_err(),
            "shorter than a tcmsg"
        );
        assert!(
            parse_filters(&[message(&[vec![9, 0, 1, 0]])]).is_err(),
            "an attribute longer than its message"
        );
    }
}
