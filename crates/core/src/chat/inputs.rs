//! Turning the caller's JSON messages into what the template sees, the way transformers'
//! `apply_chat_template` prepares them: keys whose value is `None` are dropped from each
//! message (`_normalize_chat_messages`), and a message's reasoning is copied under both
//! `thinking` and `reasoning_content` (`_alias_reasoning_fields`).

use minijinja::value::Value;
use serde_json::Value as Json;

use super::ChatError;

/// Field names a message's reasoning may come under; the first one present wins.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// JSON to a template value, keeping object key order (Python dicts keep insertion
/// order, and `tojson` prints keys in that order).
pub(crate) fn json_to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(json_to_value).collect::<Vec<_>>()),
        Json::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

/// One message as the template sees it.
pub(crate) fn message_value(index: usize, message: &Json) -> Result<Value, ChatError> {
    let Json::Object(map) = message else {
        return Err(ChatError::InvalidMessage {
            index,
            reason: "a message must be a JSON object".to_string(),
        });
    };
    let mut entries: Vec<(String, Value)> = map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), json_to_value(v)))
        .collect();
    let reasoning = REASONING_FIELDS
        .iter()
        .find_map(|field| map.get(*field).filter(|v| !v.is_null()));
    if let Some(reasoning) = reasoning {
        // Python builds `{"thinking": r, **message, "reasoning_content": r}`: `thinking`
        // comes first unless the message already has it (its own value then wins), and
        // `reasoning_content` keeps its place if present, else goes last, with value r.
        let r = json_to_value(reasoning);
        if !entries.iter().any(|(k, _)| k == "thinking") {
            entries.insert(0, ("thinking".to_string(), r.clone()));
        }
        match entries.iter_mut().find(|(k, _)| k == "reasoning_content") {
            Some(entry) => entry.1 = r,
            None => entries.push(("reasoning_content".to_string(), r)),
        }
    }
    Ok(Value::from_pairs(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: &Value) -> Vec<String> {
        v.try_iter().unwrap().map(|k| k.to_string()).collect()
    }

    #[test]
    fn null_fields_are_dropped_and_order_is_kept() {
        let v = message_value(
            0,
            &json!({"role": "assistant", "content": null, "tool_calls": [], "z": 1}),
        )
        .unwrap();
        assert_eq!(keys(&v), ["role", "tool_calls", "z"]);
    }

    #[test]
    fn reasoning_is_aliased_like_transformers() {
        let v = message_value(
            0,
            &json!({"role": "assistant", "reasoning": "r", "content": "c"}),
        )
        .unwrap();
        assert_eq!(
            keys(&v),
            [
                "thinking",
                "role",
                "reasoning",
                "content",
                "reasoning_content"
            ]
        );
        assert_eq!(v.get_attr("thinking").unwrap().as_str(), Some("r"));
        assert_eq!(v.get_attr("reasoning_content").unwrap().as_str(), Some("r"));
    }

    #[test]
    fn non_object_message_is_rejected() {
        assert!(matches!(
            message_value(3, &json!("hi")),
            Err(ChatError::InvalidMessage { index: 3, .. })
        ));
    }
}
