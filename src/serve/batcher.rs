//! Dynamic batching in the manner of text-embeddings-inference: requests
//! queue up, a dedicated thread takes as many as fit in one batch (up to
//! `max_batch` images, waiting at most `max_wait` after the first), runs the
//! model once, and hands each request its share. Admission is bounded by the
//! number of images waiting; past it callers get 429 with Retry-After. Each
//! request has a deadline; a request whose client went away or whose deadline
//! passed while it waited is dropped before it costs any compute.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::predictor::{Prediction, Predictor};
use crate::data::image::RgbImage;
use super::PredictError;

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub max_queue: usize,
    /// How long a request may wait for its predictions.
    pub timeout: Duration,
}

struct Work {
    images: Vec<RgbImage>,
    /// Test-time augmentation for this request's images.
    tta: bool,
    queued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<Prediction>, String>>,
}

/// The queue in front of one loaded model. Dropping it stops its thread once
/// the queued work is done.
pub struct Batcher {
    tx: mpsc::Sender<Work>,
    depth: Arc<AtomicUsize>,
    max_queue: usize,
    timeout: Duration,
}

impl Batcher {
    /// Starts the model's thread; its batches run on `pool`.
    pub fn start(model_id: &str, predictor: Predictor, limits: BatchLimits, pool: Arc<rayon::ThreadPool>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let d = depth.clone();
        std::thread::Builder::new()
            .name(format!("predict-{}", &model_id[..model_id.len().min(8)]))
            .spawn(move || run(predictor, rx, d, limits, &pool))?;
        Ok(Self { tx, depth, max_queue: limits.max_queue, timeout: limits.timeout })
    }

    /// Reserves queue room for `n` images, or 429 when the queue is full.
    /// Callers reserve before decoding, so that an overloaded server refuses
    /// work before spending CPU on it.
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_>, PredictError> {
        Reservation::take(&self.depth, self.max_queue, n).ok_or_else(|| {
            metrics::counter!("tuneserve_predict_rejected_total").increment(1);
            PredictError::QueueFull(self.max_queue)
        })
    }

    /// Queues `images` (for which `room` was reserved) and waits for their
    /// predictions (with test-time augmentation if `tta`).
    pub async fn predict(&self, mut room: Reservation<'_>, images: Vec<RgbImage>, tta: bool) -> Result<Vec<Prediction>, PredictError> {
        let n = room.n;
        if images.len() != n {
            return Err(PredictError::Internal(format!("{} images for a reservation of {n}", images.len())));
        }
        // From here the prediction thread releases the room.
        room.held = false;
        let (reply, rx) = oneshot::channel();
        let queued = Instant::now();
        let deadline = queued + self.timeout;
        if self.tx.send(Work { images, tta, queued, deadline, reply }).is_err() {
            release(&self.depth, n);
            return Err(PredictError::ModelUnavailable("the model's prediction thread has stopped".into()));
        }
        // If the client goes away, this future is dropped with `rx`, and the
        // batcher skips the work.
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(Ok(p))) => Ok(p),
            Ok(Ok(Err(e))) if e == DEADLINE => Err(deadline_exceeded(self.timeout)),
            Ok(Ok(Err(e))) => Err(PredictError::Internal(format!("prediction failed: {e}"))),
            Ok(Err(_)) => Err(PredictError::Internal("the prediction thread dropped the request".into())),
            Err(_) => Err(deadline_exceeded(self.timeout)),
        }
    }

}

fn release(depth: &AtomicUsize, n: usize) {
    depth.fetch_sub(n, Ordering::AcqRel);
    metrics::gauge!("tuneserve_predict_queue_depth").decrement(n as f64);
}

/// Queue room for some images; given back when dropped unless the images
/// were queued.
pub struct Reservation<'a> {
    depth: &'a AtomicUsize,
    n: usize,
    held: bool,
}

impl<'a> Reservation<'a> {
    /// Room for `n` more images if `depth` stays within `max`; atomically,
    /// so concurrent callers cannot overshoot.
    fn take(depth: &'a AtomicUsize, max: usize, n: usize) -> Option<Self> {
        depth.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| (d + n <= max).then_some(d + n)).ok()?;
        metrics::gauge!("tuneserve_predict_queue_depth").increment(n as f64);
        Some(Self { depth, n, held: true })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.held {
            release(self.depth, self.n);
        }
    }
}

