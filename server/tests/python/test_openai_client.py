"""The server through the official `openai` client and `prometheus_client`, as users point them at
vLLM: completions (text and token ids), chat streaming with usage, tools in the rendered prompt,
tool calls and reasoning parsed from a fixed answer (the mock engine's), the SDK's error classes,
32 concurrent async streams, and /metrics parsed."""

import asyncio
import json
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import API_KEY, MODEL, MOCK_REPLY


def get(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def client(base, key=API_KEY):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def test_completions_take_text_and_token_ids(server):
    c = client(server)
    text = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0,
                                extra_body={"ignore_eos": True})
    assert text.object == "text_completion"
    assert text.choices[0].finish_reason == "length"
    assert text.usage.completion_tokens == 8
    ids = c.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=4, n=2, seed=5,
                               extra_body={"ignore_eos": True})
    assert [choice.index for choice in ids.choices] == [0, 1]
    assert ids.usage.prompt_tokens == 4
    streamed = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0,
                                    stream=True, extra_body={"ignore_eos": True})
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == text.choices[0].text


def test_chat_streams_role_deltas_finish_and_usage(server):
    c = client(server)
    messages = [{"role": "user", "content": "Hello!"}]
    whole = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True,
                                                  "chat_template_kwargs": {"enable_thinking": False}})
    assert whole.choices[0].message.role == "assistant"
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True,
                                                        "chat_template_kwargs": {"enable_thinking": False}}))
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert content == whole.choices[0].message.content


def test_tools_are_rendered_by_the_qwen3_template(server):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    tokens = post(f"{server}/tokenize", {"messages": messages, "tools": tools})
    prompt = post(f"{server}/detokenize", {"tokens": tokens["tokens"]})["prompt"]
    assert "<tools>" in prompt and '{"type": "function", "function": {"name": "get_weather"' in prompt
    answer = client(server).chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=4)
    assert answer.usage.prompt_tokens == tokens["count"]


def test_tool_calls_and_reasoning_are_parsed_from_the_answer(mock_server):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    c = client(mock_server)
    whole = c.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=200)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.reasoning_content == "\nThe user wants the weather.\n"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=200,
                                            stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.content or "" for d in deltas) == "Let me check."
    streamed_calls = [call for d in deltas for call in d.tool_calls or []]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed_calls] == \
        [("get_weather", {"city": "Paris"})]
    # Without tools offered, the answer's text is all content (its reasoning still split).
    plain = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=200)
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content == MOCK_REPLY.split("</think>\n\n", 1)[1]


def test_errors_raise_the_sdks_classes(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as bad:
        c.completions.create(model=MODEL, prompt="x", temperature=-1)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        c.completions.create(model=MODEL, prompt="x", max_tokens=10_000)
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="another-model", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with pytest.raises(openai.APIStatusError) as large:
        c.completions.create(model=MODEL, prompt="x" * 100_000)
    assert large.value.status_code == 413
    assert c.models.list().data[0].id == MODEL, "the server serves on"


def test_32_concurrent_async_streams_are_well_formed(server):
    async def one(c, i):
        stream = await c.completions.create(model=MODEL, prompt=f"Story {i}:", max_tokens=12, seed=i,
                                            stream=True, extra_body={"ignore_eos": True})
        ids, finishes, text = set(), [], ""
        async for chunk in stream:
            ids.add(chunk.id)
            for choice in chunk.choices:
                text += choice.text
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
        return ids, finishes, text

    async def all_streams():
        c = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        return await asyncio.gather(*(one(c, i) for i in range(32)))

    results = asyncio.run(all_streams())
    assert len(results) == 32
    for ids, finishes, text in results:
        assert len(ids) == 1 and finishes == ["length"] and text


def test_metrics_parse_with_vllms_names(server):
    text = get(f"{server}/metrics")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success",
                 "vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"]:
        assert name in families, name
    generated = sum(s.value for s in families["vllm:generation_tokens"].samples if s.name.endswith("_total"))
    assert generated > 0
