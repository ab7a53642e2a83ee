//! Logits for evaluation: every row of a prompt in one forward pass, or one
//! decode step, read back to the host. Parity tests and perplexity-style tools
//! use this; generation does not (it keeps logits on the device).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::model::{phase_of, Model, State};

/// Feed `tokens` at positions `st.n_past..` in one forward pass and return the
/// logits of every row (`tokens.len() * vocab`, row-major). The state must
/// have been created with `max_batch` and `logits_rows` of at least `tokens.len()`.
pub fn logits_rows<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    tokens: &[u32],
) -> Result<Vec<f32>> {
    let m = tokens.len();
    let vocab = model.config.vocab;
    if m == 0 {
        return Err(Error::InvalidArgument("no tokens to evaluate".into()));
    }
    let start = st.n_past;
    st.stage(ex.backend, tokens, vocab)?;
    ex.begin_step(phase_of(m, start), m)?;
    model.forward(ex, st, m, start, true)?;
    ex.end_step()?;
    st.n_past += m;
    let mut out = vec![0.0f32; m * vocab];
    ex.backend.read_f32(&st.logits, 0, &mut out)?;
    Ok(out)
}

/// Feed `tokens` at positions `st.n_past..` to fill the KV cache, without
/// computing more than the last row's logits and without reading any back
/// (the unscored half of a perplexity chunk).
pub fn advance<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    tokens: &[u32],
) -> Result<()> {
    let m = tokens.len();
    if m == 0 {
        return Err(Error::InvalidArgument("no tokens to evaluate".into()));
    }
    let start = st.n_past;
    st.stage(ex.backend, tokens, model.config.vocab)?;
    ex.begin_step(phase_of(m, start), m)?;
    model.forward(ex, st, m, start, false)?;
    ex.end_step()?;
    st.n_past += m;
    Ok(())
}

/// Index of the largest value (the first of equal maxima, as argmax in NumPy/PyTorch).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
