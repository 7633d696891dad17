//! `tuneserve worker`: run training jobs from a shared database and artifact
//! store, without an HTTP listener (scale-out: any number of these next to
//! the `serve` replicas). Stops on SIGINT/SIGTERM once its job reaches a
//! checkpoint (bounded by the shutdown grace period), handing the job back.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::serve::shutdown_signal;
use crate::config::ServeConfig;
use crate::error::ServeError;
use crate::jobs::JobContext;

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
    let (ctx, _) = JobContext::open(Arc::new(cfg), shutdown.clone()).await?;
    let (db, workers) = (ctx.db.clone(), ctx.cfg.workers.max(1));
    tracing::info!(workers, "worker starting");
    let workers = crate::jobs::start(Arc::new(ctx), workers).await?;
    shutdown.cancelled().await;
    tracing::info!("stopping: a running job stops at its next checkpoint and goes back to the queue");
    crate::jobs::join(workers).await?;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}
