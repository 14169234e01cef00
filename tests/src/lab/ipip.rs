//! IP-in-IP on the wire without an ipip device: the kernel here has no
//! module for one (`ip link add type ipip` fails), so a node sends its
//! pods' packets itself through a raw socket of IPv4 protocol 4. The kernel
//! puts the outer header between the two nodes' underlay addresses in
//! front, which is what Calico's `tunl0` sends. The receiving node holds a
//! raw socket of protocol 4 that takes them, so no protocol-unreachable
//! comes back.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Instant,
};

use anyhow::Result;

use super::{
    Lab,
    traffic::{Crafted, Pacer, join, spawn_in, start_server},
};
use crate::packet;

/// A raw IPv4 socket of protocol 4 bound to `local`.
fn raw_ipip(local: Ipv4Addr) -> io::Result<OwnedFd> {
    // SAFETY: plain socket/bind/setsockopt calls on an fd owned at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_IPIP,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let addr = sockaddr(local);
        if libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Sends `count` IP-in-IP TCP segments from node `from` to node `to`,
/// inner addresses `inner_src` to `inner_dst` (pods or nodes, as
/// [`Lab::endpoint`] names them), `pps` per second. Returns how many the
/// receiving socket took.
pub fn send(
    lab: &Lab,
    from: &str,
    to: &str,
    inner_src: &str,
    inner_dst: &str,
    count: u64,
    pps: u64,
) -> Result<u64> {
    let Crafted {
        src,
        dst,
        outer_src,
        to_node,
        deadline,
    } = Crafted::plan(lab, "ipip", from, to, inner_src, inner_dst, count, pps)?;
    let outer_dst = to_node.addr;
    let bind = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => raw_ipip(*v4.ip()),
        SocketAddr::V6(_) => Err(io::Error::other("IPv4 only")),
    };
    let (_, receiver) = start_server(&to_node, 0, bind, move |socket| {
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        let mut taken = 0;
        while taken < count && start.elapsed() < deadline {
            // SAFETY: valid buffer and length; the fd is open.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            // Raw sockets see every protocol-4 packet: take only ours.
            if n >= 40 && buf[12..16] == outer_src.octets() {
                taken += 1;
            }
        }
        Ok(taken)
    })?;
    let sender = spawn_in(&lab.node_ns(from), move || {
        let socket = raw_ipip(outer_src)?;
        let target = sockaddr(outer_dst);
        let pacer = Pacer::new(pps);
        for n in 0..count {
            pacer.wait(n);
            let inner = packet::ip(
                src.octets(),
                dst.octets(),
                packet::tcp(42000, 80, n as u32 * 100, packet::ACK | packet::PSH, 100),
            )
            .bytes();
            // SAFETY: valid buffer, length and address.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    inner.as_ptr().cast(),
                    inner.len(),
                    0,
                    (&raw const target).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error().into());
            }
        }
        Ok(())
    });
    join(sender)?;
    join(receiver)
}
