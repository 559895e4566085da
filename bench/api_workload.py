"""The workload of bench/ray_api_perf.py: one function, given `ray` (Ray's module, or launch's `runtime`
imported as ray), so both runtimes run the very same code. Imports neither."""

from __future__ import annotations

import os
import time


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def run(ray, scale: float = 1.0) -> dict:
    """Per second: 1:1 actor calls (sync: each call's result awaited before the next; async: all sent,
    then all gotten), the same on an async actor, and put-then-get round trips of 1 MB and 100 MB."""
    calls, batch = int(1000 * scale), int(5000 * scale)

    @ray.remote(num_cpus=1)
    class Echo:
        def ping(self, x):
            return x

    @ray.remote(num_cpus=1)
    class AsyncEcho:
        async def ping(self, x):
            return x

    out = {}
    for name, cls in (("actor", Echo), ("async_actor", AsyncEcho)):
        a = cls.remote()
        ray.get([a.ping.remote(i) for i in range(100)])  # started, and warm
        t0 = time.perf_counter()
        for i in range(calls):
            assert ray.get(a.ping.remote(i)) == i
        out[f"{name}_calls_sync_per_s"] = _rate(calls, time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert ray.get([a.ping.remote(i) for i in range(batch)]) == list(range(batch))
        out[f"{name}_calls_async_per_s"] = _rate(batch, time.perf_counter() - t0)
        ray.kill(a)

    for label, size, rounds in (("1mb", 1 << 20, max(1, int(200 * scale))), ("100mb", 100 << 20, max(1, int(5 * scale)))):
        value = os.urandom(size)
        assert len(ray.get(ray.put(value))) == size  # warm
        t0 = time.perf_counter()
        for _ in range(rounds):
            assert len(ray.get(ray.put(value))) == size
        out[f"put_get_{label}_per_s"] = _rate(rounds, time.perf_counter() - t0)
    return out
