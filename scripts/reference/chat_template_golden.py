#!/usr/bin/env python3
"""Golden chat-template renderings from transformers' apply_chat_template(tokenize=False).

Writes crates/test-support/golden/chat_golden.json: the template sources (so the Rust tests
render exactly what was rendered here) and, per case, the inputs plus either the expected
prompt text or the fact that transformers raised (and its message).

Templates:
  smollm2  - tokenizer.chat_template of assets/SmolLM2-135M-Instruct.Q4_1.gguf (read with gguf)
  qwen2_5  - crates/core/src/chat/templates/qwen2_5.jinja
  llama3_2 - crates/core/src/chat/templates/llama3_2.jinja
  qwen3    - chat_template of assets/qwen2/tokenizer_config.json
  probe    - a feature probe (not a model's template), see PROBE_TEMPLATE

Rendering goes through a real PreTrainedTokenizerFast (vocabulary from
assets/qwen2/tokenizer.json; the template only sees bos_token/eos_token from it), so
transformers' own message normalization and Jinja environment are exercised.

Usage (from the repo root): python scripts/reference/chat_template_golden.py
"""

import argparse
import copy
import datetime as real_datetime
import json
import pathlib

import gguf
import transformers
import transformers.utils.chat_template_utils as ctu
from transformers import PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parents[2]

# 2026-11-24 12:00:00 UTC, for the case that lets the template call strftime_now.
FIXED_TIME = 1795521600


def gguf_string(reader, key):
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_token(reader, id_key):
    field = reader.fields[id_key]
    token_id = int(field.parts[field.data[0]][0])
    tokens = reader.fields["tokenizer.ggml.tokens"]
    return bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8")


class FixedDatetime(real_datetime.datetime):
    """Stands in for `datetime` inside transformers' strftime_now."""

    @classmethod
    def now(cls, tz=None):
        return real_datetime.datetime.fromtimestamp(FIXED_TIME, real_datetime.timezone.utc).replace(
            tzinfo=None
        )


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city, in °C or °F.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. \"Zürich\""},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the docs.\nReturns the top matches.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
                    "threshold": {"type": "number", "default": 0.5, "minimum": 1e-05},
                    "exact": {"type": "boolean", "default": False},
                    "filters": {"type": ["object", "null"], "default": None},
                },
                "required": ["query"],
            },
        },
    },
]

SYSTEM = {"role": "system", "content": "You are a concise assistant."}

BASIC = {
    "system_user_assistant_user": (
        [
            SYSTEM,
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
        ],
        True,
    ),
    "no_system": ([{"role": "user", "content": "Hello!"}], True),
    "assistant_final_no_generation_prompt": (
        [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}],
        False,
    ),
    "assistant_final_with_generation_prompt": (
        [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}],
        True,
    ),
    "unicode_and_emoji": (
        [
            {"role": "user", "content": "Héllo 👋🏽 世界 — naïve café, ünïcödé ✓ \u00a0nbsp"},
            {"role": "assistant", "content": "こんにちは! 🚀🔥 Ελληνικά"},
            {"role": "user", "content": "Ещё раз 🙂"},
        ],
        True,
    ),
    "whitespace_and_newlines": (
        [
            {"role": "system", "content": "\t  System with tabs.  \n\n"},
            {"role": "user", "content": "  \n  line one\nline two\n\n  "},
            {"role": "assistant", "content": "\n\nanswer with\nnewlines  \n"},
            {"role": "user", "content": "\u001c python-only whitespace \u001f"},
        ],
        True,
    ),
    "long_multi_turn": (
        [
            SYSTEM,
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another."},
            {"role": "assistant", "content": "Green."},
            {"role": "user", "content": "One more, with quotes: \"red\" and 'pink' and {braces} and {{jinja}}."},
        ],
        True,
    ),
}

TOOL_CALL_DICT = {
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}},
}
TOOL_CALL_DICT_2 = {
    "type": "function",
    "function": {"name": "search_docs", "arguments": {"query": "rain gear", "limit": 3, "threshold": 0.25}},
}

TOOL_CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "What's the weather in Zürich, and find rain gear docs?"},
    {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL_DICT, TOOL_CALL_DICT_2]},
    {"role": "tool", "name": "get_weather", "content": "{\"temperature\": 21.5, \"sky\": \"cloudy\"}"},
    {"role": "tool", "name": "search_docs", "content": "1. Umbrellas\n2. Raincoats"},
    {"role": "assistant", "content": "It is 21.5 °C and cloudy. See Umbrellas and Raincoats."},
    {"role": "user", "content": "Thanks!"},
]

