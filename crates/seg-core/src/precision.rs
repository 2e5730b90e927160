//! Arithmetic precision of the CPU convolutions: fp32, or bfloat16 operands
//! with fp32 accumulation where the CPU has bf16 dot-product instructions.
//!
//! The precision is a per-thread setting ([`set`], [`scoped`]) read when a
//! convolution op is built: the op keeps it for its forward pass and its
//! backward pass, so a training step computed on one thread is all in one
//! precision whatever other threads do. [`crate::on_worker`] carries the
//! caller's setting onto the worker thread that runs the step.
//!
//! In bf16 the convolutions round their inputs and weights (forward), output
//! gradients and weights (input gradient), or inputs and output gradients
//! (weight gradient) to bfloat16 (round to nearest even) and accumulate the
//! products in fp32 (`VDPBF16PS`). Activations, weights, optimiser state,
//! norm statistics and the loss stay fp32 tensors. Error bound of one
//! output: `|y_bf16 − y_fp32| <= (2^-7 + n·2^-23) · Σ|x_i·w_i|` over the
//! `n` products it sums (each operand's relative rounding error is at most
//! 2^-8; the fp32 sums of the two paths differ by at most n·2^-24 each).

use std::cell::Cell;

/// The arithmetic of the CPU convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 operands and accumulation.
    #[default]
    Fp32,
    /// bfloat16 operands, fp32 accumulation.
    Bf16,
}

/// What a user asks for: a precision, or `auto` (bf16 where the CPU has
/// bf16 dot products, else fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    #[default]
    Fp32,
    Bf16,
    Auto,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::fmt::Display for PrecisionChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrecisionChoice::Fp32 => "fp32",
            PrecisionChoice::Bf16 => "bf16",
            PrecisionChoice::Auto => "auto",
        })
    }
}

impl std::str::FromStr for PrecisionChoice {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Self::Fp32),
            "bf16" => Ok(Self::Bf16),
            "auto" => Ok(Self::Auto),
            _ => Err(crate::Error::UnknownPrecision(s.to_string())),
        }
    }
}

/// The bf16 instructions a CPU offers, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Isa {
    /// AMX tiles with TDPBF16PS (Sapphire Rapids and later Xeons): the
    /// convolutions' forward and input-gradient products with whole blocks
    /// of 32 input channels; AVX512-BF16, which these CPUs also have, runs
    /// the rest.
    Amx,
    /// AVX-512 with VDPBF16PS (Zen 4 and later, Cooper Lake, Sapphire Rapids).
    Avx512Bf16,
}

/// The CPU's bf16 features as (AMX-BF16, AVX512-BF16), read once.
pub fn cpu_bf16_features() -> (bool, bool) {
    // CPUID traps to the hypervisor in a VM (microseconds): ask once
    static FEATURES: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();
    *FEATURES.get_or_init(read_cpu_bf16_features)
}

fn read_cpu_bf16_features() -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 =
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16");
        // CPUID leaf 7 sub-leaf 0, EDX bit 22: AMX-BF16 (the OS must also
        // grant the tile state: [`amx_tiles`])
        let amx = std::arch::x86_64::__cpuid_count(7, 0).edx >> 22 & 1 == 1;
        (amx, avx512)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (false, false)
    }
}

/// True when the AMX tiles can run: the CPU has AMX-BF16 and AVX512-BF16
/// (the kernels' epilogues), and the OS granted the tile state (Linux:
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once per
/// process).
pub fn amx_tiles() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(|| {
        let (amx, avx512) = cpu_bf16_features();
        amx && avx512 && grant_amx()
    })
}

fn grant_amx() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only extends the
        // process's permitted XSAVE features.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// The best bf16 instruction set seg's kernels use here: AMX (with
/// AVX512-BF16 for what the tiles do not take), AVX512-BF16, or `None`.
pub fn bf16_kernels() -> Option<Bf16Isa> {
    let (_, avx512) = cpu_bf16_features();
    if !avx512 {
        None
    } else if amx_tiles() {
        Some(Bf16Isa::Amx)
    } else {
        Some(Bf16Isa::Avx512Bf16)
    }
}

/// A line for logs: the CPU's bf16 features and what seg runs.
pub fn describe_cpu() -> String {
    let (amx, avx512) = cpu_bf16_features();
    format!(
        "AMX-BF16 {}, AVX512-BF16 {}; bf16 kernels: {}",
        if amx { "yes" } else { "no" },
        if avx512 { "yes" } else { "no" },
        match bf16_kernels() {
            Some(Bf16Isa::Amx) => "AMX tiles (TDPBF16PS) + AVX512-BF16 (VDPBF16PS)",
            Some(Bf16Isa::Avx512Bf16) if amx => {
                "AVX512-BF16 (VDPBF16PS; the OS did not grant the AMX tile state)"
            }
            Some(Bf16Isa::Avx512Bf16) => "AVX512-BF16 (VDPBF16PS)",
            None => "none (fp32 only)",
        }
    )
}

impl PrecisionChoice {
    /// The precision to run: `auto` is bf16 where [`bf16_kernels`] has a
    /// kernel, else fp32; `bf16` on a CPU without one is an error.
    pub fn resolve(self) -> crate::Result<Precision> {
        match self {
            PrecisionChoice::Fp32 => Ok(Precision::Fp32),
            PrecisionChoice::Auto => Ok(if bf16_kernels().is_some() {
                Precision::Bf16
            } else {
                Precision::Fp32
            }),
            PrecisionChoice::Bf16 => {
                if bf16_kernels().is_some() {
                    Ok(Precision::Bf16)
                } else {
                    Err(crate::Error::Bf16Unsupported(describe_cpu()))
                }
            }
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::Fp32) };
}

/// This thread's precision (fp32 unless [`set`]).
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Sets this thread's precision; bf16 falls back to fp32 on a CPU without
/// bf16 kernels (resolve a [`PrecisionChoice`] first to report that).
pub fn set(p: Precision) {
    let p = if p == Precision::Bf16 && bf16_kernels().is_none() {
        Precision::Fp32
    } else {
        p
    };
    CURRENT.with(|c| c.set(p));
}

/// Restores the previous precision when dropped (see [`scoped`]).
pub struct Restore(Precision);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Sets this thread's precision until the returned guard is dropped.
#[must_use = "the precision is restored when the guard is dropped"]
pub fn scoped(p: Precision) -> Restore {
    let before = current();
    set(p);
    Restore(before)
}
