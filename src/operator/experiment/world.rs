//! What one reconcile of an experiment sees.

use super::state::{ExpKey, Prior};
use crate::api::{NasExperiment, NasExperimentStatus, NasTrial};
use kube::api::DynamicObject;
use std::sync::Arc;

/// What one reconcile sees: the experiment as stored, read, and its trials.
pub struct World {
    pub object: Arc<DynamicObject>,
    pub key: ExpKey,
    pub uid: String,
    pub exp: Arc<NasExperiment>,
    pub trials: Vec<Arc<NasTrial>>,
    pub previous: NasExperimentStatus,
    pub generation: Option<i64>,
    pub now: f64,
    /// What warmStart names, when the engine is to be (re)built.
    pub prior: Option<Prior>,
}
