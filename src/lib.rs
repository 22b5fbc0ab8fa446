//! nasop: neural architecture search on Kubernetes and on one machine. The CRD types, the
//! operator, the local runner, the web UI, the NAS-Bench-201 tables and the strategy benchmark; the
//! engine and its strategies come from nasop-engine. `main.rs` is a thin command line
//! around them. ARCHITECTURE.md is the map.

pub mod api;
pub mod bench;
pub mod local;
#[cfg(feature = "operator")]
pub mod operator;
pub mod tabular;
#[cfg(feature = "ui")]
pub mod ui;
pub mod wrap;

pub use nasop_engine as engine;
pub use nasop_engine::strategy;
