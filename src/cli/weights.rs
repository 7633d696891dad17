//! `tuneserve weights import FILE` and `tuneserve weights fetch xception`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::model::weights::{fetch, WeightSet};

#[derive(Args, Debug)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Convert a Keras file (.h5, .keras, .weights.h5) or a safetensors file to
    /// tuneserve's safetensors, checking every tensor's name and shape.
    Import {
        file: PathBuf,
        /// Output file (default: next to the input, with .safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Download the canonical keras.applications Xception notop weights into the
    /// data directory, verify the checksum, convert and cache them.
    Fetch {
        #[arg(value_parser = ["xception"])]
        model: String,
        #[arg(long, env = "TUNESERVE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, default_value = fetch::XCEPTION_NOTOP_URL)]
        url: String,
    },
}

pub fn run(args: WeightsArgs) -> anyhow::Result<()> {
    match args.command {
        WeightsCommand::Import { file, out } => {
            let set = WeightSet::from_file(&file)?;
            let arch = set.arch().ok_or_else(|| anyhow::anyhow!("{}: not an Xception or MobileNetV2 weight set", file.display()))?;
            set.validate(&arch.spec())?;
            let out = out.unwrap_or_else(|| file.with_extension("safetensors"));
            if out == file {
                anyhow::bail!("refusing to overwrite the input; pass --out");
            }
            set.save_safetensors(&out)?;
            println!("{}", serde_json::json!({ "arch": arch.name(), "tensors": set.len(), "out": out }));
            Ok(())
        }
        WeightsCommand::Fetch { model: _, data_dir, url } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let pb = super::progress::bar(0, "download", true);
            let show = |got: u64, total: Option<u64>| {
                if let Some(t) = total {
                    pb.set_length(t);
                }
                pb.set_position(got);
            };
            let path = rt.block_on(fetch::fetch_xception(&data_dir, &url, fetch::XCEPTION_NOTOP_MD5, Some(&show)));
            pb.finish_and_clear();
            println!("{}", path?.display());
            Ok(())
        }
    }
}

