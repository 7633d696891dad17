//! Why a prediction could not be served. The API turns each into its HTTP
//! status and stable code (`crate::error`).

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The model's queue holds as many images as it may; retry shortly.
    #[error("the prediction queue is full ({0} images waiting at most); retry shortly")]
    QueueFull(usize),
    /// Waited longer than the configured timeout (milliseconds).
    #[error("the prediction did not finish within {0} ms; the server is overloaded, retry shortly")]
    Deadline(u128),
    #[error("no model has been published yet: train one with POST /v1/jobs")]
    NoModel,
    #[error("no model with id {0}")]
    ModelNotFound(String),
    /// The model exists but cannot answer now (checkpoint missing or
    /// unreadable, its thread stopped).
    #[error("{0}")]
    ModelUnavailable(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}
