//! Dynamic batching in the manner of text-embeddings-inference: requests
//! queue up, a dedicated thread takes as many as fit in one batch (up to
//! `max_batch` images, waiting at most `max_wait` after the first), runs the
//! model once, and hands each request its share. Admission is bounded by the
//! number of images waiting; past it callers get 429 with Retry-After.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::predictor::{Prediction, Predictor};
use crate::data::image::RgbImage;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub max_queue: usize,
}

struct Work {
    images: Vec<RgbImage>,
    reply: oneshot::Sender<Result<Vec<Prediction>, String>>,
}

/// The queue in front of one loaded model. Dropping it stops its thread once
/// the queued work is done.
pub struct Batcher {
    tx: mpsc::Sender<Work>,
    depth: Arc<AtomicUsize>,
    max_queue: usize,
}

impl Batcher {
    pub fn start(model_id: &str, predictor: Predictor, limits: BatchLimits) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let d = depth.clone();
        std::thread::Builder::new()
            .name(format!("predict-{}", &model_id[..model_id.len().min(8)]))
            .spawn(move || run(predictor, rx, d, limits))?;
        Ok(Self { tx, depth, max_queue: limits.max_queue })
    }

    /// Queues `images` and waits for their predictions.
    pub async fn predict(&self, images: Vec<RgbImage>) -> Result<Vec<Prediction>, ApiError> {
        let n = images.len();
        // Reserve queue room atomically so concurrent callers cannot overshoot.
        let admitted = self
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| (d + n <= self.max_queue).then_some(d + n))
            .is_ok();
        if !admitted {
            metrics::counter!("tuneserve_predict_rejected_total").increment(1);
            return Err(ApiError::too_many_requests(
                format!("the prediction queue is full ({} images waiting at most); retry shortly", self.max_queue),
                1,
            ));
        }
        metrics::gauge!("tuneserve_predict_queue_depth").increment(n as f64);
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Work { images, reply }).is_err() {
            self.release(n);
            return Err(ApiError::unavailable("model_unavailable", "the model's prediction thread has stopped"));
        }
        match rx.await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(ApiError::internal(format!("prediction failed: {e}"))),
            Err(_) => Err(ApiError::internal("the prediction thread dropped the request")),
        }
    }

    fn release(&self, n: usize) {
        self.depth.fetch_sub(n, Ordering::AcqRel);
        metrics::gauge!("tuneserve_predict_queue_depth").decrement(n as f64);
    }
}

fn run(predictor: Predictor, rx: mpsc::Receiver<Work>, depth: Arc<AtomicUsize>, limits: BatchLimits) {
    let mut carry: Option<Work> = None;
    loop {
        let first = match carry.take() {
            Some(w) => w,
            None => match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            },
        };
        let deadline = Instant::now() + limits.max_wait;
        let mut n = first.images.len();
        let mut batch = vec![first];
        while n < limits.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // A request that would overflow the batch starts the next one.
                Ok(w) if n + w.images.len() > limits.max_batch => {
                    carry = Some(w);
                    break;
                }
                Ok(w) => {
                    n += w.images.len();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let counts: Vec<usize> = batch.iter().map(|w| w.images.len()).collect();
        let images: Vec<RgbImage> = batch.iter_mut().flat_map(|w| std::mem::take(&mut w.images)).collect();
        // One request larger than max_batch runs in max_batch-sized chunks.
        let result: Result<Vec<Prediction>, String> = images
            .chunks(limits.max_batch.max(1))
            .map(|c| predictor.predict(c).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().flatten().collect::<Vec<_>>())
            .and_then(|v| {
                if v.len() == n {
                    Ok(v)
                } else {
                    Err(format!("the model returned {} predictions for {n} images", v.len()))
                }
            });
        let secs = started.elapsed().as_secs_f64();
        depth.fetch_sub(n, Ordering::AcqRel);
        metrics::gauge!("tuneserve_predict_queue_depth").decrement(n as f64);
        metrics::histogram!("tuneserve_predict_batch_size").record(n as f64);
        metrics::histogram!("tuneserve_predict_batch_seconds").record(secs);
        metrics::counter!("tuneserve_predict_images_total").increment(n as u64);
        if secs > 0.0 {
            metrics::gauge!("tuneserve_predict_images_per_second").set(n as f64 / secs);
        }
        match result {
            Ok(mut all) => {
                // Hand out from the back so split_off leaves the earlier requests' share.
                let mut end = n;
                for (w, k) in batch.into_iter().zip(counts).rev() {
                    end -= k;
                    let _ = w.reply.send(Ok(all.split_off(end)));
                }
            }
            Err(e) => {
                for w in batch {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
