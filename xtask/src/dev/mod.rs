//! Developer checks: the fuzz smoke run and `cargo xtask test` (every stage, as CI runs it).

pub mod fuzz;
pub mod test_all;
