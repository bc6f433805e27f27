"""Two replicas behind vllm-router (from PyPI, round robin), as docs/DEPLOY.md runs them: the
`openai` client through the router gets every answer, both replicas serve (their /metrics say so),
and when one replica is killed the router sends what follows to the other."""

import concurrent.futures
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODEL, REPLICA_FLAGS, serve, stop


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def successes(base):
    """Requests a replica finished, by its vllm:request_success_total."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "vllm:request_success_total")


@pytest.fixture
def routed():
    """Two replicas and the router in front: (router URL, replica processes, replica URLs)."""
    replicas = [serve(*REPLICA_FLAGS, api_key=None) for _ in range(2)]
    port = free_port()
    router = subprocess.Popen(
        [str(pathlib.Path(sys.executable).parent / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
         "--policy", "round_robin", "--worker-urls", *[base for _, base in replicas]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline or router.poll() is not None:
            router.kill()
            raise RuntimeError("the router did not turn ready")
        time.sleep(0.1)
    yield base, [p for p, _ in replicas], [b for _, b in replicas]
    router.send_signal(signal.SIGTERM)
    router.wait(timeout=30)
    for process, _ in replicas:
        if process.poll() is None:
            stop(process)


def ask(client, i, max_tokens=4):
    answer = client.completions.create(model=MODEL, prompt=f"Request {i}:", max_tokens=max_tokens,
                                       extra_body={"ignore_eos": True})
    return answer.usage.completion_tokens


def test_the_router_spreads_requests_and_survives_a_replica(routed):
    base, processes, replicas = routed
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda i: ask(client, i), range(16))) == [4] * 16
    assert all(successes(replica) >= 1 for replica in replicas), "both replicas served"
    # One replica dies while requests run on both: the router sends those it loses to the other,
    # which answers all of them in full.
    before = successes(replicas[0])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(ask, client, i, 160) for i in range(8)]
        time.sleep(0.3)
        processes[1].kill()
        assert [r.result() for r in running] == [160] * 8
    assert successes(replicas[0]) - before == 8, "the survivor answered every one"
    # And it answers what comes after.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda i: ask(client, i), range(16))) == [4] * 16
