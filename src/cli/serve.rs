//! `tuneserve serve`: run the HTTP service until SIGINT or SIGTERM.

use crate::config::ServeConfig;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServeConfig,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "TUNESERVE_LOG_JSON")]
    pub log_json: bool,
}

pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TUNESERVE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests start several servers) is harmless.
    let _ = if json { b.json().try_init() } else { b.try_init() };
}

/// Runs the service on its own Tokio runtime until a signal stops it.
pub fn run(args: ServeArgs) -> Result<(), crate::api::ServeError> {
    init_tracing(args.log_json);
    tokio::runtime::Runtime::new()?.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<(), crate::api::ServeError> {
    let listener = tokio::net::TcpListener::bind(args.config.bind).await?;
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        t.cancel();
    });
    crate::api::serve_with(args.config, listener, token).await
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
