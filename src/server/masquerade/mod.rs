//! The `file` and `proxy` masquerades.

pub mod file;
