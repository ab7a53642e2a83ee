//! Which type each tensor of a model gets for a file type (`Q4_K_M`, `Q8_0`, ...): llama.cpp's
//! rules, so a file written here has, tensor for tensor, the types llama-quantize gives the same
//! model (`llama_tensor_get_type` and friends in llama.cpp's `src/llama-quant.cpp`, as vendored
//! by llama-cpp-python 0.3.36). `metallic quantize` and `metallic synth` both ask this module;
//! `scripts/reference/compare-quant-types.sh` checks it against llama-quantize.
//!
//! Only the file types without an importance matrix are here (no IQ types, no Q2_K_S, no
//! MXFP4), and only the rules those types reach. Mixture-of-experts rules (8 experts) and the
//! Falcon and Llama-70B special cases are kept, as they cost a line each.

use metallic_gguf::{GgmlType, GgufFile};

use crate::error::{Error, Result};

/// A whole-file quantisation type, llama.cpp's `llama_ftype`. Its [`FileType::id`] is what
/// `general.file_type` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl FileType {
    pub const ALL: [FileType; 17] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q8_0,
        FileType::Q2_K,
        FileType::Q3_K_S,
        FileType::Q3_K_M,
        FileType::Q3_K_L,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];

    /// llama.cpp's `LLAMA_FTYPE_*` value, written as `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2_K => 10,
            FileType::Q3_K_S => 11,
            FileType::Q3_K_M => 12,
            FileType::Q3_K_L => 13,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::BF16 => 32,
        }
    }

    /// llama-quantize's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q8_0 => "Q8_0",
            FileType::Q2_K => "Q2_K",
            FileType::Q3_K_S => "Q3_K_S",
            FileType::Q3_K_M => "Q3_K_M",
            FileType::Q3_K_L => "Q3_K_L",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
        }
    }

    /// Parses a name as llama-quantize does, ignoring ASCII case; `Q3_K`, `Q4_K` and `Q5_K` are
    /// its aliases of the `_M` mixes.
    pub fn from_name(name: &str) -> Option<FileType> {
        let upper = name.to_ascii_uppercase();
        let name = match upper.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            n => n,
        };
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The names [`FileType::from_name`] accepts, for error messages and help.
    pub fn names() -> String {
        let names: Vec<_> = Self::ALL.iter().map(|t| t.name()).collect();
        format!("{} (Q3_K, Q4_K, Q5_K: the _M mixes)", names.join(", "))
    }

    /// The type of the tensors no rule singles out (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q2_K => GgmlType::Q2_K,
            FileType::Q3_K_S | FileType::Q3_K_M | FileType::Q3_K_L => GgmlType::Q3_K,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// The file type whose tensors are all `ty` under `--pure`, if there is one.
    pub fn of_type(ty: GgmlType) -> Option<FileType> {
        Some(match ty {
            GgmlType::F32 => FileType::F32,
            GgmlType::F16 => FileType::F16,
            GgmlType::BF16 => FileType::BF16,
            GgmlType::Q4_0 => FileType::Q4_0,
            GgmlType::Q4_1 => FileType::Q4_1,
            GgmlType::Q5_0 => FileType::Q5_0,
            GgmlType::Q5_1 => FileType::Q5_1,
            GgmlType::Q8_0 => FileType::Q8_0,
            GgmlType::Q2_K => FileType::Q2_K,
            GgmlType::Q3_K => FileType::Q3_K_M,
            GgmlType::Q4_K => FileType::Q4_K_M,
            GgmlType::Q5_K => FileType::Q5_K_M,
            GgmlType::Q6_K => FileType::Q6_K,
            _ => return None,
        })
    }
}

/// llama-quantize's options that change tensor types.
#[derive(Clone, Debug)]
pub struct MixOptions {
    /// `--pure`: every quantisable tensor gets the default type (no per-tensor rules; row
    /// fallbacks still apply).
    pub pure: bool,
    /// `--output-tensor-type`: the type of `output.weight`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`: the type of `token_embd.weight`.
    pub token_embedding_type: Option<GgmlType>,
    /// False for `--leave-output-tensor`: `output.weight` keeps its type.
    pub quantize_output_tensor: bool,
}

