//! CPU thread pools. Predictions and training each get their own rayon pool,
//! so a training job never queues /predict's work behind its own; training
//! threads also run at a lower OS priority (nice), so when both want the
//! cores, predictions get them and training takes what is left.

use std::sync::Arc;

use rayon::{ThreadPool, ThreadPoolBuildError, ThreadPoolBuilder};

#[derive(Clone)]
pub struct Pools {
    pub predict: Arc<ThreadPool>,
    pub train: Arc<ThreadPool>,
}

impl Pools {
    /// `0` threads means one per CPU core; `train_nice` is added to the
    /// training threads' nice value (0 = same priority as predictions).
    pub fn new(predict_threads: usize, train_threads: usize, train_nice: i32) -> Result<Self, ThreadPoolBuildError> {
        let predict = ThreadPoolBuilder::new()
            .num_threads(predict_threads)
            .thread_name(|i| format!("predict-cpu-{i}"))
            .build()?;
        let train = ThreadPoolBuilder::new()
            .num_threads(train_threads)
            .thread_name(|i| format!("train-cpu-{i}"))
            .start_handler(move |_| lower_priority(train_nice))
            .build()?;
        Ok(Self { predict: Arc::new(predict), train: Arc::new(train) })
    }
}

/// Raises the calling thread's nice value by `by` (Linux: per thread).
fn lower_priority(by: i32) {
    if by <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if libc::setpriority(libc::PRIO_PROCESS, tid, now + by) != 0 {
            tracing::debug!("could not lower the training threads' priority");
        }
    }
}
