//! `--device`, `--dtype`, `--backend`: the flags every model-running command takes, layered over
//! a config's `[exec]` table. They are the explicit inputs of the execution plan, which
//! `aha_model::exec` decides when the model is loaded.

use aha_model::{Backend, DTypeSpec, DeviceSpec, ExecRequest};

/// Where and how the model runs.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ExecArgs {
    /// Device: `cpu` (default), `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Parameter dtype: `f32` (default), `bf16`, `f16` or `f64`.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<DTypeSpec>,
    /// Kernel backend: `auto` (default: `cpu-handwritten` for CPU f32 Qwen2/Llama, `cpu-autograd`
    /// for other CPU f32/f64, `composite` elsewhere), or one of those forced.
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<Backend>,
}

impl ExecArgs {
    /// The flags over `base` (a config's `[exec]`): a flag given wins.
    pub fn over(&self, base: ExecRequest) -> ExecRequest {
        ExecRequest {
            device: self.device.unwrap_or(base.device),
            dtype: self.dtype.unwrap_or(base.dtype),
            backend: self.backend.unwrap_or(base.backend),
        }
    }

    /// The flags over the defaults (CPU, f32, auto).
    pub fn request(&self) -> ExecRequest {
        self.over(ExecRequest::default())
    }
}
