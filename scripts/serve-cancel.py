#!/usr/bin/env python3
"""Half of a server's streams cancelled mid-stream: how fast the KV cache they held comes back, and
whether the survivors keep their speed. Standard library only (runs where nothing can be
installed); bounded in streams and time; loopback by default.

Run A: STREAMS streaming completions (random token-id prompts, ignore_eos); once every stream has
CANCEL_AFTER chunks, half of them close their connections at once. /metrics is polled every 10 ms
for vllm:kv_cache_usage_perc and vllm:num_requests_running. Run B: STREAMS/2 streams alone, the
survivors' baseline, measured over the same positions (from the chunk the survivors had reached at
the cancel), since a decode step's time grows with the context. Prints one JSON line: usage and running requests before the cancel, the
milliseconds until only the survivors run and the usage then, the usage at the end, and the
survivors' chunks per second in both runs.
"""

import argparse
import asyncio
import json
import random
import time


async def http_get(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.decode(errors="replace")


async def poll_usage(host, port, samples, stop):
    """(time, KV cache usage, running requests, tokens generated so far) from /metrics every 10 ms."""
    names = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:generation_tokens_total")
    while not stop.is_set():
        text = await http_get(host, port, "/metrics")
        values = {}
        for line in text.splitlines():
            for name in names:
                if line.startswith(name):
                    values[name] = float(line.rsplit(" ", 1)[1])
        samples.append((time.monotonic(), *(values.get(name) for name in names)))
        await asyncio.sleep(0.01)


async def stream(host, port, model, prompt, max_tokens, times, cancel=None):
    """One streaming completion; the arrival time of each chunk goes to `times` (read in blocks, so
    that one Python thread keeps up with hundreds of streams). Closes early once `cancel` is set."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                       "temperature": 0, "stream": True})
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode())
    await writer.drain()
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel else None
    try:
        while True:
            read = asyncio.ensure_future(reader.read(1 << 16))
            done, _ = await asyncio.wait([read] + ([cancelled] if cancelled else []),
                                         return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                writer.transport.abort()
                return "cancelled"
            block = read.result()
            if not block:
                break
            now = time.monotonic()
            times.extend([now] * (block.count(b"data: {")))
    finally:
        if cancelled:
            cancelled.cancel()
    writer.close()
    return "done"


async def run(args, streams, cancel_half):
    host, port = args.host, args.port
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 100000) for _ in range(args.prompt_len)] for _ in range(streams)]
    times = [[] for _ in range(streams)]
    cancel = asyncio.Event()
    samples, stop = [], asyncio.Event()
    poller = asyncio.ensure_future(poll_usage(host, port, samples, stop))
    tasks = [asyncio.ensure_future(stream(host, port, args.model, prompts[i], args.max_tokens, times[i],
                                          cancel if cancel_half and i % 2 == 0 else None))
             for i in range(streams)]
    cancelled_at = None
    if cancel_half:
        deadline = time.monotonic() + args.timeout
        while min(len(t) for t in times) < args.cancel_after and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        cancelled_at = time.monotonic()
        cancel.set()
    await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
    await asyncio.sleep(0.3)
    stop.set()
    await poller
    return times, samples, cancelled_at


def rate_after(times, since):
    """Chunks per second of each stream after `since` (its own first chunk after it on), averaged."""
    rates = []
    for t in times:
        later = [x for x in t if x >= since]
        if len(later) > 1:
            rates.append((len(later) - 1) / (later[-1] - later[0]))
    return sum(rates) / len(rates) if rates else 0.0


def rate_from_chunk(times, first):
    """Chunks per second of each stream from its chunk `first` on, averaged: a decode step's time
    grows with the context, so two runs compare over the same positions."""
    rates = [(len(t) - 1 - first) / (t[-1] - t[first]) for t in times if len(t) > first + 1 and t[-1] > t[first]]
    return sum(rates) / len(rates) if rates else 0.0


def server_rate(samples, since, streams):
    """Tokens per second per stream from the server's generation counter, from `since` until
    the running requests fall below `streams`."""
    window = [(t, g) for t, _, r, g in samples if t >= since and r is not None and r >= streams and g is not None]
    if len(window) < 2 or window[-1][0] == window[0][0]:
        return None
    return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) / streams


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", required=True)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--cancel-after", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    times, samples, cancelled_at = asyncio.run(run(args, args.streams, True))
    before = [(u, r) for t, u, r, _ in samples if t < cancelled_at][-1]
    survivors = [t for i, t in enumerate(times) if i % 2 == 1]
    # The cancelled requests are gone once the engine runs only the survivors; the cache then
    # holds the survivors' blocks.
    gone = next(((t, u) for t, u, r, _ in samples if t >= cancelled_at and r <= args.streams // 2), None)
    # Where the survivors were when the others went (the cancel waits for the slowest stream, so
    # it can come well after CANCEL_AFTER chunks): the baseline is measured from there on.
    position = sorted(sum(x < cancelled_at for x in t) for t in survivors)[len(survivors) // 2]
    alone, alone_samples, _ = asyncio.run(run(args, args.streams // 2, False))
    start_alone = min(t[position] for t in alone if len(t) > position)
    print(json.dumps({
        "streams": args.streams, "usage_before_cancel": before[0], "running_before_cancel": before[1],
        "ms_to_survivors_only": None if gone is None else (gone[0] - cancelled_at) * 1000,
        "usage_with_survivors_only": None if gone is None else gone[1],
        "usage_at_end": samples[-1][1] if samples else None,
        "survivors_chunk_at_cancel": position,
        "survivor_chunks_per_s": rate_after(survivors, cancelled_at),
        "alone_chunks_per_s": rate_from_chunk(alone, position),
        # The server's side of the same: tokens it generated per second per stream, so that a
        # client that cannot keep up shows as a gap between the two.
        "survivor_server_tokens_per_s": server_rate(samples, gone[0] if gone else cancelled_at, args.streams // 2),
        "alone_server_tokens_per_s": server_rate(alone_samples, start_alone, args.streams // 2),
    }))


if __name__ == "__main__":
    main()