impl Default for MixOptions {
    fn default() -> Self {
        MixOptions {
            pure: false,
            output_tensor_type: None,
            token_embedding_type: None,
            quantize_output_tensor: true,
        }
    }
}

/// The hyper-parameters llama.cpp's rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// `general.architecture`, e.g. `qwen2`.
    pub arch: String,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Experts per MoE layer (0 for dense models).
    pub n_expert: usize,
}

impl ModelShape {
    /// Reads the shape from a GGUF's metadata (`{arch}.block_count`, `.attention.head_count`,
    /// `.attention.head_count_kv`, `.expert_count`).
    pub fn from_gguf(file: &GgufFile) -> Result<ModelShape> {
        let arch = file
            .get_str("general.architecture")
            .ok_or_else(|| Error::Config("general.architecture is missing".into()))?
            .to_owned();
        // A per-layer array (some architectures) counts by its first layer, as ggml's loader
        // does for the GQA factor.
        let get = |key: &str| -> Option<u64> {
            let v = file.get(&format!("{arch}.{key}"))?;
            v.as_u64()
                .or_else(|| v.as_array()?.first()?.as_u64())
                .or_else(|| v.as_i64().and_then(|i| u64::try_from(i).ok()))
        };
        let n_layer = get("block_count")
            .ok_or_else(|| Error::Config(format!("{arch}.block_count is missing")))?;
        let n_head = get("attention.head_count").unwrap_or(0);
        let n_head_kv = get("attention.head_count_kv").unwrap_or(n_head);
        let n_expert = get("expert_count").unwrap_or(0);
        let small = |v: u64, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v <= 1 << 20)
                .ok_or_else(|| Error::Config(format!("{arch}.{what} = {v} is out of range")))
        };
        Ok(ModelShape {
            n_layer: small(n_layer, "block_count")?,
            n_head: small(n_head, "attention.head_count")?,
            n_head_kv: small(n_head_kv, "attention.head_count_kv")?,
            n_expert: small(n_expert, "expert_count")?,
            arch,
        })
    }

    /// Query heads per key/value head (`n_gqa`; 0 when unknown).
    fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// llama.cpp singles out Llama 2/3 70B (80 layers, grouped-query attention).
    fn is_llama_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// One tensor as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct TensorDesc<'a> {
    pub name: &'a str,
    /// ggml order: `dims[0]` is the row length.
    pub dims: &'a [u64],
    /// Its type now.
    pub ty: GgmlType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnK,
    AttnV,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    fn of(name: &str) -> Category {
        let has = |s: &str| name.contains(s);
        if name == "output.weight" {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::TokenEmbd
        } else if has("attn_qkv.weight") {
            Category::AttnQkv
        } else if has("attn_kv_b.weight") {
            Category::AttnKvB
        } else if has("attn_v.weight") {
            Category::AttnV
        } else if has("attn_k.weight") {
            Category::AttnK
        } else if has("attn_q.weight") {
            Category::AttnQ
        } else if has("attn_output.weight") {
            Category::AttnOutput
        } else if has("ffn_up") {
            Category::FfnUp
        } else if has("ffn_gate") {
            Category::FfnGate
        } else if has("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }

    /// The attention-value-like tensors, which are more sensitive to quantisation.
    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

/// Dimensions ignoring trailing ones (`ggml_n_dims`).
fn n_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
}

/// `tensor_allows_quantization`: 2-D (or 3-D expert) weights, minus norms, routers and the
/// small tensors llama.cpp leaves alone.
pub fn allows_quantization(name: &str, dims: &[u64], opts: &MixOptions) -> bool {
    const KEEP: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    n_dims(dims) >= 2
        && name.ends_with("weight")
        && (opts.quantize_output_tensor || name != "output.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !KEEP.iter().any(|k| name.contains(k))
}

/// `tensor_type_fallback`: a type whose blocks divide the row, for rows that the chosen type's
/// blocks do not (Qwen2.5-0.5B's 896 columns are not a multiple of 256).
pub fn fallback(ty: GgmlType, row_len: u64) -> GgmlType {
    let fits = |t: GgmlType| row_len.is_multiple_of(t.block_size() as u64);
    if fits(ty) {
        return ty;
    }
    let fb = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    // llama.cpp throws for a 256-block type without a fallback; none of those is reachable
    // here (the IQ types are not written), so F16 is the answer left, as for 32-block types.
    if fits(fb) {
        fb
    } else {
        GgmlType::F16
    }
}

/// The order llama.cpp's loader visits tensors in (`weight_name_comparer`): by layer number
/// (tensors outside `blk.N.` first), then by name. The per-layer counters below depend on it.
fn visit_order(tensors: &[TensorDesc<'_>]) -> Vec<usize> {
    let layer = |name: &str| -> i64 {
        name.strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1)
    };
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (na, nb) = (tensors[a].name, tensors[b].name);
        layer(na).cmp(&layer(nb)).then_with(|| na.cmp(nb))
    });
    order
}

