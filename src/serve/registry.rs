//! Which models are loaded. The default model is served from memory and
//! looked up again in the database once it is a second old (or at once when
//! this process changed it), so a model published by any worker (or marked
//! default through the API) is picked up without a restart; loading happens
//! off the async runtime and the old model keeps serving until the new one is
//! ready.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::batcher::{BatchLimits, Batcher};
use super::predictor::Predictor;
use super::PredictError;
use crate::store::ModelRow;
use crate::store::{ArtifactStore, Db};

pub struct LoadedModel {
    pub id: String,
    pub classes: Vec<String>,
    pub image_size: usize,
    /// Whether predictions use test-time augmentation unless a request says otherwise.
    pub tta: bool,
    pub batcher: Batcher,
}

pub struct Registry {
    db: Db,
    artifacts: Arc<dyn ArtifactStore>,
    device: candle_core::Device,
    limits: BatchLimits,
    pool: Arc<rayon::ThreadPool>,
    loaded: Mutex<Cache<Arc<LoadedModel>>>,
    loading: LoadLocks,
    /// Bumped whenever this process changes the default model (a switch
    /// through the API, a job publishing its model).
    default_changes: Arc<AtomicU64>,
}

/// One lock per model being loaded: concurrent first requests for a model
/// load it once, and loading one model holds up no other.
#[derive(Default)]
struct LoadLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl LoadLocks {
    async fn lock(&self, id: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, PredictError> {
        let lock = match self.0.lock() {
            Ok(mut l) => l.entry(id.to_string()).or_default().clone(),
            Err(_) => return Err(PredictError::Internal("model registry lock poisoned".into())),
        };
        Ok(lock.lock_owned().await)
    }

    /// Forgets `id`'s lock once its load is over (waiters hold their own handle).
    fn done(&self, id: &str) {
        if let Ok(mut l) = self.0.lock() {
            l.remove(id);
        }
    }
}

/// Models in memory, with when each was last asked for.
struct Cache<M> {
    models: HashMap<String, (M, u64)>,
    clock: u64,
    /// The default model as last seen: never evicted.
    default: Option<String>,
    /// When the default was read from the database, and `default_changes` then.
    default_seen: Option<(Instant, u64)>,
}

impl<M> Default for Cache<M> {
    fn default() -> Self {
        Self { models: HashMap::new(), clock: 0, default: None, default_seen: None }
    }
}

impl<M: Clone> Cache<M> {
    fn get(&mut self, id: &str) -> Option<M> {
        self.clock += 1;
        let now = self.clock;
        self.models.get_mut(id).map(|(m, used)| {
            *used = now;
            m.clone()
        })
    }

    /// Adds `model`, first evicting the least recently used models other
    /// than the default while the cache is full. Evicted models' threads end
    /// once their in-flight requests finish.
    fn insert(&mut self, id: String, model: M) {
        while self.models.len() >= MAX_LOADED {
            let victim = self
                .models
                .iter()
                .filter(|(id, _)| self.default.as_deref() != Some(id.as_str()))
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id.clone());
            match victim {
                Some(id) => self.models.remove(&id),
                None => break,
            };
        }
        self.clock += 1;
        self.models.insert(id, (model, self.clock));
    }
}

/// Models kept in memory, the default one included.
const MAX_LOADED: usize = 4;

/// How long the default model is served without asking the database: a
/// default changed by another process is picked up within this time, one
/// changed by this process at once.
const DEFAULT_RECHECK: Duration = Duration::from_secs(1);

impl Registry {
    pub fn new(
        db: Db,
        artifacts: Arc<dyn ArtifactStore>,
        device: candle_core::Device,
        limits: BatchLimits,
        pool: Arc<rayon::ThreadPool>,
        default_changes: Arc<AtomicU64>,
    ) -> Self {
        Self { db, artifacts, device, limits, pool, loaded: Default::default(), loading: Default::default(), default_changes }
    }

