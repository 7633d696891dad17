use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: tuneserve::alloc::CachingAlloc = tuneserve::alloc::CachingAlloc::new();

/// Transfer learning on images as an HTTP service.
#[derive(Parser)]
#[command(name = "tuneserve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Import or fetch pretrained weights.
    Weights(tuneserve::cli::weights::WeightsArgs),
    /// Measure inference and training throughput (JSON line, as bench/peers prints).
    Bench(tuneserve::cli::bench::BenchArgs),
    /// Load a running server's /v1/predict with N concurrent clients (JSON line per level).
    Loadtest(tuneserve::cli::loadtest::LoadtestArgs),
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // `serve` and `worker` set up its own logging (it has a JSON option).
    if !matches!(command, Command::Serve(_) | Command::Worker(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
            .with_writer(std::io::stderr)
            .init();
    }
    match command {
        Command::Serve(a) => Ok(tuneserve::cli::serve::run(a)?),
        Command::Worker(a) => Ok(tuneserve::cli::worker::run(a)?),
        Command::Train(a) => tuneserve::cli::train::run(a),
        Command::Predict(a) => tuneserve::cli::predict::run(a),
        Command::Embed(a) => tuneserve::cli::embed::run(a),
        Command::Weights(a) => tuneserve::cli::weights::run(a),
        Command::Bench(a) => tuneserve::cli::bench::run(a),
        Command::Loadtest(a) => tuneserve::cli::loadtest::run(a),
    }
}
