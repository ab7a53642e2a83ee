//! Which matmul implementation runs a given product.
//!
//! Order of precedence: a forced implementation (`METALLIC_MATMUL_BACKEND`, or
//! the per-op `METALLIC_MATMUL_BACKEND_<OP>`), then a tuned choice, then the
//! backend's default rule. A forced implementation that cannot run a shape is
//! an error naming the shape; nothing falls back silently.

use std::collections::HashMap;

use crate::backend::{MatmulImpl, MatmulOp, MatmulShape};
use crate::error::{Error, Result};

/// What the user asked for, parsed once from the environment.
#[derive(Clone, Debug, Default)]
pub struct DispatchConfig {
    /// Forced implementation name for every op, unless an op has its own.
    pub all: Option<String>,
    /// Forced implementation per op.
    pub per_op: Vec<(MatmulOp, String)>,
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
