//! Trial report credentials. Each trial pod gets a projected service-account token for the
//! audience `nasop.dev` (`pod::build`): bound to the pod (it dies with it), short-lived and
//! rotated by the kubelet, and readable only inside the pod (nothing a `view` user can read
//! grants report rights). The operator holds no key: it asks the API server (TokenReview)
//! whether a token is valid and which pod it belongs to, then whether that pod is the
//! current attempt of a trial (`http.rs`). A superseded attempt's token names its own pod,
//! so its reports are refused: that is the fencing.
//!
//! Reviews are cached by the token's SHA-256 for a minute at most (never past the token's
//! expiry), so a trainer's reports cost one review per token, not one per report.

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use nasop_core::contract::REPORT_AUDIENCE;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// The pod a valid token was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
}

/// What a token says about itself, read before it is reviewed: enough to refuse one for
/// another audience or past its expiry without asking the API server, and to rate-limit
/// per claimed pod. Nothing read here is trusted until the review says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Unverified {
    pub identity: PodIdentity,
    pub expires: f64,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Audience,
    exp: f64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: K8sClaims,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

#[derive(Deserialize)]
struct K8sClaims {
    namespace: String,
    pod: Option<Ref>,
}

#[derive(Deserialize)]
struct Ref {
    name: String,
    uid: String,
}

/// A service-account token's claims, if it is one for a pod and for nasop, not expired at
/// `now`.
pub fn peek(token: &str, now: f64) -> Option<Unverified> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    let ours = match &claims.aud {
        Audience::One(a) => a == REPORT_AUDIENCE,
        Audience::Many(all) => all.iter().any(|a| a == REPORT_AUDIENCE),
        Audience::None => false,
    };
    let pod = claims.kubernetes.pod?;
    (ours && claims.exp > now).then_some(Unverified {
        identity: PodIdentity {
            namespace: claims.kubernetes.namespace,
            pod: pod.name,
            uid: pod.uid,
        },
        expires: claims.exp,
    })
}

/// How long a valid token is trusted without asking again, at most (never past its expiry):
/// whether its pod still exists, and is the current attempt, is checked at every report.
const TRUST_FOR: f64 = 3600.0;
/// How long a refused token is refused without asking again (not at all when the API
/// server said it could not tell).
const REFUSE_FOR: f64 = 5.0;
/// Reviews per second, and in a burst, of the tokens that claim one pod: a flood of forged
/// tokens naming a trial's pod cannot spend the budget of all the others.
const POD_RATE: f64 = 1.0;
const POD_BURST: f64 = 3.0;
/// Most cached reviews; past it, the expired ones go, then all.
const MAX_CACHED: usize = 100_000;

/// Reviews of tokens not seen before, per second, and in a burst: a flood of forged tokens
/// costs the API server at most this, and it never spends a trial's own report budget.
const REVIEW_RATE: f64 = 100.0;
const REVIEW_BURST: f64 = 500.0;

/// What a review says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The token is valid, for this pod.
    Pod(PodIdentity),
    /// The API server refused it (or it names another pod than it claims).
    Refused,
    /// Too many new tokens to review this second: try again.
    Busy,
}

/// Per token's SHA-256: its pod (None: refused) and until when that holds.
type Cache = HashMap<[u8; 32], (Option<PodIdentity>, f64)>;

/// Reviewed tokens, by their SHA-256: the pods of valid ones, and when refused ones may be
/// asked about again; and the review budgets, in all and per claimed pod.
pub struct Reviews {
    cache: Mutex<Cache>,
    budget: Mutex<(f64, f64)>,
    per_pod: Mutex<HashMap<String, (f64, f64)>>,
}

impl Default for Reviews {
    fn default() -> Self {
        Reviews {
            cache: Mutex::default(),
            budget: Mutex::new((REVIEW_BURST, 0.0)),
            per_pod: Mutex::default(),
        }
    }
}

/// Takes one from the token bucket `(tokens, last)` refilled at `rate` up to `burst`.
fn take(bucket: &mut (f64, f64), now: f64, rate: f64, burst: f64) -> bool {
    let tokens = (bucket.0 + (now - bucket.1).max(0.0) * rate).min(burst);
    let ok = tokens >= 1.0;
    *bucket = (if ok { tokens - 1.0 } else { tokens }, now);
    ok
}

impl Reviews {
    /// Whether the API server says `token` is valid for nasop's audience and names the pod
    /// it claims (`claimed`, read from it unverified).
    pub async fn review(
        &self,
        client: &kube::Client,
        token: &str,
        claimed: &Unverified,
        now: f64,
    ) -> Result<Verdict, kube::Error> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((who, until)) = self.lock().get(&key)
            && *until > now
        {
            return Ok(who.clone().map_or(Verdict::Refused, Verdict::Pod));
        }
        if !self.spend(&claimed.identity.uid, now) {
            return Ok(Verdict::Busy);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![REPORT_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        // The claims were read unverified: the review's word is the one that counts.
        let who = reviewed(&answer).filter(|who| *who == claimed.identity);
        let unsure = answer
            .status
            .as_ref()
            .and_then(|s| s.error.as_deref())
            .is_some_and(|e| !e.is_empty());
        let until = match &who {
            Some(_) => claimed.expires.min(now + TRUST_FOR),
            None if unsure => now,
            None => now + REFUSE_FOR,
        };
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (who.clone(), until));
        Ok(who.map_or(Verdict::Refused, Verdict::Pod))
    }

