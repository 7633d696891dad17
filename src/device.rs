//! `--device auto|cpu|cuda[:N]`.

use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?} (auto, cpu, cuda or cuda:N)")),
        }
    }
}

/// auto = CUDA when built with it and a GPU is there, else CPU.
/// Logs the choice (with `requested`), so a run says which device it used.
pub fn pick_device(arg: DeviceArg) -> candle_core::Result<Device> {
    let d = match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda(n) => Device::new_cuda(n)?,
        DeviceArg::Auto => Device::cuda_if_available(0).unwrap_or(Device::Cpu),
    };
    tracing::info!(device = %describe(&d), requested = ?arg, cuda_built = cfg!(feature = "cuda"), "device chosen");
    Ok(d)
}

/// The chosen device as the CLI spells it ("cpu", "cuda:0"), for logs.
pub fn describe(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