# OpenAI-style: content null next to tool_calls (transformers drops the null key).
TOOL_CONVERSATION_NULL_CONTENT = [
    {"role": "user", "content": "Weather in Oslo?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
        ],
    },
    {"role": "tool", "content": "{\"temperature\": -3}"},
]


# Not a model's template: exercises the Jinja features and Python methods that chat
# templates use, so differences between transformers' Jinja2 and our engine show up here
# rather than in some future model's template.
PROBE_TEMPLATE = """{%- macro show(m, i) -%}
[{{ i }}|{{ m.role | upper }}|{{ m.content.strip() }}|{{ m.content.split() }}|{{ m.content.split(',', 1) }}|{{ m.content.rsplit(',', 1) }}|{{ m.content.rsplit(None, 1) }}|{{ m.content.title() }}|{{ m.content.lstrip('x ') }}|{{ m.content.rstrip() }}|{{ m.content[1:4] }}|{{ m.content[::-1] }}|{{ m.content|length }}|{{ m.content.startswith('a') }}|{{ m.content.endswith(('z', 'y')) }}|{{ 'hello' in m.content }}|{{ m.content.replace(',', ';') }}|{{ m.content.upper() }}|{{ m.content.capitalize() }}]
{%- endmacro -%}
{%- set ns = namespace(n=0) -%}
{%- for m in messages[::-1] -%}
{%- if m.role == 'skip' %}{% continue %}{% endif -%}
{%- if m.role == 'stop' %}{% break %}{% endif -%}
{%- set ns.n = ns.n + 1 %}
{{ show(m, loop.index) }}
{%- endfor %}
count={{ ns.n }} first={{ messages[0]['role'] }} last={{ (messages | last).content }}
{{ true }} {{ false }} {{ none }} {{ 1.0 }} {{ 1e-7 }} {{ 2**60 }} {{ 7 // 2 }} {{ 7 / 2 }} {{ 7 % 3 }} {{ 'a' ~ 1 ~ 'b' }} {{ 'ab' * 2 }}
{{ [1, 'a', none, true, 2.5, "it's"] }} {{ {'k': 'v', 'n': [1]} }}
{{ 'abc' is sequence }} {{ {} is sequence }} {{ true is number }} {{ 1 is number }} {{ 'x' is iterable }} {{ none is iterable }} {{ {} is mapping }} {{ 'x' is string }} {{ undefined_name is defined }} {{ tools is none }} {{ enable is false }}
{%- for k, v in info.items() %}
{{ k }}={{ v }} get={{ info.get(k) }} missing={{ info.get('nope', 'dflt') }}
{%- endfor %}
{{ info | tojson }}
{{ info | tojson(indent=2) }}
{{ info | tojson(indent=2, sort_keys=true) }}
{{ info | tojson(separators=(',', ':')) }}
{{ info | tojson(ensure_ascii=true) }}
{{ info | tojson(indent='\\t') }}
{{ "  padded \\x1c" | trim }}|{{ "xxhixx" | trim('x') }}|{{ "MiXed" | lower }}|{{ none | default('dflt') }}|{{ undefined_name | default('dflt2') }}
{{ dict(a=1, b='two') | tojson }}
{{ messages | map(attribute='role') | join(',') }}
{{ messages | selectattr('role', 'equalto', 'user') | list | length }}
{%- if show_time %}
{{ strftime_now('%Y-%m-%d %H:%M:%S %A %a %B %b %j %p %I %y %%') }}
{%- endif %}
{%- if raise_it %}{{ raise_exception('probe raised: ' ~ raise_it) }}{% endif %}
"""

PROBE_MESSAGES = [
    {"role": "stop", "content": "z"},
    {"role": "user", "content": "a, b,c  d"},
    {"role": "skip", "content": "ignored"},
    {"role": "assistant", "content": "x hello wORLD they're \u001c"},
    {"role": "user", "content": "  \u00fcn\u00ef, c\u00f6d\u00e9 \U0001f44b zy"},
]

PROBE_INFO = {
    "name": "Zoë",
    "temp": 21.5,
    "tiny": 1e-05,
    "big": 1e16,
    "n": 3,
    "neg": -7,
    "ok": True,
    "none": None,
    "list": [1, "two", {"three": 3.0}],
    "nested": {"b": 1, "a": [], "c": {}},
    "quote": "say \"hi\"\n\ttab</tag>&",
}


