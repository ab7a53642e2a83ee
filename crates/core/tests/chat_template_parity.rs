//! Chat templates rendered by metallic must equal transformers' `apply_chat_template(...,
//! tokenize=False)` byte for byte: the golden file is produced by
//! `scripts/reference/chat_template_golden.py` (transformers 5.x) and holds the template
//! sources, the inputs, and the expected text or the fact that transformers raised.
//! Tolerance: none; a prompt that differs by one byte tokenizes differently.

use metallic::chat::{builtin, ChatError, ChatTemplate};
use serde_json::Value;

fn golden() -> Value {
    metallic_test_support::golden_json("chat_golden.json")
}

fn template_source<'a>(golden: &'a Value, name: &str) -> &'a Value {
    &golden["templates"][name]
}

fn compile(golden: &Value, name: &str, source: &str) -> ChatTemplate {
    let t = template_source(golden, name);
    ChatTemplate::new(
        source,
        t["bos_token"].as_str().unwrap(),
        t["eos_token"].as_str().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{name} template compiles: {e}"))
}

/// Renders every golden case of `template_name` with `template` and checks it against
/// transformers: same text, or an error where transformers raised. Returns the number of
/// cases checked so callers can assert the golden file really covers them.
fn check_cases(golden: &Value, template_name: &str, template: &ChatTemplate) -> usize {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in golden["cases"].as_array().unwrap() {
        if case["template"] != template_name {
            continue;
        }
        checked += 1;
        let name = case["name"].as_str().unwrap();
        let messages = case["messages"].as_array().unwrap();
        let tools = (!case["tools"].is_null()).then_some(&case["tools"]);
        let extra = (!case["extra"].is_null()).then_some(&case["extra"]);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let result = match case["fixed_time"].as_i64() {
            Some(t) => {
                let src = template_source(golden, template_name)["source"]
                    .as_str()
                    .unwrap();
                compile(golden, template_name, src)
                    .with_fixed_time(t)
                    .render(messages, agp, tools, extra)
            }
            None => template.render(messages, agp, tools, extra),
        };
        match (case["expected"].as_str(), result) {
            (Some(want), Ok(got)) if got == want => {}
            (Some(want), Ok(got)) => failures.push(format!(
                "{name}: text differs\n--- transformers\n{want:?}\n--- metallic\n{got:?}"
            )),
            (Some(_), Err(e)) => failures.push(format!("{name}: unexpected error {e}")),
            (None, Err(e)) => {
                // transformers' raise_exception raises jinja2's TemplateError(message):
                // that must come back as ChatError::Raised with the same message; other
                // Python errors (TypeError, UndefinedError) as any render error.
                let py = case["error"].as_str().unwrap();
                if let Some(msg) = py.strip_prefix("TemplateError: ") {
                    match e {
                        ChatError::Raised(m) if m == msg => {}
                        other => failures.push(format!(
                            "{name}: expected ChatError::Raised({msg:?}), got {other:?}"
                        )),
                    }
                } else if !matches!(e, ChatError::Render(_)) {
                    failures.push(format!("{name}: expected a render error, got {e:?}"));
                }
            }
            (None, Ok(got)) => failures.push(format!(
                "{name}: transformers raised {} but metallic rendered {got:?}",
                case["error"]
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} {template_name} cases differ:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    checked
}

#[test]
fn smollm2_template_matches_transformers() {
    let g = golden();
    let src = template_source(&g, "smollm2")["source"].as_str().unwrap();
    let t = compile(&g, "smollm2", src);
    assert!(check_cases(&g, "smollm2", &t) >= 8);
}

#[test]
fn qwen2_5_template_matches_transformers() {
    let g = golden();
    // The golden was rendered from the committed template; make sure it still is the same.
    assert_eq!(
        template_source(&g, "qwen2_5")["source"].as_str().unwrap(),
        builtin::QWEN2_5
    );
    let t = compile(&g, "qwen2_5", builtin::QWEN2_5);
    assert!(check_cases(&g, "qwen2_5", &t) >= 11);
}

#[test]
fn llama3_2_template_matches_transformers() {
    let g = golden();
    assert_eq!(
        template_source(&g, "llama3_2")["source"].as_str().unwrap(),
        builtin::LLAMA3_2
    );
    let t = compile(&g, "llama3_2", builtin::LLAMA3_2);
    assert!(check_cases(&g, "llama3_2", &t) >= 13);
}

#[test]
fn qwen3_template_with_tools_matches_transformers() {
    let g = golden();
    let src = template_source(&g, "qwen3")["source"].as_str().unwrap();
    let t = compile(&g, "qwen3", src);
    assert!(check_cases(&g, "qwen3", &t) >= 15);
}

#[test]
fn qwen3_template_comes_from_the_tokenizer_config_asset() {
    // The golden's Qwen3 source is the asset's chat_template; if the asset is present
    // (CI fetches it), check they still agree.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../assets/qwen2/tokenizer_config.json"
    );
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let g = golden();
    assert_eq!(
        config["chat_template"],
        template_source(&g, "qwen3")["source"]
    );
}

#[test]
fn raise_exception_is_a_typed_error_with_the_message() {
    let g = golden();
    let t = compile(&g, "llama3_2", builtin::LLAMA3_2);
    let messages = [serde_json::json!({"role": "system", "content": "s"})];
    let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
    let err = t
        .render(&messages, true, Some(&tools), None)
        .expect_err("tools without a user message must raise");
    match err {
        ChatError::Raised(msg) => assert_eq!(
            msg,
            "Cannot put tools in the first user message when there's no first user message!"
        ),
        other => panic!("expected ChatError::Raised, got {other:?}"),
    }
}

#[test]
fn jinja_feature_probe_matches_transformers() {
    // A template written to exercise what chat templates use: Python str methods,
    // slicing, loop controls, namespace, macros, Python-style printing of values, the
    // Jinja tests, every tojson option, |trim, strftime_now and raise_exception.
    let g = golden();
    let src = template_source(&g, "probe")["source"].as_str().unwrap();
    let t = compile(&g, "probe", src);
    assert!(check_cases(&g, "probe", &t) >= 3);
}
