//! nasop-core: search spaces, architecture encodings and the trial contract.
//!
//! Plain data and pure functions, shared by the operator, the local runner and the trainer;
//! no Kubernetes, no libtorch, no async runtime. With the feature `client`, the trial's
//! blocking HTTP client for reports (`client`), which trials use and the engine does not.

pub mod arch;
#[cfg(feature = "client")]
pub mod client;
pub mod contract;
pub mod rng;
pub mod space;

pub use arch::Architecture;
pub use rng::Rng;
pub use space::{Point, SearchSpace, Value};
