//! Which matmul implementation runs a given product.
//!
//! Order of precedence: a forced implementation (`METALLIC_MATMUL_BACKEND`, or
//! the per-op `METALLIC_MATMUL_BACKEND_<OP>`), then a tuned choice (see
//! [`crate::autotune`]: measured now or read from the cache), then the
//! backend's default rule. A forced implementation that cannot run a shape is
//! an error naming the shape; nothing falls back silently.

use std::collections::HashMap;

use crate::autotune::Mode;
use crate::backend::{MatmulImpl, MatmulOp, MatmulShape};
use crate::error::{Error, Result};

/// What the user asked for, parsed once from the environment.
#[derive(Clone, Debug, Default)]
pub struct DispatchConfig {
    /// Forced implementation name for every op, unless an op has its own.
    pub all: Option<String>,
    /// Forced implementation per op.
    pub per_op: Vec<(MatmulOp, String)>,
    /// Whether tuned choices are read from the cache and measured.
    pub autotune: Mode,
}

impl DispatchConfig {
    pub const ENV_ALL: &'static str = "METALLIC_MATMUL_BACKEND";

    pub fn env_for(op: MatmulOp) -> String {
        format!("{}_{}", Self::ENV_ALL, op.name().to_ascii_uppercase())
    }

    pub fn from_env() -> Self {
        let get = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("auto"))
        };
        let mut per_op = Vec::new();
        for op in [
            MatmulOp::Matmul,
            MatmulOp::MatmulBiasAdd,
            MatmulOp::MatmulAlphaBeta,
        ] {
            if let Some(v) = get(&Self::env_for(op)) {
                per_op.push((op, v));
            }
        }
        DispatchConfig {
            all: get(Self::ENV_ALL),
            per_op,
            autotune: Mode::from_env(),
        }
    }

    fn forced(&self, op: MatmulOp) -> Option<&str> {
        self.per_op
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, n)| n.as_str())
            .or(self.all.as_deref())
    }
}

/// Per-shape choices, resolved once per shape and then looked up by hash.
pub struct MatmulDispatch {
    impls: Vec<MatmulImpl>,
    forced: [Option<usize>; 3],
    chosen: HashMap<MatmulShape, usize>,
    tuned: HashMap<MatmulShape, usize>,
    autotune: Mode,
}

fn op_index(op: MatmulOp) -> usize {
    match op {
        MatmulOp::Matmul => 0,
        MatmulOp::MatmulBiasAdd => 1,
        MatmulOp::MatmulAlphaBeta => 2,
    }
}

impl MatmulDispatch {
    pub fn new(impls: &[MatmulImpl], cfg: &DispatchConfig) -> Result<Self> {
        let mut forced = [None; 3];
        for op in [
            MatmulOp::Matmul,
            MatmulOp::MatmulBiasAdd,
            MatmulOp::MatmulAlphaBeta,
        ] {
            if let Some(name) = cfg.forced(op) {
                let idx = impls.iter().position(|i| i.name == name).ok_or_else(|| {
                    Error::UnknownMatmulImpl {
                        name: name.to_string(),
                        known: impls.iter().map(|i| i.name).collect::<Vec<_>>().join(", "),
                    }
                })?;
                forced[op_index(op)] = Some(idx);
            }
        }
        Ok(MatmulDispatch {
            impls: impls.to_vec(),
            forced,
            chosen: HashMap::new(),
            tuned: HashMap::new(),
            autotune: cfg.autotune,
        })
    }

    pub fn impls(&self) -> &[MatmulImpl] {
        &self.impls
    }

