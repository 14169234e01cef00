//! TCP totals that survive flow ageing. The window's retransmit signal is
//! the difference of cumulative totals; a connection aged out of the flow
//! table would take its segments with it and make the totals go back, and
//! the window would hide retransmissions. The ledger remembers what every
//! connection had at the last sample, and keeps what departed ones had.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddrV4,
};

use super::window::{TcpKey, TcpTotals};

/// A connection: client and server as the client's node saw them.
pub type ConnId = (SocketAddrV4, SocketAddrV4);

#[derive(Debug, Default)]
pub struct TcpLedger {
    last: HashMap<ConnId, (TcpKey, TcpTotals)>,
    /// What connections that left the table had, per key.
    gone: BTreeMap<TcpKey, TcpTotals>,
}

fn add(to: &mut TcpTotals, t: &TcpTotals) {
    to.segments += t.segments;
    to.retransmits += t.retransmits;
}

impl TcpLedger {
    /// Cumulative totals per key: the connections in the table now plus
    /// every one that left it since the agent started. Ageing only takes
    /// idle connections, so what one did after the last sample is nothing.
    pub fn update(&mut self, now: Vec<(ConnId, TcpKey, TcpTotals)>) -> BTreeMap<TcpKey, TcpTotals> {
        let mut current: HashMap<ConnId, (TcpKey, TcpTotals)> = HashMap::with_capacity(now.len());
        for (id, key, t) in now {
            let entry = current.entry(id).or_insert((key, TcpTotals::default()));
            add(&mut entry.1, &t);
        }
        for (id, (key, old)) in self.last.drain() {
            // Gone, or its 4-tuple reused by a new connection (counts
            // start again from zero): the old one ended with `old`.
            let ended = current.get(&id).is_none_or(|(k, t)| {
                *k != key || t.segments < old.segments || t.retransmits < old.retransmits
            });
            if ended {
                add(self.gone.entry(key).or_default(), &old);
            }
        }
        let mut totals = self.gone.clone();
        for (key, t) in current.values() {
            add(totals.entry(key.clone()).or_default(), t);
        }
        self.last = current;
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(peer: &str) -> TcpKey {
        (peer.into(), "cilium", "legacy", "cilium")
    }

    fn id(client_port: u16) -> ConnId {
        (
            format!("10.244.0.4:{client_port}").parse().unwrap(),
            "10.245.1.4:80".parse().unwrap(),
        )
    }

    fn t(segments: u64, retransmits: u64) -> TcpTotals {
        TcpTotals {
            segments,
            retransmits,
        }
    }

    #[test]
    fn totals_never_go_back_when_connections_age_out() {
        let mut l = TcpLedger::default();
        let a = l.update(vec![
            (id(1), key("b"), t(100, 2)),
            (id(2), key("b"), t(50, 1)),
        ]);
        assert_eq!(a[&key("b")], t(150, 3));
        // Connection 1 aged out of the table.
        let b = l.update(vec![(id(2), key("b"), t(60, 1))]);
        assert_eq!(b[&key("b")], t(160, 3));
        // Connection 2's tuple reused by a new connection.
        let c = l.update(vec![(id(2), key("b"), t(5, 0))]);
        assert_eq!(c[&key("b")], t(165, 3));
        let d = l.update(vec![]);
        assert_eq!(d[&key("b")], t(165, 3));
    }
}
