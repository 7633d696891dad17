//! Obtains the ImageNet Xception weights: download the file
//! `keras.applications` uses, verify it, convert it once to the product's
//! safetensors, and serve later calls from that cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{xception_spec, WeightSet, WeightsError};

/// Where `keras.applications.Xception(weights="imagenet", include_top=False)` downloads from.
pub const XCEPTION_NOTOP_URL: &str =
    "https://storage.googleapis.com/tensorflow/keras-applications/xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5";

/// The official file's hash as Keras records it: `file_hash=` in
/// keras/src/applications/xception.py is an md5, and no sha256 of that exact
/// file is published. (The test fixture is a bit-identical rebuild of the
/// tensors, not of the file, so its bytes and hash differ.)
pub const XCEPTION_NOTOP_MD5: &str = "b0042744bf5b25fce3cb969f33bebb97";

/// File name Keras gives the download; also where a hand-downloaded copy goes.
pub const XCEPTION_NOTOP_FILE: &str = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5";

/// The converted cache inside `<data_dir>/weights/`.
pub const XCEPTION_CACHE_FILE: &str = "xception_imagenet.safetensors";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two reads of the body; a stalled transfer fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A digest to verify against. Like Keras's `get_file(file_hash=...)`, the
/// algorithm follows from the length: 64 hex digits sha256, 32 md5.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Sha256(String),
    Md5(String),
}

impl Expected {
    fn parse(hash: &str) -> Result<Self, WeightsError> {
        let h = hash.trim().to_ascii_lowercase();
        let hex = h.chars().all(|c| c.is_ascii_hexdigit());
        match h.len() {
            64 if hex => Ok(Expected::Sha256(h)),
            32 if hex => Ok(Expected::Md5(h)),
            _ => Err(WeightsError::InvalidHash {
                value: hash.to_string(),
            }),
        }
    }

    fn algo(&self) -> &'static str {
        match self {
            Expected::Sha256(_) => "sha256",
            Expected::Md5(_) => "md5",
        }
    }

    fn hex(&self) -> &str {
        match self {
            Expected::Sha256(h) | Expected::Md5(h) => h,
        }
    }
}

/// Both digests, fed as bytes arrive so the file is read once.
#[derive(Default)]
struct Hasher {
    sha256: Sha256,
    md5: Md5,
}

impl Hasher {
    fn update(&mut self, b: &[u8]) {
        self.sha256.update(b);
        self.md5.update(b);
    }

    fn finish(self, want: &Expected) -> String {
        match want {
            Expected::Sha256(_) => hex::encode(self.sha256.finalize()),
            Expected::Md5(_) => hex::encode(self.md5.finalize()),
        }
    }
}

/// Returns the path of `<data_dir>/weights/xception_imagenet.safetensors`,
/// creating it on first use from (in order) an existing valid cache, a
/// hand-downloaded `<data_dir>/weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5`,
/// or a download of `url`. `expected_hash` is the sha256 (64 hex digits) or
/// md5 (32) of the `.h5`, e.g. [`XCEPTION_NOTOP_MD5`] for [`XCEPTION_NOTOP_URL`].
/// `progress` hears (bytes received, bytes expected) during a download.
pub async fn fetch_xception(
    data_dir: &Path,
    url: &str,
    expected_hash: &str,
    progress: Option<&(dyn Fn(u64, Option<u64>) + Sync)>,
) -> Result<PathBuf, WeightsError> {
    let expected = Expected::parse(expected_hash)?;
    let dir = data_dir.join("weights");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| WeightsError::io(&dir, e))?;
    let cache = dir.join(XCEPTION_CACHE_FILE);

    if tokio::fs::try_exists(&cache).await.unwrap_or(false) {
        let c = cache.clone();
        match blocking(move || WeightSet::load_safetensors(&c)?.validate(&xception_spec())).await {
            Ok(()) => return Ok(cache),
            Err(e) => tracing::warn!("ignoring unusable weight cache, rebuilding it: {e}"),
        }
    }

    let manual = dir.join(XCEPTION_NOTOP_FILE);
    let hint = manual_hint(url, &manual);
    if tokio::fs::try_exists(&manual).await.unwrap_or(false) {
        let found = hash_file(&manual, &expected).await?;
        if found != expected.hex() {
            return Err(WeightsError::Checksum {
                url: manual.display().to_string(),
                algo: expected.algo(),
                expected: expected.hex().to_string(),
                found,
                hint: "Delete it to download again, or import it unchecked with --weights PATH."
                    .into(),
            });
        }
        convert(manual, cache.clone()).await?;
        return Ok(cache);
    }

    let tmp = tempfile::Builder::new()
        .prefix(".xception-download-")
        .tempfile_in(&dir)
        .map_err(|e| WeightsError::io(&dir, e))?;
    let found = download(url, tmp.path(), &expected, &hint, progress).await?;
    if found != expected.hex() {
        return Err(WeightsError::Checksum {
            url: url.to_string(),
            algo: expected.algo(),
            expected: expected.hex().to_string(),
            found,
            hint,
        });
    }
    let tmp_path = tmp.into_temp_path();
    convert(tmp_path.to_path_buf(), cache.clone()).await?;
    drop(tmp_path); // deletes the downloaded .h5; the safetensors cache replaces it
    Ok(cache)
}

