//! This CPU's theoretical fp32 peak, derived from `/proc/cpuinfo`:
//! physical cores × clock (GHz) × fp32 FLOPs per cycle per core.
//!
//! FLOPs per cycle come from the widest FMA the flags advertise, assuming two FMA pipes per core
//! (true of recent Intel server cores and of AMD Zen 2–4): AVX-512 (`avx512f`): 2 × 16 lanes × 2
//! = 64; AVX2 + FMA: 2 × 8 × 2 = 32; AVX without FMA: 16; otherwise SSE: 8. Zen 4 executes
//! AVX-512 as two 256-bit halves, so it is counted at 32. The clock is `cpu MHz` (the nominal or
//! current frequency the kernel reports; turbo can exceed it, so the peak is approximate).

/// What the benchmark needs to know about the CPU.
#[derive(Debug, Clone)]
pub struct CpuInfo {
    /// `model name` from `/proc/cpuinfo`.
    pub model: String,
    /// `cpu family` and `model` numbers, e.g. "family 26, model 2" (a model name such as "AMD
    /// EPYC" does not say which generation); empty when absent.
    pub generation: String,
    /// Distinct (physical id, core id) pairs; logical CPUs when those are absent.
    pub cores: usize,
    /// Clock in GHz.
    pub ghz: f64,
    /// fp32 FLOPs per cycle per core.
    pub flops_per_cycle: f64,
    /// Which vector unit the figure assumes.
    pub isa: &'static str,
}

impl CpuInfo {
    /// Reads `/proc/cpuinfo` (falls back to one core at 1 GHz, SSE, where it is unreadable).
    pub fn detect() -> Self {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::parse(&text)
    }

    /// Parses `/proc/cpuinfo` text.
    pub fn parse(text: &str) -> Self {
        let field = |name: &str| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
        let generation = match (field("cpu family"), field("model")) {
            (Some(f), Some(m)) => format!("family {f}, model {m}"),
            _ => String::new(),
        };
        let ghz = field("cpu MHz").and_then(|m| m.parse::<f64>().ok()).map_or(1.0, |m| m / 1000.0);
        let flags = field("flags").unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let zen4 = model.contains("EPYC") && has("avx512f") && field("cpu family").as_deref() == Some("25");
        let (isa, flops_per_cycle) = if has("avx512f") && !zen4 {
            ("AVX-512 FMA, 2 pipes", 64.0)
        } else if has("avx2") && has("fma") {
            ("AVX2 FMA, 2 pipes", 32.0)
        } else if has("avx") {
            ("AVX, no FMA", 16.0)
        } else {
            ("SSE", 8.0)
        };
        Self { model, generation, cores: physical_cores(text), ghz, flops_per_cycle, isa }
    }

    /// Theoretical fp32 peak in GFLOP/s.
    pub fn peak_gflops(&self) -> f64 {
        self.cores as f64 * self.ghz * self.flops_per_cycle
    }

    /// The line every benchmark prints first: the CPU, its peak, and the decode kernel's
    /// instructions (`AHA_SIMD=avx2` makes it run its AVX2 code; gemm's kernels are chosen by gemm).
    pub fn header(&self) -> String {
        let generation = if self.generation.is_empty() { String::new() } else { format!(" ({})", self.generation) };
        format!(
            "cpu: {}{generation} | {} | decode kernel: {} (AHA_SIMD)",
            self.model,
            self.peak_description(),
            aha_model::cpu::simd().name()
        )
    }

    /// One line saying how the peak was derived.
    pub fn peak_description(&self) -> String {
        format!(
            "fp32 peak {:.1} GFLOP/s = {} cores × {:.2} GHz × {} FLOP/cycle ({})",
            self.peak_gflops(),
            self.cores,
            self.ghz,
            self.flops_per_cycle,
            self.isa
        )
    }
}

/// Counts distinct (physical id, core id) pairs, or processors when those fields are missing.
fn physical_cores(text: &str) -> usize {
    let mut pairs = std::collections::HashSet::new();
    let mut processors = 0;
    let (mut phys, mut core) = (None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => processors += 1,
            "physical id" => phys = Some(v.trim().to_string()),
            "core id" => core = Some(v.trim().to_string()),
            _ => {}
        }
        if let (Some(p), Some(c)) = (&phys, &core) {
            pairs.insert((p.clone(), c.clone()));
            (phys, core) = (None, None);
        }
    }
    if pairs.is_empty() {
        processors.max(1)
    } else {
        pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_physical_cores_and_fma_width() {
        let cpu = "processor\t: 0\nmodel name\t: Xeon\ncpu MHz\t\t: 2000.0\nphysical id\t: 0\ncore id\t\t: 0\n\
                   flags\t\t: sse avx avx2 fma avx512f\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t\t: 0\n\n\
                   processor\t: 2\nphysical id\t: 0\ncore id\t\t: 1\n";
        let info = CpuInfo::parse(cpu);
        assert_eq!(info.cores, 2, "hyper-threads share a core");
        assert_eq!(info.flops_per_cycle, 64.0);
        assert!((info.peak_gflops() - 256.0).abs() < 1e-9);
    }

    #[test]
    fn avx2_without_topology_counts_processors() {
        let info = CpuInfo::parse("processor : 0\ncpu MHz : 3000\nflags : avx avx2 fma\nprocessor : 1\n");
        assert_eq!((info.cores, info.flops_per_cycle), (2, 32.0));
    }
}
