//! The database: one set of queries for SQLite and PostgreSQL through sqlx's
//! `Any` driver. Placeholders are `$N` (SQLite accepts them too), integers are
//! BIGINT (i64), times are unix milliseconds, JSON is TEXT; [`super::rows`]
//! turns the columns into typed rows.

use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, FromRow, Row};

use super::rows::{
    json, text, CheckpointRow, DatasetRow, EventRow, JobMetrics, JobRow, JobStatus, ModelRow, ModelStage, RawCheckpoint,
    RawDataset, RawEvent, RawJob, RawModel, JOB_COLS,
};
use crate::model::Variant;
use crate::train::{Metrics, Stage, TrainConfig};

pub use sqlx::Error as DbError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Held { cancel_requested: bool },
    /// Another worker took the job over (this one was silent too long) or it ended.
    Lost,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What [`Db::recover_orphans`] did.
#[derive(Debug, Default)]
pub struct Orphans {
    pub requeued: u64,
    /// Jobs that crashed too often and are now `failed`.
    pub failed: Vec<String>,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is running; its worker will stop it.
    Requested,
    /// It had already finished.
    Finished,
    NotFound,
}

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(DbError::Configuration(
                format!("unsupported DATABASE_URL scheme in {url:?}: use sqlite:// or postgres://").into(),
            ));
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            opts = opts.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers go on while a worker writes; the busy
                    // timeout makes concurrent writers wait instead of failing.
                    sqlx::query("PRAGMA journal_mode=WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout=10000").execute(&mut *conn).await?;
                    Ok(())
                })
            });
        } else {
            opts = opts.max_connections(10);
        }
        let pool = opts.connect(url).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await
    }

    // ---- datasets

    pub async fn insert_dataset(&self, d: &DatasetRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO datasets (id, name, created_at, archive_bytes, classes, counts, rejected, has_validation, \
             files_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(d.created_at)
        .bind(d.archive_bytes)
        .bind(json(&d.classes)?)
        .bind(json(&d.counts)?)
        .bind(json(&d.rejected)?)
        .bind(d.has_validation as i64)
        .bind(d.files_bytes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_dataset(&self, id: &str) -> Result<Option<DatasetRow>, DbError> {
        let r: Option<RawDataset> =
            sqlx::query_as("SELECT * FROM datasets WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        r.map(TryInto::try_into).transpose()
    }

    /// Newest first; `after` is the id of the last item of the previous page.
    pub async fn list_datasets(&self, after: Option<&str>, limit: i64) -> Result<Option<Vec<DatasetRow>>, DbError> {
        self.page::<RawDataset, _>("datasets", "*", after, limit).await
    }

    /// Deletes the row unless a queued or running job still needs it (then false).
    pub async fn delete_dataset(&self, id: &str) -> Result<bool, DbError> {
        let r = sqlx::query(
            "DELETE FROM datasets WHERE id = $1 AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE dataset_id = $1 AND status IN ('queued', 'running'))",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Keyset paging, newest first, for the tables with (id, created_at).
    async fn page<R, T>(&self, table: &str, cols: &str, after: Option<&str>, limit: i64) -> Result<Option<Vec<T>>, DbError>
    where
        R: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
        T: TryFrom<R, Error = DbError>,
    {
        let rows: Vec<R> = match after {
            None => {
                sqlx::query_as(&format!("SELECT {cols} FROM {table} ORDER BY created_at DESC, id DESC LIMIT $1"))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(after) => {
                let at: Option<i64> = sqlx::query_scalar(&format!("SELECT created_at FROM {table} WHERE id = $1"))
                    .bind(after)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(at) = at else { return Ok(None) };
                sqlx::query_as(&format!(
                    "SELECT {cols} FROM {table} WHERE created_at < $1 OR (created_at = $1 AND id < $2) \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .bind(at)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(Some(rows.into_iter().map(T::try_from).collect::<Result<_, _>>()?))
    }

    // ---- jobs

    /// Inserts a queued job together with its first event (seq 1, `queued`),
    /// in one transaction: a worker may claim the job the moment it is
    /// visible, and its own first event must not race for seq 1.
    pub async fn insert_job(&self, id: &str, dataset_id: &str, variant: Variant, config: &TrainConfig) -> Result<(), DbError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO jobs (id, dataset_id, status, variant, config, created_at) VALUES ($1, $2, 'queued', $3, $4, $5)",
        )
        .bind(id)
        .bind(dataset_id)
        .bind(text(variant))
        .bind(json(config)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO job_events (job_id, seq, created_at, kind, data) VALUES ($1, 1, $2, 'status', $3)")
            .bind(id)
            .bind(now)
            .bind(r#"{"type":"status","status":"queued"}"#)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<JobRow>, DbError> {
        let r: Option<RawJob> = sqlx::query_as(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.map(TryInto::try_into).transpose()
    }

    pub async fn list_jobs(&self, after: Option<&str>, limit: i64) -> Result<Option<Vec<JobRow>>, DbError> {
        self.page::<RawJob, _>("jobs", JOB_COLS, after, limit).await
    }

    /// Atomically takes the oldest queued job for `instance`. The single
    /// UPDATE only succeeds on a row still queued, so two workers never get the
    /// same job; PostgreSQL additionally skips rows another claimer has locked.
    pub async fn claim_job(&self, instance: &str) -> Result<Option<JobRow>, DbError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let now = now_ms();
        let id: Option<String> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET status = 'running', claimed_by = $1, heartbeat_at = $2, attempts = attempts + 1, \
             started_at = COALESCE(started_at, $2) \
             WHERE status = 'queued' AND id = \
             (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1{lock}) \
             RETURNING id"
        ))
        .bind(instance)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => self.get_job(&id).await,
            None => Ok(None),
        }
    }

    /// Recovers the running jobs whose holder died: those whose heartbeat is
    /// older than `stale_after`, and (at start) those `instance` was running
    /// when it stopped. Each such job counts a crash; one that has now crashed
    /// `max_crashes` times fails with `error` (its ids are returned), the
    /// others go back to the queue, marked for resuming.
    pub async fn recover_orphans(
        &self,
        instance: Option<&str>,
        stale_after: Duration,
        max_crashes: i64,
        error: &str,
    ) -> Result<Orphans, DbError> {
        let now = now_ms();
        let stale = now - stale_after.as_millis() as i64;
        let failed: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET status = 'failed', error = $3, finished_at = $4, claimed_by = NULL, crashes = crashes + 1 \
             WHERE status = 'running' AND (claimed_by = $1 OR heartbeat_at < $2) AND crashes + 1 >= $5 RETURNING id",
        )
        .bind(instance)
        .bind(stale)
        .bind(error)
        .bind(now)
        .bind(max_crashes)
        .fetch_all(&self.pool)
        .await?;
        let r = sqlx::query(
            "UPDATE jobs SET status = 'queued', resume = 1, claimed_by = NULL, crashes = crashes + 1 \
             WHERE status = 'running' AND (claimed_by = $1 OR heartbeat_at < $2)",
        )
        .bind(instance)
        .bind(stale)
        .execute(&self.pool)
        .await?;
        Ok(Orphans { requeued: r.rows_affected(), failed })
    }

    /// Records that the worker still holds the job (this attempt of it) and
    /// whether a cancel was requested; `Lost` once the job was taken over.
    pub async fn heartbeat(&self, id: &str, instance: &str, attempt: i64) -> Result<Lease, DbError> {
        let c: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET heartbeat_at = $2 \
             WHERE id = $1 AND claimed_by = $3 AND attempts = $4 AND status = 'running' \
             RETURNING cancel_requested",
        )
        .bind(id)
        .bind(now_ms())
        .bind(instance)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match c {
            Some(c) => Lease::Held { cancel_requested: c != 0 },
            None => Lease::Lost,
        })
    }

    pub async fn set_job_progress(
        &self,
        id: &str,
        stage: Stage,
        epoch: i64,
        epochs: i64,
        step: i64,
        steps: i64,
    ) -> Result<(), DbError> {
        sqlx::query("UPDATE jobs SET stage = $2, epoch = $3, epochs = $4, step = $5, steps = $6 WHERE id = $1")
            .bind(id)
            .bind(text(stage))
            .bind(epoch)
            .bind(epochs)
            .bind(step)
            .bind(steps)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_job_metrics(
        &self,
        id: &str,
        stage: Stage,
        epoch: i64,
        epochs: i64,
        train: Metrics,
        validation: Metrics,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE jobs SET stage = $2, epoch = $3, epochs = $4, train_metrics = $5, validation_metrics = $6 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(text(stage))
        .bind(epoch)
        .bind(epochs)
        .bind(json(&JobMetrics::from(train))?)
        .bind(json(&JobMetrics::from(validation))?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a running job. Only the instance that holds it can end it.
    pub async fn finish_job(
        &self,
        id: &str,
        instance: &str,
        status: JobStatus,
        error: Option<&str>,
    ) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE jobs SET status = $3, error = $4, finished_at = $5 \
             WHERE id = $1 AND claimed_by = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(instance)
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Hands a running job back to the queue, to be resumed (on shutdown).
    pub async fn requeue_job(&self, id: &str, instance: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE jobs SET status = 'queued', resume = 1, claimed_by = NULL \
             WHERE id = $1 AND claimed_by = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn cancel_job(&self, id: &str) -> Result<CancelOutcome, DbError> {
        let r = sqlx::query("UPDATE jobs SET status = 'cancelled', finished_at = $2 WHERE id = $1 AND status = 'queued'")
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 1 {
            return Ok(CancelOutcome::Cancelled);
        }
        let r = sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND status = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 1 {
            return Ok(CancelOutcome::Requested);
        }
        Ok(match self.get_job(id).await? {
            Some(_) => CancelOutcome::Finished,
            None => CancelOutcome::NotFound,
        })
    }

    /// How many jobs are in each status (those with none are left out).
    pub async fn job_counts(&self) -> Result<Vec<(JobStatus, i64)>, DbError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all(&self.pool).await?;
        let mut counts = Vec::new();
        for r in rows {
            let status: String = r.try_get("status")?;
            if let Some(s) = JobStatus::ALL.into_iter().find(|s| s.as_str() == status) {
                counts.push((s, r.try_get::<i64, _>("n")?));
            }
        }
        Ok(counts)
    }

    // ---- events

    pub async fn next_event_seq(&self, job_id: &str) -> Result<i64, DbError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM job_events WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(max.unwrap_or(0) + 1)
    }

    pub async fn insert_event(&self, job_id: &str, seq: i64, kind: &str, data: &serde_json::Value) -> Result<(), DbError> {
        sqlx::query("INSERT INTO job_events (job_id, seq, created_at, kind, data) VALUES ($1, $2, $3, $4, $5)")
            .bind(job_id)
            .bind(seq)
            .bind(now_ms())
            .bind(kind)
            .bind(data.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Oldest first, after sequence number `after`.
    pub async fn list_events(&self, job_id: &str, after: i64, limit: i64) -> Result<Vec<EventRow>, DbError> {
        let rows: Vec<RawEvent> = sqlx::query_as(
            "SELECT job_id, seq, created_at, kind, data FROM job_events WHERE job_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(job_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(EventRow::from).collect())
    }

    // ---- checkpoints

    /// Inserts or refreshes (a resumed job may rewrite a checkpoint).
    pub async fn upsert_checkpoint(&self, c: &CheckpointRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO checkpoints (id, job_id, name, stage, epoch, train_metrics, validation_metrics, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (job_id, name) DO UPDATE SET stage = excluded.stage, epoch = excluded.epoch, \
             train_metrics = excluded.train_metrics, validation_metrics = excluded.validation_metrics, \
             created_at = excluded.created_at",
        )
        .bind(&c.id)
        .bind(&c.job_id)
        .bind(&c.name)
        .bind(text(c.stage))
        .bind(c.epoch)
        .bind(json(&c.train_metrics)?)
        .bind(json(&c.validation_metrics)?)
        .bind(c.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the job's checkpoints not named in `keep` (the trainer prunes
    /// superseded ones from disk).
    pub async fn retain_checkpoints(&self, job_id: &str, keep: &[String]) -> Result<(), DbError> {
        for c in self.list_checkpoints(job_id).await? {
            if !keep.contains(&c.name) {
                sqlx::query("DELETE FROM checkpoints WHERE id = $1").bind(&c.id).execute(&self.pool).await?;
            }
        }
        Ok(())
    }

    pub async fn list_checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointRow>, DbError> {
        let rows: Vec<RawCheckpoint> = sqlx::query_as("SELECT * FROM checkpoints WHERE job_id = $1 ORDER BY created_at, name")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    pub async fn get_checkpoint(&self, id: &str) -> Result<Option<CheckpointRow>, DbError> {
        let r: Option<RawCheckpoint> =
            sqlx::query_as("SELECT * FROM checkpoints WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        r.map(TryInto::try_into).transpose()
    }

    pub async fn find_checkpoint(&self, job_id: &str, name: &str) -> Result<Option<CheckpointRow>, DbError> {
        let r: Option<RawCheckpoint> = sqlx::query_as("SELECT * FROM checkpoints WHERE job_id = $1 AND name = $2")
            .bind(job_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.map(TryInto::try_into).transpose()
    }

    // ---- models

    /// Publishes a succeeded job's model (its stage is [`ModelStage::Final`]),
    /// makes it the default, and marks the job succeeded with its training
    /// summary, all in one transaction so a crash leaves neither half.
    pub async fn publish_model(&self, m: &ModelRow, instance: &str, result: &impl serde::Serialize) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE jobs SET status = 'succeeded', result = $3, model_id = $4, finished_at = $5 \
             WHERE id = $1 AND claimed_by = $2 AND status = 'running'",
        )
        .bind(&m.job_id)
        .bind(instance)
        .bind(json(result)?)
        .bind(&m.id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        self.lock_models(&mut tx).await?;
        // The final model replaces the job's stage-1 model.
        sqlx::query("DELETE FROM models WHERE job_id = $1 AND stage = $2")
            .bind(&m.job_id)
            .bind(text(ModelStage::Stage1))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE models SET is_default = 0 WHERE is_default = 1").execute(&mut *tx).await?;
        Self::insert_model(&mut tx, &ModelRow { is_default: true, stage: ModelStage::Final, ..m.clone() }).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Publishes a running job's stage-1 model: the default only when there
    /// is none yet. Once per job (a resumed job does not add a second one);
    /// returns whether it was added and whether it became the default.
    pub async fn publish_stage1_model(&self, m: &ModelRow) -> Result<Option<bool>, DbError> {
        let mut tx = self.pool.begin().await?;
        // Opens with a write (SQLite takes its lock now, see set_default_model).
        sqlx::query("UPDATE models SET is_default = is_default WHERE job_id = $1").bind(&m.job_id).execute(&mut *tx).await?;
        self.lock_models(&mut tx).await?;
        let (existing,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM models WHERE job_id = $1")
            .bind(&m.job_id)
            .fetch_one(&mut *tx)
            .await?;
        if existing > 0 {
            return Ok(None);
        }
        let (defaults,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM models WHERE is_default = 1").fetch_one(&mut *tx).await?;
        let row = ModelRow { is_default: defaults == 0, stage: ModelStage::Stage1, ..m.clone() };
        Self::insert_model(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(Some(defaults == 0))
    }

    async fn insert_model(tx: &mut sqlx::Transaction<'_, sqlx::Any>, m: &ModelRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO models (id, job_id, checkpoint_id, backbone, variant, classes, image_size, \
             validation_metrics, is_default, created_at, stage) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&m.id)
        .bind(&m.job_id)
        .bind(&m.checkpoint_id)
        .bind(text(m.backbone))
        .bind(text(m.variant))
        .bind(json(&m.classes)?)
        .bind(m.image_size)
        .bind(json(&m.validation_metrics)?)
        .bind(m.is_default as i64)
        .bind(m.created_at)
        .bind(text(m.stage))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn list_models(&self, after: Option<&str>, limit: i64) -> Result<Option<Vec<ModelRow>>, DbError> {
        self.page::<RawModel, _>("models", "*", after, limit).await
    }

    pub async fn get_model(&self, id: &str) -> Result<Option<ModelRow>, DbError> {
        let r: Option<RawModel> =
            sqlx::query_as("SELECT * FROM models WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        r.map(TryInto::try_into).transpose()
    }

    pub async fn default_model(&self) -> Result<Option<ModelRow>, DbError> {
        let r: Option<RawModel> =
            sqlx::query_as("SELECT * FROM models WHERE is_default = 1 ORDER BY created_at DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        r.map(TryInto::try_into).transpose()
    }

    /// Makes `id` the one default model; false when there is no such model.
    /// The transaction opens with a write: SQLite then takes its write lock
    /// up front (waiting out other writers with the busy timeout) instead of
    /// failing to upgrade a read snapshot that a concurrent writer made stale.
    /// PostgreSQL serialises concurrent switches on the table lock, so two of
    /// them never leave two defaults.
    pub async fn set_default_model(&self, id: &str) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        self.lock_models(&mut tx).await?;
        let found = sqlx::query("UPDATE models SET is_default = 1 WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if found.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE models SET is_default = 0 WHERE is_default = 1 AND id <> $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Serialises the transactions that change which model is the default
    /// (PostgreSQL; SQLite has one writer at a time anyway).
    async fn lock_models(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), DbError> {
        if self.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE").execute(&mut **tx).await?;
        }
        Ok(())
    }
}
