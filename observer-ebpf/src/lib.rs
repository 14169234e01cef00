//! The kernel ABI of crossover: every struct, enum value and map name that
//! both the eBPF programs and userspace see. One crate owns it so the two
//! sides cannot drift apart.
//!
//! Conventions: IPv4 addresses are `u32` holding the four octets in network
//! byte order (as they sit in the packet, which is also what LPM tries need);
//! ports are host byte order. Enumerations cross the boundary as `u8`.
#![no_std]

pub mod abi;

pub use abi::*;
