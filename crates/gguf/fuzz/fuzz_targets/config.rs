//! Fuzzes what the engine builds from a GGUF's metadata: any valid file either fails with
//! an error or yields a model config whose counts the tensors back (no panic, no huge
//! allocation sized by a count), and a tokenizer that encodes and decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metallic::config::ModelConfig;
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    if let Ok(cfg) = ModelConfig::from_gguf(&file) {
        // Every count was checked against the tensors: these cannot overflow or exceed them.
        let embd = file.tensor("token_embd.weight").expect("checked");
        assert_eq!(embd.dims[1] as usize, cfg.vocab);
        assert!(cfg.n_layers > 0 && cfg.head_dim <= 256);
        let _ = (cfg.qkv_width(), cfg.q_width(), cfg.kv_width());
    }
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        for text in ["Hello, world!", "<|im_start|>user\n\u{1F600}\n", "  \t\r\n x"] {
            let ids = tok.encode(text, true);
            let _ = tok.decode(&ids);
            let _ = tok.contains_special_text(text);
        }
    }
});
