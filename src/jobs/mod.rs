//! Training jobs: worker threads (never the async runtime) claim queued jobs
//! from the database, run the two-stage recipe, and persist its events,
//! checkpoints and outcome. Several processes (`serve` replicas and `worker`s)
//! can share one PostgreSQL and one artifact store: the claim is atomic, a
//! job's holder renews its lease with heartbeats, and a job whose holder went
//! silent is queued again and resumed by any worker from its last published
//! checkpoint. The holder that lost its lease stops at once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn};

use crate::config::ServeConfig;
use crate::data::dataset::{DatasetManifest, Split};
use crate::data::folder;
use crate::model::Variant;
use crate::store::db::{self, Lease};
use crate::store::{CheckpointRow, JobMetrics, JobRow, JobStatus, ModelRow, ModelStage};
use crate::store::{ArtifactStore, Db};
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::{self, Event, Metrics, RunSpec, Stage, TrainConfig, TrainError, WeightsChoice};


/// How often a running job tells the database it is alive (and learns of cancels).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// What the workers share with the HTTP side.
pub struct JobContext {
    pub db: Db,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub cfg: Arc<ServeConfig>,
    /// This process's name in `jobs.claimed_by`.
    pub instance: String,
    pub device: candle_core::Device,
    /// Where training runs on the CPU (see `compute`).
    pub train_pool: Arc<rayon::ThreadPool>,
    /// Poked when a job is queued.
    pub queued: Arc<Notify>,
    /// Poked when a job event is stored (wakes SSE streams).
    pub events: Arc<Notify>,
    /// Bumped when a job publishes a model (it may be the new default).
    pub default_changes: Arc<std::sync::atomic::AtomicU64>,
    pub shutdown: CancellationToken,
    pub runtime: Handle,
}

/// Why job processing could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("artifact store: {0}")]
    Artifacts(#[from] crate::store::ArtifactError),
}

impl JobContext {
    /// What a process that runs jobs needs, from its settings: the data
    /// folder, the device, the database (migrated), the artifact store and
    /// the CPU pools (the predict pool is returned for a server's use).
    pub async fn open(
        cfg: Arc<ServeConfig>,
        shutdown: CancellationToken,
    ) -> Result<(Self, Arc<rayon::ThreadPool>), StartError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let device = cfg.candle_device().map_err(StartError::Config)?;
        let db = Db::connect(&cfg.database_url()).await?;
        let artifacts = crate::store::open_artifacts(cfg.artifacts.as_deref(), &cfg.data_dir)?;
        let pools = cfg.compute_pools().map_err(StartError::Config)?;
        let instance = cfg.instance_name();
        tracing::info!(instance = %instance, artifacts = %artifacts.describe(), device = ?device, "starting");
        let ctx = Self {
            db,
            artifacts,
            cfg,
            instance,
            device,
            train_pool: pools.train,
            queued: Arc::new(Notify::new()),
            events: Arc::new(Notify::new()),
            default_changes: Default::default(),
            shutdown,
            runtime: tokio::runtime::Handle::current(),
        };
        Ok((ctx, pools.predict))
    }
}

/// Queues again the jobs this instance left running (they resume from their
/// last checkpoint), starts the sweeper that does the same for jobs of
/// silent processes, and `n` worker threads.
pub async fn start(ctx: Arc<JobContext>, n: usize) -> Result<Vec<JoinHandle<()>>, StartError> {
    let resumed = recover_orphans(&ctx, Some(&ctx.instance)).await?;
    if resumed > 0 {
        info!(jobs = resumed, "jobs interrupted by a stop are queued again and resume from their last checkpoint");
    }
    ctx.runtime.spawn(sweep_stale(ctx.clone()));
    Ok(spawn_workers(ctx, n)?)
}

/// Waits, off the async runtime, for the worker threads to return (each stops
/// at its next checkpoint once `shutdown` is cancelled).
pub async fn join(workers: Vec<JoinHandle<()>>) -> Result<(), StartError> {
    tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await
    .map_err(|e| StartError::Config(format!("worker join: {e}")))
}

