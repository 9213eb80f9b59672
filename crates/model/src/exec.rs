//! The execution plan: which device, dtype and kernels a model runs with — decided here, once,
//! and nowhere else.
//!
//! A model is run one of three ways ([`Backend`]):
//!
//! | backend | when `auto` picks it | training gradients | forward row ops | sampling |
//! |---|---|---|---|---|
//! | `cpu-handwritten` | CPU, f32, Qwen2 / Llama | `cpu::handgrad` (hand-written backward) | `cpu::autograd` fused kernels | `cpu::infer` kernels |
//! | `cpu-autograd` | CPU, f32, Qwen3 | candle autograd | `cpu::autograd` fused kernels | `cpu::infer` kernels |
//! | `composite` | any other device or dtype (CUDA, bf16, f16, f64) | candle autograd | `ops::composite` (candle ops) | `ops::composite` |
//!
//! The inputs are explicit: the device (`--device` / `device`), the dtype (`--dtype` / `dtype`),
//! the architecture (from `config.json`) and an optional override (`--backend` / `backend`).
//! [`ExecPlan::decide`] turns them into a plan or an error naming the flag; the model carries
//! the plan ([`crate::Transformer::plan`]) and reads from it which kernels to call
//! ([`ExecPlan::kernels`]); the trainer reads [`ExecPlan::hand_written_grads`], and the optimiser
//! asks [`cpu_float`] whether it can update a parameter's storage in place. Nothing else in the
//! workspace inspects a device or a dtype to choose code.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::config::Arch;
use crate::error::{ModelError, Result};

/// Largest row count the small-batch inference `x · Wᵀ` kernel takes; bigger products go to the
/// gemm, which amortises its packing over many rows.
pub const MAX_SMALL_BATCH_ROWS: usize = 256;

// ---------------------------------------------------------------------------------------------
// What the user asks for

/// A device as the user names it: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device N (needs a build with the `cuda` feature and a GPU).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. CUDA in a build without the `cuda` feature, or without a usable GPU, is
    /// an error naming the setting and the feature. A CUDA device is opened once per process and
    /// shared, so every model of a run (policy, reference, reward models) lives on the same one.
    pub fn open(&self) -> Result<Device> {
        match *self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) if !cfg!(feature = "cuda") => Err(ModelError::Device(format!(
                "device `cuda:{n}` (--device / `device`): this aha was built without CUDA support; \
                 rebuild with `cargo build --release -p aha --features cuda`"
            ))),
            Self::Cuda(n) => open_cuda(n),
        }
    }

    /// The spec of an open device (for logs and saved configs).
    pub fn of(device: &Device) -> Self {
        match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Self::Cuda(gpu_id),
            _ => Self::Cpu,
        }
    }
}

/// CUDA device `n`, created on first use and shared afterwards.
fn open_cuda(n: usize) -> Result<Device> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| ModelError::Device("the CUDA device table lock is poisoned".into()))?;
    if let Some(d) = open.get(&n) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(n).map_err(|e| {
        ModelError::Device(format!("device `cuda:{n}` (--device / `device`): no usable CUDA device {n}: {e}"))
    })?;
    open.insert(n, d.clone());
    Ok(d)
}

/// The parameters' dtype as the user names it (`f32`, `bf16`, `f16`, `f64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeSpec {
    /// 32-bit float (the default; the CPU kernels' dtype).
    #[default]
    F32,
    /// bfloat16 (GPUs; the composite path on CPU).
    Bf16,
    /// IEEE half.
    F16,
    /// 64-bit float (gradient checks).
    F64,
}

impl DTypeSpec {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
            Self::F64 => DType::F64,
        }
    }
}

impl FromStr for DTypeSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            "f64" | "float64" => Ok(Self::F64),
            other => Err(format!("unknown dtype `{other}` (expected f32, bf16, f16 or f64)")),
        }
    }
}

impl fmt::Display for DTypeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::F64 => "f64",
        })
    }
}

/// How the model is run, as decided ([`ExecPlan::backend`]) or requested (with `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Let [`ExecPlan::decide`] choose (only as a request).
    #[default]
    Auto,
    /// CPU f32, Qwen2 / Llama: the hand-written forward + backward for training.
    CpuHandwritten,
    /// CPU f32: candle's autograd over the fused differentiable CPU kernels.
    CpuAutograd,
    /// Any device and dtype: candle's composite ops and autograd (CUDA, bf16, f16, f64).
    Composite,
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu-handwritten" => Ok(Self::CpuHandwritten),
            "cpu-autograd" => Ok(Self::CpuAutograd),
            "composite" => Ok(Self::Composite),
            other => {
                Err(format!("unknown backend `{other}` (expected auto, cpu-handwritten, cpu-autograd or composite)"))
            }
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::CpuHandwritten => "cpu-handwritten",
            Self::CpuAutograd => "cpu-autograd",
            Self::Composite => "composite",
        })
    }
}

