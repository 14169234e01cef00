//! ICMP errors on the prober's unconnected UDP socket (`IP_RECVERR`). The
//! kernel queues each error with the start of the datagram it answers, so
//! a probe to a port where nothing listens (ICMP port unreachable) is told
//! from a lost one by its own header.
use std::{io, mem::size_of, os::fd::AsRawFd};

/// Has the kernel queue ICMP errors on `socket`: without it an
/// unconnected socket never hears of them.
pub fn receive_errors(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd, and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The oldest queued error: its errno (0 if the kernel gave none) and the
/// bytes of the answered datagram's payload copied into `buf`. `None` when
/// the queue is empty.
pub fn next_error(socket: &impl AsRawFd, buf: &mut [u8]) -> Option<io::Result<(i32, usize)>> {
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
                return Some(Ok((err.ee_errno as i32, len)));
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Some(Ok((0, len)))
}
