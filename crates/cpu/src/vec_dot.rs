//! Dot products of one weight row (in its GGUF block format) with one
//! activation row, or with several sharing each decoded weight block
//! ([`Kernels::quant_rows`]), per SIMD level.
//!
//! Quantised weights (Q4_0, Q4_1, Q8_0; Q5_0, Q5_1, Q4_K, Q5_K and Q6_K with
//! SIMD kernels on AVX-512 only, scalar ones at the other levels) are multiplied with Q8 activations
//! ([`crate::q8_act`]) in integer arithmetic, one float multiply-add per
//! block; float weights (F32, F16) with f32 activations. Q4_0, Q4_1 and Q8_0
//! with AVX-512 have tile kernels ([`Kernels::quant_tile`], 16 weight rows a call)
//! that the decode drivers use; the level's other entry points of those
//! types run them too (one row in every lane: 16 times the work, for
//! bit-identical results). The CUDA backend's
//! `vecdot` does the same arithmetic for these types. The level is detected at run
//! time; `METALLIC_CPU_SIMD=scalar|avx2|avx512|neon|neon-dot` forces a lower
//! one (for measurements and tests).

use std::sync::OnceLock;

use metallic_gguf::quant::f16_to_f32;
use metallic_gguf::GgmlType;

use crate::q8_act::{Q8Row, QK};

/// Instruction sets a kernel set is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/DQ/VL with VNNI (`vpdpbusd`).
    Avx512,
    /// aarch64 NEON without the dot-product extension (Cortex-A53/A72).
    Neon,
    /// NEON with the Armv8.2 dot-product extension (`sdot`): Apple silicon,
    /// Graviton 2+, Ampere, Cortex-A76+.
    NeonDot,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
            SimdLevel::NeonDot => "neon-dot",
        }
    }

    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" => Some(SimdLevel::Avx512),
            "neon" => Some(SimdLevel::Neon),
            "neon-dot" => Some(SimdLevel::NeonDot),
            _ => None,
        }
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                SimdLevel::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every level, narrowest first per architecture: the widest available
    /// one is the last of these that [`SimdLevel::available`] accepts.
    pub const ALL: [SimdLevel; 5] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Neon,
        SimdLevel::NeonDot,
    ];
}

/// Bytes of one block and values per block of the weight types these kernels read.
pub fn block_bytes(ty: GgmlType) -> Option<(usize, usize)> {
    match ty {
        GgmlType::Q4_0 => Some((18, 32)),
        GgmlType::Q4_1 => Some((20, 32)),
        GgmlType::Q8_0 => Some((34, 32)),
        GgmlType::Q5_0 => Some((22, 32)),
        GgmlType::Q5_1 => Some((24, 32)),
        GgmlType::Q4_K => Some((144, 256)),
        GgmlType::Q5_K => Some((176, 256)),
        GgmlType::Q6_K => Some((210, 256)),
        GgmlType::F16 => Some((2, 1)),
        GgmlType::F32 => Some((4, 1)),
        _ => None,
    }
}

/// Weight types with a kernel here.
pub fn supported(ty: GgmlType) -> bool {
    block_bytes(ty).is_some()
}

/// Whether rows of `k` values of `ty` are whole blocks (and, for quantised
/// types, whole Q8 activation blocks).
pub fn supports_k(ty: GgmlType, k: usize) -> bool {
    block_bytes(ty).is_some_and(|(_, vals)| k.is_multiple_of(vals))
        && (!needs_q8(ty) || k.is_multiple_of(QK))
}

