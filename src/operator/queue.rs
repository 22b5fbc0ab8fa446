//! What Kueue says about a trial that waits in one of its queues: the message of the
//! Workload Kueue made for the trial's pod or JobSet ("couldn't assign flavors to pod set
//! main: insufficient unused quota for cpu in flavor default, 1 more needed"), read at most
//! every [`REFRESH`] per trial once there is one; a queued trial is looked at every
//! [`POLL`] (admission lifts a pod's gate, an event, but the queue's word changes without one). Without Kueue, or without the right to read Workloads, the
//! trial says only which queue it waits in.

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a queue's message is shown before it is read again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How often a trial waiting in a queue is looked at, in seconds.
pub const POLL: f64 = 10.0;
/// The label Kueue puts on a Workload: the UID of the object it admits.
const LABEL_JOB_UID: &str = "kueue.x-k8s.io/job-uid";

pub fn workload_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", "Workload"),
        "workloads",
    )
}

/// Why the queue holds the Workload: its `QuotaReserved=False` message (Kueue's scheduler
/// says what is short), else its `Admitted=False` one.
pub fn message_of(workload: &DynamicObject) -> Option<String> {
    let conditions = workload.data["status"]["conditions"].as_array()?;
    ["QuotaReserved", "Admitted"].iter().find_map(|type_| {
        conditions
            .iter()
            .find(|c| c["type"] == *type_ && c["status"] == "False")
            .and_then(|c| c["message"].as_str())
            .filter(|m| !m.is_empty())
            .map(str::to_string)
    })
}

/// The queue messages read lately, by the UID of the pod or JobSet.
#[derive(Default)]
pub struct Messages(Mutex<HashMap<String, (Instant, Option<String>)>>);

impl Messages {
    /// Kueue's word on the object with this UID, read from its Workload unless read within
    /// [`REFRESH`]; `None` when there is none to read (or no right to).
    pub async fn why_queued(&self, client: &kube::Client, ns: &str, uid: &str) -> Option<String> {
        let now = Instant::now();
        {
            let mut seen = self.0.lock().expect("queue messages lock");
            seen.retain(|_, (at, _)| now.duration_since(*at) < REFRESH);
            if let Some((_, message)) = seen.get(uid) {
                return message.clone();
            }
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &workload_resource());
        let message = match api
            .list(&ListParams::default().labels(&format!("{LABEL_JOB_UID}={uid}")))
            .await
        {
            Ok(list) => list.items.iter().find_map(message_of),
            Err(e) => {
                tracing::debug!(error = %e, "reading the Workload of a queued trial");
                None
            }
        };
        // Kueue makes the Workload just after the pod or JobSet: until it has, ask again.
        if message.is_some() {
            self.0
                .lock()
                .expect("queue messages lock")
                .insert(uid.to_string(), (now, message.clone()));
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_why_the_quota_is_not_reserved() {
        let workload = |conditions: serde_json::Value| {
            let mut w = DynamicObject::new("w", &workload_resource());
            w.data = serde_json::json!({"status": {"conditions": conditions}});
            w
        };
        let pending = workload(serde_json::json!([
            {"type": "QuotaReserved", "status": "False", "reason": "Pending",
             "message": "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default-flavor, 1 more needed"},
            {"type": "Admitted", "status": "False", "reason": "NoReservation", "message": "The workload has no reservation"},
        ]));
        assert!(
            message_of(&pending)
                .unwrap()
                .starts_with("couldn't assign flavors")
        );
        let admitted = workload(serde_json::json!([
            {"type": "QuotaReserved", "status": "True", "message": "Quota reserved in ClusterQueue cq"},
            {"type": "Admitted", "status": "True", "message": "The workload is admitted"},
        ]));
        assert_eq!(message_of(&admitted), None);
        assert_eq!(message_of(&workload(serde_json::json!(null))), None);
    }
}
