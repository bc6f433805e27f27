"""The package's promises: nano-vllm's API and shapes, greedy output equal to `nanovllm-cli
generate`, `kv_quant=True` as `kv_cache_dtype="int8"`, streaming through add_request/step equal to
generate, errors as Python exceptions, the GIL released while the engine works, and Ctrl-C that
stops a generate and leaves the engine usable."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest
from nanovllm import LLM, SamplingParams

from conftest import CLI, KJV, TINY

PROMPTS = ["In the beginning God created", "And the LORD spake unto Moses, saying"]


def cli_greedy(dtype, prompts, max_tokens, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    out = subprocess.run([CLI, "generate", "--model", KJV, "--prompts-file", str(path), "--temperature", "0",
                          "--max-tokens", str(max_tokens), "--kv-cache-dtype", dtype, "--json"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return [json.loads(line)["token_ids"] for line in out.splitlines()]


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_greedy_generate_equals_the_cli(dtype, tmp_path):
    llm = LLM(KJV, kv_cache_dtype=dtype)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    assert [o["token_ids"] for o in outputs] == cli_greedy(dtype, PROMPTS, 24, tmp_path)
    assert all(isinstance(o["text"], str) and o["text"] for o in outputs)


def test_kv_quant_is_the_int8_cache():
    params = SamplingParams(temperature=0, max_tokens=24)
    quant = LLM(KJV, kv_quant=True).generate(PROMPTS, params, use_tqdm=False)
    int8 = LLM(KJV, kv_cache_dtype="int8").generate(PROMPTS, params, use_tqdm=False)
    assert quant == int8


def test_streaming_with_add_request_and_step_equals_generate():
    llm = LLM(KJV, kv_cache_dtype="int8")
    params = SamplingParams(temperature=0, max_tokens=20)
    ids = [llm.add_request(prompt, params) for prompt in PROMPTS]
    finished, saw_prefill, saw_decode = {}, False, False
    while not llm.is_finished():
        outputs, num_tokens = llm.step()
        saw_prefill |= num_tokens > 0
        saw_decode |= num_tokens < 0
        finished.update(dict(outputs))
    assert saw_prefill and saw_decode, "prefill steps count positive, decode steps negative"
    whole = llm.generate(PROMPTS, params, use_tqdm=False)
    assert [finished[i] for i in ids] == [o["token_ids"] for o in whole]


def test_outputs_carry_samples_finish_reasons_and_logprobs():
    llm = LLM(KJV)
    [request] = llm.generate_outputs(PROMPTS[:1], SamplingParams(n=2, max_tokens=5, seed=3, logprobs=2,
                                                                 ignore_eos=True), use_tqdm=False)
    assert len(request["prompt_token_ids"]) > 0
    assert [o["index"] for o in request["outputs"]] == [0, 1]
    first = request["outputs"][0]
    assert first["finish_reason"] == "length" and first["stop_reason"] is None
    assert len(first["logprobs"]) == 5 and len(first["logprobs"][0]["top"]) == 2
    assert first["logprobs"][0]["token"] == first["token_ids"][0]


def test_the_tokenizer_renders_the_chat_template():
    llm = LLM(TINY, load_format="dummy", max_model_len=256)
    text = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
    assert text.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), text
    assert "<think>\n\n</think>" in text, "enable_thinking=False reaches the template"
    assert llm.tokenizer.decode(llm.tokenizer.encode("Hello world")) == "Hello world"
    ids = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert ids == llm.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n")


def test_errors_are_python_exceptions():
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_setting'"):
        LLM(KJV, no_such_setting=1)
    with pytest.raises(ValueError, match="kv_quant"):
        LLM(KJV, kv_quant=True, kv_cache_dtype="bf16")
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=2.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(RuntimeError):
        LLM("/no/such/model")
    with pytest.raises(MemoryError, match="less than one sequence of max_model_len 256"):
        LLM(KJV, max_model_len=256, kv_cache_memory_bytes=64 * 1024)
    llm = LLM(KJV, max_model_len=256)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate(["x"], SamplingParams(max_tokens=1000), use_tqdm=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([[10**9]], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="one per prompt"):
        llm.generate(PROMPTS, [SamplingParams()], use_tqdm=False)
    # After every refusal the engine serves on.
    assert len(llm.generate(PROMPTS, SamplingParams(max_tokens=3), use_tqdm=False)) == 2


def test_the_gil_is_released_while_the_engine_works():
    llm = LLM(KJV)
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    thread = threading.Thread(target=tick)
    thread.start()
    started = time.monotonic()
    llm.generate(PROMPTS * 8, SamplingParams(max_tokens=64, ignore_eos=True), use_tqdm=False)
    ended = time.monotonic()
    stop.set()
    thread.join()
    during = [t for t in ticks if started < t < ended]
    assert len(during) > 10, f"{len(during)} ticks in {ended - started:.2f} s"


def test_ctrl_c_stops_a_generate_and_the_engine_goes_on():
    llm = LLM(KJV)
    # Python raises KeyboardInterrupt only under its own SIGINT handler, which it does not install
    # when started with SIGINT ignored (as a shell starts background jobs): install it here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    # A real Ctrl-C: SIGINT from another process. (A Python timer thread calling interrupt_main
    # needs the GIL first; on the 2-core CI machine it missed whole generates.)
    ctrl_c = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -INT {os.getpid()}"])
    try:
        with pytest.raises(KeyboardInterrupt):
            llm.generate(PROMPTS * 64, SamplingParams(max_tokens=400, ignore_eos=True), use_tqdm=False)
    finally:
        ctrl_c.wait()
        signal.signal(signal.SIGINT, previous)
    assert llm.is_finished(), "the interrupted requests were dropped"
    assert len(llm.generate(PROMPTS, SamplingParams(max_tokens=4), use_tqdm=False)) == 2
