//! Leader election with a coordination.k8s.io Lease, and the fence that keeps a leader that
//! can no longer prove it leads from writing.
//!
//! The rule: a replica acts only until [`RENEW_DEADLINE`] after it last *sent* a renewal that
//! succeeded, measured on its own monotonic clock; another replica takes the lease only after
//! seeing it unchanged for [`DURATION`] on *its* clock. The deadline is shorter than the
//! duration, so a leader that is paused (SIGSTOP, a long GC pause), partitioned or throttled
//! stops writing before its lease can be taken, whatever the two clocks say. (A suspended
//! machine is not covered: the monotonic clock stops with it.) The fence is checked by the
//! Kubernetes client itself ([`fence_layer`]) before every request that changes something,
//! so no code path can forget it; a request that passed it just before the deadline can
//! still be on its way (connecting takes at most [`CONNECT_TIMEOUT`]), which the margin
//! between the deadline and the duration covers.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a lease holds without renewal, as written in the Lease (others wait this long
/// after they last saw it change).
pub const DURATION: Duration = Duration::from_secs(15);
/// How long the leader acts after it sent its last successful renewal.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews, and a standby looks; also the longest one try may take.
pub const RETRY: Duration = Duration::from_secs(2);
/// The operator's clients connect within this, or give up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Until when this replica may act. Without leader election it always may.
pub struct Leadership {
    start: Instant,
    /// Nanoseconds after `start`; u64::MAX: always.
    until: AtomicU64,
}

impl Leadership {
    /// Acts whenever it wants: the only replica.
    pub fn always() -> Arc<Leadership> {
        Arc::new(Leadership {
            start: Instant::now(),
            until: AtomicU64::new(u64::MAX),
        })
    }

    /// Acts only once it holds the lease.
    pub fn elected() -> Arc<Leadership> {
        Arc::new(Leadership {
            start: Instant::now(),
            until: AtomicU64::new(0),
        })
    }

    /// Whether this replica may act now.
    pub fn leading(&self) -> bool {
        self.leading_at(Instant::now())
    }

    fn leading_at(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::SeqCst);
        until == u64::MAX || (now.duration_since(self.start).as_nanos() as u64) < until
    }

    /// A renewal sent at `sent` succeeded.
    fn renewed(&self, sent: Instant) {
        let until = (sent + RENEW_DEADLINE)
            .duration_since(self.start)
            .as_nanos() as u64;
        self.until.fetch_max(until, Ordering::SeqCst);
    }

    /// Whether it has held the lease since it last resigned (whatever the deadline says).
    fn held(&self) -> bool {
        self.until.load(Ordering::SeqCst) != 0
    }

    /// Stops acting at once (the lease was lost or handed over).
    pub fn resign(&self) {
        self.until.store(0, Ordering::SeqCst);
    }
}

/// Whether `method` changes something on the API server (everything but reads).
fn writes(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// The client layer that refuses, before it is sent, every request that changes something
/// while this replica does not lead.
pub fn fence_layer(
    leadership: Arc<Leadership>,
) -> tower::filter::FilterLayer<
    impl Fn(http::Request<kube::client::Body>) -> Result<http::Request<kube::client::Body>, NotLeading>
    + Clone,
> {
    tower::filter::FilterLayer::new(move |req: http::Request<kube::client::Body>| {
        if writes(req.method()) && !leadership.leading() {
            Err(NotLeading {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
            })
        } else {
            Ok(req)
        }
    })
}

/// A write refused because this replica does not lead.
#[derive(Debug, thiserror::Error)]
#[error("not sent: {method} {path} while this replica does not hold the leader lease")]
pub struct NotLeading {
    method: String,
    path: String,
}

/// One replica's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    leadership: Arc<Leadership>,
    /// The lease's resourceVersion when last read, and when (this clock) it was first seen.
    observed: Option<(String, Instant)>,
}

