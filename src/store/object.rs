//! Artifacts shared through an object store (S3 or S3-compatible, or a
//! `file://` directory on a shared filesystem), with a local working copy.
//!
//! Layout under the prefix:
//! - `datasets/<id>.tar`: the dataset directory (manifest + files) as one
//!   object, so it appears whole or not at all and file names stay exact;
//! - `jobs/<job>/<checkpoint>/<file>`: checkpoint files, `meta.json` last, so a
//!   checkpoint with a `meta.json` object is complete (as on local disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncWriteExt;

use super::artifacts::{ArtifactError, ArtifactStore, LocalArtifacts};
use crate::model::checkpoint::{META_FILE, MODEL_FILE, OPTIMIZER_FILE};

/// Files above this are uploaded in parts of this size.
const PART_BYTES: usize = 16 << 20;
/// Parts in flight per upload.
const PARTS_IN_FLIGHT: usize = 4;

pub struct ObjectArtifacts {
    local: LocalArtifacts,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl ObjectArtifacts {
    /// `s3://bucket/prefix` (S3 settings from the usual `AWS_*` variables:
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ALLOW_HTTP) or `file:///shared/dir`; `local_root` holds the working copies.
    pub fn open(url: &str, local_root: &Path) -> Result<Self, ArtifactError> {
        let parsed = url::Url::parse(url).map_err(|e| ArtifactError::Config(format!("{url}: {e}")))?;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "s3" | "s3a" => {
                let s3 = object_store::aws::AmazonS3Builder::from_env().with_url(url).build()?;
                let prefix = ObjectPath::from_url_path(parsed.path())
                    .map_err(|e| ArtifactError::Config(format!("{url}: {e}")))?;
                (Arc::new(s3), prefix)
            }
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| ArtifactError::Config(format!("{url}: not a local path")))?;
                std::fs::create_dir_all(&dir)?;
                (Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?), ObjectPath::default())
            }
            other => {
                return Err(ArtifactError::Config(format!(
                    "{url}: unsupported scheme {other:?} (use s3://bucket/prefix or file:///dir)"
                )))
            }
        };
        Ok(Self { local: LocalArtifacts::new(local_root)?, store, prefix, url: url.to_string() })
    }

    fn key(&self, parts: &[&str]) -> ObjectPath {
        parts.iter().fold(self.prefix.clone(), |p, part| p.child(*part))
    }

    fn dataset_key(&self, id: &str) -> ObjectPath {
        self.key(&["datasets", &format!("{id}.tar")])
    }

    /// Uploads one local file, in parts when it is large.
    async fn upload(&self, file: &Path, key: &ObjectPath) -> Result<(), ArtifactError> {
        let len = tokio::fs::metadata(file).await?.len() as usize;
        if len <= PART_BYTES {
            let bytes = tokio::fs::read(file).await?;
            self.store.put(key, PutPayload::from(bytes)).await?;
            return Ok(());
        }
        let mut upload = WriteMultipart::new_with_chunk_size(self.store.put_multipart(key).await?, PART_BYTES);
        let mut f = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; PART_BYTES];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await?;
            if n == 0 {
                break;
            }
            upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            upload.write(&buf[..n]);
        }
        upload.finish().await?;
        Ok(())
    }

    /// Downloads one object to a local file (synced: it may be resumed from).
    async fn download(&self, key: &ObjectPath, file: &Path) -> Result<(), ArtifactError> {
        let got = match self.store.get(key).await {
            Err(object_store::Error::NotFound { .. }) => return Err(ArtifactError::Missing(key.to_string())),
            r => r?,
        };
        let mut stream = got.into_stream();
        let mut out = tokio::fs::File::create(file).await?;
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await?;
        }
        out.sync_all().await?;
        Ok(())
    }

    /// A fresh scratch directory on the working copies' filesystem.
    fn scratch(&self, what: &str) -> PathBuf {
        self.local.staging_dir().join(format!("{what}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Names of the job's complete checkpoints in the store.
    async fn remote_checkpoints(&self, job: &str) -> Result<Vec<String>, ArtifactError> {
        let dir = self.key(&["jobs", job]);
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        let mut names: Vec<String> = metas
            .iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.prefix_match(&dir)?.collect();
                match parts.as_slice() {
                    [name, file] if file.as_ref() == META_FILE => Some(name.as_ref().to_string()),
                    _ => None,
                }
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Moves a finished scratch directory into place; a concurrent fetch that
/// got there first is as good.
async fn move_into_place(scratch: &Path, dest: &Path, marker: &str) -> Result<(), ArtifactError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    match tokio::fs::rename(scratch, dest).await {
        Ok(()) => Ok(()),
        Err(_) if dest.join(marker).exists() => {
            let _ = tokio::fs::remove_dir_all(scratch).await;
            Ok(())
        }
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(scratch).await;
            Err(e.into())
        }
    }
}

fn join_err(e: tokio::task::JoinError) -> ArtifactError {
    ArtifactError::Io(std::io::Error::other(e))
}

#[async_trait::async_trait]
impl ArtifactStore for ObjectArtifacts {
    fn dataset_dir(&self, id: &str) -> PathBuf {
        self.local.dataset_dir(id)
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.local.job_dir(id)
    }

    fn staging_dir(&self) -> PathBuf {
        self.local.staging_dir()
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn publish_dataset(&self, id: &str) -> Result<(), ArtifactError> {
        let dir = self.dataset_dir(id);
        let tar_path = self.scratch("dataset-tar");
        let tp = tar_path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&tp)?));
            tar.follow_symlinks(false);
            tar.append_dir_all(".", &dir)?;
            tar.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()
        })
        .await
        .map_err(join_err)??;
        let r = self.upload(&tar_path, &self.dataset_key(id)).await;
        let _ = tokio::fs::remove_file(&tar_path).await;
        r
    }

    async fn fetch_dataset(&self, id: &str) -> Result<PathBuf, ArtifactError> {
        let dest = self.dataset_dir(id);
        if dest.join(crate::data::folder::MANIFEST_FILE).exists() {
            return Ok(dest);
        }
        let scratch = self.scratch("dataset");
        tokio::fs::create_dir_all(&scratch).await?;
        let tar_path = scratch.with_extension("tar");
        let r = async {
            self.download(&self.dataset_key(id), &tar_path).await?;
            let (tp, into) = (tar_path.clone(), scratch.clone());
            // `unpack_in` refuses entries that would land outside the folder.
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut ar = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(&tp)?));
                for entry in ar.entries()? {
                    entry?.unpack_in(&into)?;
                }
                Ok(())
            })
            .await
            .map_err(join_err)??;
            Ok::<_, ArtifactError>(())
        }
        .await;
        let _ = tokio::fs::remove_file(&tar_path).await;
        if let Err(e) = r {
            let _ = tokio::fs::remove_dir_all(&scratch).await;
            return Err(e);
        }
        move_into_place(&scratch, &dest, crate::data::folder::MANIFEST_FILE).await?;
        Ok(dest)
    }

    async fn remove_dataset(&self, id: &str) -> Result<(), ArtifactError> {
        match self.store.delete(&self.dataset_key(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.local.remove_dataset(id).await
    }

    async fn publish_checkpoint(&self, job: &str, name: &str) -> Result<(), ArtifactError> {
        let dir = self.job_dir(job).join(name);
        // meta.json last: its presence in the store says the rest is there.
        for file in [MODEL_FILE, OPTIMIZER_FILE, META_FILE] {
            let path = dir.join(file);
            if file == OPTIMIZER_FILE && !path.exists() {
                continue; // stage-1 checkpoints have no optimizer state
            }
            self.upload(&path, &self.key(&["jobs", job, name, file])).await?;
        }
        Ok(())
    }

    async fn retain_checkpoints(&self, job: &str, keep: &[String]) -> Result<(), ArtifactError> {
        for name in self.remote_checkpoints(job).await? {
            if keep.contains(&name) {
                continue;
            }
            // meta.json first: a half-deleted checkpoint is then simply incomplete.
            for file in [META_FILE, MODEL_FILE, OPTIMIZER_FILE] {
                match self.store.delete(&self.key(&["jobs", job, &name, file])).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn fetch_job(&self, job: &str) -> Result<PathBuf, ArtifactError> {
        for name in self.remote_checkpoints(job).await? {
            self.fetch_checkpoint(job, &name).await?;
        }
        Ok(self.job_dir(job))
    }

    async fn fetch_checkpoint(&self, job: &str, name: &str) -> Result<PathBuf, ArtifactError> {
        let dest = self.job_dir(job).join(name);
        if dest.join(META_FILE).exists() {
            return Ok(dest);
        }
        let scratch = self.scratch("checkpoint");
        tokio::fs::create_dir_all(&scratch).await?;
        let r = async {
            for file in [MODEL_FILE, OPTIMIZER_FILE, META_FILE] {
                match self.download(&self.key(&["jobs", job, name, file]), &scratch.join(file)).await {
                    Err(ArtifactError::Missing(_)) if file == OPTIMIZER_FILE => {
                        let _ = tokio::fs::remove_file(scratch.join(file)).await;
                    }
                    r => r?,
                }
            }
            Ok::<_, ArtifactError>(())
        }
        .await;
        if let Err(e) = r {
            let _ = tokio::fs::remove_dir_all(&scratch).await;
            return Err(e);
        }
        move_into_place(&scratch, &dest, META_FILE).await?;
        Ok(dest)
    }
}