/// Quantised weights need Q8 activations; float weights take f32 ones.
pub fn needs_q8(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q8_0
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

type QDot = unsafe fn(&[u8], Q8Row<'_>) -> f32;
/// One weight row against several activation rows, each weight block decoded
/// once (`out[i]` for `a[i]`; both of one length).
type QDotRows = unsafe fn(&[u8], &[Q8Row<'_>], &mut [f32]);
type FDot = unsafe fn(&[u8], &[f32]) -> f32;
/// Up to four consecutive weight rows (`stride` bytes apart) against one
/// activation row, sharing each activation block's loads: `out[i]` for row
/// `i`, bit for bit the one-row kernel's result.
type QDotGroup = unsafe fn(&[u8], usize, usize, Q8Row<'_>, &mut [f32]);

#[derive(Clone, Copy)]
struct Q5Kernels {
    one: [QDot; 2],
    rows: [QDotRows; 2],
    group: [QDotGroup; 2],
}

/// Most weight rows a group kernel takes at once.
pub const GROUP_ROWS: usize = 4;

/// Weight rows of a tile kernel call: one per 32-bit lane of a 512-bit register.
pub const TILE_ROWS: usize = 16;
/// Most activation rows a tile kernel call takes.
pub const TILE_ACTS: usize = 4;

/// Up to [`TILE_ROWS`] consecutive weight rows (`stride` bytes apart) against
/// up to [`TILE_ACTS`] activation rows: `out[r * TILE_ROWS + i]` for weight
/// row `i` and activation row `r`; the last slice is prefetched meanwhile.
type QDotTile = unsafe fn(&[u8], usize, usize, &[Q8Row<'_>], &mut [f32], &[u8]);

/// One level's kernels. Built only through [`Kernels::for_level`], which
/// checks that the CPU has the instructions, so calling them is sound.
#[derive(Clone, Copy)]
pub struct Kernels {
    level: SimdLevel,
    q4_0: QDot,
    q4_1: QDot,
    q8_0: QDot,
    /// Multi-row kernels of Q4_0, Q4_1 and Q8_0 where the level has them (AVX2,
    /// AVX-512; NEON does not yet); for other types and levels
    /// [`Kernels::quant_rows`] runs the one-row kernel per row.
    rows: Option<[QDotRows; 3]>,
    /// Weight-row group kernels of Q4_0, Q4_1 and Q8_0 where the level has
    /// them (AVX-512); else [`Kernels::quant_group`] runs rows one by one.
    group: Option<[QDotGroup; 3]>,
    /// Q5_0 and Q5_1 kernels (one row, several activation rows, a group of
    /// weight rows) where the level has them (AVX-512); else the scalar
    /// one-row kernels.
    q5: Option<Q5Kernels>,
    /// The Q4_0, Q4_1 and Q8_0 tile kernels where the level has them (AVX-512):
    /// the decode drivers then run those types through them, and the
    /// level's other entry points of those types are the tile kernels too
    /// (the same bits for a row however it runs).
    tiles: Option<[QDotTile; 3]>,
    /// Q4_K where the level has a SIMD kernel (AVX-512); else the scalar one.
    q4_k: Option<QDot>,
    /// Q6_K where the level has a SIMD kernel (AVX-512); else the scalar one.
    q6_k: Option<QDot>,
    /// Q5_K where the level has a SIMD kernel (AVX-512); else the scalar one.
    q5_k: Option<QDot>,
    f16: FDot,
    f32: FDot,
}

impl Kernels {
    pub fn for_level(level: SimdLevel) -> Option<Kernels> {
        if !level.available() {
            return None;
        }
        Some(match level {
            SimdLevel::Scalar => Kernels {
                level,
                q4_0: scalar::q4_0,
                q4_1: scalar::q4_1,
                q8_0: scalar::q8_0,
                rows: None,
                group: None,
                q5: None,
                tiles: None,
                q4_k: None,
                q6_k: None,
                q5_k: None,
                f16: scalar::f16,
                f32: scalar::f32,
            },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Kernels {
                level,
                q4_0: crate::vec_dot_x86::q4_0_avx2,
                q4_1: crate::vec_dot_x86::q4_1_avx2,
                q8_0: crate::vec_dot_x86::q8_0_avx2,
                rows: Some([
                    crate::vec_dot_x86::q4_0_avx2_rows,
                    crate::vec_dot_x86::q4_1_avx2_rows,
                    crate::vec_dot_x86::q8_0_avx2_rows,
                ]),
                group: None,
                q5: None,
                tiles: None,
                q4_k: None,
                q6_k: None,
                q5_k: None,
                f16: crate::vec_dot_x86::f16_avx2,
                f32: crate::vec_dot_x86::f32_avx2,
            },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => Kernels {
                level,
                q4_0: crate::vec_dot_x86::q4_0_avx512,
                q4_1: crate::vec_dot_x86::q4_1_avx512,
                q8_0: crate::vec_dot_x86::q8_0_avx512,
                rows: Some([
                    crate::vec_dot_x86::q4_0_avx512_rows,
                    crate::vec_dot_x86::q4_1_avx512_rows,
                    crate::vec_dot_x86::q8_0_avx512_rows,
                ]),
                group: Some([
                    crate::vec_dot_x86::q4_0_avx512_group,
                    crate::vec_dot_x86::q4_1_avx512_group,
                    crate::vec_dot_x86::q8_0_avx512_group,
                ]),
                tiles: Some([
                    crate::vec_dot_x86::q4_0_avx512_tile,
                    crate::vec_dot_x86::q4_1_avx512_tile,
                    crate::vec_dot_x86::q8_0_avx512_tile,
                ]),
                q4_k: Some(crate::vec_dot_x86::q4_k_avx512),
                q6_k: Some(crate::vec_dot_x86::q6_k_avx512),
                q5_k: Some(crate::vec_dot_x86::q5_k_avx512),
                q5: Some(Q5Kernels {
                    one: [
                        crate::vec_dot_x86::q5_0_avx512,
                        crate::vec_dot_x86::q5_1_avx512,
                    ],
                    rows: [
                        crate::vec_dot_x86::q5_0_avx512_rows,
                        crate::vec_dot_x86::q5_1_avx512_rows,
                    ],
                    group: [
                        crate::vec_dot_x86::q5_0_avx512_group,
                        crate::vec_dot_x86::q5_1_avx512_group,
                    ],
                }),
                f16: crate::vec_dot_x86::f16_avx512,
                f32: crate::vec_dot_x86::f32_avx512,
            },
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => Kernels {
                level,
                q4_0: crate::neon::q4_0_plain,
                q4_1: crate::neon::q4_1_plain,
                q8_0: crate::neon::q8_0_plain,
                rows: None,
                group: None,
                q5: None,
                tiles: None,
                q4_k: None,
                q6_k: None,
                q5_k: None,
                f16: crate::neon::f16_row,
                f32: crate::neon::f32_row,
            },
            #[cfg(target_arch = "aarch64")]
            SimdLevel::NeonDot => Kernels {
                level,
                q4_0: crate::neon::q4_0_dot,
                q4_1: crate::neon::q4_1_dot,
                q8_0: crate::neon::q8_0_dot,
                rows: None,
                group: None,
                q5: None,
                tiles: None,
                q4_k: None,
                q6_k: None,
                q5_k: None,
                f16: crate::neon::f16_row,
                f32: crate::neon::f32_row,
            },
            #[allow(unreachable_patterns)]
            _ => return None,
        })
    }

    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// Whether this level has a SIMD kernel for `ty` (else it runs the
    /// scalar one, slower than `fdot`'s SIMD kernels with f32 activations).
    pub fn has_simd(&self, ty: GgmlType) -> bool {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::F16 | GgmlType::F32 => {
                self.level != SimdLevel::Scalar
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => self.q5.is_some(),
            GgmlType::Q4_K => self.q4_k.is_some(),
            GgmlType::Q6_K => self.q6_k.is_some(),
            GgmlType::Q5_K => self.q5_k.is_some(),
            _ => false,
        }
    }

    /// Dot of a quantised weight row with a Q8 activation row of the same length.
    #[inline]
    pub fn quant(&self, ty: GgmlType, w: &[u8], a: Q8Row<'_>) -> f32 {
        let nb = a.d.len();
        assert!(a.qs.len() == nb * QK && a.s.len() == nb);
        let f = match ty {
            GgmlType::Q4_0 => self.q4_0,
            GgmlType::Q4_1 => self.q4_1,
            GgmlType::Q8_0 => self.q8_0,
            GgmlType::Q5_0 => self.q5.map_or(scalar::q5_0 as QDot, |k| k.one[0]),
            GgmlType::Q5_1 => self.q5.map_or(scalar::q5_1 as QDot, |k| k.one[1]),
            GgmlType::Q4_K => self.q4_k.unwrap_or(scalar::q4_k as QDot),
            GgmlType::Q5_K => self.q5_k.unwrap_or(scalar::q5_k as QDot),
            GgmlType::Q6_K => self.q6_k.unwrap_or(scalar::q6_k as QDot),
            _ => return f32::NAN,
        };
        let (bytes, vals) = block_bytes(ty).expect("a type with a kernel");
        assert!((nb * QK).is_multiple_of(vals) && w.len() >= nb * QK / vals * bytes);
        // SAFETY: `for_level` checked the CPU features; lengths are checked above.
        unsafe { f(w, a) }
    }

    /// Dots of one quantised weight row with several Q8 activation rows of its
    /// length: `out[i]` gets `a[i]`'s, bit for bit what [`Kernels::quant`]
    /// gives for that row alone (the multi-row kernels keep each row's
    /// arithmetic separate and in the one-row order; see vec_dot_x86.rs).
    #[inline]
    pub fn quant_rows(&self, ty: GgmlType, w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
        assert_eq!(a.len(), out.len());
        let Some(first) = a.first() else { return };
        let nb = first.d.len();
        let kernel = match (ty, self.rows, self.q5) {
            (GgmlType::Q4_0, Some(k), _) => Some((k[0], 18)),
            (GgmlType::Q4_1, Some(k), _) => Some((k[1], 20)),
            (GgmlType::Q8_0, Some(k), _) => Some((k[2], 34)),
            (GgmlType::Q5_0, _, Some(k)) => Some((k.rows[0], 22)),
            (GgmlType::Q5_1, _, Some(k)) => Some((k.rows[1], 24)),
            _ => None,
        };
        // Types or levels without a multi-row kernel: the one-row kernel per row.
        let Some((f, bytes)) = kernel else {
            for (o, &r) in out.iter_mut().zip(a) {
                *o = self.quant(ty, w, r);
            }
            return;
        };
        for r in a {
            assert!(r.d.len() == nb && r.qs.len() == nb * QK && r.s.len() == nb);
        }
        assert!(w.len() >= nb * bytes);
        // SAFETY: `for_level` checked the CPU features; lengths are checked above.
        unsafe { f(w, a, out) }
    }

    /// Dots of `out.len()` (at most [`GROUP_ROWS`]) consecutive weight rows
    /// of `ty`, `stride` bytes apart from the start of `w`, with one Q8
    /// activation row: `out[i]` is bit for bit [`Kernels::quant`] of row `i`.
    #[inline]
    pub fn quant_group(
        &self,
        ty: GgmlType,
        w: &[u8],
        stride: usize,
        a: Q8Row<'_>,
        out: &mut [f32],
    ) {
        let rows = out.len();
        assert!(rows <= GROUP_ROWS);
        let kernel = match (ty, self.group, self.q5) {
            (GgmlType::Q4_0, Some(k), _) => Some((k[0], 18)),
            (GgmlType::Q4_1, Some(k), _) => Some((k[1], 20)),
            (GgmlType::Q8_0, Some(k), _) => Some((k[2], 34)),
            (GgmlType::Q5_0, _, Some(k)) => Some((k.group[0], 22)),
            (GgmlType::Q5_1, _, Some(k)) => Some((k.group[1], 24)),
            _ => None,
        };
        let nb = a.d.len();
        let Some((f, bytes)) = kernel else {
            for (j, o) in out.iter_mut().enumerate() {
                *o = self.quant(ty, &w[j * stride..], a);
            }
            return;
        };
        if rows == 0 {
            return;
        }
        assert!(a.qs.len() == nb * QK && a.s.len() == nb);
        assert!(stride >= nb * bytes && w.len() >= (rows - 1) * stride + nb * bytes);
        // SAFETY: `for_level` checked the CPU features; lengths are checked above.
        unsafe { f(w, stride, rows, a, out) }
    }

    /// Whether [`Kernels::quant_tile`] takes `ty` at this level.
    pub fn has_tile(&self, ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) && self.tiles.is_some()
    }

    /// Dots of `rows` (1..=[`TILE_ROWS`]) consecutive weight rows of `ty`,
    /// `stride` bytes apart from the start of `w`, with `a` (1..=[`TILE_ACTS`]
    /// Q8 rows of their length): `out[r * TILE_ROWS + i]` is bit for bit
    /// [`Kernels::quant`] of row `i` with `a[r]`. `next` (any bytes: the
    /// driver's next tile) is prefetched while the tile runs. Panics unless
    /// [`Kernels::has_tile`] of `ty`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn quant_tile(
        &self,
        ty: GgmlType,
        w: &[u8],
        stride: usize,
        rows: usize,
        a: &[Q8Row<'_>],
        out: &mut [f32],
        next: &[u8],
    ) {
        let (f, bytes) = match (ty, self.tiles) {
            (GgmlType::Q4_0, Some(k)) => (k[0], 18),
            (GgmlType::Q4_1, Some(k)) => (k[1], 20),
            (GgmlType::Q8_0, Some(k)) => (k[2], 34),
            _ => panic!("no tile kernel for {} at {}", ty.name(), self.level.name()),
        };
        let Some(first) = a.first() else { return };
        let nb = first.d.len();
        assert!((1..=TILE_ROWS).contains(&rows) && a.len() <= TILE_ACTS);
        assert!(out.len() >= a.len() * TILE_ROWS);
        for r in a {
            assert!(r.d.len() == nb && r.qs.len() == nb * QK && r.s.len() == nb);
        }
        assert!(stride >= nb * bytes && w.len() >= (rows - 1) * stride + nb * bytes);
        // SAFETY: `for_level` checked the CPU features; lengths are checked above.
        unsafe { f(w, stride, rows, a, out, next) }
    }

    /// Dot of a float weight row with `x` (of the row's length).
    #[inline]
    pub fn float(&self, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
        let (f, bytes) = match ty {
            GgmlType::F16 => (self.f16, 2),
            GgmlType::F32 => (self.f32, 4),
            _ => return f32::NAN,
        };
        assert!(w.len() >= x.len() * bytes);
        // SAFETY: as in `quant`.
        unsafe { f(w, x) }
    }
}

/// The widest available level, or the one `METALLIC_CPU_SIMD` asks for when
/// this CPU has it.
pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let wanted = std::env::var("METALLIC_CPU_SIMD")
            .ok()
            .and_then(|s| SimdLevel::parse(&s));
        if let Some(k) = wanted.and_then(Kernels::for_level) {
            return k;
        }
        SimdLevel::ALL
            .iter()
            .rev()
            .find_map(|&l| Kernels::for_level(l))
            .expect("the scalar level is always available")
    })
}

/// How `vecdot`'s decode drivers and tile kernels prefetch the weights
/// ahead of use (`METALLIC_CPU_PREFETCH`): `prefetcht0` by default,
/// `prefetchnta`, or none (the hardware prefetchers alone, as llama.cpp's
/// kernels run). A prefetch has no architectural effect: every choice gives
/// the same bits. `t0` is the default because on an Intel Xeon (the GPU
/// machine's host, 2 MiB L2 a core) `prefetchnta`, which fills L1 only
/// there, lost 1.3-1.9x of decode speed at 2 threads (BENCHMARKS.md,
/// 2026-11-30), while on the development machine's Zen 5 the two measured
/// alike within the noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    Nta,
    T0,
    Off,
}

impl Prefetch {
    pub fn parse(s: &str) -> Option<Prefetch> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nta" => Some(Prefetch::Nta),
            "t0" => Some(Prefetch::T0),
            "off" => Some(Prefetch::Off),
            _ => None,
        }
    }
}