    pub fn impl_name(&self, idx: usize) -> &'static str {
        self.impls.get(idx).map(|i| i.name).unwrap_or("?")
    }

    /// Record a tuned winner for a shape (from the autotuner or its cache).
    pub fn set_tuned(&mut self, shape: MatmulShape, idx: usize) {
        self.tuned.insert(shape, idx);
        self.chosen.remove(&shape);
    }

    pub fn is_forced(&self, op: MatmulOp) -> bool {
        self.forced[op_index(op)].is_some()
    }

    pub fn has_choice(&self, shape: &MatmulShape) -> bool {
        self.chosen.contains_key(shape)
    }

    /// The implementation already resolved for `shape`, if any.
    #[inline]
    pub fn chosen(&self, shape: &MatmulShape) -> Option<usize> {
        self.chosen.get(shape).copied()
    }

    pub fn is_tuned(&self, shape: &MatmulShape) -> bool {
        self.tuned.contains_key(shape)
    }

    pub fn autotune(&self) -> Mode {
        self.autotune
    }

    pub fn impl_index(&self, name: &str) -> Option<usize> {
        self.impls.iter().position(|i| i.name == name)
    }

    /// Implementations that declare support for `shape`.
    pub fn eligible(&self, shape: &MatmulShape) -> Vec<usize> {
        (0..self.impls.len())
            .filter(|&i| (self.impls[i].supports)(shape))
            .collect()
    }

    /// The implementation for `shape`, given the backend's default rule.
    pub fn choose(
        &mut self,
        shape: &MatmulShape,
        default: impl FnOnce(&MatmulShape) -> usize,
    ) -> Result<usize> {
        if let Some(&i) = self.chosen.get(shape) {
            return Ok(i);
        }
        let idx = if let Some(f) = self.forced[op_index(shape.op)] {
            if !(self.impls[f].supports)(shape) {
                return Err(Error::MatmulUnsupported {
                    name: self.impls[f].name.to_string(),
                    shape: shape.to_string(),
                });
            }
            f
        } else if let Some(&t) = self.tuned.get(shape) {
            t
        } else {
            default(shape)
        };
        if idx >= self.impls.len() || !(self.impls[idx].supports)(shape) {
            return Err(Error::MatmulUnsupported {
                name: self.impl_name(idx).to_string(),
                shape: shape.to_string(),
            });
        }
        self.chosen.insert(*shape, idx);
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metallic_gguf::GgmlType;

    fn only_m1(s: &MatmulShape) -> bool {
        s.m == 1
    }
    fn any(_: &MatmulShape) -> bool {
        true
    }
    const IMPLS: &[MatmulImpl] = &[
        MatmulImpl {
            name: "small",
            supports: only_m1,
        },
        MatmulImpl {
            name: "big",
            supports: any,
        },
    ];

    fn shape(op: MatmulOp, m: usize) -> MatmulShape {
        MatmulShape {
            op,
            dtype: GgmlType::Q4_1,
            batch: 1,
            m,
            n: 896,
            k: 4864,
            ta: false,
            tb: true,
        }
    }

    #[test]
    fn forced_implementation_that_cannot_run_a_shape_is_an_error_naming_it() {
        let cfg = DispatchConfig {
            all: Some("small".into()),
            ..Default::default()
        };
        let mut d = MatmulDispatch::new(IMPLS, &cfg).unwrap();
        assert_eq!(d.choose(&shape(MatmulOp::Matmul, 1), |_| 1).unwrap(), 0);
        let err = d
            .choose(&shape(MatmulOp::Matmul, 7), |_| 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`small`") && err.contains("m=7 | n=896 | k=4864"),
            "{err}"
        );
    }

    #[test]
    fn per_op_override_beats_the_global_one_and_unknown_names_fail() {
        let cfg = DispatchConfig {
            all: Some("small".into()),
            per_op: vec![(MatmulOp::MatmulBiasAdd, "big".into())],
            ..Default::default()
        };
        let mut d = MatmulDispatch::new(IMPLS, &cfg).unwrap();
        assert_eq!(
            d.choose(&shape(MatmulOp::MatmulBiasAdd, 1), |_| 0).unwrap(),
            1
        );
        assert_eq!(d.choose(&shape(MatmulOp::Matmul, 1), |_| 1).unwrap(), 0);
        let bad = DispatchConfig {
            all: Some("nope".into()),
            ..Default::default()
        };
        let err = MatmulDispatch::new(IMPLS, &bad).err().unwrap().to_string();
        assert!(err.contains("nope") && err.contains("small, big"), "{err}");
        assert_eq!(
            DispatchConfig::env_for(MatmulOp::MatmulBiasAdd),
            "METALLIC_MATMUL_BACKEND_MATMUL_BIAS_ADD"
        );
    }

    #[test]
    fn tuned_choice_beats_the_default_rule() {
        let mut d = MatmulDispatch::new(IMPLS, &DispatchConfig::default()).unwrap();
        let s = shape(MatmulOp::Matmul, 1);
        d.set_tuned(s, 1);
        assert_eq!(d.choose(&s, |_| 0).unwrap(), 1);
        let other = shape(MatmulOp::Matmul, 2);
        assert_eq!(d.choose(&other, |_| 1).unwrap(), 1);
        // A default rule that names an implementation unable to run the shape is caught too.
        let third = shape(MatmulOp::Matmul, 3);
        assert!(d.choose(&third, |_| 0).is_err());
    }
}
