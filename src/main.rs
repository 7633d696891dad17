use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(tuneserve::cli::serve::run(args))?;
        }
    }
    Ok(())
}
