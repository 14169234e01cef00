//! NAT mappings read from conntrack through ctnetlink (root). A client in a
//! "pod" namespace reaches a server through a router that masquerades
//! fully-random, as Flannel does; the mapping crossover reads in the router
//! must be exactly the source address and port the server saw.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crossover_tests::{
    netns::{Netns, in_netns, sh},
    require_root,
};
use observer::conntrack::{NatDump, NatEntry, Tuple, nat_entries};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const ROUTER_OUT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const ICMP_ID: u16 = 4242;
const TIMEOUT: Duration = Duration::from_secs(3);

/// pod (c0 10.99.0.2) -- (r0 10.99.0.1) router (r1 10.98.0.1) -- (s0
/// 10.98.0.2) server. Field order is drop order; the veths go with them.
struct Lab {
    pod: Netns,
    router: Netns,
    server: Netns,
}

impl Lab {
    fn new() -> Self {
        require_root();
        let lab = Lab {
            pod: Netns::new("xcp"),
            router: Netns::new("xcr"),
            server: Netns::new("xcs"),
        };
        let (pod, router, server) = (&lab.pod.name, &lab.router.name, &lab.server.name);
        sh(&[
            "ip", "link", "add", "c0", "netns", pod, "type", "veth", "peer", "r0", "netns", router,
        ]);
        sh(&[
            "ip", "link", "add", "s0", "netns", server, "type", "veth", "peer", "r1", "netns",
            router,
        ]);
        for (ns, dev, addr) in [
            (&lab.pod, "c0", "10.99.0.2/24"),
            (&lab.router, "r0", "10.99.0.1/24"),
            (&lab.router, "r1", "10.98.0.1/24"),
            (&lab.server, "s0", "10.98.0.2/24"),
        ] {
            ns.exec(&["ip", "addr", "add", addr, "dev", dev]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
        lab.pod
            .exec(&["ip", "route", "add", "default", "via", "10.99.0.1"]);
        lab.server
            .exec(&["ip", "route", "add", "default", "via", "10.98.0.1"]);
        lab.router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Flannel's rule: MASQUERADE --random-fully towards the other side.
        for cmd in [
            "add table ip xnat",
            "add chain ip xnat post { type nat hook postrouting priority srcnat; }",
            "add rule ip xnat post oifname \"r1\" masquerade fully-random",
        ] {
            lab.router.exec(&["nft", cmd]);
        }
        // A rule that needs conntrack makes the pod namespace track its
        // flows, without NAT: the dump there must find entries and keep
        // none of them.
        for cmd in [
            "add table ip xfilt",
            "add chain ip xfilt out { type filter hook output priority 0; }",
            "add rule ip xfilt out ct state new counter",
        ] {
            lab.pod.exec(&["nft", cmd]);
        }
        lab
    }
}

/// What the server saw of each flow, and the sockets that keep the flows
/// alive until the dump is read.
struct Traffic {
    tcp_client: SocketAddr,
    tcp_server_port: u16,
    tcp_seen: SocketAddr,
    udp_client: SocketAddr,
    udp_server_port: u16,
    udp_seen: SocketAddr,
    icmp_seen_id: u16,
    _keep: (TcpStream, TcpStream, UdpSocket, UdpSocket),
}

fn make_traffic(lab: &Lab) -> Traffic {
    // Sockets belong to the namespace they were created in; only their
    // creation has to happen on a thread inside it.
    let listener = in_netns(&lab.server.name, || {
        TcpListener::bind((SERVER, 0)).expect("tcp bind")
    });
    let tcp_server_port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).expect("server read");
        stream.write_all(&byte).expect("server write");
        (stream, peer)
    });
    let client = in_netns(&lab.pod.name, move || {
        TcpStream::connect_timeout(&(SERVER, tcp_server_port).into(), TIMEOUT).expect("connect")
    });
    let mut client_stream = client;
    client_stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    client_stream.write_all(b"x").expect("client write");
    let mut byte = [0u8; 1];
    client_stream.read_exact(&mut byte).expect("client read");
    let (server_stream, tcp_seen) = accept.join().expect("accept thread");

    let udp_server = in_netns(&lab.server.name, || {
        UdpSocket::bind((SERVER, 0)).expect("udp bind")
    });
    let udp_server_port = udp_server.local_addr().unwrap().port();
    udp_server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let udp_client = in_netns(&lab.pod.name, || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("udp bind")
    });
    udp_client.set_read_timeout(Some(TIMEOUT)).unwrap();
    udp_client
        .send_to(b"ping", (SERVER, udp_server_port))
        .expect("udp send");
    let mut buf = [0u8; 16];
    let (n, udp_seen) = udp_server.recv_from(&mut buf).expect("udp server recv");
    udp_server.send_to(&buf[..n], udp_seen).expect("udp reply");
    udp_client.recv(&mut buf).expect("udp client recv");
    let udp_client_port = udp_client.local_addr().unwrap().port();

    let icmp_tap = in_netns(&lab.server.name, icmp_socket);
    lab.pod.exec(&[
        "ping",
        "-c1",
        "-W2",
        "-e",
        &ICMP_ID.to_string(),
        &SERVER.to_string(),
    ]);
    let icmp_seen_id = echo_request_id(&icmp_tap, ROUTER_OUT);

    Traffic {
        tcp_client: client_stream.local_addr().unwrap(),
        tcp_server_port,
        tcp_seen,
        udp_client: (CLIENT, udp_client_port).into(),
        udp_server_port,
        udp_seen,
        icmp_seen_id,
        _keep: (client_stream, server_stream, udp_client, udp_server),
    }
}