/// Every half lease, requeues running jobs whose holder stopped beating.
async fn sweep_stale(ctx: Arc<JobContext>) {
    let every = ctx.cfg.lease() / 2;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match recover_orphans(&ctx, None).await {
            Ok(0) => {}
            Ok(n) => {
                warn!(jobs = n, "took over jobs whose worker stopped sending heartbeats; they resume from their last checkpoint");
                ctx.queued.notify_waiters();
            }
            Err(e) => warn!(error = %e, "could not look for abandoned jobs"),
        }
    }
}

/// Requeues the jobs whose process died while running them (see
/// [`Db::recover_orphans`]), failing those that died too often; returns how
/// many were queued again.
async fn recover_orphans(ctx: &JobContext, instance: Option<&str>) -> Result<u64, db::DbError> {
    let max = ctx.cfg.max_attempts;
    let error = format!(
        "the process running this job stopped without finishing it {max} time(s) (killed, perhaps for lack of \
         memory); it is not started again (see --max-attempts)"
    );
    let orphans = ctx.db.recover_orphans(instance, ctx.cfg.lease(), max as i64, &error).await?;
    for id in &orphans.failed {
        warn!(job_id = %id, crashes = max, "job failed: its process died too often while running it");
        metrics::counter!("tuneserve_jobs_finished_total", "status" => JobStatus::Failed.as_str()).increment(1);
        let seq = ctx.db.next_event_seq(id).await?;
        ctx.db
            .insert_event(id, seq, "status", &json!({"type": "status", "status": JobStatus::Failed, "error": error}))
            .await?;
    }
    if !orphans.failed.is_empty() {
        ctx.events.notify_waiters();
    }
    Ok(orphans.requeued)
}

fn spawn_workers(ctx: Arc<JobContext>, n: usize) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let ctx = ctx.clone();
            std::thread::Builder::new().name(format!("job-worker-{i}")).spawn(move || worker_loop(&ctx))
        })
        .collect()
}

fn worker_loop(ctx: &JobContext) {
    while !ctx.shutdown.is_cancelled() {
        match ctx.runtime.block_on(ctx.db.claim_job(&ctx.instance)) {
            Ok(Some(job)) => {
                let span = info_span!("job", job_id = %job.id);
                let _e = span.enter();
                run_job(ctx, job);
            }
            Ok(None) => ctx.runtime.block_on(async {
                tokio::select! {
                    _ = ctx.queued.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = ctx.shutdown.cancelled() => {}
                }
            }),
            Err(e) => {
                warn!(error = %e, "could not claim a job");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Why a run that returned `Cancelled` stopped.
#[derive(Default)]
struct StopFlags {
    /// The user asked (POST /cancel).
    user: AtomicBool,
    /// The server is shutting down: hand the job back to the queue.
    shutdown: AtomicBool,
    /// Another worker took the job over: leave it alone.
    lost: AtomicBool,
}

/// A job's event stream as this attempt writes it.
struct EventLog<'a> {
    ctx: &'a JobContext,
    job_id: &'a str,
    seq: i64,
}

impl EventLog<'_> {
    fn emit(&mut self, kind: &str, data: serde_json::Value) {
        let ctx = self.ctx;
        if let Err(e) = ctx.runtime.block_on(ctx.db.insert_event(self.job_id, self.seq, kind, &data)) {
            warn!(error = %e, "could not store a job event");
        }
        self.seq += 1;
        ctx.events.notify_waiters();
    }
}

fn run_job(ctx: &JobContext, job: JobRow) {
    info!(attempt = job.attempts, resume = job.resume, "job started");
    let rt = &ctx.runtime;
    let seq = match rt.block_on(ctx.db.next_event_seq(&job.id)) {
        Ok(s) => s,
        Err(e) => {
            // Leave it claimed: the next start of this instance requeues it.
            error!(error = %e, "could not read the job's events");
            return;
        }
    };
    let mut log = EventLog { ctx, job_id: &job.id, seq };
    log.emit("status", json!({"type": "status", "status": JobStatus::Running, "attempt": job.attempts}));
    let spec = match rt.block_on(prepare(ctx, &job)) {
        Ok(s) => s,
        Err(msg) => return finish(ctx, &job, &mut log, JobStatus::Failed, Some(&msg)),
    };

    let cancel = Arc::new(AtomicBool::new(false));
    let flags = Arc::new(StopFlags::default());
    let hb_stop = CancellationToken::new();
    let hb = rt.spawn(heartbeat(
        ctx.db.clone(),
        (job.id.clone(), ctx.instance.clone(), job.attempts),
        ctx.shutdown.clone(),
        hb_stop.clone(),
        cancel.clone(),
        flags.clone(),
        Duration::from_secs(ctx.cfg.shutdown_grace_secs),
    ));
    let job_dir = ctx.artifacts.job_dir(&job.id);
    let mut sink = Sink {
        ctx,
        job: &job,
        job_dir: &job_dir,
        // Checkpoints already in the shared store (from an earlier attempt or this one).
        published: checkpoint::list(&job_dir).map(|l| l.into_iter().map(|(n, _)| n).collect()).unwrap_or_default(),
        train_images: train_count(&spec.manifest, &spec.config),
        finetune_epochs: spec.config.finetune_epochs,
        flags: &flags,
        cancel: &cancel,
        log,
    };
    let started = Instant::now();
    let result = train_guarded(ctx, spec, &mut |ev| sink.on_event(ev), &cancel);
    hb_stop.cancel();
    let _ = rt.block_on(hb);
    metrics::histogram!("tuneserve_job_seconds").record(started.elapsed().as_secs_f64());
    if flags.lost.load(Ordering::Acquire) {
        warn!("another worker took this job over (this one missed its heartbeats); stopped without touching it");
        return;
    }
    conclude(ctx, &job, sink, result);
}

/// Runs the recipe on the training pool. A panic in training fails the job
/// instead of killing the worker and leaving the job `running` forever.
/// Err(None): cancelled (by the user or a shutdown); Err(Some): why it failed.
fn train_guarded(
    ctx: &JobContext,
    spec: RunSpec,
    on_event: &mut (dyn FnMut(Event) + Send),
    cancel: &AtomicBool,
) -> Result<train::Summary, Option<String>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.train_pool.install(|| train::run(spec, &mut *on_event, cancel))
    })) {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(TrainError::Cancelled)) => Err(None),
        Ok(Err(e)) => Err(Some(e.to_string())),
        Err(p) => {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            Err(Some(format!("training panicked: {}", msg.unwrap_or_default())))
        }
    }
}

