//! Real traffic from the pod: UDP to 100k (address, port) pairs.
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Node 1's legacy pod /24 (the sink's): two addresses x 50,000 ports.
pub const DESTINATIONS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(10, 64, 1, 10), Ipv4Addr::new(10, 64, 1, 11)];
pub const FIRST_PORT: u16 = 10_000;
pub const PORTS: u16 = 50_000;
pub const FLOWS: u64 = DESTINATIONS.len() as u64 * PORTS as u64;

/// The FLOWS (address, port) pairs: to node 1's pods, or spread over the
/// pods of nodes 1 to `peers` (every peer then has its own counters).
fn targets(peers: usize) -> Vec<SocketAddrV4> {
    if peers <= 1 {
        return DESTINATIONS
            .iter()
            .flat_map(|a| (0..PORTS).map(move |p| SocketAddrV4::new(*a, FIRST_PORT + p)))
            .collect();
    }
    (0..FLOWS as usize)
        .map(|n| {
            let node = 1 + n % peers;
            let port = FIRST_PORT + (n / peers) as u16;
            SocketAddrV4::new(super::topology::legacy_pod(node, 10), port)
        })
        .collect()
}

/// UDP from the pod to 100k (address, port) pairs of node 1's legacy pod
/// /24, on a thread inside the pod's namespace.
pub struct Generator {
    pub stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub first_pass: std::sync::mpsc::Receiver<Duration>,
    pub handle: Option<JoinHandle<()>>,
}

impl Generator {
    /// `peers`: how many nodes the flows go to (see [`targets`]).
    pub fn start(pod_ns: &str, rate: u64, peers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (tx, first_pass) = std::sync::mpsc::channel();
        let (ns, stop2, sent2) = (pod_ns.to_owned(), stop.clone(), sent.clone());
        let handle = std::thread::spawn(move || {
            let _guard = observer::netns::enter(&ns).expect("enter the pod's netns");
            let socket = UdpSocket::bind("0.0.0.0:0").expect("UDP socket in the pod");
            let targets = targets(peers);
            let payload = [0u8; 16];
            let send = |to: &SocketAddrV4| loop {
                match socket.send_to(&payload, to) {
                    Ok(_) => return,
                    // ENOBUFS and the like: the queue is full, try again.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::yield_now()
                    }
                    Err(e) => panic!("send to {to}: {e}"),
                }
            };
            let started = Instant::now();
            for to in &targets {
                send(to);
                sent2.fetch_add(1, Ordering::Relaxed);
            }
            let _ = tx.send(started.elapsed());
            // Paced round robin: every millisecond or so, catch up with
            // `rate`, never more than 100 ms of packets at once.
            let started = Instant::now();
            let mut done: u64 = 0;
            let mut next = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                if due > done + rate / 10 {
                    done = due - rate / 10;
                }
                while done < due {
                    send(&targets[next]);
                    next = (next + 1) % targets.len();
                    done += 1;
                    sent2.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        Generator {
            stop,
            sent,
            first_pass,
            handle: Some(handle),
        }
    }

    pub fn first_pass_done(&self) -> Duration {
        self.first_pass
            .recv_timeout(Duration::from_secs(60))
            .expect("the generator's first pass did not finish in 60 s")
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
