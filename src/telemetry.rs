//! Prometheus metrics: the recorder (one per process), explicit histogram
//! buckets (so latencies aggregate across replicas) and a HELP line for every
//! metric. The names are recorded where the work happens (`metrics` macros).

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds: 1 ms .. 10 min, roughly x2.5 apart (requests, batches, steps, jobs).
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0];
/// Whole jobs: 10 s .. 1 day.
const JOB_BUCKETS: &[f64] = &[10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0];
/// Images per prediction batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The process-wide recorder (however many servers a test starts), or None
/// when another recorder was installed first.
pub fn recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> Option<PrometheusHandle> {
    let built = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("tuneserve_job_seconds".into()), JOB_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("tuneserve_predict_batch_size".into()), BATCH_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS))
        .and_then(|b| b.install_recorder().map_err(Into::into));
    match built {
        Ok(h) => {
            describe();
            Some(h)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
            None
        }
    }
}

fn describe() {
    describe_counter!("tuneserve_http_requests_total", "HTTP requests answered, by method, route and status.");
    describe_histogram!("tuneserve_http_request_duration_seconds", Unit::Seconds, "HTTP request latency, by method and route.");
    describe_counter!("tuneserve_datasets_created_total", "Datasets created from uploads.");
    describe_counter!("tuneserve_jobs_created_total", "Training jobs queued.");
    describe_counter!("tuneserve_jobs_finished_total", "Training jobs that ended, by final status.");
    describe_gauge!("tuneserve_jobs", "Training jobs in the database, by status (read at each scrape).");
    describe_histogram!("tuneserve_job_seconds", Unit::Seconds, "Wall time of each job run by this process.");
    describe_counter!("tuneserve_train_images_total", "Images trained on (one per image per epoch), by stage.");
    describe_histogram!("tuneserve_train_step_seconds", Unit::Seconds, "Wall time of one training step (one batch), by stage.");
    describe_counter!("tuneserve_predict_images_total", "Images predicted.");
    describe_counter!("tuneserve_predict_rejected_total", "Prediction requests refused because the queue was full (429).");
    describe_counter!("tuneserve_predict_dropped_total", "Queued predictions dropped before running, by reason.");
    describe_gauge!("tuneserve_predict_queue_depth", "Images waiting for (or in) a prediction batch.");
    describe_histogram!("tuneserve_predict_queue_wait_seconds", Unit::Seconds, "Time a prediction request waited before its batch started.");
    describe_histogram!("tuneserve_predict_batch_size", "Images per prediction batch.");
    describe_histogram!("tuneserve_predict_batch_seconds", Unit::Seconds, "Wall time of one prediction batch.");
}