/// The prefetch `METALLIC_CPU_PREFETCH` asks for (read once), else
/// [`Prefetch::T0`]; the CLI refuses a malformed value before any work.
pub fn prefetch_hint() -> Prefetch {
    static P: OnceLock<Prefetch> = OnceLock::new();
    *P.get_or_init(|| {
        std::env::var("METALLIC_CPU_PREFETCH")
            .ok()
            .and_then(|s| Prefetch::parse(&s))
            .unwrap_or(Prefetch::T0)
    })
}

/// Prefetches the cache line holding `p` with `hint` (nothing off x86-64).
#[inline(always)]
pub(crate) fn prefetch_line(hint: Prefetch, p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA, _MM_HINT_T0};
        // SAFETY: a prefetch has no architectural effect, whatever the
        // address; SSE is part of the x86-64 baseline.
        unsafe {
            match hint {
                Prefetch::Nta => _mm_prefetch::<_MM_HINT_NTA>(p as *const i8),
                Prefetch::T0 => _mm_prefetch::<_MM_HINT_T0>(p as *const i8),
                Prefetch::Off => {}
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (hint, p);
}

#[inline]
pub(crate) fn f16_at(w: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([w[off], w[off + 1]]))
}

/// Portable kernels: the fallback and the SIMD kernels' cross-check.
mod scalar {
    use super::*;

