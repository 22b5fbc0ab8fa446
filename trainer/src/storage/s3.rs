//! The bucket client: `object_store`'s S3 over reqwest, TLS by rustls with ring (the
//! provider the operator uses too).

use anyhow::{Context, Result, bail};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::path::PathBuf;
use std::sync::Arc;

use nasop_core::contract::STORAGE_REFUSED as REFUSED;

/// A bucket prefix mirrored in a local directory.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
    /// The local directory the trainer reads and writes.
    pub local: PathBuf,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({} at {})", self.url, self.local.display())
    }
}

impl Remote {
    /// Opens `url` (`s3://bucket/prefix`), mirrored in `local` (created, empty).
    pub fn open(url: &str, local: PathBuf) -> Result<Remote> {
        let rest = url
            .strip_prefix("s3://")
            .with_context(|| format!("{url} is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{url} names no bucket; use s3://<bucket>/<prefix>");
        }
        // reqwest's TLS takes the process's provider; an error means one is set already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("{url}: the S3 settings (AWS_* variables)"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the storage client")?;
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
        Ok(Remote {
            url: url.trim_end_matches('/').to_string(),
            store: Arc::new(store),
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            runtime,
            local,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    fn refused(&self, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{REFUSED}: {} refused {what}: {e}", self.url)
    }

    /// Writes and deletes a small object, so that a bucket that refuses writes fails the
    /// trial before it trains rather than after its first epoch.
    pub fn probe(&self) -> Result<()> {
        let key = self.key(".nasop-write-probe");
        self.runtime.block_on(async {
            self.store
                .put(&key, PutPayload::from_static(b"nasop"))
                .await
                .map_err(|e| self.refused("a write", e))?;
            self.store
                .delete(&key)
                .await
                .map_err(|e| self.refused("a delete", e))
        })
    }

    /// Downloads `names` from the prefix into the local directory; false when the first
    /// (the marker a complete upload ends with) is not there.
    pub fn download(&self, names: &[&str]) -> Result<bool> {
        self.runtime.block_on(async {
            for (i, name) in names.iter().enumerate() {
                let got = match self.store.get(&self.key(name)).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) if i == 0 => return Ok(false),
                    Err(e) => return Err(self.refused(&format!("a read of {name}"), e)),
                };
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| self.refused(&format!("a read of {name}"), e))?;
                std::fs::write(self.local.join(name), &bytes)
                    .with_context(|| format!("writing {}", self.local.join(name).display()))?;
            }
            Ok(true)
        })
    }

    /// Uploads the local files `names`, in that order.
    pub fn upload(&self, names: &[&str]) -> Result<()> {
        self.runtime.block_on(async {
            for name in names {
                let path = self.local.join(name);
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                self.store
                    .put(&self.key(name), PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.refused(&format!("the write of {name}"), e))?;
            }
            Ok(())
        })
    }
}
