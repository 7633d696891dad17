//! Which models are loaded. The default model is looked up in the database
//! on every request, so a model published by any worker (or marked default
//! through the API) is picked up without a restart; loading happens off the
//! async runtime and the old model keeps serving until the new one is ready.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::batcher::{BatchLimits, Batcher};
use super::predictor::Predictor;
use crate::error::{ApiError, ApiResult};
use crate::store::db::ModelRow;
use crate::store::{ArtifactStore, Db};

pub struct LoadedModel {
    pub id: String,
    pub classes: Vec<String>,
    pub image_size: usize,
    pub batcher: Batcher,
}

pub struct Registry {
    db: Db,
    artifacts: Arc<dyn ArtifactStore>,
    device: candle_core::Device,
    limits: BatchLimits,
    pool: Arc<rayon::ThreadPool>,
    loaded: Mutex<HashMap<String, Arc<LoadedModel>>>,
    /// One load at a time: concurrent first requests must not load twice.
    loading: tokio::sync::Mutex<()>,
}

/// Models kept in memory besides the default one.
const MAX_LOADED: usize = 3;

impl Registry {
    pub fn new(
        db: Db,
        artifacts: Arc<dyn ArtifactStore>,
        device: candle_core::Device,
        limits: BatchLimits,
        pool: Arc<rayon::ThreadPool>,
    ) -> Self {
        Self { db, artifacts, device, limits, pool, loaded: Mutex::new(HashMap::new()), loading: Default::default() }
    }

    /// The current default model, loading it if it changed.
    pub async fn default_model(&self) -> ApiResult<Arc<LoadedModel>> {
        let row = self.db.default_model().await?.ok_or_else(|| {
            ApiError::unavailable("no_model", "no model has been published yet: train one with POST /v1/jobs")
        })?;
        self.get_or_load(row).await
    }

    pub async fn model(&self, id: &str) -> ApiResult<Arc<LoadedModel>> {
        let row = self
            .db
            .get_model(id)
            .await?
            .ok_or_else(|| ApiError::not_found("model_not_found", format!("no model with id {id}")))?;
        self.get_or_load(row).await
    }

    /// Whether the default model (if any) is in memory.
    pub async fn default_loaded(&self) -> ApiResult<bool> {
        Ok(match self.db.default_model().await? {
            Some(row) => self.cached(&row.id).is_some(),
            None => true,
        })
    }

    fn cached(&self, id: &str) -> Option<Arc<LoadedModel>> {
        self.loaded.lock().ok().and_then(|m| m.get(id).cloned())
    }

    async fn get_or_load(&self, row: ModelRow) -> ApiResult<Arc<LoadedModel>> {
        if let Some(m) = self.cached(&row.id) {
            return Ok(m);
        }
        let _guard = self.loading.lock().await;
        if let Some(m) = self.cached(&row.id) {
            return Ok(m);
        }
        let dir = self.checkpoint_dir(&row).await?;
        let device = self.device.clone();
        let limits = self.limits;
        let pool = self.pool.clone();
        let id = row.id.clone();
        let started = std::time::Instant::now();
        let model = tokio::task::spawn_blocking(move || -> ApiResult<LoadedModel> {
            let predictor = Predictor::load(&dir, &device).map_err(|e| {
                ApiError::unavailable("model_unavailable", format!("model {id} could not be loaded: {e}"))
            })?;
            let classes = predictor.classes().to_vec();
            let image_size = predictor.image_size();
            let batcher = Batcher::start(&id, predictor, limits, pool)?;
            Ok(LoadedModel { id, classes, image_size, batcher })
        })
        .await??;
        tracing::info!(model_id = %row.id, seconds = started.elapsed().as_secs_f64(), "model loaded");
        let model = Arc::new(model);
        if let Ok(mut m) = self.loaded.lock() {
            // Evict the others (never the one just loaded) when over budget;
            // their threads end once in-flight requests finish.
            while m.len() >= MAX_LOADED {
                let Some(k) = m.keys().next().cloned() else { break };
                m.remove(&k);
            }
            m.insert(row.id.clone(), model.clone());
        }
        Ok(model)
    }

    async fn checkpoint_dir(&self, row: &ModelRow) -> ApiResult<PathBuf> {
        let ck = self.db.get_checkpoint(&row.checkpoint_id).await?.ok_or_else(|| {
            ApiError::unavailable("model_unavailable", format!("model {} lost its checkpoint", row.id))
        })?;
        // Trained by another process perhaps: fetched from the shared store.
        self.artifacts.fetch_checkpoint(&ck.job_id, &ck.name).await.map_err(|e| {
            ApiError::unavailable("model_unavailable", format!("model {} could not be fetched: {e}", row.id))
        })
    }
}