    #[inline]
    fn idot(w: impl Iterator<Item = i32>, a: &[i8]) -> i32 {
        w.zip(a).map(|(w, &a)| w * a as i32).sum()
    }

    pub(super) unsafe fn q4_0(w: &[u8], a: Q8Row<'_>) -> f32 {
        let mut sum = 0.0f32;
        for b in 0..a.d.len() {
            let blk = &w[b * 18..(b + 1) * 18];
            let qs = &blk[2..18];
            let lo = qs.iter().map(|&q| (q & 0x0f) as i32);
            let hi = qs.iter().map(|&q| (q >> 4) as i32);
            let aq = &a.qs[b * QK..(b + 1) * QK];
            let dot = idot(lo, &aq[..16]) + idot(hi, &aq[16..]);
            let d = f16_at(blk, 0);
            // x = d (q - 8): the -8 folds into the activation sum.
            sum += d * (a.d[b] * dot as f32 - 8.0 * a.s[b]);
        }
        sum
    }

    pub(super) unsafe fn q4_1(w: &[u8], a: Q8Row<'_>) -> f32 {
        let mut sum = 0.0f32;
        for b in 0..a.d.len() {
            let blk = &w[b * 20..(b + 1) * 20];
            let qs = &blk[4..20];
            let lo = qs.iter().map(|&q| (q & 0x0f) as i32);
            let hi = qs.iter().map(|&q| (q >> 4) as i32);
            let aq = &a.qs[b * QK..(b + 1) * QK];
            let dot = idot(lo, &aq[..16]) + idot(hi, &aq[16..]);
            let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
            sum += d * a.d[b] * dot as f32 + m * a.s[b];
        }
        sum
    }

