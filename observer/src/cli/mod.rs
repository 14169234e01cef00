//! Subcommands of the `crossover` binary.
pub mod observe;
pub mod render;
