//! ICMP errors on the prober's unconnected UDP socket (`IP_RECVERR`). The
//! kernel queues each error with the start of the datagram it answers, so
//! a probe to a port where nothing listens (ICMP port unreachable) is told
//! from a lost one by its own header.
use std::{io, mem::size_of, os::fd::AsRawFd};

/// Has the kernel queue ICMP errors on `socket`: without it an
/// unconnected socket never hears of them.
pub fn receive_errors(socket: &impl AsRawFd) -> io::Result<()> {
    set_ip_option(socket, libc::IP_RECVERR, 1)
}

fn set_ip_option(socket: &impl AsRawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd, and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// DF on every datagram, sent at its size whatever the kernel's path MTU
/// cache says (`IP_PMTUDISC_PROBE`): a large probe tests the path, it
/// does not trust what was learnt of it.
pub fn probe_path_mtu(socket: &impl AsRawFd) -> io::Result<()> {
    set_ip_option(socket, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE)
}

/// A queued error.
pub struct Queued {
    /// 0 if the kernel gave none.
    pub errno: i32,
    /// `ee_info`: for EMSGSIZE (ICMP fragmentation needed), the next-hop
    /// MTU.
    pub info: u32,
    /// Bytes of the answered datagram's payload copied into the buffer.
    pub len: usize,
}

/// The oldest queued error, the answered datagram's payload copied into
/// `buf`. `None` when the queue is empty.
pub fn next_error(socket: &impl AsRawFd, buf: &mut [u8]) -> Option<io::Result<Queued>> {
    // u64s: control messages need their header's alignment.
    let mut control = [0u64; 32];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg points at buffers that outlive the call.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &raw mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        };
    }
    let len = usize::try_from(n).unwrap_or(0).min(buf.len());
    // SAFETY: the kernel filled msg_control up to msg_controllen; the
    // CMSG_* helpers stay within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                let err: libc::sock_extended_err =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(Ok(Queued {
                    errno: err.ee_errno as i32,
                    info: err.ee_info,
                    len,
                }));
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Some(Ok(Queued {
        errno: 0,
        info: 0,
        len,
    }))
}
