//! nasop-core: search spaces, architecture encodings and the trial contract.
//!
//! Plain data and pure functions, shared by the operator, the local runner and the trainer;
//! no Kubernetes, no libtorch, no async runtime.

pub mod arch;
pub mod contract;
pub mod rng;
pub mod space;

pub use arch::Architecture;
pub use rng::Rng;
pub use space::{Point, SearchSpace, Value};
