//! A trainer built without its `s3` feature: an `s3://` location is refused at once, with
//! what to do.

use anyhow::{Result, bail};
use std::path::PathBuf;

/// Never made: without S3 support no location opens.
pub struct Remote {
    never: std::convert::Infallible,
    pub local: PathBuf,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.never {}
    }
}

impl Remote {
    pub fn open(url: &str, _local: PathBuf) -> Result<Remote> {
        bail!(
            "{url}: this nasop-trainer was built without S3 support (its `s3` feature); build it with its default features: cargo build --release -p nasop-trainer"
        )
    }

    pub fn url(&self) -> &str {
        match self.never {}
    }

    pub fn probe(&self) -> Result<()> {
        match self.never {}
    }

    pub fn download(&self, _names: &[&str]) -> Result<bool> {
        match self.never {}
    }

    pub fn upload(&self, _names: &[&str]) -> Result<()> {
        match self.never {}
    }
}
