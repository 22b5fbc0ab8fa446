//! nasop: neural architecture search on Kubernetes. The search engine, its strategies, the
//! CRD types and the benchmark harness; `main.rs` is a thin command line around them.

pub mod api;
pub mod bench;
pub mod engine;
pub mod local;
pub mod operator;
pub mod strategy;