/// A raw ICMP socket: it gets a copy of every ICMP packet the namespace
/// receives, echo requests included, so the test sees the identifier the
/// server got after NAT.
fn icmp_socket() -> OwnedFd {
    // SAFETY: plain socket syscall; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: valid fd, option value and length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    fd
}

/// The identifier of the first echo request from `from` on `sock`.
fn echo_request_id(sock: &OwnedFd, from: Ipv4Addr) -> u16 {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n > 0,
            "no echo request: {}",
            std::io::Error::last_os_error()
        );
        let packet = &buf[..n as usize];
        let ihl = usize::from(packet[0] & 0xf) * 4;
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        if src == from && packet.len() >= ihl + 8 && packet[ihl] == 8 {
            return u16::from_be_bytes([packet[ihl + 4], packet[ihl + 5]]);
        }
    }
    panic!("no echo request from {from} within {TIMEOUT:?}");
}

fn dump_in(ns: &Netns) -> NatDump {
    in_netns(&ns.name, nat_entries).expect("nat_entries")
}

fn the_entry(dump: &NatDump, proto: u8, original: Tuple) -> &NatEntry {
    let found: Vec<&NatEntry> = dump
        .entries
        .iter()
        .filter(|e| e.proto == proto && e.original == original)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one entry for proto {proto} {original:?} in {dump:#?}"
    );
    found[0]
}

fn v4(addr: SocketAddr) -> (Ipv4Addr, u16) {
    match addr {
        SocketAddr::V4(a) => (*a.ip(), a.port()),
        SocketAddr::V6(a) => panic!("IPv6 address {a}"),
    }
}

#[test]
fn masquerade_mapping_is_what_the_server_saw() {
    let lab = Lab::new();
    let traffic = make_traffic(&lab);
    let dump = dump_in(&lab.router);
    assert!(!dump.truncated);
    assert_eq!(dump.entries.len(), 3, "TCP, UDP and ICMP only: {dump:#?}");

    let (tcp_client_ip, tcp_client_port) = v4(traffic.tcp_client);
    assert_eq!(tcp_client_ip, CLIENT);
    let tcp = the_entry(
        &dump,
        libc::IPPROTO_TCP as u8,
        Tuple {
            src: CLIENT,
            dst: SERVER,
            src_port: tcp_client_port,
            dst_port: traffic.tcp_server_port,
        },
    );
    assert!(tcp.src_nat && !tcp.dst_nat, "{tcp:?}");
    assert_eq!(tcp.translated_source(), v4(traffic.tcp_seen));
    assert_eq!(tcp.translated_source().0, ROUTER_OUT);
    assert_eq!(
        (tcp.reply.src, tcp.reply.src_port),
        (SERVER, traffic.tcp_server_port)
    );

    let (_, udp_client_port) = v4(traffic.udp_client);
    let udp = the_entry(
        &dump,
        libc::IPPROTO_UDP as u8,
        Tuple {
            src: CLIENT,
            dst: SERVER,
            src_port: udp_client_port,
            dst_port: traffic.udp_server_port,
        },
    );
    assert!(udp.src_nat && !udp.dst_nat, "{udp:?}");
    assert_eq!(udp.translated_source(), v4(traffic.udp_seen));
    assert_eq!(udp.translated_source().0, ROUTER_OUT);

    let icmp = the_entry(
        &dump,
        libc::IPPROTO_ICMP as u8,
        Tuple {
            src: CLIENT,
            dst: SERVER,
            src_port: ICMP_ID,
            dst_port: ICMP_ID,
        },
    );
    assert!(icmp.src_nat, "{icmp:?}");
    assert_eq!(icmp.translated_source(), (ROUTER_OUT, traffic.icmp_seen_id));
    assert_eq!(icmp.reply.src_port, icmp.reply.dst_port);

    // The pod namespace tracked the same three flows without NAT.
    let pod = dump_in(&lab.pod);
    assert!(pod.entries.is_empty(), "{pod:#?}");
    assert!(pod.skipped >= 3, "{pod:#?}");
    drop(traffic);
}

#[test]
fn namespace_without_nat_has_no_entries() {
    require_root();
    let ns = Netns::new("xcn");
    ns.exec(&["ping", "-c1", "-W1", "127.0.0.1"]);
    let dump = dump_in(&ns);
    assert_eq!(dump, NatDump::default());
}

/// The kernel's refusal comes back as an error naming what is missing,
/// not as an empty table. Capabilities are per thread, so dropping them on
/// a throwaway thread leaves the rest of the test process root.
#[test]
fn without_cap_net_admin_the_dump_is_refused() {
    require_root();
    let result = std::thread::spawn(|| {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        // effective, permitted, inheritable; two words for 64 capabilities.
        let data = [[0u32; 3]; 2];
        // SAFETY: capset with a valid header and data; affects this thread only.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
        assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
        nat_entries()
    })
    .join()
    .expect("thread");
    let err = result.expect_err("refused without CAP_NET_ADMIN");
    assert_eq!(err.metric_label(), "conntrack");
    assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    match err {
        observer::Error::Conntrack { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::EPERM), "{source}")
        }
        other => panic!("{other}"),
    }
}
