//! Which instruction set the integer kernels use, chosen at run time.
//!
//! Every path computes the same exact integer sums (u8 × i8 products accumulated in i32 without
//! saturation), so the choice changes speed only, never a result: the tests run every path the
//! machine has against the naive reference.
//!
//! * [`Isa::Avx512Vnni`]: `vpdpbusd` on 512-bit registers, 64 multiply-adds per instruction.
//! * [`Isa::Avx2`]: u8/i8 widened to i16 and multiplied with `vpmaddwd` (exact; `vpmaddubsw`
//!   would be twice as fast but saturates its i16 pair sums, 2·255·127 > 32767).
//! * [`Isa::Scalar`]: portable Rust, the fallback everywhere else.
//!
//! AMX-INT8 (`tdpbusd`, which this project's Xeon also reports) is not used: its intrinsics are
//! not stable Rust, and on this model the int8 products are no longer the bottleneck once VNNI
//! runs them (see `docs/results/int-exec-cpu.md`).

use std::fmt;

/// An instruction set the integer kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

/// Environment variable that caps the instruction set ([`Isa::detect`]): `scalar`, `avx2` or
/// `avx512vnni`. For measuring the fallbacks on a machine that has more.
pub const ISA_ENV: &str = "DMQ_EXEC_ISA";

impl Isa {
    /// Every instruction set, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    /// Whether this machine can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this machine can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest available path, capped by `$DMQ_EXEC_ISA` when set. An unknown value of the
    /// variable is an error rather than silently ignored.
    pub fn detect() -> Result<Isa, String> {
        let best = *Self::available()
            .last()
            .expect("the scalar path is always available");
        match std::env::var(ISA_ENV) {
            Err(_) => Ok(best),
            Ok(v) => {
                let cap = Self::parse(&v).ok_or_else(|| {
                    format!("${ISA_ENV}={v}: expected one of scalar, avx2, avx512vnni")
                })?;
                Ok(cap.min(best))
            }
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512vnni" | "avx512-vnni" | "vnni" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
