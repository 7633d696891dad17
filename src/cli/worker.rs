//! `tuneserve worker`: run training jobs from a shared database and artifact
//! store, without an HTTP listener (scale-out: any number of these next to
//! the `serve` replicas). Stops on SIGINT/SIGTERM once its job reaches a
//! checkpoint (bounded by the shutdown grace period), handing the job back.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cli::serve::shutdown_signal;
use crate::config::ServeConfig;
use crate::error::ServeError;
use crate::jobs::JobContext;
use crate::store::{open_artifacts, Db};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The same settings as `serve` (DATABASE_URL, TUNESERVE_ARTIFACTS,
    /// TUNESERVE_WORKERS jobs at once, ...); the listening address is unused.
    #[command(flatten)]
    pub config: ServeConfig,
}

pub fn run(args: WorkerArgs) -> Result<(), ServeError> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            t.cancel();
        });
        work(args.config, token).await
    })
}

/// Runs `cfg.workers` (at least one) job workers until `shutdown` is cancelled.
pub async fn work(cfg: ServeConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let cfg = Arc::new(cfg);
    std::fs::create_dir_all(&cfg.data_dir)?;
    let device = cfg.candle_device().map_err(ServeError::Config)?;
    let db = Db::connect(&cfg.database_url()).await?;
    let artifacts = open_artifacts(cfg.artifacts.as_deref(), &cfg.data_dir)?;
    let instance = cfg.instance_name();
    let pools = cfg.compute_pools().map_err(ServeError::Config)?;
    tracing::info!(instance = %instance, artifacts = %artifacts.describe(), device = ?device, workers = cfg.workers.max(1), "worker starting");
    let ctx = Arc::new(JobContext {
        db: db.clone(),
        artifacts,
        cfg: cfg.clone(),
        instance,
        device,
        train_pool: pools.train,
        queued: Arc::new(Notify::new()),
        events: Arc::new(Notify::new()),
        default_changes: Default::default(),
        shutdown: shutdown.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let workers = crate::jobs::start(ctx, cfg.workers.max(1)).await?;
    shutdown.cancelled().await;
    tracing::info!("stopping: a running job stops at its next checkpoint and goes back to the queue");
    crate::jobs::join(workers).await?;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}
