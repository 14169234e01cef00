//! The MTU of the route to each large probe's target, as the kernel would
//! size a datagram to it (`IP_MTU` of a UDP socket connected to it: the
//! device's or the route's, or a learnt exception's, the least), kept
//! [`ROUTE_MTU_TTL`] per address.
//!
//! One socket serves every read: connecting a UDP socket sends nothing,
//! and connecting it again moves it to the next address. It is
//! disconnected after each read (`AF_UNSPEC`), so the kernel picks the
//! source address, and with it the route, afresh for every target as it
//! would for a socket of its own. A socket per read cost the agent a
//! socket, a bind and a close per large probe: a sweep visits each target
//! less often than the TTL, so nearly every large probe read its route.
use std::{
    collections::HashMap,
    io,
    mem::size_of,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// How long a route's MTU is taken as read before it is read again.
pub const ROUTE_MTU_TTL: Duration = Duration::from_secs(10);

pub struct RouteMtus {
    socket: UdpSocket,
    /// Route MTUs by address, read at most [`ROUTE_MTU_TTL`] ago.
    read: HashMap<Ipv4Addr, (u32, Instant)>,
}

impl RouteMtus {
    pub fn new() -> io::Result<RouteMtus> {
        Ok(RouteMtus {
            socket: UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?,
            read: HashMap::new(),
        })
    }

    /// The route MTU to `addr`, read within [`ROUTE_MTU_TTL`] of `now`.
    pub fn get(&mut self, addr: Ipv4Addr, now: Instant) -> io::Result<u32> {
        if let Some((mtu, at)) = self.read.get(&addr)
            && now.saturating_duration_since(*at) < ROUTE_MTU_TTL
        {
            return Ok(*mtu);
        }
        let mtu = self.read_route(addr)?;
        self.read.insert(addr, (mtu, now));
        Ok(mtu)
    }

    /// Forgets what was read of `addr`: the next [`RouteMtus::get`] reads
    /// it again (an ICMP fragmentation needed changed it).
    pub fn forget(&mut self, addr: Ipv4Addr) {
        self.read.remove(&addr);
    }

    /// Forgets what is past its time: the map stays within the targets
    /// probed in the last [`ROUTE_MTU_TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.read
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ROUTE_MTU_TTL);
    }

    fn read_route(&self, addr: Ipv4Addr) -> io::Result<u32> {
        self.socket.connect((addr, 9))?;
        let mut mtu: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid fd, and a value buffer of the size given.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU,
                (&raw mut mtu).cast(),
                &raw mut len,
            )
        };
        let read = if rc == 0 {
            u32::try_from(mtu).map_err(|_| io::Error::other(format!("route MTU {mtu}")))
        } else {
            Err(io::Error::last_os_error())
        };
        self.disconnect()?;
        read
    }

    /// `connect(AF_UNSPEC)`: no peer, and no source address kept from it.
    fn disconnect(&self) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr is a valid one of family AF_UNSPEC.
        let mut none: libc::sockaddr = unsafe { std::mem::zeroed() };
        none.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        // SAFETY: a valid fd, and an address of the size given.
        let rc = unsafe {
            libc::connect(
                self.socket.as_raw_fd(),
                &raw const none,
                size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback's route MTU (65536 on Linux) through one socket, read
    /// again once forgotten; an address without a route is an error
    /// that leaves the socket usable.
    #[test]
    fn one_socket_reads_every_route() {
        let mut routes = RouteMtus::new().unwrap();
        let now = Instant::now();
        let lo = routes.get(Ipv4Addr::LOCALHOST, now).unwrap();
        assert!(lo >= 1500, "loopback's MTU {lo}");
        assert_eq!(routes.get(Ipv4Addr::new(127, 0, 0, 2), now).unwrap(), lo);
        // Disconnected after each read: no peer, and no source address
        // kept for the next route.
        assert!(routes.socket.peer_addr().is_err());
        assert_eq!(
            routes.socket.local_addr().unwrap().ip(),
            std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(routes.read.len(), 2);
        routes.forget(Ipv4Addr::LOCALHOST);
        assert_eq!(routes.read.len(), 1);
        routes.expire(now + ROUTE_MTU_TTL);
        assert!(routes.read.is_empty());
        // Class E has a route only where a default one exists: read or
        // refused, the socket serves the next read.
        let _ = routes.get(Ipv4Addr::new(240, 0, 0, 1), now);
        assert_eq!(routes.get(Ipv4Addr::LOCALHOST, now).unwrap(), lo);
    }
}