const DEADLINE: &str = "deadline";

fn deadline_exceeded(timeout: Duration) -> PredictError {
    metrics::counter!("tuneserve_predict_dropped_total", "reason" => "deadline").increment(1);
    PredictError::Deadline(timeout.as_millis())
}

/// Whether the work is still wanted; if not, it is answered (deadline) or
/// dropped (client gone) and its queue room released.
fn still_wanted(w: Work, depth: &AtomicUsize) -> Option<Work> {
    let gone = w.reply.is_closed();
    if !gone && Instant::now() < w.deadline {
        return Some(w);
    }
    release(depth, w.images.len());
    if gone {
        metrics::counter!("tuneserve_predict_dropped_total", "reason" => "client_gone").increment(1);
    } else {
        let _ = w.reply.send(Err(DEADLINE.to_string()));
    }
    None
}

fn run(predictor: Predictor, rx: mpsc::Receiver<Work>, depth: Arc<AtomicUsize>, limits: BatchLimits, pool: &rayon::ThreadPool) {
    let mut carry: Option<Work> = None;
    loop {
        let first = match carry.take() {
            Some(w) => w,
            None => match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            },
        };
        let Some(first) = still_wanted(first, &depth) else { continue };
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
                    if let Some(w) = still_wanted(w, &depth) {
                        n += w.images.len();
                        batch.push(w);
                    }
                }
                Err(_) => break,
            }
        }
        // Whoever gave up while the batch gathered costs nothing.
        let mut batch: Vec<Work> = batch.into_iter().filter_map(|w| still_wanted(w, &depth)).collect();
        if batch.is_empty() {
            continue;
        }
        let n: usize = batch.iter().map(|w| w.images.len()).sum();
        let started = Instant::now();
        for w in &batch {
            metrics::histogram!("tuneserve_predict_queue_wait_seconds").record((started - w.queued).as_secs_f64());
        }
        let counts: Vec<usize> = batch.iter().map(|w| w.images.len()).collect();
        let tta: Vec<bool> = batch.iter().flat_map(|w| std::iter::repeat_n(w.tta, w.images.len())).collect();
        let images: Vec<RgbImage> = batch.iter_mut().flat_map(|w| std::mem::take(&mut w.images)).collect();
        // One request larger than max_batch runs in max_batch-sized chunks.
        let chunk = limits.max_batch.max(1);
        let result: Result<Vec<Prediction>, String> = pool
            .install(|| {
                images
                    .chunks(chunk)
                    .zip(tta.chunks(chunk))
                    .map(|(c, t)| predictor.predict(c, t).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map(|v| v.into_iter().flatten().collect::<Vec<_>>())
            .and_then(|v| {
                if v.len() == n {
                    Ok(v)
                } else {
                    Err(format!("the model returned {} predictions for {n} images", v.len()))
                }
            });
        let secs = started.elapsed().as_secs_f64();
        release(&depth, n);
        metrics::histogram!("tuneserve_predict_batch_size").record(n as f64);
        metrics::histogram!("tuneserve_predict_batch_seconds").record(secs);
        metrics::counter!("tuneserve_predict_images_total").increment(n as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_bound_the_queue_and_come_back_when_dropped() {
        let depth = AtomicUsize::new(0);
        let a = Reservation::take(&depth, 4, 3).expect("room for 3");
        assert!(Reservation::take(&depth, 4, 2).is_none(), "3 + 2 > 4");
        let b = Reservation::take(&depth, 4, 1).expect("room for 1 more");
        assert_eq!(depth.load(Ordering::Acquire), 4);
        // A request refused after reserving (a bad image) gives its room back.
        drop(a);
        assert_eq!(depth.load(Ordering::Acquire), 1);
        // Queued work is released by the prediction thread, not the reservation.
        let mut queued = b;
        queued.held = false;
        drop(queued);
        assert_eq!(depth.load(Ordering::Acquire), 1);
    }
}
