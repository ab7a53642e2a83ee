//! Fuzzes chat-template rendering in its sandbox: any template source and message text
//! either renders or fails with an error, within the sandbox's time and size limits (the
//! fuzzer's -timeout and -rss_limit_mb catch a runaway template).
//! Input: template source, a 0 byte, then the user message (or the whole input as the
//! template with a fixed message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use metallic::chat::{ChatTemplate, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, content) = text.split_once('\0').unwrap_or((text, "hi <|im_end|>"));
    let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    let t = t.with_fixed_time(0);
    let messages = [
        Message::system("You are helpful."),
        Message::user(content),
        Message::assistant("ok"),
        Message::user(content),
    ];
    if let Ok(out) = t.render_messages(&messages, true) {
        assert!(out.len() <= 64 << 20);
    }
});