impl Elector {
    /// `api` must be a client without the fence (the lease is how the fence is lifted).
    pub fn new(api: Api<Lease>, name: &str, identity: &str, leadership: Arc<Leadership>) -> Self {
        Elector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            leadership,
            observed: None,
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match tokio::time::timeout(RETRY, self.try_lead()).await {
                Ok(Ok(true)) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired the leader lease");
                    return;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    warn!(lease = %self.name, error = %e, "could not read or take the leader lease")
                }
                Err(_) => warn!(lease = %self.name, "reading the leader lease took too long"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the lease until it is lost; returns why.
    pub async fn keep(&mut self) -> String {
        loop {
            tokio::time::sleep(RETRY).await;
            // Past the deadline (paused, or every renewal failed): the lease may be
            // another's already. Do not even try to renew it.
            if !self.leadership.leading() {
                return format!(
                    "no renewal succeeded within {}s (paused or cut off from the API server)",
                    RENEW_DEADLINE.as_secs()
                );
            }
            // A try that hangs (a partition) ends after RETRY, so the deadline above is seen.
            match tokio::time::timeout(RETRY, self.try_lead()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return "another replica holds the lease".into(),
                Ok(Err(e)) => {
                    warn!(lease = %self.name, error = %e, "could not renew the leader lease; retrying")
                }
                Err(_) => {
                    warn!(lease = %self.name, "renewing the leader lease took too long; retrying")
                }
            }
        }
    }

    /// Hands the lease over (the next replica need not wait for it to expire).
    pub async fn release(&mut self) {
        self.leadership.resign();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(e) => {
                warn!(lease = %self.name, error = %e, "could not release the leader lease; it expires on its own")
            }
        }
    }

    /// Takes or renews the lease if this replica may: true when it holds it now.
    async fn try_lead(&mut self) -> Result<bool, kube::Error> {
        let sent = Instant::now();
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(DURATION.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.leadership.renewed(sent);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        // A change is dated when its reading arrived: a slow read must not shorten the wait.
        let seen_at = match &self.observed {
            Some((v, at)) if *v == version => *at,
            _ => Instant::now(),
        };
        self.observed = Some((version, seen_at));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let free = holder.is_empty() || sent.duration_since(seen_at) > duration;
        if !mine && !free {
            return Ok(false);
        }
        // A leader paused between the read and the write is past its deadline: the lease may
        // be another's already, so the write is not even sent.
        if mine && self.leadership.held() && !self.leadership.leading() {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(DURATION.as_secs() as i32);
        spec.renew_time = Some(now);
        // The resourceVersion read above makes this a compare-and-swap: a replica that
        // took the lease in between makes it fail.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.leadership.renewed(sent);
                self.observed = written
                    .metadata
                    .resource_version
                    .map(|v| (v, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_acts_until_the_deadline_after_its_last_renewal_and_no_longer() {
        let l = Leadership::elected();
        let t0 = l.start + Duration::from_secs(100);
        assert!(!l.leading_at(t0), "not before it holds the lease");
        l.renewed(t0);
        assert!(l.leading_at(t0 + RENEW_DEADLINE - Duration::from_millis(1)));
        // Paused past the deadline: it stops, before another may take the lease.
        assert!(!l.leading_at(t0 + RENEW_DEADLINE));
        assert!(RENEW_DEADLINE + RETRY < DURATION);
        // A renewal that comes back late never moves the deadline back.
        l.renewed(t0 - Duration::from_secs(5));
        assert!(l.leading_at(t0 + RENEW_DEADLINE - Duration::from_millis(1)));
        l.resign();
        assert!(!l.leading_at(t0));
        assert!(Leadership::always().leading());
    }

    #[test]
    fn only_reads_pass_the_fence_of_a_replica_that_does_not_lead() {
        assert!(!writes(&http::Method::GET));
        for m in [
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ] {
            assert!(writes(&m));
        }
    }
}