/// Where a running job's training events go: the database (progress,
/// metrics, events), the artifact store (checkpoints) and the models table
/// (stage 1's model).
struct Sink<'a> {
    ctx: &'a JobContext,
    job: &'a JobRow,
    job_dir: &'a std::path::Path,
    published: HashSet<String>,
    train_images: usize,
    finetune_epochs: usize,
    flags: &'a StopFlags,
    cancel: &'a AtomicBool,
    log: EventLog<'a>,
}

impl Sink<'_> {
    fn on_event(&mut self, ev: Event) {
        let (ctx, rt) = (self.ctx, &self.ctx.runtime);
        let data = match serde_json::to_value(&ev) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "unserialisable training event");
                return;
            }
        };
        match &ev {
            Event::Progress { stage, epoch, epochs, step, steps, .. } => {
                if step % ctx.cfg.progress_every.max(1) != 0 && step != steps {
                    return;
                }
                let r = rt.block_on(ctx.db.set_job_progress(&self.job.id, *stage, *epoch as i64,
                    *epochs as i64, *step as i64, *steps as i64));
                if let Err(e) = r {
                    warn!(error = %e, "could not store progress");
                }
            }
            Event::Epoch { stage, epoch, epochs, train, validation, .. } => {
                info!(stage = stage.as_str(), epoch, loss = validation.loss, accuracy = validation.accuracy, "epoch done");
                metrics::counter!("tuneserve_train_images_total", "stage" => stage.as_str()).increment(self.train_images as u64);
                let r = rt.block_on(ctx.db.set_job_metrics(&self.job.id, *stage, *epoch as i64,
                    *epochs as i64, *train, *validation));
                if let Err(e) = r {
                    warn!(error = %e, "could not store epoch metrics");
                }
            }
            Event::Checkpoint { name, stage, .. } => self.on_checkpoint(name, *stage),
            Event::Message { .. } => {}
        }
        let kind = data.get("type").and_then(|t| t.as_str()).unwrap_or("message").to_string();
        self.log.emit(&kind, data);
    }

    fn on_checkpoint(&mut self, name: &str, stage: Stage) {
        let (ctx, rt, job_id) = (self.ctx, &self.ctx.runtime, &self.job.id);
        // Shared first, then recorded: what the database lists, every process can fetch.
        match rt.block_on(ctx.artifacts.publish_checkpoint(job_id, name)) {
            Ok(()) => {
                self.published.insert(name.to_string());
                match rt.block_on(sync_checkpoints(ctx, job_id, self.job_dir, &self.published)) {
                    Err(e) => warn!(error = %e, checkpoint = %name, "could not record the checkpoints"),
                    // Stage 1's model answers predictions while stage 2 runs.
                    Ok(()) if stage == Stage::Frozen && self.finetune_epochs > 0 => {
                        rt.block_on(publish_stage1(ctx, self.job, self.job_dir, name));
                    }
                    Ok(()) => {}
                }
            }
            // Not fatal: the run goes on, and a resume starts from an older checkpoint.
            Err(e) => warn!(error = %e, checkpoint = %name, "could not publish the checkpoint"),
        }
        // A shutdown waits for this moment: the epoch's work is safe on disk.
        if self.flags.shutdown.load(Ordering::Acquire) {
            self.cancel.store(true, Ordering::Release);
        }
    }
}