/// Everything the user says about where and how to run: the plan's explicit inputs besides the
/// architecture. Parsed from `--device`, `--dtype`, `--backend` or a config's `[exec]` table
/// (`device = "cuda:0"`, `dtype = "bf16"`, `backend = "auto"`; each optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecRequest {
    /// The device.
    pub device: DeviceSpec,
    /// The parameters' dtype.
    pub dtype: DTypeSpec,
    /// The backend, or `Auto`.
    pub backend: Backend,
}

// ---------------------------------------------------------------------------------------------
// The decision

/// Whether a model runs with gradients (its parameters are variables a trainer steps) or for
/// sampling and reference log-probs only (a detached or frozen copy, see
/// [`crate::Transformer::detached`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Differentiable: every op has a backward.
    Train,
    /// No graph: inference kernels without a backward may run.
    Infer,
}

/// The kernels a model's forward calls, read by `transformer.rs` at each op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// CPU f32 without gradients: candle's fused RMSNorm, the small-batch `x · Wᵀ` and one-token
    /// attention of `cpu::infer`, and the fused row kernels of `cpu::autograd`.
    CpuInfer,
    /// CPU f32: the fused differentiable row kernels of `cpu::autograd` (own backward).
    CpuFused,
    /// candle's composite ops ([`crate::ops::composite`]), differentiable on every device.
    Composite,
}

impl Kernels {
    /// Whether an `x · Wᵀ` of `rows` rows takes the small-batch inference kernel.
    pub fn small_batch_linear(self, rows: usize) -> bool {
        self == Kernels::CpuInfer && rows > 0 && rows <= MAX_SMALL_BATCH_ROWS
    }
}

/// The decided plan: backend, device and dtype. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExecPlan {
    backend: Backend,
    device: Device,
    dtype: DType,
}

impl ExecPlan {
    /// Decides the plan from its explicit inputs. `requested` may be `Auto`; a backend that does
    /// not apply to the device, dtype or architecture is an error naming `--backend`.
    pub fn decide(device: &Device, dtype: DType, arch: Arch, requested: Backend) -> Result<Self> {
        let fused_ok = device.is_cpu() && dtype == DType::F32;
        let handwritten_ok = fused_ok && arch != Arch::Qwen3;
        let backend = match requested {
            Backend::Auto if handwritten_ok => Backend::CpuHandwritten,
            Backend::Auto if fused_ok => Backend::CpuAutograd,
            Backend::Auto => Backend::Composite,
            Backend::CpuHandwritten if !handwritten_ok => {
                return Err(unusable(requested, "CPU, f32 and a Qwen2 or Llama model", device, dtype, arch))
            }
            Backend::CpuAutograd if !fused_ok => return Err(unusable(requested, "CPU and f32", device, dtype, arch)),
            other => other,
        };
        Ok(Self { backend, device: device.clone(), dtype })
    }

    /// Decides the plan for a user's request, opening its device.
    pub fn for_request(req: &ExecRequest, arch: Arch) -> Result<Self> {
        Self::decide(&req.device.open()?, req.dtype.dtype(), arch, req.backend)
    }

    /// The backend decided (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The kernels a forward in `mode` calls.
    pub fn kernels(&self, mode: Mode) -> Kernels {
        match (self.backend, mode) {
            (Backend::Composite | Backend::Auto, _) => Kernels::Composite,
            (_, Mode::Infer) => Kernels::CpuInfer,
            (_, Mode::Train) => Kernels::CpuFused,
        }
    }

    /// Whether training gradients come from the hand-written backward (`cpu::handgrad`) rather
    /// than candle's autograd.
    pub fn hand_written_grads(&self) -> bool {
        self.backend == Backend::CpuHandwritten
    }

    /// One line for logs: `backend cpu-handwritten on cpu, f32`.
    pub fn describe(&self) -> String {
        format!("backend {} on {}, {}", self.backend, DeviceSpec::of(&self.device), self.dtype.as_str())
    }

