//! Service configuration: command-line flags, each also settable through a
//! `TUNESERVE_*` environment variable (DATABASE_URL keeps its usual name).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::device::{pick_device, DeviceArg};
use crate::data::image::DecodeLimits;
use crate::model::weights::fetch;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "TUNESERVE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Directory for the SQLite database and all artifacts (datasets, checkpoints, weights).
    #[arg(long, env = "TUNESERVE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// sqlite://... or postgres://...; default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Where datasets and checkpoints are shared between processes:
    /// s3://bucket/prefix (S3 settings from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP) or
    /// file:///shared/dir; default: the data directory, for this process only.
    #[arg(long, env = "TUNESERVE_ARTIFACTS")]
    pub artifacts: Option<String>,

    /// Device for training and prediction: auto (CUDA when built with it and
    /// present), cpu, cuda or cuda:N.
    #[arg(long, env = "TUNESERVE_DEVICE", default_value = "auto")]
    pub device: DeviceArg,

    /// Pretrained Xception weights for full-size jobs (safetensors, or a Keras
    /// .h5/.keras file); default: <data_dir>/weights/xception_imagenet.safetensors,
    /// which `tuneserve weights fetch xception` writes.
    #[arg(long, env = "TUNESERVE_WEIGHTS")]
    pub weights: Option<PathBuf>,

    /// API keys (bearer tokens), comma-separated; with one set, every /v1
    /// route needs `Authorization: Bearer <key>`. None = keyless (loopback only,
    /// unless --allow-unauthenticated).
    #[arg(long, env = "TUNESERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A file with more API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "TUNESERVE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// With keys set, let `/v1/predict` and `/v1/models/{id}/predict` answer without one.
    #[arg(long, env = "TUNESERVE_PUBLIC_PREDICT")]
    pub public_predict: bool,

    /// With keys set, let `/metrics` answer without one (`/health`, `/ready`,
    /// `/docs` and `/openapi.json` are always open: they hold no data).
    #[arg(long, env = "TUNESERVE_PUBLIC_METRICS")]
    pub public_metrics: bool,

    /// Start without an API key on a non-loopback address (anyone who reaches
    /// the port can train, read and delete). Refused by default.
    #[arg(long, env = "TUNESERVE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Host names the keyless server answers to besides localhost, 127.0.0.1
    /// and [::1] (comma-separated; `*` = any). Guards against DNS rebinding.
    #[arg(long, env = "TUNESERVE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Origins (scheme://host[:port]) allowed to call the API from a browser
    /// besides the page's own: CORS is answered for them, and keyless
    /// state-changing requests from any other origin are refused.
    #[arg(long, env = "TUNESERVE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Largest dataset upload (compressed bytes on the wire).
    #[arg(long, env = "TUNESERVE_MAX_DATASET_BYTES", default_value_t = 2 << 30)]
    pub max_dataset_bytes: u64,

    /// Largest total uncompressed size of an archive's entries (zip-bomb bound).
    #[arg(long, env = "TUNESERVE_MAX_UNCOMPRESSED_BYTES", default_value_t = 8 << 30)]
    pub max_uncompressed_bytes: u64,

    /// Most entries an archive may have.
    #[arg(long, env = "TUNESERVE_MAX_ARCHIVE_ENTRIES", default_value_t = 200_000)]
    pub max_archive_entries: u64,

    /// Dataset uploads received and extracted at once; more get 429 with Retry-After.
    #[arg(long, env = "TUNESERVE_MAX_CONCURRENT_UPLOADS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_uploads: u32,

    /// Largest predict request body.
    #[arg(long, env = "TUNESERVE_MAX_PREDICT_BYTES", default_value_t = 32 << 20)]
    pub max_predict_bytes: usize,

    /// Largest image, in pixels (width x height), checked from its header.
    #[arg(long, env = "TUNESERVE_MAX_IMAGE_PIXELS", default_value_t = 64 << 20)]
    pub max_image_pixels: u64,

    /// Largest image width or height, checked from its header.
    #[arg(long, env = "TUNESERVE_MAX_IMAGE_DIMENSION", default_value_t = 16_384)]
    pub max_image_dimension: u32,

    /// Most pixels (width x height, from the headers) all images of one
    /// prediction request may hold together.
    #[arg(long, env = "TUNESERVE_MAX_REQUEST_PIXELS", default_value_t = 128 << 20)]
    pub max_request_pixels: u64,

    /// Training jobs run at once by this process (one per device is the sane default).
    #[arg(long, env = "TUNESERVE_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Name of this process among processes sharing one database; jobs it had
    /// claimed and finds `running` at start are resumed at once. Default:
    /// `<hostname>:<data dir>`, so a restart keeps its name and two processes
    /// (or containers) never share one.
    #[arg(long, env = "TUNESERVE_INSTANCE")]
    pub instance: Option<String>,

    /// A running job whose process has not sent a heartbeat for this many
    /// seconds is taken over by another worker (resuming from its last checkpoint).
    #[arg(long, env = "TUNESERVE_LEASE_SECS", default_value_t = 60)]
    pub lease_secs: u64,

    /// How many times a job may be running when its process dies (killed, e.g.
    /// for lack of memory) before it fails instead of being resumed again.
    #[arg(long, env = "TUNESERVE_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Memory training jobs may use, in MiB, shared by the --workers; a job
    /// whose estimated peak exceeds its share is refused (422) or, when the
    /// machine changed since, fails at start. 0 = 80% of the container's
    /// limit or of the machine's RAM.
    #[arg(long, env = "TUNESERVE_MEMORY_LIMIT_MB", default_value_t = 0)]
    pub memory_limit_mb: u64,

    /// CPU threads for predictions (0 = one per core).
    #[arg(long, env = "TUNESERVE_PREDICT_THREADS", default_value_t = 0)]
    pub predict_threads: usize,

    /// CPU threads for training jobs (0 = one per core).
    #[arg(long, env = "TUNESERVE_TRAIN_THREADS", default_value_t = 0)]
    pub train_threads: usize,

    /// How much lower the training threads' OS priority is (nice increment;
    /// 0 = equal). With the default, /predict keeps its latency while a job trains.
    #[arg(long, env = "TUNESERVE_TRAIN_NICE", default_value_t = 10)]
    pub train_nice: i32,

    /// A prediction still waiting after this many milliseconds is dropped
    /// and answered 503 (deadline_exceeded).
    #[arg(long, env = "TUNESERVE_PREDICT_TIMEOUT_MS", default_value_t = 30_000)]
    pub predict_timeout_ms: u64,

    /// Most images run through the model in one batch.
    #[arg(long, env = "TUNESERVE_PREDICT_MAX_BATCH", default_value_t = 32)]
    pub predict_max_batch: usize,

    /// How long the first request of a batch waits for others, in milliseconds.
    #[arg(long, env = "TUNESERVE_PREDICT_MAX_WAIT_MS", default_value_t = 5)]
    pub predict_max_wait_ms: u64,

    /// Most images waiting for the model; beyond it, 429 with Retry-After.
    /// Four full batches by default: a request never waits much longer than
    /// four batch times, and overload is answered at once instead.
    #[arg(long, env = "TUNESERVE_PREDICT_MAX_QUEUE", default_value_t = 128)]
    pub predict_max_queue: usize,

    /// Minutes between mid-epoch checkpoints in stage 2, so that a crash loses
    /// minutes rather than an epoch (0 = at epoch ends only).
    #[arg(long, env = "TUNESERVE_CHECKPOINT_MINUTES", default_value_t = 10.0)]
    pub checkpoint_minutes: f64,

    /// Emit a progress event every N training steps.
    #[arg(long, env = "TUNESERVE_PROGRESS_EVERY", default_value_t = 10)]
    pub progress_every: usize,

    /// On shutdown, how long a running job may take to reach its next checkpoint, in seconds.
    #[arg(long, env = "TUNESERVE_SHUTDOWN_GRACE_SECS", default_value_t = 300)]
    pub shutdown_grace_secs: u64,

    /// Serve the web page from this folder instead of the copy built into
    /// the binary (for working on the page).
    #[arg(long, env = "TUNESERVE_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
}