    /// Q5_0 / Q5_1 block `b`'s 5-bit quants: nibbles at `qs`, fifth bits
    /// in the 32-bit word before them (bit j for element j).
    #[inline]
    fn q5_quants(blk: &[u8], qh_at: usize) -> impl Iterator<Item = i32> + '_ {
        let qh = u32::from_le_bytes([blk[qh_at], blk[qh_at + 1], blk[qh_at + 2], blk[qh_at + 3]]);
        let qs = &blk[qh_at + 4..qh_at + 20];
        (0..32).map(move |j| {
            let nib = if j < 16 {
                qs[j] & 0x0f
            } else {
                qs[j - 16] >> 4
            };
            (nib as i32) | (((qh >> j) & 1) << 4) as i32
        })
    }

    pub(super) unsafe fn q5_0(w: &[u8], a: Q8Row<'_>) -> f32 {
        let mut sum = 0.0f32;
        for b in 0..a.d.len() {
            let blk = &w[b * 22..(b + 1) * 22];
            let dot = idot(q5_quants(blk, 2), &a.qs[b * QK..(b + 1) * QK]);
            // x = d (q - 16): the -16 folds into the activation sum.
            sum += f16_at(blk, 0) * (a.d[b] * dot as f32 - 16.0 * a.s[b]);
        }
        sum
    }

    pub(super) unsafe fn q5_1(w: &[u8], a: Q8Row<'_>) -> f32 {
        let mut sum = 0.0f32;
        for b in 0..a.d.len() {
            let blk = &w[b * 24..(b + 1) * 24];
            let dot = idot(q5_quants(blk, 4), &a.qs[b * QK..(b + 1) * QK]);
            let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
            sum += d * a.d[b] * dot as f32 + m * a.s[b];
        }
        sum
    }

    /// Q4_K / Q5_K: per 32-value group j of a super-block, `x = d sc_j q -
    /// dmin m_j` (6-bit sc_j, m_j packed as ggml's `get_scale_min_k4`); one
    /// integer dot per group. Q5_K's fifth bits: bit j of qh[l] for value l.
    fn q45_k(w: &[u8], a: Q8Row<'_>, five: bool) -> f32 {
        let (size, qs_at) = if five { (176, 48) } else { (144, 16) };
        let mut sum = 0.0f32;
        for (sb, blk) in w.chunks_exact(size).take(a.d.len() / 8).enumerate() {
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let scales: &[u8; 12] = blk[4..16].try_into().expect("12 bytes");
            let qs = &blk[qs_at..qs_at + 128];
            for j in 0..8 {
                let (sc, m) = metallic_gguf::quant::get_scale_min_k4(j, scales);
                let q = (0..32).map(|l| {
                    let byte = qs[32 * (j / 2) + l];
                    let nib = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    let high = if five { (blk[16 + l] >> j) & 1 } else { 0 };
                    (nib as i32) | ((high as i32) << 4)
                });
                let b = sb * 8 + j;
                let dot = idot(q, &a.qs[b * QK..(b + 1) * QK]);
                sum += d * f32::from(sc) * a.d[b] * dot as f32 - dmin * f32::from(m) * a.s[b];
            }
        }
        sum
    }

    pub(super) unsafe fn q4_k(w: &[u8], a: Q8Row<'_>) -> f32 {
        q45_k(w, a, false)
    }

    pub(super) unsafe fn q5_k(w: &[u8], a: Q8Row<'_>) -> f32 {
        q45_k(w, a, true)
    }

    /// Q6_K: `x = d sc (q - 32)`, 6-bit q from ql (nibbles) and qh (two bits),
    /// one i8 scale per 16 values; per 32-value group the two halves' integer
    /// dots, each less 32 times the activations' integer sum, times their scale.
    pub(super) unsafe fn q6_k(w: &[u8], a: Q8Row<'_>) -> f32 {
        let mut sum = 0.0f32;
        for (sb, blk) in w.chunks_exact(210).take(a.d.len() / 8).enumerate() {
            let d = f16_at(blk, 208);
            for g in 0..8 {
                // Group g: half n of the super-block, quarter i of that half.
                let (n, i) = (g / 4, g % 4);
                let b = sb * 8 + g;
                let aq = &a.qs[b * QK..(b + 1) * QK];
                let mut acc = 0i32;
                for part in 0..2 {
                    let (mut dot, mut xs) = (0i32, 0i32);
                    for l in 16 * part..16 * part + 16 {
                        let ql = blk[64 * n + (i & 1) * 32 + l];
                        let qh = blk[128 + 32 * n + l];
                        let q = ((ql >> ((i >> 1) * 4)) & 15) | (((qh >> (2 * i)) & 3) << 4);
                        dot += q as i32 * aq[l] as i32;
                        xs += aq[l] as i32;
                    }
                    let sc = blk[192 + 8 * n + part + 2 * i] as i8 as i32;
                    acc += sc * (dot - 32 * xs);
                }
                sum += d * a.d[b] * acc as f32;
            }
        }
        sum
    }

    pub(super) unsafe fn q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
        let mut sum = 0.0f32;
        for b in 0..a.d.len() {
            let blk = &w[b * 34..(b + 1) * 34];
            let q = blk[2..34].iter().map(|&q| q as i8 as i32);
            let dot = idot(q, &a.qs[b * QK..(b + 1) * QK]);
            sum += f16_at(blk, 0) * a.d[b] * dot as f32;
        }
        sum
    }

    pub(super) unsafe fn f16(w: &[u8], x: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        for (i, (&xv, wb)) in x.iter().zip(w.chunks_exact(2)).enumerate() {
            acc[i % 8] += xv * f16_to_f32(u16::from_le_bytes([wb[0], wb[1]]));
        }
        acc.iter().sum()
    }

    pub(super) unsafe fn f32(w: &[u8], x: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        for (i, (&xv, wb)) in x.iter().zip(w.chunks_exact(4)).enumerate() {
            acc[i % 8] += xv * f32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]]);
        }
        acc.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8_act::Q8Acts;
    use metallic_gguf::quant;

    /// Deterministic values in about [-1, 1] with a few larger ones.
    fn values(seed: u64, len: usize) -> Vec<f32> {
        metallic_test_support::spiky_values(seed, len, 37, 5.0)
    }

    /// The Q4_0, Q4_1 and Q8_0 tile kernels (16 weight rows in lanes, up to four
    /// activation rows) give every (weight row, activation row) pair bit for
    /// bit what the one-row kernel gives it, and what the multi-row and
    /// group entry points give it, for full and partial tiles (1..=16 rows),
    /// 1..=4 activation rows, odd and even block counts, rows more than a
    /// row apart, with a whole, a partial or no next tile to prefetch, and
    /// rows long enough (152 blocks: Q8_0's 5,168 bytes) to be prefetched
    /// along the rows into the next tile; and it agrees
    /// with the scalar kernel to float32 summation order (1e-5 of sum |w x|).
    #[test]
    fn tile_kernel_gives_each_pair_its_one_row_result_bit_for_bit() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            tile_kernel_matches_one_row_kernel(ty);
        }
    }

    fn tile_kernel_matches_one_row_kernel(ty: GgmlType) {
        let scalar = Kernels::for_level(SimdLevel::Scalar).unwrap();
        let levels: Vec<Kernels> = SimdLevel::ALL
            .into_iter()
            .filter_map(Kernels::for_level)
            .filter(|k| k.has_tile(ty))
            .collect();
        if levels.is_empty() {
            eprintln!(
                "skipped: no SIMD level of this CPU has a {} tile kernel",
                ty.name()
            );
            return;
        }
        let (bytes, _) = block_bytes(ty).unwrap();
        for kern in levels {
            for nb in [1usize, 2, 3, 7, 28, 29, 152] {
                let k = nb * QK;
                let row_bytes = nb * bytes;
                for (gap, rows) in [
                    (0usize, 16usize),
                    (bytes, 16),
                    (0, 1),
                    (0, 5),
                    (2 * bytes, 15),
                ] {
                    let stride = row_bytes + gap;
                    // The tile's rows, then a second tile's (the prefetched `next`).
                    let mut w = vec![0u8; stride * 2 * TILE_ROWS];
                    for r in 0..2 * TILE_ROWS {
                        let q = quant::quantize(ty, &values(r as u64 * 11 + nb as u64, k)).unwrap();
                        w[r * stride..r * stride + row_bytes].copy_from_slice(&q);
                    }
                    let (tile, next) = w.split_at(TILE_ROWS * stride);
                    for m in 1..=TILE_ACTS {
                        let x = values(nb as u64 * 5 + m as u64, m * k);
                        let mut acts = Q8Acts::default();
                        acts.quantize(&x, m, k);
                        let a: Vec<Q8Row<'_>> = (0..m).map(|i| acts.row(i)).collect();
                        for next in [next, &next[..3 * stride], &[][..]] {
                            let mut out = vec![f32::NAN; TILE_ACTS * TILE_ROWS];
                            kern.quant_tile(ty, tile, stride, rows, &a, &mut out, next);
                            for (j, row) in a.iter().enumerate() {
                                for i in 0..rows {
                                    let got = out[j * TILE_ROWS + i];
                                    let wr = &tile[i * stride..i * stride + row_bytes];
                                    let what = format!(
                                        "{} {} nb={nb} rows={rows} gap={gap} m={m} row {i} act {j}",
                                        ty.name(),
                                        kern.level().name()
                                    );
                                    let one = kern.quant(ty, wr, *row);
                                    assert_eq!(got.to_bits(), one.to_bits(), "{what}");
                                    let mut many = vec![f32::NAN; m];
                                    kern.quant_rows(ty, wr, &a, &mut many);
                                    assert_eq!(got.to_bits(), many[j].to_bits(), "{what} rows");
                                    let want = scalar.quant(ty, wr, *row);
                                    let mut d = vec![0.0f32; k];
                                    quant::dequantize(ty, wr, &mut d).unwrap();
                                    let xr = &x[j * k..(j + 1) * k];
                                    let abs: f32 =
                                        d.iter().zip(xr).map(|(w, x)| (w * x).abs()).sum();
                                    assert!(
                                        (got - want).abs() <= 1e-5 * abs + 1e-6,
                                        "{what}: {got} vs scalar {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The group kernels (several weight rows per activation load) give
    /// each row bit for bit what the one-row kernel gives it, at every
    /// level (levels without group kernels run the one-row kernel per row),
    /// for every group size, odd and even block counts (the 256-bit tail
    /// block) and rows more than a row apart (`stride` past the row end);
    /// and the SIMD levels agree with the scalar kernels to float32
    /// summation order (1e-5 of sum |w x|).
    #[test]
    fn group_kernels_give_each_row_its_one_row_result_bit_for_bit() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let (bytes, _) = block_bytes(ty).unwrap();
            for nb in [1usize, 2, 3, 7, 28, 29, 152] {
                let k = nb * QK;
                let row_bytes = nb * bytes;
                for (gap, rows) in [(0usize, 1usize), (0, 2), (0, 3), (0, 4), (bytes, 4)] {
                    let stride = row_bytes + gap;
                    let mut w = vec![0u8; stride * rows];
                    for r in 0..rows {
                        let q = quant::quantize(ty, &values(r as u64 + 3, k)).unwrap();
                        w[r * stride..r * stride + row_bytes].copy_from_slice(&q);
                    }
                    let x = values(nb as u64 * 7 + rows as u64, k);
                    let mut acts = Q8Acts::default();
                    acts.quantize(&x, 1, k);
                    let a = acts.row(0);
                    let scalar = Kernels::for_level(SimdLevel::Scalar).unwrap();
                    for kern in SimdLevel::ALL.into_iter().filter_map(Kernels::for_level) {
                        let mut out = vec![f32::NAN; rows];
                        kern.quant_group(ty, &w, stride, a, &mut out);
                        for (r, &got) in out.iter().enumerate() {
                            let wr = &w[r * stride..r * stride + row_bytes];
                            let what = format!(
                                "{} {} nb={nb} rows={rows} gap={gap} row {r}",
                                ty.name(),
                                kern.level().name()
                            );
                            assert_eq!(got.to_bits(), kern.quant(ty, wr, a).to_bits(), "{what}");
                            let want = scalar.quant(ty, wr, a);
                            let deq = {
                                let mut d = vec![0.0f32; k];
                                quant::dequantize(ty, wr, &mut d).unwrap();
                                d
                            };
                            let abs: f32 = deq.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
                            assert!(
                                (got - want).abs() <= 1e-5 * abs + 1e-6,
                                "{what}: {got} vs scalar {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
