//! Turning chat messages into prompt tokens with the model's chat template,
//! as `metallic generate --chat` does, except that message content is data:
//! special-token text a user writes (`<|im_end|>`) is encoded as plain text,
//! never as the control token. The template is rendered with a placeholder
//! for each content; the template's own text is encoded with special tokens
//! recognised, each content without.

use metallic::chat::{ChatTemplate, Message};
use metallic::tokenizer::Tokenizer;

/// Placeholder of message `i`: private-use characters no template changes.
fn placeholder(i: usize) -> String {
    format!("\u{F8F0}{i}\u{F8F1}")
}

pub struct ChatPrompt {
    template: ChatTemplate,
}

impl ChatPrompt {
    pub fn new(template: ChatTemplate) -> ChatPrompt {
        ChatPrompt { template }
    }

    /// Token ids of `messages` with the assistant's turn opened.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, String> {
        let stand_ins: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(m.role.clone(), placeholder(i)))
            .collect();
        let rendered = self
            .template
            .render_messages(&stand_ins, true)
            .map_err(|e| format!("chat template: {e}"))?;
        let mut ids = Vec::new();
        let mut rest = rendered.as_str();
        for (i, m) in messages.iter().enumerate() {
            let ph = placeholder(i);
            let Some(at) = rest.find(&ph) else {
                // The template dropped or transformed this message's content.
                return Err(format!(
                    "the chat template does not write message {i}'s content verbatim; \
                     this server cannot encode it safely"
                ));
            };
            tok.encode_into(&rest[..at], true, &mut ids);
            tok.encode_into(&m.content, false, &mut ids);
            rest = &rest[at + ph.len()..];
        }
        tok.encode_into(rest, true, &mut ids);
        Ok(ids)
    }
}