    /// The plan as JSON (`backend`, `device`, `dtype`) for run headers and saved configs.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend.to_string(),
            "device": DeviceSpec::of(&self.device).to_string(),
            "dtype": self.dtype.as_str(),
        })
    }
}

/// Whether the optimiser's fused in-place CPU update (and gradient norm) can read tensors on
/// `device` in `dtype`: CPU storage in f32 or f64.
pub fn cpu_float(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && matches!(dtype, DType::F32 | DType::F64)
}

fn unusable(requested: Backend, needs: &str, device: &Device, dtype: DType, arch: Arch) -> ModelError {
    ModelError::Device(format!(
        "backend `{requested}` (--backend / `backend`) needs {needs}; this model is {arch:?} in {} on {}",
        dtype.as_str(),
        DeviceSpec::of(device)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dtype: DType, arch: Arch, req: Backend) -> Result<ExecPlan> {
        ExecPlan::decide(&Device::Cpu, dtype, arch, req)
    }

    #[test]
    fn auto_picks_by_dtype_and_arch() {
        assert_eq!(plan(DType::F32, Arch::Qwen2, Backend::Auto).unwrap().backend(), Backend::CpuHandwritten);
        assert_eq!(plan(DType::F32, Arch::Llama, Backend::Auto).unwrap().backend(), Backend::CpuHandwritten);
        assert_eq!(plan(DType::F32, Arch::Qwen3, Backend::Auto).unwrap().backend(), Backend::CpuAutograd);
        assert_eq!(plan(DType::F64, Arch::Qwen2, Backend::Auto).unwrap().backend(), Backend::Composite);
        assert_eq!(plan(DType::BF16, Arch::Qwen2, Backend::Auto).unwrap().backend(), Backend::Composite);
    }

    #[test]
    fn kernels_follow_backend_and_mode() {
        let hw = plan(DType::F32, Arch::Qwen2, Backend::Auto).unwrap();
        assert_eq!(hw.kernels(Mode::Train), Kernels::CpuFused);
        assert_eq!(hw.kernels(Mode::Infer), Kernels::CpuInfer);
        let q3 = plan(DType::F32, Arch::Qwen3, Backend::Auto).unwrap();
        assert_eq!((q3.kernels(Mode::Train), q3.kernels(Mode::Infer)), (Kernels::CpuFused, Kernels::CpuInfer));
        assert!(!q3.hand_written_grads());
        let comp = plan(DType::F32, Arch::Qwen2, Backend::Composite).unwrap();
        assert_eq!(comp.kernels(Mode::Infer), Kernels::Composite);
        assert!(!comp.hand_written_grads());
        assert!(Kernels::CpuInfer.small_batch_linear(256) && !Kernels::CpuInfer.small_batch_linear(257));
        assert!(!Kernels::CpuFused.small_batch_linear(1));
    }

    #[test]
    fn impossible_requests_name_the_flag() {
        let e = plan(DType::F32, Arch::Qwen3, Backend::CpuHandwritten).unwrap_err().to_string();
        assert!(e.contains("--backend") && e.contains("cpu-handwritten") && e.contains("Qwen3"), "{e}");
        let e = plan(DType::BF16, Arch::Qwen2, Backend::CpuAutograd).unwrap_err().to_string();
        assert!(e.contains("bf16"), "{e}");
    }

    #[test]
    fn exec_table_round_trips_through_json() {
        let req: ExecRequest = serde_json::from_str(r#"{"device": "cuda:1", "dtype": "bf16"}"#).unwrap();
        assert_eq!(req, ExecRequest { device: DeviceSpec::Cuda(1), dtype: DTypeSpec::Bf16, backend: Backend::Auto });
        let back: ExecRequest = serde_json::from_value(serde_json::to_value(req).unwrap()).unwrap();
        assert_eq!(back, req);
        let e = serde_json::from_str::<ExecRequest>(r#"{"device": "tpu"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown device `tpu`"), "{e}");
        assert!(serde_json::from_str::<ExecRequest>(r#"{"devise": "cpu"}"#).is_err());
    }

    #[test]
    fn parses_user_strings() {
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert!("tpu".parse::<DeviceSpec>().unwrap_err().contains("expected cpu, cuda or cuda:N"));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!("bfloat16".parse::<DTypeSpec>().unwrap(), DTypeSpec::Bf16);
        assert_eq!("cpu-autograd".parse::<Backend>().unwrap(), Backend::CpuAutograd);
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("--device") && e.contains("--features cuda"), "{e}");
    }
}
