use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transfer learning on images as an HTTP service.
#[derive(Parser)]
#[command(name = "tuneserve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or JSON (filter: RUST_LOG, or its alias TUNESERVE_LOG; default info).
    #[arg(long, global = true, env = "TUNESERVE_LOG_FORMAT", value_enum, default_value_t)]
    log_format: tuneserve::cli::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve(tuneserve::cli::serve::ServeArgs),
    /// Run training jobs from a shared database and artifact store (no HTTP).
    Worker(tuneserve::cli::worker::WorkerArgs),
    /// Train the two-stage recipe on a dataset folder or archive.
    Train(tuneserve::cli::train::TrainArgs),
    /// Predict images with a trained checkpoint.
    Predict(tuneserve::cli::predict::PredictArgs),
    /// Print backbone features of images as JSON lines.
    Embed(tuneserve::cli::embed::EmbedArgs),
    /// Write a trained checkpoint as ONNX or safetensors.
    Export(tuneserve::cli::export::ExportArgs),
    /// Import or fetch pretrained weights.
    Weights(tuneserve::cli::weights::WeightsArgs),
    /// Measure inference and training throughput (JSON line, as bench/peers prints).
    Bench(tuneserve::cli::bench::BenchArgs),
    /// Load a running server's /v1/predict with N concurrent clients (JSON line per level).
    Loadtest(tuneserve::cli::loadtest::LoadtestArgs),
}

fn main() -> anyhow::Result<()> {
    tuneserve::alloc::configure();
    let blas_kernels = tuneserve::ops::choose_blas_kernels();
    let cli = Cli::parse();
    tuneserve::cli::logging::init(cli.log_format);
    if let Some(choice) = blas_kernels {
        tracing::info!("{choice}");
    }
    match cli.command {
        Command::Serve(a) => Ok(tuneserve::cli::serve::run(a)?),
        Command::Worker(a) => Ok(tuneserve::cli::worker::run(a)?),
        Command::Train(a) => tuneserve::cli::train::run(a),
        Command::Predict(a) => tuneserve::cli::predict::run(a),
        Command::Embed(a) => tuneserve::cli::embed::run(a),
        Command::Export(a) => tuneserve::cli::export::run(a),
        Command::Weights(a) => tuneserve::cli::weights::run(a),
        Command::Bench(a) => tuneserve::cli::bench::run(a),
        Command::Loadtest(a) => tuneserve::cli::loadtest::run(a),
    }
}