/// Ends the attempt after training: publish the model, or record the
/// failure or cancellation, or hand the job back for a shutdown.
fn conclude(ctx: &JobContext, job: &JobRow, mut sink: Sink, result: Result<train::Summary, Option<String>>) {
    let rt = &ctx.runtime;
    let flags = sink.flags;
    match result {
        Ok(summary) => match rt.block_on(model_for(ctx, job, sink.job_dir, &summary, &mut sink.published)) {
            Ok(model) => {
                sink.log.emit("status", json!({"type": "status", "status": JobStatus::Succeeded,
                    "model_id": model.id, "checkpoint": summary.best_checkpoint, "validation": summary.validation}));
                match rt.block_on(ctx.db.publish_model(&model, &ctx.instance, &summary)) {
                    Ok(true) => {
                        ctx.default_changes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        metrics::counter!("tuneserve_jobs_finished_total", "status" => JobStatus::Succeeded.as_str()).increment(1);
                        info!(model_id = %model.id, checkpoint = %summary.best_checkpoint,
                            accuracy = summary.validation.accuracy, "job succeeded; model published");
                    }
                    Ok(false) => warn!("job was no longer ours to finish"),
                    Err(e) => warn!(error = %e, "could not publish the model; the job will be resumed"),
                }
            }
            Err(msg) => finish(ctx, job, &mut sink.log, JobStatus::Failed, Some(&msg)),
        },
        Err(None) if flags.user.load(Ordering::Acquire) => finish(ctx, job, &mut sink.log, JobStatus::Cancelled, None),
        Err(None) => {
            info!("job handed back to the queue for shutdown; it resumes from its last checkpoint");
            sink.log.emit("status", json!({"type": "status", "status": JobStatus::Queued, "reason": "server shutdown"}));
            if let Err(e) = rt.block_on(ctx.db.requeue_job(&job.id, &ctx.instance)) {
                warn!(error = %e, "could not requeue the job; the next start will");
            }
        }
        Err(Some(msg)) => finish(ctx, job, &mut sink.log, JobStatus::Failed, Some(&msg)),
    }
}

/// Stores the terminal event first, then the status, so that a stream that
/// sees a finished job has already seen its last event.
fn finish(ctx: &JobContext, job: &JobRow, log: &mut EventLog, st: JobStatus, err: Option<&str>) {
    match err {
        Some(e) => warn!(status = st.as_str(), error = e, "job ended"),
        None => info!(status = st.as_str(), "job ended"),
    }
    log.emit("status", json!({"type": "status", "status": st, "error": err}));
    metrics::counter!("tuneserve_jobs_finished_total", "status" => st.as_str()).increment(1);
    match ctx.runtime.block_on(ctx.db.finish_job(&job.id, &ctx.instance, st, err)) {
        Ok(true) => {}
        Ok(false) => warn!("job was no longer ours to finish"),
        Err(e) => warn!(error = %e, "could not store the job's end"),
    }
}

