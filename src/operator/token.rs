//! Per-trial report tokens:
//! `<namespace>:<trial>:<trial uid>:<HMAC-SHA256(key, namespace/trial/uid)>`.
//! Stateless, so a restarted operator (or another replica with the same key) accepts the
//! tokens of pods started before it; the trial's UID makes a recreated trial's token new.
//! The token carries everything its MAC covers, so a forged one is refused before the
//! operator looks anything up.

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

/// Who a token claims to be; checked against the trial's UID with [`TokenKey::verify`].
#[derive(Debug, PartialEq, Eq)]
pub struct Claim<'a> {
    pub namespace: &'a str,
    pub trial: &'a str,
    pub uid: &'a str,
    mac: &'a str,
}

impl TokenKey {
    /// The key from a file (the chart mounts a Secret); at least 32 bytes.
    pub fn from_file(path: &Path) -> Result<TokenKey> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the report-token key {}", path.display()))?;
        let trimmed = bytes.trim_ascii().to_vec();
        if trimmed.len() < 32 {
            bail!(
                "the report-token key {} has {} bytes; use at least 32 random bytes (e.g. `head -c 48 /dev/urandom | base64`)",
                path.display(),
                trimmed.len()
            );
        }
        Ok(TokenKey(trimmed))
    }

    /// A random key for this process only: tokens of pods started by an earlier process are
    /// refused (their results still arrive through the termination message).
    pub fn random() -> TokenKey {
        TokenKey(nasop_core::rng::os_random_hex(24).into_bytes())
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> TokenKey {
        TokenKey(bytes.to_vec())
    }

    fn mac(&self, namespace: &str, trial: &str, uid: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(namespace.as_bytes());
        mac.update(b"/");
        mac.update(trial.as_bytes());
        mac.update(b"/");
        mac.update(uid.as_bytes());
        mac
    }

    pub fn sign(&self, namespace: &str, trial: &str, uid: &str) -> String {
        let tag = self.mac(namespace, trial, uid).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{namespace}:{trial}:{uid}:{hex}")
    }

    /// Whether this key signed `claim` (constant-time comparison). The caller then checks
    /// that the trial still has the claimed UID.
    pub fn verify(&self, claim: &Claim) -> bool {
        let Some(tag) = unhex(claim.mac) else {
            return false;
        };
        self.mac(claim.namespace, claim.trial, claim.uid)
            .verify_slice(&tag)
            .is_ok()
    }
}

/// Splits a token into its claim; None when it is not shaped like one of ours.
pub fn claim(token: &str) -> Option<Claim<'_>> {
    let mut parts = token.splitn(4, ':');
    let (namespace, trial, uid, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let fits = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
    (fits(namespace, 63) && fits(trial, 253) && fits(uid, 64) && mac.len() == 64).then_some(Claim {
        namespace,
        trial,
        uid,
        mac,
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_for_its_trial_and_uid() {
        let key = TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let token = key.sign("ns", "exp-3", "uid-1");
        let c = claim(&token).unwrap();
        assert_eq!((c.namespace, c.trial, c.uid), ("ns", "exp-3", "uid-1"));
        assert!(key.verify(&c));
        // Another UID (a recreated trial), another trial's name: refused.
        let forged = token.replace("uid-1", "uid-2");
        assert!(!key.verify(&claim(&forged).unwrap()));
        let forged = token.replace("exp-3", "exp-4");
        assert!(!key.verify(&claim(&forged).unwrap()));
        // Another key's token is refused.
        let other = TokenKey::from_bytes(b"another key of thirty-two bytes!!");
        assert!(!other.verify(&c));
        assert!(claim("not-a-token").is_none());
        assert!(claim("ns:t:u:zz").is_none());
    }

    #[test]
    fn a_short_key_file_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("nasop-key-{}", std::process::id()));
        std::fs::write(&dir, "short\n").unwrap();
        let err = TokenKey::from_file(&dir).err().unwrap().to_string();
        assert!(err.contains("at least 32"), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }
}