def cases():
    out = []

    def add(template, name, messages, add_generation_prompt, tools=None, extra=None, fixed_time=None):
        out.append(
            {
                "template": template,
                "name": name,
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "tools": tools,
                "extra": extra,
                "fixed_time": fixed_time,
            }
        )

    llama_date = {"date_string": "24 Nov 2026"}
    for template in ["smollm2", "qwen2_5", "llama3_2", "qwen3"]:
        extra = llama_date if template == "llama3_2" else None
        for name, (messages, agp) in BASIC.items():
            add(template, name, messages, agp, extra=extra)

    # Content that is not a string: Python's `str + list` raises, so must we.
    add("smollm2", "list_content_is_an_error", [{"role": "user", "content": ["a", "b"]}], True)

    # Qwen2.5: tools, default system prompt, tool calls with dict arguments.
    add("qwen2_5", "tools_with_tool_calls", TOOL_CONVERSATION, True, tools=TOOLS)
    add("qwen2_5", "tools_without_system", [{"role": "user", "content": "Hi"}], True, tools=TOOLS)
    add("qwen2_5", "tool_call_null_content", TOOL_CONVERSATION_NULL_CONTENT, True, tools=TOOLS)
    add("qwen2_5", "empty_tools_list", [{"role": "user", "content": "Hi"}], True, tools=[])

    # Qwen3: tools, thinking, string arguments, enable_thinking.
    add("qwen3", "tools_with_tool_calls", TOOL_CONVERSATION, True, tools=TOOLS)
    add("qwen3", "tools_without_system", [{"role": "user", "content": "Hi"}], True, tools=TOOLS)
    add(
        "qwen3",
        "tool_call_string_arguments",
        [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}
                ],
            },
            {"role": "tool", "content": "<tool_response>not really</tool_response>"},
            {"role": "user", "content": "<tool_response>-3</tool_response>"},
        ],
        True,
        tools=TOOLS,
    )
    # content null next to tool_calls: the Qwen3 template concatenates `content`, which
    # is then undefined, so transformers raises; we must fail too.
    add("qwen3", "tool_call_null_content_is_an_error", TOOL_CONVERSATION_NULL_CONTENT, True, tools=TOOLS)
    add(
        "qwen3",
        "reasoning_content_field",
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "reasoning_content": "\nSimple sum.\n", "content": "4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "reasoning_content": "Also simple.", "content": "\n6"},
        ],
        False,
    )
    add(
        "qwen3",
        "inline_think_tags",
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "<think>\nold thoughts\n</think>\n\nA1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "<think>new thoughts</think>A2"},
        ],
        False,
    )
    add(
        "qwen3",
        "thinking_alias_field",
        [{"role": "user", "content": "Q"}, {"role": "assistant", "thinking": "via thinking", "content": "A"}],
        False,
    )
    add("qwen3", "enable_thinking_false", [{"role": "user", "content": "Hi"}], True, extra={"enable_thinking": False})
    add("qwen3", "enable_thinking_true", [{"role": "user", "content": "Hi"}], True, extra={"enable_thinking": True})

    # Llama 3.2: tools in the first user message (default) or in the system message,
    # single tool call with dict arguments, tool output as string and as mapping.
    llama_tools_conversation = [
        SYSTEM,
        {"role": "user", "content": "  What's the weather in Zürich?  "},
        {"role": "assistant", "tool_calls": [TOOL_CALL_DICT]},
        {"role": "tool", "content": "{\"temperature\": 21.5}"},
        {"role": "ipython", "content": {"temperature": 21.5, "sky": "cloudy", "ok": True, "x": None}},
        {"role": "assistant", "content": "It is 21.5 °C."},
    ]
    add("llama3_2", "tools_in_user_message", llama_tools_conversation, True, tools=TOOLS, extra=llama_date)
    add(
        "llama3_2",
        "tools_in_system_message",
        llama_tools_conversation,
        True,
        tools=TOOLS,
        extra={"date_string": "24 Nov 2026", "tools_in_user_message": False},
    )
    add(
        "llama3_2",
        "tools_without_user_message_raises",
        [SYSTEM],
        True,
        tools=TOOLS,
        extra=llama_date,
    )
    add(
        "llama3_2",
        "two_tool_calls_raise",
        [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [TOOL_CALL_DICT, TOOL_CALL_DICT_2]}],
        True,
        tools=TOOLS,
        extra=llama_date,
    )
    add(
        "llama3_2",
        "strftime_now_date",
        [{"role": "user", "content": "What day is it?"}],
        True,
        fixed_time=FIXED_TIME,
    )
    add(
        "llama3_2",
        "bos_token_overridden_by_kwarg",
        [{"role": "user", "content": "Hi"}],
        True,
        extra={"date_string": "1 Jan 2025", "bos_token": "<BOS>"},
    )
    add("probe", "jinja_features", PROBE_MESSAGES, False, extra={"info": PROBE_INFO, "enable": False})
    add(
        "probe",
        "strftime_now_formats",
        PROBE_MESSAGES,
        False,
        extra={"info": PROBE_INFO, "show_time": True},
        fixed_time=FIXED_TIME,
    )
    add("probe", "raise_exception", PROBE_MESSAGES, False, extra={"info": PROBE_INFO, "raise_it": "boom"})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=ROOT / "assets/SmolLM2-135M-Instruct.Q4_1.gguf", type=pathlib.Path)
    ap.add_argument("--tokenizer-dir", default=ROOT / "assets/qwen2", type=pathlib.Path)
    ap.add_argument("--templates-dir", default=ROOT / "crates/core/src/chat/templates", type=pathlib.Path)
    ap.add_argument("--out", default=ROOT / "crates/test-support/golden/chat_golden.json", type=pathlib.Path)
    args = ap.parse_args()

    reader = gguf.GGUFReader(str(args.gguf))
    qwen3_config = json.loads((args.tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    templates = {
        "smollm2": {
            "source": gguf_string(reader, "tokenizer.chat_template"),
            "bos_token": gguf_token(reader, "tokenizer.ggml.bos_token_id"),
            "eos_token": gguf_token(reader, "tokenizer.ggml.eos_token_id"),
            "origin": "tokenizer.chat_template of assets/SmolLM2-135M-Instruct.Q4_1.gguf",
        },
        "qwen2_5": {
            "source": (args.templates_dir / "qwen2_5.jinja").read_text(encoding="utf-8"),
            # Qwen2.5 GGUFs carry <|endoftext|> as BOS (unused by the template).
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "origin": "crates/core/src/chat/templates/qwen2_5.jinja",
        },
        "llama3_2": {
            "source": (args.templates_dir / "llama3_2.jinja").read_text(encoding="utf-8"),
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "origin": "crates/core/src/chat/templates/llama3_2.jinja",
        },
        "qwen3": {
            "source": qwen3_config["chat_template"],
            # Qwen3's tokenizer_config has bos_token null: the template sees no bos_token.
            "bos_token": qwen3_config.get("bos_token") or "",
            "eos_token": qwen3_config["eos_token"],
            "origin": "chat_template of assets/qwen2/tokenizer_config.json",
        },
        "probe": {
            "source": PROBE_TEMPLATE,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "origin": "PROBE_TEMPLATE in scripts/reference/chat_template_golden.py",
        },
    }

    tokenizers = {}
    for name, t in templates.items():
        special = {k: t[k] for k in ("bos_token", "eos_token") if t[k]}
        tok = PreTrainedTokenizerFast(tokenizer_file=str(args.tokenizer_dir / "tokenizer.json"), **special)
        tok.chat_template = t["source"]
        tokenizers[name] = tok

    results = []
    for case in cases():
        tok = tokenizers[case["template"]]
        kwargs = dict(case["extra"] or {})
        saved_datetime = ctu.datetime
        if case["fixed_time"] is not None:
            ctu.datetime = FixedDatetime
        try:
            rendered = tok.apply_chat_template(
                copy.deepcopy(case["messages"]),
                tools=copy.deepcopy(case["tools"]),
                add_generation_prompt=case["add_generation_prompt"],
                tokenize=False,
                **kwargs,
            )
            case = {**case, "expected": rendered, "error": None}
        except Exception as e:  # noqa: BLE001 - the golden records that transformers failed
            case = {**case, "expected": None, "error": f"{type(e).__name__}: {e}"}
        finally:
            ctu.datetime = saved_datetime
        results.append(case)

    golden = {
        "generator": "scripts/reference/chat_template_golden.py",
        "transformers_version": transformers.__version__,
        "templates": templates,
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum(1 for c in results if c["error"])
    print(f"wrote {args.out.relative_to(ROOT)}: {len(results)} cases ({errors} expected errors)")


if __name__ == "__main__":
    main()
