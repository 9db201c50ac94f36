pub mod bpf;
pub mod sys;