    /// Tells the registry that this process changed the default model.
    pub fn default_changed(&self) {
        self.default_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The default model from memory, if it was read from the database
    /// recently and this process has not changed it since.
    fn recent_default(&self) -> Option<Arc<LoadedModel>> {
        let changes = self.default_changes.load(Ordering::Acquire);
        let mut c = self.loaded.lock().ok()?;
        let (seen, at_changes) = c.default_seen?;
        if at_changes != changes || seen.elapsed() > DEFAULT_RECHECK {
            return None;
        }
        let id = c.default.clone()?;
        c.get(&id)
    }

    /// The CPU pool predictions (and their image decoding) run on.
    pub fn pool(&self) -> Arc<rayon::ThreadPool> {
        self.pool.clone()
    }

    /// The current default model, loading it if it changed.
    pub async fn default_model(&self) -> Result<Arc<LoadedModel>, PredictError> {
        if let Some(m) = self.recent_default() {
            return Ok(m);
        }
        let changes = self.default_changes.load(Ordering::Acquire);
        let read_at = Instant::now();
        let row = self.db.default_model().await?.ok_or(PredictError::NoModel)?;
        if let Ok(mut c) = self.loaded.lock() {
            c.default = Some(row.id.clone());
            c.default_seen = Some((read_at, changes));
        }
        self.get_or_load(row).await
    }

    pub async fn model(&self, id: &str) -> Result<Arc<LoadedModel>, PredictError> {
        let row = self
            .db
            .get_model(id)
            .await?
            .ok_or_else(|| PredictError::ModelNotFound(id.to_string()))?;
        self.get_or_load(row).await
    }

    /// Whether the default model (if any) is in memory.
    pub async fn default_loaded(&self) -> Result<bool, PredictError> {
        Ok(match self.db.default_model().await? {
            Some(row) => self.cached(&row.id).is_some(),
            None => true,
        })
    }

    fn cached(&self, id: &str) -> Option<Arc<LoadedModel>> {
        self.loaded.lock().ok().and_then(|mut c| c.get(id))
    }

    async fn get_or_load(&self, row: ModelRow) -> Result<Arc<LoadedModel>, PredictError> {
        if let Some(m) = self.cached(&row.id) {
            return Ok(m);
        }
        let _guard = self.loading.lock(&row.id).await?;
        if let Some(m) = self.cached(&row.id) {
            return Ok(m);
        }
        let loaded = self.load(&row).await;
        self.loading.done(&row.id);
        loaded
    }

    async fn load(&self, row: &ModelRow) -> Result<Arc<LoadedModel>, PredictError> {
        let dir = self.checkpoint_dir(row).await?;
        let device = self.device.clone();
        let limits = self.limits;
        let pool = self.pool.clone();
        let id = row.id.clone();
        let started = std::time::Instant::now();
        let model = tokio::task::spawn_blocking(move || -> Result<LoadedModel, PredictError> {
            let predictor = Predictor::load(&dir, &device, None)
                .map_err(|e| PredictError::ModelUnavailable(format!("model {id} could not be loaded: {e}")))?;
            let classes = predictor.classes().to_vec();
            let image_size = predictor.image_size();
            let tta = predictor.tta();
            let batcher = Batcher::start(&id, predictor, limits, pool)
                .map_err(|e| PredictError::Internal(format!("could not start the prediction thread: {e}")))?;
            Ok(LoadedModel { id, classes, image_size, tta, batcher })
        })
        .await
        .map_err(|e| PredictError::Internal(format!("loading the model failed: {e}")))??;
        tracing::info!(model_id = %row.id, seconds = started.elapsed().as_secs_f64(), "model loaded");
        let model = Arc::new(model);
        if let Ok(mut c) = self.loaded.lock() {
            c.insert(model.id.clone(), model.clone());
        }
        Ok(model)
    }

    async fn checkpoint_dir(&self, row: &ModelRow) -> Result<PathBuf, PredictError> {
        let ck = self
            .db
            .get_checkpoint(&row.checkpoint_id)
            .await?
            .ok_or_else(|| PredictError::ModelUnavailable(format!("model {} lost its checkpoint", row.id)))?;
        // Trained by another process perhaps: fetched from the shared store.
        self.artifacts.fetch_checkpoint(&ck.job_id, &ck.name).await.map_err(|e| {
            PredictError::ModelUnavailable(format!("model {} could not be fetched: {e}", row.id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loading_one_model_holds_up_no_other() {
        let locks = LoadLocks::default();
        let slow = locks.lock("slow").await.unwrap();
        // Another model's load goes ahead while "slow" is still loading.
        let other = tokio::time::timeout(std::time::Duration::from_secs(1), locks.lock("other")).await;
        assert!(other.is_ok(), "loading one model blocked another");
        // A second request for the model being loaded waits for that load.
        let same = tokio::time::timeout(std::time::Duration::from_millis(200), locks.lock("slow")).await;
        assert!(same.is_err(), "the same model was loaded twice at once");
        drop(slow);
        let after = tokio::time::timeout(std::time::Duration::from_secs(1), locks.lock("slow")).await;
        assert!(after.is_ok(), "the lock was not released");
    }

    #[test]
    fn the_default_model_is_never_evicted() {
        let mut c: Cache<u32> = Cache::default();
        c.default = Some("d".into());
        c.insert("d".into(), 0);
        for i in 1..20 {
            // The default is the least recently used here: kept by rule alone.
            c.insert(format!("m{i}"), i);
            assert!(c.models.contains_key("d"), "evicted by m{i}");
            assert!(c.models.len() <= MAX_LOADED);
        }
        // Least recently used goes first.
        let mut c: Cache<u32> = Cache::default();
        for (i, id) in ["a", "b", "c", "e"].iter().enumerate() {
            c.insert(id.to_string(), i as u32);
        }
        c.get("a");
        c.insert("f".into(), 9);
        assert!(c.get("a").is_some() && c.get("b").is_none() && c.get("f").is_some());
    }
}
