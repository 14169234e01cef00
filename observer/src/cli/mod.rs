//! Subcommands of the `crossover` binary.
pub mod loss;
pub mod observe;
pub mod render;