struct State<'s> {
    shape: &'s ModelShape,
    ftype: FileType,
    n_attention_wv: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
    has_tied_embeddings: bool,
}

fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

/// The layer of an expert tensor from its name; the counter for dense models, as llama.cpp's
/// `layer_info`.
fn layer_of(shape: &ModelShape, counter: usize, name: &str) -> usize {
    if shape.n_expert > 1 {
        if let Some(l) = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok())
        {
            return l;
        }
    }
    counter
}

impl State<'_> {
    /// `llama_tensor_get_type_impl` for the file types above.
    fn rule(
        &mut self,
        mut ty: GgmlType,
        t: &TensorDesc<'_>,
        cat: Category,
        opts: &MixOptions,
    ) -> GgmlType {
        use FileType as F;
        use GgmlType as G;
        let ftype = self.ftype;
        let shape = self.shape;
        let n_layer = shape.n_layer;
        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            if let Some(o) = opts.output_tensor_type {
                ty = o;
            } else if shape.is_falcon() || !t.dims[0].is_multiple_of(ty.block_size() as u64) {
                ty = G::Q8_0;
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
            }
        } else if cat == Category::TokenEmbd {
            if let Some(e) = opts.token_embedding_type {
                ty = e;
            }
        } else if cat.is_attn_v() {
            let i = self.i_attention_wv;
            match ftype {
                F::Q2_K => ty = if shape.n_gqa() >= 4 { G::Q4_K } else { G::Q3_K },
                F::Q3_K_M => ty = if i < 2 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => ty = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, self.n_attention_wv) => ty = G::Q6_K,
                F::Q4_K_S if i < 4 => ty = G::Q5_K,
                _ => {}
            }
            if shape.is_llama_70b() && (ty == G::Q3_K || ty == G::Q4_K) {
                // 8 query heads share each value head: more bits cost little there.
                ty = G::Q5_K;
            }
            if shape.n_expert == 8 {
                ty = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if shape.n_expert == 8 {
                ty = G::Q8_0;
            }
        } else if cat == Category::FfnDown {
            let i = layer_of(shape, self.i_ffn_down, t.name);
            match ftype {
                F::Q2_K => ty = G::Q3_K,
                F::Q3_K_M => {
                    ty = if i < n_layer / 16 {
                        G::Q5_K
                    } else if !shape.is_falcon() || use_more_bits(i, n_layer) {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_L => ty = if shape.is_falcon() { G::Q4_K } else { G::Q5_K },
                F::Q4_K_M => {
                    if shape.is_falcon() {
                        ty = if i < n_layer / 16 {
                            G::Q6_K
                        } else if use_more_bits(i, n_layer) {
                            G::Q5_K
                        } else {
                            G::Q4_K
                        };
                    } else if use_more_bits(i, n_layer) {
                        ty = G::Q6_K;
                    }
                }
                F::Q5_K_M if use_more_bits(i, n_layer) => ty = G::Q6_K,
                F::Q4_K_S if !shape.is_falcon() && i < n_layer / 8 => ty = G::Q5_K,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if !shape.is_falcon() {
                if shape.n_expert == 8 {
                    if matches!(
                        ftype,
                        F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M
                    ) {
                        ty = G::Q5_K;
                    }
                } else {
                    match ftype {
                        F::Q2_K => ty = G::Q3_K,
                        F::Q3_K_M => ty = G::Q4_K,
                        F::Q3_K_L => ty = G::Q5_K,
                        _ => {}
                    }
                }
            } else if ftype == F::Q3_K_L {
                ty = G::Q4_K;
            }
        } else if cat == Category::AttnQkv {
            match ftype {
                F::Q3_K_M | F::Q3_K_L => ty = G::Q4_K,
                F::Q4_K_M => ty = G::Q5_K,
                F::Q5_K_M => ty = G::Q6_K,
                _ => {}
            }
        }
        ty
    }
}

/// The type each tensor gets (in the order given) when a model of `shape` is written as
/// `ftype`: `llama_tensor_get_type` for every tensor, in llama.cpp's visiting order.
pub fn plan(
    ftype: FileType,
    shape: &ModelShape,
    opts: &MixOptions,
    tensors: &[TensorDesc<'_>],
) -> Vec<GgmlType> {
    let cats: Vec<Category> = tensors.iter().map(|t| Category::of(t.name)).collect();
    let mut state = State {
        shape,
        ftype,
        n_attention_wv: cats.iter().filter(|c| c.is_attn_v()).count(),
        i_attention_wv: 0,
        i_ffn_down: 0,
        has_tied_embeddings: !cats.contains(&Category::Output),
    };
    let default = ftype.default_type();
    let mut types: Vec<GgmlType> = tensors.iter().map(|t| t.ty).collect();
    for i in visit_order(tensors) {
        let (t, cat) = (&tensors[i], cats[i]);
        if !allows_quantization(t.name, t.dims, opts) {
            continue;
        }
        types[i] = match (cat, opts.token_embedding_type, opts.output_tensor_type) {
            (Category::TokenEmbd, Some(e), _) => e,
            (Category::Output, _, Some(o)) => o,
            _ if !default.is_quantized() => default,
            _ => {
                let ty = if opts.pure {
                    default
                } else {
                    state.rule(default, t, cat, opts)
                };
                fallback(ty, t.dims[0])
            }
        };
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as G;

    /// The tensors of a Qwen2/Llama-layout model in file order: (name, dims).
    fn layout(
        hidden: u64,
        ffn: u64,
        kv: u64,
        layers: usize,
        vocab: u64,
        bias: bool,
    ) -> Vec<(String, Vec<u64>)> {
        let mut t = vec![("token_embd.weight".to_string(), vec![hidden, vocab])];
        for l in 0..layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            t.push((n("attn_norm.weight"), vec![hidden]));
            t.push((n("attn_q.weight"), vec![hidden, hidden]));
            t.push((n("attn_k.weight"), vec![hidden, kv]));
            t.push((n("attn_v.weight"), vec![hidden, kv]));
            if bias {
                t.push((n("attn_q.bias"), vec![hidden]));
            }
            t.push((n("attn_output.weight"), vec![hidden, hidden]));
            t.push((n("ffn_norm.weight"), vec![hidden]));
            t.push((n("ffn_gate.weight"), vec![hidden, ffn]));
            t.push((n("ffn_up.weight"), vec![hidden, ffn]));
            t.push((n("ffn_down.weight"), vec![ffn, hidden]));
        }
        t.push(("output_norm.weight".to_string(), vec![hidden]));
        t
    }

    fn run(
        ftype: FileType,
        shape: &ModelShape,
        opts: &MixOptions,
        t: &[(String, Vec<u64>)],
    ) -> Vec<(String, GgmlType)> {
        let descs: Vec<TensorDesc<'_>> = t
            .iter()
            .map(|(n, d)| TensorDesc {
                name: n,
                dims: d,
                ty: G::F32,
            })
            .collect();
        let types = plan(ftype, shape, opts, &descs);
        t.iter().map(|(n, _)| n.clone()).zip(types).collect()
    }

    fn ty(types: &[(String, GgmlType)], name: &str) -> GgmlType {
        types.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn qwen05() -> (ModelShape, Vec<(String, Vec<u64>)>) {
        let shape = ModelShape {
            arch: "qwen2".into(),
            n_layer: 24,
            n_head: 14,
            n_head_kv: 2,
            n_expert: 0,
        };
        (shape, layout(896, 4864, 128, 24, 151936, true))
    }

    #[test]
    fn qwen2_5_0_5b_q4_k_m_falls_back_from_k_quants_on_896_wide_rows() {
        let (shape, t) = qwen05();
        let types = run(FileType::Q4_K_M, &shape, &MixOptions::default(), &t);
        // Tied embedding: the output's rule, and 896 is not a multiple of 256.
        assert_eq!(ty(&types, "token_embd.weight"), G::Q8_0);
        assert_eq!(ty(&types, "blk.5.attn_q.weight"), G::Q5_0);
        assert_eq!(ty(&types, "blk.5.ffn_up.weight"), G::Q5_0);
        // use_more_bits(i, 24): i < 3, i >= 21, or (i - 3) % 3 == 2.
        let more = |i: usize| !(3..21).contains(&i) || (i as i64 - 3).rem_euclid(3) == 2;
        for l in 0..24 {
            let (v, d) = if more(l) {
                (G::Q8_0, G::Q6_K)
            } else {
                (G::Q5_0, G::Q4_K)
            };
            assert_eq!(
                ty(&types, &format!("blk.{l}.attn_v.weight")),
                v,
                "layer {l}"
            );
            assert_eq!(
                ty(&types, &format!("blk.{l}.ffn_down.weight")),
                d,
                "layer {l}"
            );
        }
        for n in [
            "blk.0.attn_norm.weight",
            "blk.3.attn_q.bias",
            "output_norm.weight",
        ] {
            assert_eq!(ty(&types, n), G::F32, "{n}");
        }
    }

    #[test]
    fn layers_count_in_numeric_order_not_name_order() {
        // "blk.10" sorts before "blk.2" by name; llama.cpp's loader compares layer numbers.
        let (shape, t) = qwen05();
        let types = run(FileType::Q5_K_M, &shape, &MixOptions::default(), &t);
        assert_eq!(ty(&types, "blk.10.ffn_down.weight"), G::Q5_K);
        assert_eq!(ty(&types, "blk.11.ffn_down.weight"), G::Q6_K);
        assert_eq!(ty(&types, "blk.11.attn_v.weight"), G::Q8_0);
        assert_eq!(ty(&types, "blk.10.attn_v.weight"), G::Q5_1);
    }

    #[test]
    fn pure_and_overrides_follow_llama_quantize_options() {
        let (shape, t) = qwen05();
        let pure = MixOptions {
            pure: true,
            ..MixOptions::default()
        };
        let types = run(FileType::Q4_K_M, &shape, &pure, &t);
        assert_eq!(ty(&types, "blk.0.attn_v.weight"), G::Q5_0);
        assert_eq!(ty(&types, "blk.0.ffn_down.weight"), G::Q4_K);
        assert_eq!(ty(&types, "token_embd.weight"), G::Q5_0);
        let emb = MixOptions {
            token_embedding_type: Some(G::F16),
            ..MixOptions::default()
        };
        assert_eq!(
            ty(
                &run(FileType::Q4_K_M, &shape, &emb, &t),
                "token_embd.weight"
            ),
            G::F16
        );
        // Untied output: output.weight follows the output rule, the embedding the default.
        let mut untied = t.clone();
        untied.push(("output.weight".into(), vec![896, 151936]));
        let types = run(FileType::Q6_K, &shape, &MixOptions::default(), &untied);
        assert_eq!(ty(&types, "output.weight"), G::Q8_0);
        assert_eq!(ty(&types, "token_embd.weight"), G::Q8_0);
        let leave = MixOptions {
            quantize_output_tensor: false,
            ..MixOptions::default()
        };
        assert_eq!(
            ty(
                &run(FileType::Q6_K, &shape, &leave, &untied),
                "output.weight"
            ),
            G::F32
        );
        let out = MixOptions {
            output_tensor_type: Some(G::Q4_0),
            ..MixOptions::default()
        };
        assert_eq!(
            ty(&run(FileType::Q6_K, &shape, &out, &untied), "output.weight"),
            G::Q4_0
        );
    }

    #[test]
    fn float_file_types_convert_every_weight_and_keep_vectors() {
        let (shape, t) = qwen05();
        let types = run(FileType::F16, &shape, &MixOptions::default(), &t);
        assert_eq!(ty(&types, "token_embd.weight"), G::F16);
        assert_eq!(ty(&types, "blk.0.attn_v.weight"), G::F16);
        assert_eq!(ty(&types, "blk.0.attn_norm.weight"), G::F32);
    }

    #[test]
    fn q2_k_gives_attn_v_more_bits_by_gqa_factor() {
        let (shape, t) = qwen05();
        let types = run(FileType::Q2_K, &shape, &MixOptions::default(), &t);
        // n_gqa 7 >= 4: Q4_K, which falls back to Q5_0 on 896 columns.
        assert_eq!(ty(&types, "blk.0.attn_v.weight"), G::Q5_0);
        assert_eq!(ty(&types, "blk.0.attn_q.weight"), G::Q4_0);
        assert_eq!(ty(&types, "blk.0.ffn_down.weight"), G::Q3_K);
        let smol = ModelShape {
            arch: "llama".into(),
            n_layer: 30,
            n_head: 9,
            n_head_kv: 3,
            n_expert: 0,
        };
        let t = layout(576, 1536, 192, 30, 49152, false);
        let types = run(FileType::Q2_K, &smol, &MixOptions::default(), &t);
        assert_eq!(ty(&types, "blk.0.attn_v.weight"), G::Q4_0);
        assert_eq!(ty(&types, "blk.0.attn_output.weight"), G::Q4_0);
        assert_eq!(ty(&types, "blk.0.ffn_down.weight"), G::Q3_K);
    }

    #[test]
    fn fallback_is_llama_cpps_table() {
        assert_eq!(fallback(G::Q4_K, 896), G::Q5_0);
        assert_eq!(fallback(G::Q5_K, 896), G::Q5_1);
        assert_eq!(fallback(G::Q6_K, 896), G::Q8_0);
        assert_eq!(fallback(G::Q3_K, 896), G::Q4_0);
        assert_eq!(fallback(G::Q2_K, 896), G::Q4_0);
        assert_eq!(fallback(G::Q4_K, 1024), G::Q4_K);
        assert_eq!(fallback(G::Q4_K, 100), G::F16);
        assert_eq!(fallback(G::Q8_0, 100), G::F16);
    }

    #[test]
    fn file_type_names_parse_with_llama_quantize_aliases() {
        assert_eq!(FileType::from_name("q4_k_m"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::from_name("Q4_K"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::from_name("Q5_K"), Some(FileType::Q5_K_M));
        assert_eq!(FileType::from_name("IQ2_XXS"), None);
        assert_eq!(FileType::Q4_K_M.id(), 15);
        assert_eq!(FileType::BF16.id(), 32);
    }
}
