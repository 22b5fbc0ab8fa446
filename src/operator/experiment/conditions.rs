//! The experiment's conditions: what holds it up (trial names taken by another object, a
//! quota, pods that do not start, missing storage, a missing warm-start experiment).

use super::state::Prior;
use super::world::World;
use crate::api::{self, NasExperimentStatus, NasTrial};
use crate::operator::context::{Ctx, publish_event};
use crate::operator::status;
use kube::Resource;
use kube::api::DynamicObject;
use kube::runtime::events::EventType;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::warn;

/// Why a trial could not be created.
pub(super) enum Blocked {
    /// Its name (of this index) is taken by a trial another object owns.
    Conflict(u32, String),
    /// A ResourceQuota refused it.
    Quota(String),
}

/// Trials waiting for their pods to start with a reason (Unschedulable, ImagePullBackOff,
/// QuotaExceeded): the most common reason, and a message naming one such trial.
fn pending_trials(trials: &[Arc<NasTrial>]) -> Option<(String, String)> {
    let waiting: Vec<(&str, &str, &str)> = trials
        .iter()
        .filter_map(|t| {
            let s = t.status.as_ref()?;
            if s.phase != Some(api::TrialPhaseName::Pending) {
                return None;
            }
            Some((
                s.reason.as_deref()?,
                t.metadata.name.as_deref().unwrap_or_default(),
                s.message.as_deref().unwrap_or_default(),
            ))
        })
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (reason, _, _) in &waiting {
        *counts.entry(reason).or_default() += 1;
    }
    let (reason, n) = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))?;
    let (_, trial, message) = waiting.iter().find(|w| w.0 == reason)?;
    Some((
        reason.to_string(),
        status::bounded(
            format!("{n} trial(s) waiting to start ({reason}); {trial}: {message}"),
            status::MESSAGE_LIMIT,
        ),
    ))
}

/// Sets a condition on the status, with a warning event when it first appears.
fn raise(
    ctx: &Ctx,
    world: &World,
    status: &mut NasExperimentStatus,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let had = world
        .previous
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.reason == reason);
    if !had {
        warn!(namespace = %world.key.0, experiment = %world.key.1, condition = type_, %reason, %message, "experiment condition");
        publish(
            ctx,
            &world.object,
            EventType::Warning,
            type_,
            message.to_string(),
        );
    }
    status::set_condition(
        status,
        &world.previous,
        type_,
        reason,
        message,
        world.generation,
        world.now,
    );
}

/// Conditions for what holds the experiment up: trial names taken by another object,
/// a quota, pods that do not start.
pub(super) fn set_conditions(
    ctx: &Ctx,
    world: &World,
    status: &mut NasExperimentStatus,
    blocked: &[Blocked],
) {
    let conflict = blocked.iter().find_map(|b| match b {
        Blocked::Conflict(_, m) => Some(m),
        _ => None,
    });
    let quota = blocked.iter().find_map(|b| match b {
        Blocked::Quota(m) => Some(m),
        _ => None,
    });
    let mut raise = |type_: &str, reason: &str, message: &str| {
        let message = status::bounded(message.to_string(), status::MESSAGE_LIMIT);
        raise(ctx, world, status, type_, reason, &message);
    };
    if let Some(m) = conflict {
        raise("TrialNameConflict", "OwnedByAnother", m);
    }
    if let Some(Prior::Missing(m)) = &world.prior {
        raise("WarmStart", "ExperimentNotFound", m);
    }
    let s3 = world.exp.spec.storage.as_ref().and_then(|s| s.s3.as_ref());
    if let Some(s3) = s3
        && let Some(refused) = world.trials.iter().find_map(|t| {
            let s = t.status.as_ref()?;
            (s.reason.as_deref() == Some(nasop_core::contract::STORAGE_REFUSED))
                .then(|| s.message.clone().unwrap_or_default())
        })
    {
        raise(
            "Storage",
            "WriteRefused",
            &format!(
                "spec.storage.s3: bucket {:?} refused the trainer (trials fail with reason StorageRefused): check the bucket, spec.storage.s3.endpoint and the credentials in spec.storage.s3.credentialsSecret; the trainer said: {refused}",
                s3.bucket
            ),
        );
    }
    if let Some(m) = quota {
        raise("TrialsPending", "QuotaExceeded", m);
    } else if let Some((reason, message)) = pending_trials(&world.trials) {
        // A credentials Secret that does not exist holds the pods: say which field.
        if let Some(secret) = s3
            .and_then(|s| s.credentials_secret.as_ref())
            .filter(|name| message.contains(&format!("secret \"{name}\" not found")))
        {
            raise(
                "Storage",
                "SecretNotFound",
                &format!(
                    "spec.storage.s3.credentialsSecret: there is no Secret {secret:?} in namespace {}; trials wait for it (and fail after their pending timeout): create it with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    world.key.0
                ),
            );
        }
        // The scheduler holds pods whose storage claim is missing: say which field.
        if let Some(claim) = world
            .exp
            .spec
            .storage
            .as_ref()
            .and_then(|s| s.persistent_volume_claim.as_ref())
            .map(|s| &s.claim_name)
            .filter(|c| message.contains(&format!("persistentvolumeclaim \"{c}\" not found")))
        {
            raise(
                "Storage",
                "ClaimNotFound",
                &format!(
                    "spec.storage.persistentVolumeClaim.claimName: there is no PersistentVolumeClaim {claim:?} in namespace {}; trials wait for it (and fail after their pending timeout): create it",
                    world.key.0
                ),
            );
        }
        raise("TrialsPending", &reason, &message);
    }
}

/// An event about the experiment.
pub(super) fn publish(
    ctx: &Ctx,
    object: &DynamicObject,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_event(
        ctx,
        object.object_ref(&ctx.stores.experiment_resource),
        type_,
        reason,
        note,
    );
}
