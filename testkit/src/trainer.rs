//! The fake trainer: a watch on a namespace's pods that plays every running trial pod as its
//! [`Player`] says.

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use nasop_core::contract::{self, ReportAction, ReportReply, TrialInput};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The annotation tools/testenv/stages.yaml ends a running pod on, with this exit code.
pub const EXIT_CODE: &str = "testenv.nasop.dev/exit-code";
/// The termination message the ended pod's container gets.
pub const TERMINATION_MESSAGE: &str = "testenv.nasop.dev/termination-message";
/// Marks a pod whose node was lost: KWOK leaves it terminating, as a dead kubelet would.
pub const NODE_LOST: &str = "testenv.nasop.dev/node-lost";

/// What the fake trainer does with one running pod.
pub enum Plan {
    /// Post these values of the trial's first metric as steps 1.. (pausing between), then
    /// end with the last one, or end early when a reply says stop.
    Report(Vec<f64>),
    /// End at once with this exit code and termination message.
    Exit(i32, String),
    /// Delete the pod (a node lost it).
    Lose,
    /// Do nothing: the pod runs until someone stops it.
    Hang,
    /// Work that decides the plan (e.g. a report to another operator's store first); an
    /// error goes to [`Player::failed`].
    Later(BoxFuture<'static, anyhow::Result<Plan>>),
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Report(v) => f.debug_tuple("Report").field(v).finish(),
            Plan::Exit(code, message) => f.debug_tuple("Exit").field(code).field(message).finish(),
            Plan::Lose => f.write_str("Lose"),
            Plan::Hang => f.write_str("Hang"),
            Plan::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// Decides how each pod is played, and hears what happened.
pub trait Player: Send + Sync + 'static {
    /// Every pod as the watch delivers it, running or not (a benchmark's timeline).
    fn saw(&self, _pod: &Pod) {}
    /// The plan for a running pod, asked until it answers one, and then never again for that
    /// pod; `None` leaves the pod alone for now.
    fn plan(&self, pod: &Pod) -> Option<Plan>;
    /// The operator's answer to the report of `step` of `trial`.
    fn replied(&self, _trial: &str, _step: u32, _action: ReportAction) {}
    /// Playing `pod` failed.
    fn failed(&self, pod: &str, error: anyhow::Error) {
        eprintln!("fake trainer: {pod}: {error:#}");
    }
}

/// A running fake trainer; dropping it stops it.
pub struct FakeTrainer {
    task: tokio::task::JoinHandle<()>,
}

impl FakeTrainer {
    /// Plays every pod of `pods` that runs (and is not being deleted) as `player` says.
    pub fn start(pods: Api<Pod>, player: Arc<dyn Player>) -> FakeTrainer {
        let task = tokio::spawn(async move {
            let mut handled: HashSet<String> = HashSet::new();
            let mut events = watcher(pods.clone(), watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            // A watch error (the API server restarting) is retried by the watcher.
            while let Some(event) = events.next().await {
                let Ok(pod) = event else { continue };
                player.saw(&pod);
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                // By UID: a pod of the same name made again (a re-created trial) is new.
                let uid = pod.uid().unwrap_or_default();
                if !running || pod.metadata.deletion_timestamp.is_some() || handled.contains(&uid) {
                    continue;
                }
                let Some(plan) = player.plan(&pod) else {
                    continue;
                };
                handled.insert(uid);
                let (pods, player) = (pods.clone(), player.clone());
                tokio::spawn(async move {
                    let name = pod.name_any();
                    if let Err(e) = play(&pods, &pod, plan, player.as_ref()).await {
                        player.failed(&name, e);
                    }
                });
            }
        });
        FakeTrainer { task }
    }
}

impl Drop for FakeTrainer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn play(
    pods: &Api<Pod>,
    pod: &Pod,
    mut plan: Plan,
    player: &dyn Player,
) -> anyhow::Result<()> {
    let name = pod.name_any();
    loop {
        match plan {
            Plan::Later(work) => plan = work.await?,
            Plan::Exit(code, message) => return Ok(end_this_pod(pods, pod, code, &message).await?),
            Plan::Lose => {
                // This pod only, not one of its name made since.
                let only = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: pod.uid(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let _ = pods.delete(&name, &only).await;
                return Ok(());
            }
            Plan::Hang => return Ok(()),
            Plan::Report(values) => return report(pods, pod, &values, player).await,
        }
    }
}

/// Posts `values` as a trainer would, then ends the pod with the last one reported.
async fn report(
    pods: &Api<Pod>,
    pod: &Pod,
    values: &[f64],
    player: &dyn Player,
) -> anyhow::Result<()> {
    let env = pod_env(pod);
    let get = |key: &str| {
        env.get(key).ok_or_else(|| {
            anyhow::anyhow!("the pod has no {key}: the operator did not inject the trial contract")
        })
    };
    let input: TrialInput = serde_json::from_str(get(contract::ENV_TRIAL)?)?;
    get(contract::ENV_REPORT_TOKEN_FILE)?;
    let url = get(contract::ENV_REPORT_URL)?;
    let token = &pod_token(&pods.clone().into_client(), pod).await?;
    let metric = input.metrics.first().cloned().unwrap_or_default();
    let mut last = (0, 0.0);
    let mut superseded = false;
    for (i, v) in values.iter().enumerate() {
        let step = i as u32 + 1;
        last = (step, *v);
        let body = report_json(step, &metric, *v);
        let mut answer = post_report(url, Some(token), body.clone()).await;
        // The operator may be restarting: try again for a while.
        for _ in 0..100 {
            if answer != Err(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = post_report(url, Some(token), body.clone()).await;
        }
        // 409: the trial ended or this attempt was replaced; the report was not recorded.
        let action = match answer {
            Ok(action) => action,
            Err(409) => {
                superseded = true;
                ReportAction::Stop
            }
            Err(_) => ReportAction::Continue,
        };
        player.replied(&input.trial, step, action);
        if action == ReportAction::Stop {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    if superseded {
        // As the trainers do: this run is not the trial's result.
        let interrupted =
            serde_json::json!({"step": last.0, "metrics": {&metric: last.1}, "end": "interrupted"});
        end_this_pod(pods, pod, 143, &interrupted.to_string()).await?;
        return Ok(());
    }
    end_this_pod(pods, pod, 0, &report_json(last.0, &metric, last.1)).await?;
    Ok(())
}

/// The report token a kubelet would project into `pod` (its NASOP_REPORT_TOKEN_FILE): a
/// service-account token for the audience `nasop.dev`, bound to the pod. KWOK's simulated
/// kubelet mounts no volumes, so the fake trainer asks for it as the real kubelet does.
pub async fn pod_token(client: &kube::Client, pod: &Pod) -> anyhow::Result<String> {
    pod_token_for(client, pod, contract::REPORT_AUDIENCE).await
}

/// A token bound to `pod` for `audience`.
pub async fn pod_token_for(
    client: &kube::Client,
    pod: &Pod,
    audience: &str,
) -> anyhow::Result<String> {
    let namespace = pod.namespace().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let mut tries = 0;
    loop {
        match accounts
            .create_token_request(&account, &PostParams::default(), &request)
            .await
        {
            Ok(answer) => {
                return answer.status.map(|s| s.token).ok_or_else(|| {
                    anyhow::anyhow!("the API server answered the token request without a token")
                });
            }
            // The API server may be restarting (a chaos test).
            Err(e) if tries >= 100 => return Err(e.into()),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One report's JSON, as the trial contract has it.
pub fn report_json(step: u32, metric: &str, value: f64) -> String {
    serde_json::json!({"step": step, "metrics": {metric: value}}).to_string()
}

/// The first container's environment (the values only; the trial contract has no references).
pub fn pod_env(pod: &Pod) -> BTreeMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

/// Posts one report; the operator's answer, or the HTTP status when it refused (0 when it
/// could not be reached, 1 when its answer did not parse).
pub async fn post_report(
    url: &str,
    token: Option<&str>,
    body: String,
) -> Result<ReportAction, u16> {
    let (url, token) = (url.to_string(), token.map(str::to_string));
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::post(&url)
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|_| 0u16)?;
        if resp.status() != 200 {
            return Err(resp.status().as_u16());
        }
        let reply: ReportReply = resp.body_mut().read_json().map_err(|_| 1u16)?;
        Ok(reply.action)
    })
    .await
    .unwrap_or(Err(0))
}

/// The annotations that end a pod with `exit` and `message` (always both: KWOK's stage
/// renders a missing message as "null").
pub fn end_pod_annotations(exit: i32, message: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {
        EXIT_CODE: exit.to_string(),
        TERMINATION_MESSAGE: message,
    }}})
}

/// Ends the running pod `name` with `exit` and `message`, retried for a minute while the API
/// server is away; a pod that is gone needs no ending.
pub async fn end_pod(
    pods: &Api<Pod>,
    name: &str,
    exit: i32,
    message: &str,
) -> Result<(), kube::Error> {
    end_pod_with(pods, name, end_pod_annotations(exit, message)).await
}

/// Ends `pod` itself, as its own trainer's exit would: a pod of its name made since (a new
/// attempt of a re-created trial) is not touched (the patch names the UID, which the API
/// server refuses to change).
pub async fn end_this_pod(
    pods: &Api<Pod>,
    pod: &Pod,
    exit: i32,
    message: &str,
) -> Result<(), kube::Error> {
    let mut patch = end_pod_annotations(exit, message);
    patch["metadata"]["uid"] = serde_json::json!(pod.uid());
    end_pod_with(pods, &pod.name_any(), patch).await
}

async fn end_pod_with(
    pods: &Api<Pod>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), kube::Error> {
    let mut tries = 0;
    loop {
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Gone, or (a UID that is not this pod's) another pod of its name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => return Ok(()),
            Err(e) if tries >= 300 => return Err(e),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A [`Player`] from a closure, for the common case of a plan per pod and nothing else.
impl<F> Player for F
where
    F: Fn(&Pod) -> Option<Plan> + Send + Sync + 'static,
{
    fn plan(&self, pod: &Pod) -> Option<Plan> {
        self(pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_ended_with_its_code_and_message() {
        let a = end_pod_annotations(1, "");
        assert_eq!(a["metadata"]["annotations"][EXIT_CODE], "1");
        assert_eq!(a["metadata"]["annotations"][TERMINATION_MESSAGE], "");
        let b = end_pod_annotations(0, "{}");
        assert_eq!(b["metadata"]["annotations"][TERMINATION_MESSAGE], "{}");
    }
}
