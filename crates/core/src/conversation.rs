//! A multi-turn chat that keeps its KV cache between turns.
//!
//! Each turn renders the whole conversation with the model's chat template and
//! tokenises it, exactly as a one-shot run of the same history would. The
//! tokens already in the cache are matched against that prompt: the longest
//! common prefix is kept and only the rest is prefilled. Where the template
//! renders history differently from what was generated (a reply re-tokenised
//! differently, a template that drops earlier reasoning), the cache is rewound
//! to where they part, so the result is always the one-shot result.

use std::sync::Arc;

use metallic_gguf::GgufFile;

use crate::backend::Backend;
use crate::chat::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::generate::{generate_with, GenerateOptions, Generation, Observer};
use crate::model::{Model, State};
use crate::tokenizer::Tokenizer;

/// The model's chat template (`tokenizer.chat_template`), with its BOS/EOS texts.
pub fn template_of(file: &Arc<GgufFile>, tok: &Tokenizer) -> Result<ChatTemplate> {
    let source = file
        .get_str("tokenizer.chat_template")
        .ok_or_else(|| Error::InvalidArgument("the model has no tokenizer.chat_template".into()))?;
    let piece = |id: Option<u32>| {
        id.and_then(|i| tok.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    ChatTemplate::new(source, &piece(tok.bos_id()), &piece(tok.eos_id()))
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The prompt ids of `messages` followed by the assistant's turn, as
/// transformers' `apply_chat_template(..., add_generation_prompt=True)` then
/// encode (the template writes any BOS itself).
pub fn chat_prompt_ids(
    template: &ChatTemplate,
    tok: &Tokenizer,
    messages: &[Message],
    parse_special: bool,
) -> Result<Vec<u32>> {
    let rendered = template
        .render_messages(messages, true)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(tok.encode(&rendered, parse_special))
}

/// Length of the longest common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Messages plus the token ids their KV cache holds.
pub struct Conversation {
    template: ChatTemplate,
    messages: Vec<Message>,
    /// The tokens in the KV cache, position by position (`len() == st.n_past`
    /// after each turn).
    cached: Vec<u32>,
    /// Treat special-token text in messages as special tokens.
    pub parse_special: bool,
}

/// What the last turn did with the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub prefilled_tokens: usize,
}

impl Conversation {
    pub fn new(template: ChatTemplate, system: Option<&str>) -> Self {
        let mut c = Conversation {
            template,
            messages: Vec::new(),
            cached: Vec::new(),
            parse_special: true,
        };
        c.set_system(system);
        c
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Tokens in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached.len()
    }

    /// Replace (or remove, with `None`) the system message. The cache stays:
    /// the next turn keeps whatever prefix still matches.
    pub fn set_system(&mut self, system: Option<&str>) {
        if self.messages.first().is_some_and(|m| m.role == "system") {
            self.messages.remove(0);
        }
        if let Some(s) = system {
            self.messages.insert(0, Message::system(s));
        }
    }

    pub fn system(&self) -> Option<&str> {
        self.messages
            .first()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
    }

    /// Forget every message but the system one.
    pub fn reset(&mut self) {
        self.messages.retain(|m| m.role == "system");
    }

    /// Replace the whole conversation (e.g. loaded from a file).
    pub fn set_messages(&mut self, messages: Vec<Message>) {
        self.messages = messages;
    }

    /// The prompt the next reply would be generated from.
    pub fn prompt_ids(&self, tok: &Tokenizer) -> Result<Vec<u32>> {
        chat_prompt_ids(&self.template, tok, &self.messages, self.parse_special)
    }

    /// Add `user` and generate the assistant's reply, reusing the cached
    /// prefix. On an error the user message is taken back; an interrupted
    /// reply is kept as far as it went.
    #[allow(clippy::too_many_arguments)]
    pub fn reply<'b, B: Backend>(
        &mut self,
        ex: &mut Exec<'b, B>,
        model: &Model<B>,
        st: &mut State<B>,
        tok: &Tokenizer,
        user: &str,
        opts: &GenerateOptions,
        observer: &mut Observer<'_, 'b, B>,
    ) -> Result<(Generation, TurnStats)> {
        self.messages.push(Message::user(user));
        let r = self.respond(ex, model, st, tok, opts, observer);
        if r.is_err() {
            self.messages.pop();
        }
        r
    }

    /// Generate the assistant's reply to the messages as they are.
    pub fn respond<'b, B: Backend>(
        &mut self,
        ex: &mut Exec<'b, B>,
        model: &Model<B>,
        st: &mut State<B>,
        tok: &Tokenizer,
        opts: &GenerateOptions,
        observer: &mut Observer<'_, 'b, B>,
    ) -> Result<(Generation, TurnStats)> {
        let prompt = self.prompt_ids(tok)?;
        if prompt.is_empty() {
            return Err(Error::InvalidArgument(
                "the chat template rendered nothing".into(),
            ));
        }
        // The cache must match `st` (another user of the state may have reset it).
        self.cached.truncate(st.n_past);
        // At least the last prompt token runs, to have logits to sample from.
        let reused = common_prefix(&self.cached, &prompt).min(prompt.len() - 1);
        st.n_past = reused;
        self.cached.truncate(reused);
        let result = generate_with(ex, model, st, tok, &prompt, reused, opts, observer);
        // Whatever ran is in the cache now: the prompt, then the generated
        // tokens that were fed back (all but the last sampled one).
        let g = match result {
            Ok(g) => g,
            Err(e) => {
                // The state may hold part of the prompt; trust only what matched.
                st.n_past = reused;
                return Err(e);
            }
        };
        self.cached = prompt;
        self.cached.extend_from_slice(&g.ids);
        self.cached.truncate(st.n_past);
        st.n_past = self.cached.len();
        self.messages.push(Message::assistant(g.text.clone()));
        let stats = TurnStats {
            prompt_tokens: g.prompt_tokens,
            reused_tokens: g.reused_tokens,
            prefilled_tokens: g.prefilled_tokens(),
        };
        Ok((g, stats))
    }

    /// Forget the cache (the next turn prefills everything).
    pub fn clear_cache<B: Backend>(&mut self, st: &mut State<B>) {
        self.cached.clear();
        st.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[7], &[8]), 0);
    }
}
