//! The probe datagram: a fixed 32-byte header, big-endian, that a prober
//! sends and a responder sends back with its kind turned into a reply.
//!
//! ```text
//!  0       4    5    6        8                16               24               32
//!  | magic | ver| kind| 0 0    | sender id      | sequence       | sender time ns |
//!  "XOPR"    1    1=request, 2=reply
//! ```
//!
//! The sender id is random per prober, so a reply meant for another prober
//! (a restarted agent reusing a port) is never taken for one of ours. The
//! sender time is the prober's own monotonic clock, echoed untouched; it
//! lets the prober check a reply against the probe it sent. Responders
//! answer requests only, so two responders cannot bounce a datagram between
//! them forever. Bytes after the header are echoed, so a larger request
//! tests a larger path MTU both ways.
use std::fmt;

pub const MAGIC: [u8; 4] = *b"XOPR";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request = 1,
    Reply = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub sender: u64,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Why a datagram is not a probe. `Copy` and allocation-free: a flood of
/// garbage costs a counter increment each, nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{len} bytes, shorter than the {HEADER_LEN}-byte probe header")]
    Truncated { len: usize },
    #[error("magic {0:02x?} is not \"XOPR\"")]
    Magic([u8; 4]),
    #[error("probe version {0}, this build speaks {VERSION}")]
    Version(u8),
    #[error("probe kind {0} is neither request (1) nor reply (2)")]
    Kind(u8),
    #[error("reserved bytes {0:02x?} are not zero")]
    Reserved([u8; 2]),
    #[error("a probe {0} where the other kind was expected")]
    Unexpected(Kind),
}

impl WireError {
    /// Value of the `reason` label when such a datagram is counted.
    pub fn metric_label(self) -> &'static str {
        match self {
            WireError::Truncated { .. } => "truncated",
            WireError::Magic(_) => "magic",
            WireError::Version(_) => "version",
            WireError::Kind(_) => "kind",
            WireError::Reserved(_) => "reserved",
            WireError::Unexpected(_) => "unexpected",
        }
    }

    pub const LABELS: [&'static str; 6] = [
        "truncated",
        "magic",
        "version",
        "kind",
        "reserved",
        "unexpected",
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Request => "request",
            Kind::Reply => "reply",
        })
    }
}

impl Header {
    pub fn request(sender: u64, seq: u64, sent_ns: u64) -> Self {
        Header {
            kind: Kind::Request,
            sender,
            seq,
            sent_ns,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.kind as u8;
        out[8..16].copy_from_slice(&self.sender.to_be_bytes());
        out[16..24].copy_from_slice(&self.seq.to_be_bytes());
        out[24..32].copy_from_slice(&self.sent_ns.to_be_bytes());
        out
    }

    /// Parses the header at the start of `buf`; trailing bytes are padding.
    pub fn decode(buf: &[u8]) -> Result<Header, WireError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(WireError::Truncated { len: buf.len() });
        };
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        // Version before the rest: a later version may lay them out anew.
        if h[4] != VERSION {
            return Err(WireError::Version(h[4]));
        }
        let kind = match h[5] {
            1 => Kind::Request,
            2 => Kind::Reply,
            other => return Err(WireError::Kind(other)),
        };
        if h[6..8] != [0, 0] {
            return Err(WireError::Reserved([h[6], h[7]]));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Header {
            kind,
            sender: word(8),
            seq: word(16),
            sent_ns: word(24),
        })
    }
}

/// Turns the request in `buf` into its reply in place, padding untouched.
/// Anything but a valid request is refused, replies included.
pub fn reply_in_place(buf: &mut [u8]) -> Result<Header, WireError> {
    let header = Header::decode(buf)?;
    if header.kind != Kind::Request {
        return Err(WireError::Unexpected(header.kind));
    }
    buf[5] = Kind::Reply as u8;
    Ok(header)
}
