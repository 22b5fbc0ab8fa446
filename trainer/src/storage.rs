//! Checkpoints and models in an S3-compatible bucket: `NASOP_CHECKPOINT_DIR`,
//! `NASOP_RESUME_FROM` and `NASOP_ARTIFACT_DIR` may be `s3://<bucket>/<prefix>` URLs, with
//! the credentials and endpoint in the usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ALLOW_HTTP`). Training works
//! on a local directory that mirrors the prefix: a checkpoint is downloaded before the
//! first epoch, and each one saved is uploaded with its state file last, so that the
//! prefix never holds a newer state than weights. Writes go through the `object_store`
//! crate.

use std::path::{Path, PathBuf};

#[cfg(not(feature = "s3"))]
mod absent;
#[cfg(feature = "s3")]
mod s3;

#[cfg(not(feature = "s3"))]
pub use absent::Remote;
#[cfg(feature = "s3")]
pub use s3::Remote;

/// Whether `location` names a bucket rather than a directory.
pub fn is_remote(location: &Path) -> bool {
    location.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// Where this process keeps the local mirrors of remote locations.
pub fn scratch_root() -> PathBuf {
    std::env::temp_dir().join(format!("nasop-trainer-{}", std::process::id()))
}

pub fn scratch(kind: &str) -> PathBuf {
    scratch_root().join(kind)
}
