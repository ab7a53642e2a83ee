//! Reading the transformers logits goldens written by
//! `scripts/reference/model_logits.py`, and comparing our logits with them
//! (the CPU and CUDA parity tests).

use serde_json::Value;

/// One recorded row of logits: argmax, top-20 and the logits at the file's sampled ids.
pub struct Row {
    pub argmax: usize,
    pub top: Vec<(usize, f32)>,
    pub sampled: Vec<f32>,
}

pub struct PromptGolden {
    pub prompt: Vec<u32>,
    pub rows: Vec<Row>,
    /// Every logit of the prompt's last row, when recorded.
    pub last_logits: Option<Vec<f32>>,
    /// Rows of the first decode steps (greedy, teacher-forced on `greedy`).
    pub decode: Vec<Row>,
    /// Greedy continuation: the argmax after the prompt, then after each step.
    pub greedy: Vec<u32>,
}

pub struct Golden {
    pub source: String,
    pub vocab: usize,
    pub sample_ids: Vec<usize>,
    pub prompts: Vec<PromptGolden>,
}

fn row(v: &Value) -> Row {
    Row {
        argmax: v["argmax"].as_u64().unwrap() as usize,
        top: v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_f64().unwrap() as f32,
                )
            })
            .collect(),
        sampled: v["sampled"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    }
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

impl Golden {
    /// The golden file `name` of the golden folder (e.g. `smollm2_logits.json`).
    pub fn load(name: &str) -> Golden {
        let v = crate::golden_json(name);
        let prompts = v["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PromptGolden {
                prompt: ids(&p["prompt"]),
                rows: p["rows"].as_array().unwrap().iter().map(row).collect(),
                last_logits: p["last_logits_f32le_b64"].as_str().map(|s| {
                    b64_decode(s)
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                }),
                decode: p["decode"].as_array().unwrap().iter().map(row).collect(),
                greedy: ids(&p["greedy"]),
            })
            .collect();
        Golden {
            source: v["source"].as_str().unwrap_or("").to_string(),
            vocab: v["vocab"].as_u64().unwrap() as usize,
            sample_ids: v["sample_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect(),
            prompts,
        }
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// How far our logits are from the reference's.
#[derive(Debug, Default, Clone, Copy)]
pub struct Diff {
    pub max_abs: f32,
    pub cosine: f64,
}

pub fn diff(ours: &[f32], theirs: &[f32]) -> Diff {
    assert_eq!(ours.len(), theirs.len());
    let (mut dot, mut na, mut nb, mut max_abs) = (0f64, 0f64, 0f64, 0f32);
    for (&a, &b) in ours.iter().zip(theirs) {
        assert!(a.is_finite(), "non-finite logit {a}");
        dot += a as f64 * b as f64;
        na += a as f64 * a as f64;
        nb += b as f64 * b as f64;
        max_abs = max_abs.max((a - b).abs());
    }
    Diff {
        max_abs,
        cosine: dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE),
    }
}

impl Diff {
    /// A diff no real one is better than, to fold others into.
    pub fn best() -> Diff {
        Diff {
            max_abs: 0.0,
            cosine: 1.0,
        }
    }

    /// Keep the worse of each measure.
    pub fn fold(&mut self, d: Diff) {
        self.max_abs = self.max_abs.max(d.max_abs);
        self.cosine = self.cosine.min(d.cosine);
    }
}

/// Check every recorded prompt row of prompt `pi` against our `logits`
/// (row-major, `vocab` wide); returns the worst diff.
pub fn check_prompt_rows(
    pi: usize,
    logits: &[f32],
    p: &PromptGolden,
    g: &Golden,
    tol: Tolerance,
) -> Diff {
    let mut worst = Diff::best();
    for (r, want) in p.rows.iter().enumerate() {
        let row = &logits[r * g.vocab..(r + 1) * g.vocab];
        worst.fold(check_row(
            &format!("prompt {pi} row {r}"),
            row,
            want,
            &g.sample_ids,
            tol,
        ));
    }
    worst
}

/// Bounds a backend's logits must meet against the reference.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub max_abs: f32,
    pub min_cosine: f64,
}

/// Compares one of our full logit rows with a recorded row: top-1 identical
/// (unless the reference's own top-2 gap is below the error bound, which is
/// reported as a near-tie and then needs our top-1 to be one of the tied
/// ids), the sampled logits and the top-20 within `tol`. Returns the diff.
pub fn check_row(
    what: &str,
    ours: &[f32],
    golden: &Row,
    sample_ids: &[usize],
    tol: Tolerance,
) -> Diff {
    let mut sampled: Vec<f32> = sample_ids.iter().map(|&i| ours[i]).collect();
    let mut want: Vec<f32> = golden.sampled.clone();
    for &(id, v) in &golden.top {
        sampled.push(ours[id]);
        want.push(v);
    }
    let d = diff(&sampled, &want);
    assert!(
        d.max_abs <= tol.max_abs && d.cosine >= tol.min_cosine,
        "{what}: max abs error {} (allowed {}), cosine {} (needed {})",
        d.max_abs,
        tol.max_abs,
        d.cosine,
        tol.min_cosine
    );
    let ours_top = argmax(ours);
    if ours_top != golden.argmax {
        let gap = golden.top[0].1 - golden.top[1].1;
        let tied: Vec<usize> = golden
            .top
            .iter()
            .filter(|(_, v)| golden.top[0].1 - v <= 2.0 * tol.max_abs)
            .map(|&(i, _)| i)
            .collect();
        assert!(
            gap <= 2.0 * tol.max_abs && tied.contains(&ours_top),
            "{what}: top-1 {ours_top}, reference {} (reference top-2 gap {gap})",
            golden.argmax
        );
    }
    d
}

/// Index of the largest value, the first of equal maxima (as NumPy and
/// PyTorch, which wrote the goldens).
///
/// Not `metallic::eval::argmax`: this crate depends on no metallic crate, so
/// that a golden check does not lean on the code it checks.
pub fn argmax(row: &[f32]) -> usize {
    // Strictly greater replaces, so ties keep the earlier index.
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded_input() {
        assert_eq!(b64_decode("TWFu"), b"Man");
        assert_eq!(b64_decode("TWE="), b"Ma");
        assert_eq!(b64_decode("TQ=="), b"M");
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn diff_measures_worst_error_and_direction() {
        let d = diff(&[1.0, 2.0, 3.0], &[1.0, 2.5, 3.0]);
        assert_eq!(d.max_abs, 0.5);
        assert!(d.cosine < 1.0 && d.cosine > 0.99);
        let mut w = Diff::best();
        w.fold(d);
        w.fold(diff(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]));
        assert_eq!(w.max_abs, 3.0);
        assert_eq!(w.cosine, d.cosine);
    }

    #[test]
    fn every_logits_golden_parses_with_full_rows_of_its_vocab() {
        for name in [
            "smollm2_logits.json",
            "tiny_qwen2_f32_logits.json",
            "tiny_qwen2_q8_0_logits.json",
            "qwen25_05b_f16_logits.json",
        ] {
            let g = Golden::load(name);
            assert!(g.vocab > 0 && !g.prompts.is_empty(), "{name}");
            for p in &g.prompts {
                assert!(!p.rows.is_empty(), "{name}");
                for r in p.rows.iter().chain(&p.decode) {
                    assert!(r.argmax < g.vocab && r.top.len() >= 2, "{name}");
                    assert_eq!(r.sampled.len(), g.sample_ids.len(), "{name}");
                }
                if let Some(l) = &p.last_logits {
                    assert_eq!(l.len(), g.vocab, "{name}");
                }
            }
        }
    }
}
