//! Placeholder for the h3 branch; replaced at merge by the shared `proto` module.
pub mod h3;