/// Publishes the stage-1 checkpoint `name` as the job's stage-1 model (the
/// default if there is none yet). Not fatal: predictions just wait for the
/// final model.
async fn publish_stage1(ctx: &JobContext, job: &JobRow, job_dir: &std::path::Path, name: &str) {
    let row = async {
        let ck = ctx.db.find_checkpoint(&job.id, name).await.map_err(|e| e.to_string())?;
        let ck = ck.ok_or_else(|| format!("checkpoint {name} is not recorded"))?;
        let meta = checkpoint::read_meta(&job_dir.join(name)).map_err(|e| e.to_string())?;
        Ok::<_, String>(model_row(job, ck.id, &meta, &meta.classes, &meta.validation))
    };
    let published = match row.await {
        Ok(row) => ctx.db.publish_stage1_model(&row).await.map(|p| (row.id, p)).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match published {
        Ok((id, Some(is_default))) => {
            if is_default {
                ctx.default_changes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            info!(model_id = %id, is_default, "stage-1 model published; the final model replaces it");
        }
        Ok((_, None)) => {}
        Err(e) => warn!(error = %e, "could not publish the stage-1 model"),
    }
}

fn model_row(job: &JobRow, checkpoint_id: String, meta: &CheckpointMeta, classes: &[String], validation: &Metrics) -> ModelRow {
    ModelRow {
        id: uuid::Uuid::new_v4().to_string(),
        job_id: job.id.clone(),
        checkpoint_id,
        backbone: meta.backbone,
        variant: meta.variant,
        classes: classes.to_vec(),
        image_size: meta.image_size as i64,
        validation_metrics: (*validation).into(),
        // Both decided when published.
        is_default: false,
        created_at: db::now_ms(),
        stage: ModelStage::Stage1,
    }
}

/// The model row for a finished run.
async fn model_for(
    ctx: &JobContext,
    job: &JobRow,
    job_dir: &std::path::Path,
    summary: &train::Summary,
    published: &mut HashSet<String>,
) -> Result<ModelRow, String> {
    let name = &summary.best_checkpoint;
    // The best checkpoint's publication may have failed or been lost to a
    // crash, and the trainer prunes superseded ones at the end.
    if !published.contains(name) {
        ctx.artifacts.publish_checkpoint(&job.id, name).await.map_err(|e| format!("publishing checkpoint {name}: {e}"))?;
        published.insert(name.clone());
    }
    sync_checkpoints(ctx, &job.id, job_dir, published).await?;
    let ck = ctx
        .db
        .find_checkpoint(&job.id, name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("best checkpoint {name} is not recorded"))?;
    let meta = checkpoint::read_meta(&job_dir.join(name)).map_err(|e| e.to_string())?;
    Ok(model_row(job, ck.id, &meta, &summary.classes, &summary.validation))
}

/// Makes the job's checkpoint rows (and the shared store) match the complete
/// checkpoints on disk that are published (meta.json is written last, so a
/// listed one is whole).
async fn sync_checkpoints(
    ctx: &JobContext,
    job_id: &str,
    job_dir: &std::path::Path,
    published: &HashSet<String>,
) -> Result<(), String> {
    let db = &ctx.db;
    let mut on_disk = checkpoint::list(job_dir).map_err(|e| e.to_string())?;
    on_disk.retain(|(name, _)| published.contains(name));
    let known = db.list_checkpoints(job_id).await.map_err(|e| e.to_string())?;
    for (name, meta) in &on_disk {
        let row = CheckpointRow {
            // Keep the id a client may already hold.
            id: known.iter().find(|k| &k.name == name).map_or_else(|| uuid::Uuid::new_v4().to_string(), |k| k.id.clone()),
            job_id: job_id.to_string(),
            name: name.clone(),
            stage: meta.stage,
            epoch: meta.epoch as i64,
            train_metrics: JobMetrics::from(meta.train),
            validation_metrics: JobMetrics::from(meta.validation),
            created_at: known.iter().find(|k| &k.name == name).map_or_else(db::now_ms, |k| k.created_at),
        };
        db.upsert_checkpoint(&row).await.map_err(|e| e.to_string())?;
    }
    let names: Vec<String> = on_disk.into_iter().map(|(n, _)| n).collect();
    db.retain_checkpoints(job_id, &names).await.map_err(|e| e.to_string())?;
    ctx.artifacts.retain_checkpoints(job_id, &names).await.map_err(|e| e.to_string())
}

async fn prepare(ctx: &JobContext, job: &JobRow) -> Result<RunSpec, String> {
    let config = job.config.clone();
    let ds = ctx.artifacts.fetch_dataset(&job.dataset_id).await.map_err(|e| format!("dataset {} is gone ({e})", job.dataset_id))?;
    let manifest = folder::read_manifest(&ds).map_err(|e| format!("dataset {} is gone ({e})", job.dataset_id))?;
    let (variant, weights) = match job.variant {
        Variant::Tiny => (Variant::Tiny, WeightsChoice::Seeded),
        Variant::Full => {
            let w = ctx.cfg.weights_path();
            if !w.exists() {
                return Err(format!(
                    "pretrained weights not found at {}: run `tuneserve weights fetch xception` or pass --weights",
                    w.display()
                ));
            }
            (Variant::Full, WeightsChoice::Pretrained(w))
        }
    };
    // Admitted when created, but the machine (or the limit) may differ now.
    crate::train::memory::estimate(&config, variant, manifest.samples.len() as u64)
        .check(ctx.cfg.job_memory_budget())?;
    // An earlier attempt may have run elsewhere: bring its checkpoints here.
    let out_dir: PathBuf =
        ctx.artifacts.fetch_job(&job.id).await.map_err(|e| format!("fetching the job's checkpoints: {e}"))?;
    // Resume whenever an earlier attempt left checkpoints, crash or not.
    let resume = job.resume || crate::model::checkpoint::best(&out_dir).ok().flatten().is_some()
        || checkpoint::list(&out_dir).map(|l| !l.is_empty()).unwrap_or(false);
    Ok(RunSpec {
        config,
        dataset_root: folder::files_dir(&ds),
        manifest,
        cache_dir: folder::cache_dir(&ds),
        partial_every: (ctx.cfg.checkpoint_minutes > 0.0)
            .then(|| Duration::from_secs_f64(ctx.cfg.checkpoint_minutes * 60.0)),
        weights,
        variant,
        out_dir,
        resume,
        device: ctx.device.clone(),
    })
}

/// Training images per epoch, for the img/s gauge.
fn train_count(m: &DatasetManifest, c: &TrainConfig) -> usize {
    let train = m.samples.iter().filter(|s| s.split == Split::Train).count();
    if m.has_validation {
        train
    } else {
        (train as f64 * (1.0 - c.validation_split)).round() as usize
    }
}

/// Beats every HEARTBEAT while the job runs; turns a cancel request (from
/// any process, through the database) or a shutdown into the run's cancel flag.
async fn heartbeat(
    db: Db,
    (job_id, instance, attempt): (String, String, i64),
    shutdown: CancellationToken,
    stop: CancellationToken,
    cancel: Arc<AtomicBool>,
    flags: Arc<StopFlags>,
    grace: Duration,
) {
    let mut shutdown_at: Option<Instant> = None;
    loop {
        match db.heartbeat(&job_id, &instance, attempt).await {
            Ok(Lease::Held { cancel_requested: true }) => {
                flags.user.store(true, Ordering::Release);
                cancel.store(true, Ordering::Release);
            }
            Ok(Lease::Held { cancel_requested: false }) => {}
            Ok(Lease::Lost) => {
                flags.lost.store(true, Ordering::Release);
                cancel.store(true, Ordering::Release);
                return;
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
        if shutdown.is_cancelled() {
            let at = *shutdown_at.get_or_insert_with(|| {
                info!(grace_secs = grace.as_secs(), "shutdown: the job stops at its next checkpoint");
                Instant::now()
            });
            flags.shutdown.store(true, Ordering::Release);
            if at.elapsed() >= grace {
                cancel.store(true, Ordering::Release);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.cancelled(), if shutdown_at.is_none() => {}
        }
    }
}