    /// Takes one review of a token claiming pod `uid` from the budgets at `now`; false when
    /// the pod's or the whole budget is spent.
    fn spend(&self, uid: &str, now: f64) -> bool {
        {
            let mut per_pod = self.per_pod.lock().unwrap_or_else(|e| e.into_inner());
            if per_pod.len() >= MAX_CACHED {
                per_pod.clear();
            }
            let bucket = per_pod.entry(uid.to_string()).or_insert((POD_BURST, now));
            if !take(bucket, now, POD_RATE, POD_BURST) {
                return false;
            }
        }
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        take(&mut budget, now, REVIEW_RATE, REVIEW_BURST)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pod an authenticated review names: namespace from the service account's user name,
/// pod name and UID from the extra fields the API server sets for a pod-bound token.
pub fn reviewed(review: &TokenReview) -> Option<PodIdentity> {
    let status = review.status.as_ref()?;
    if status.authenticated != Some(true)
        || !status
            .audiences
            .iter()
            .flatten()
            .any(|a| a == REPORT_AUDIENCE)
    {
        return None;
    }
    let user = status.user.as_ref()?;
    let namespace = user
        .username
        .as_deref()?
        .strip_prefix("system:serviceaccount:")?
        .split(':')
        .next()?
        .to_string();
    let extra = user.extra.as_ref()?;
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    Some(PodIdentity {
        namespace,
        pod: one("authentication.kubernetes.io/pod-name")?,
        uid: one("authentication.kubernetes.io/pod-uid")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
    use std::collections::BTreeMap;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims.to_string().as_bytes()),
            enc(b"signature")
        )
    }

    fn claims(aud: serde_json::Value, exp: f64) -> serde_json::Value {
        serde_json::json!({
            "aud": aud, "exp": exp, "iss": "https://kubernetes.default.svc",
            "kubernetes.io": {"namespace": "team", "pod": {"name": "e-3-1", "uid": "p-uid"},
                              "serviceaccount": {"name": "default", "uid": "sa"}},
        })
    }

    #[test]
    fn a_token_says_its_pod_but_only_for_nasop_and_before_it_expires() {
        let who = PodIdentity {
            namespace: "team".into(),
            pod: "e-3-1".into(),
            uid: "p-uid".into(),
        };
        let ok = peek(
            &jwt(claims(serde_json::json!(["nasop.dev"]), 2000.0)),
            1000.0,
        )
        .unwrap();
        assert_eq!((ok.identity, ok.expires), (who.clone(), 2000.0));
        assert!(peek(&jwt(claims(serde_json::json!("nasop.dev"), 2000.0)), 1000.0).is_some());
        // Another audience (the API server's own), expired, not a pod's, not a JWT.
        assert!(
            peek(
                &jwt(claims(
                    serde_json::json!(["https://kubernetes.default.svc"]),
                    2000.0
                )),
                1000.0
            )
            .is_none()
        );
        assert!(
            peek(
                &jwt(claims(serde_json::json!(["nasop.dev"]), 999.0)),
                1000.0
            )
            .is_none()
        );
        let mut no_pod = claims(serde_json::json!(["nasop.dev"]), 2000.0);
        no_pod["kubernetes.io"]["pod"] = serde_json::Value::Null;
        assert!(peek(&jwt(no_pod), 1000.0).is_none());
        assert!(peek("team:e-3:uid:0123abcd", 1000.0).is_none());
    }

    #[test]
    fn a_review_counts_only_when_authenticated_for_nasop_with_a_pod() {
        let answer = |authenticated: bool, audience: &str, pod: bool| TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec![audience.into()]),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:team:default".into()),
                    extra: Some(BTreeMap::from_iter(
                        [
                            ("authentication.kubernetes.io/pod-name", "e-3-1"),
                            ("authentication.kubernetes.io/pod-uid", "p-uid"),
                        ]
                        .into_iter()
                        .take(if pod { 2 } else { 0 })
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()])),
                    )),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        };
        assert_eq!(
            reviewed(&answer(true, "nasop.dev", true)),
            Some(PodIdentity {
                namespace: "team".into(),
                pod: "e-3-1".into(),
                uid: "p-uid".into()
            })
        );
        assert_eq!(reviewed(&answer(false, "nasop.dev", true)), None);
        assert_eq!(reviewed(&answer(true, "other", true)), None);
        assert_eq!(reviewed(&answer(true, "nasop.dev", false)), None);
    }
}