impl ServeConfig {
    /// Defaults for a data directory (what tests and embedding callers start from).
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            c: ServeConfig,
        }
        // Defaults come from the attributes above (and TUNESERVE_* variables
        // when set), so there is one source of truth.
        let mut c = Wrap::parse_from(["tuneserve"]).c;
        c.data_dir = data_dir.into();
        c
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("tuneserve.db").display()),
        }
    }

    pub fn weights_path(&self) -> PathBuf {
        self.weights.clone().unwrap_or_else(|| self.data_dir.join("weights").join(fetch::XCEPTION_CACHE_FILE))
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits { max_pixels: self.max_image_pixels, max_dimension: self.max_image_dimension }
    }

    pub fn instance_name(&self) -> String {
        if let Some(i) = &self.instance {
            return i.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::env::var("HOSTNAME"))
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let dir = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        format!("{host}:{}", dir.display())
    }

    /// Bytes one training job may use (see `memory_limit_mb`); None when the
    /// machine's memory cannot be read and no limit is set.
    pub fn job_memory_budget(&self) -> Option<u64> {
        let total = match self.memory_limit_mb {
            0 => crate::train::memory::available_memory()? / 10 * 8,
            mb => mb << 20,
        };
        Some(total / self.workers.max(1) as u64)
    }

    pub fn lease(&self) -> Duration {
        // At least two heartbeats, or a live worker would lose its job.
        Duration::from_secs(self.lease_secs.max(5))
    }

    pub fn compute_pools(&self) -> Result<crate::compute::Pools, String> {
        crate::compute::Pools::new(self.predict_threads, self.train_threads, self.train_nice)
            .map_err(|e| format!("thread pools: {e}"))
    }

    pub fn predict_max_wait(&self) -> Duration {
        Duration::from_millis(self.predict_max_wait_ms)
    }

    pub fn candle_device(&self) -> Result<candle_core::Device, String> {
        pick_device(self.device).map_err(|e| format!("device {:?}: {e}", self.device))
    }
}