fn manual_hint(url: &str, manual: &Path) -> String {
    format!(
        "Without network access, download the file by hand:\n  curl -fL -o {XCEPTION_NOTOP_FILE} '{url}'\n\
         then put it at {} (it is converted on the next start), or pass it with --weights PATH.",
        manual.display()
    )
}

/// Streams `url` into `dest`, returning the hex digest of what was received.
async fn download(
    url: &str,
    dest: &Path,
    expected: &Expected,
    hint: &str,
    progress: Option<&(dyn Fn(u64, Option<u64>) + Sync)>,
) -> Result<String, WeightsError> {
    let fail = |detail: String| WeightsError::Download {
        url: url.to_string(),
        detail,
        hint: hint.to_string(),
    };
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(fail(format!("server answered HTTP {status}")));
    }
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(|e| WeightsError::io(dest, e))?;
    let mut hasher = Hasher::default();
    let total = resp.content_length();
    let mut received = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(format!("connection lost: {}", describe(&e))))?;
        hasher.update(&chunk);
        received += chunk.len() as u64;
        if let Some(p) = progress {
            p(received, total);
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| WeightsError::io(dest, e))?;
    }
    out.flush().await.map_err(|e| WeightsError::io(dest, e))?;
    Ok(hasher.finish(expected))
}

/// reqwest's Display hides the cause ("error sending request"); include it.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    if e.is_timeout() {
        s.push_str(" (timed out)");
    }
    s
}

async fn hash_file(path: &Path, expected: &Expected) -> Result<String, WeightsError> {
    let p = path.to_path_buf();
    let e = expected.clone();
    blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&p).map_err(|err| WeightsError::io(&p, err))?;
        let mut h = Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|err| WeightsError::io(&p, err))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finish(&e))
    })
    .await
}

/// Imports the Keras file, checks it is a complete Xception, writes the cache.
async fn convert(h5: PathBuf, cache: PathBuf) -> Result<(), WeightsError> {
    blocking(move || {
        let (backbone, _head) = WeightSet::from_file(&h5)?.split_head();
        backbone.validate(&xception_spec())?;
        backbone.save_safetensors(&cache)
    })
    .await
}

/// Runs CPU/disk-heavy work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, WeightsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, WeightsError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(WeightsError::io(
            Path::new("<background task>"),
            std::io::Error::other(e),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::Expected;

    #[test]
    fn hash_kind_from_length() {
        assert_eq!(
            Expected::parse(super::XCEPTION_NOTOP_MD5).unwrap().algo(),
            "md5"
        );
        let sha = "dfc234699bef0bd2547cba5903457efd85c05eb148d1620b302ec958d49f85ad";
        assert_eq!(Expected::parse(sha).unwrap().algo(), "sha256");
        assert!(Expected::parse("abc").is_err());
        assert!(Expected::parse(&"z".repeat(64)).is_err());
    }
}
