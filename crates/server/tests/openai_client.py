"""The official `openai` Python client against `metallic serve`.

Run by crates/server/tests/openai_client.rs with the server's base URL and
API key; exits non-zero (an AssertionError or an API error) on any mismatch.
"""
import sys

import openai

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

ids = [m.id for m in client.models.list().data]
assert ids == [model], ids

question = [{"role": "user", "content": "Name the capital city of France."}]

# Chat, not streamed.
chat = client.chat.completions.create(model=model, messages=question, max_tokens=16, temperature=0)
text = chat.choices[0].message.content
assert "Paris" in text, text
assert chat.choices[0].message.role == "assistant"
assert chat.choices[0].finish_reason in ("stop", "length")
u = chat.usage
assert u.prompt_tokens > 10 and 1 <= u.completion_tokens <= 16, u
assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
assert u.prompt_tokens_details.cached_tokens >= 0

# Chat, streamed, with usage: the same text and usage.
stream = client.chat.completions.create(
    model=model, messages=question, max_tokens=16, temperature=0,
    stream=True, stream_options={"include_usage": True})
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert "".join(pieces) == text, ("".join(pieces), text)
assert finish == chat.choices[0].finish_reason
assert usage is not None and usage.completion_tokens == u.completion_tokens, usage

# Completions, streamed and not.
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
ctext = comp.choices[0].text
assert comp.usage.completion_tokens == 8 or comp.choices[0].finish_reason == "stop"
streamed = "".join(c.choices[0].text for c in client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True)
    if c.choices)
assert streamed == ctext, (streamed, ctext)

# Seeded sampling is reproducible; stop strings cut the text.
a = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.9, seed=5)
b = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.9, seed=5)
assert a.choices[0].text == b.choices[0].text
cut = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[","])
assert "," not in cut.choices[0].text and cut.choices[0].finish_reason == "stop", cut

# Log-probabilities.
lp = client.chat.completions.create(model=model, messages=question, max_tokens=4, temperature=0,
                                    logprobs=True, top_logprobs=2)
content = lp.choices[0].logprobs.content
assert len(content) == lp.usage.completion_tokens
assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)

# Errors arrive as the client's typed exceptions.
try:
    client.chat.completions.create(model=model, messages=question, temperature=5)
    raise AssertionError("temperature 5 was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "temperature", e.body
try:
    client.chat.completions.create(model=model, messages=question, extra_body={"frobnicate": 1})
    raise AssertionError("an unknown field was accepted")
except openai.BadRequestError as e:
    assert "frobnicate" in e.message
bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("openai client: all checks passed")
