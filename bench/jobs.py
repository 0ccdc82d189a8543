"""The job system's figures, in one process on the real reactor and the
embedded engine on disk (the daemon's graph, ``build_stack``):

1. ``log`` worker throughput end to end (jobs/s from the first push to the
   last job recorded ``done``: each job is 3 document writes), against the
   same number of plain document writes ×3 in the same run (the ratio is
   the job system's cost over the storage it needs);
2. scheduler lateness for 1,000 ``@every 10s`` triggers (seconds between a
   slot's due time and its firing), p50 and p99, against the lateness of
   plain reactor timers (``callLater``) due at the same times.

    .venv/bin/python bench/jobs.py [--jobs 2000] [--triggers 1000] [--seconds 20]
        [--interval 10]
        [--redis-url redis://127.0.0.1:6379/0]

With ``--redis-url`` the figures are measured again with the Redis backend.

3. the sandbox's cost, from ``bench/konnector_sandbox.py``'s ``measure``
   (an empty konnector's start-to-exit time with bubblewrap and without,
   ``--sandbox-runs`` times each; 0 skips it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task

from cozyd.config import load_config
from cozyd.instance.lifecycle import CreateOptions
from cozyd.pools import daemon_pools
from cozyd.service import build_stack, build_store, thread_runner
from cozyd.testing import TEST_KDF_ITERATIONS, write_config


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def make_stack(workdir: str, redis_url: str = "", concurrency: int = 0):
    sections: dict = {"instances": {"kdf_iterations": TEST_KDF_ITERATIONS}, "jobs": {}}
    if concurrency:
        sections["jobs"]["concurrency"] = f"log={concurrency}"
    if redis_url:
        sections["jobs"]["url"] = redis_url
    config = load_config(write_config(workdir, **sections), env={})
    pools = daemon_pools(reactor)
    pools.start()
    store = build_store(config, reactor, pools)
    await store.start()
    stack = build_stack(
        config,
        store=store,
        run_blocking=thread_runner(reactor),
        run_hashing=pools.hashing.run,
        reactor=reactor,
    )
    await stack.instances.setup()
    instance = await stack.instances.create(CreateOptions(domain="bench.cozy.test"))
    await stack.jobs.startService()
    await stack.scheduler.startService()
    return stack, instance, pools


async def stop(stack, pools) -> None:
    if stack.scheduler.running:
        await stack.scheduler.stopService()
    await stack.jobs.stopService()
    await stack.store.close()
    pools.stop()


async def throughput(stack, instance, n: int) -> tuple[float, float]:
    finished = defer.Deferred()
    count = [0]

    def on_finished(doc):
        count[0] += 1
        if count[0] == n and not finished.called:
            finished.callback(None)

    stack.jobs.on_finished(on_finished)
    await stack.jobs.push(instance, "log", {"warm": True})  # indexes, database
    count[0] = 0
    start = time.perf_counter()
    await defer.gatherResults(
        [defer.ensureDeferred(stack.jobs.push(instance, "log", {"n": i})) for i in range(n)]
    )
    await finished
    jobs_per_second = n / (time.perf_counter() - start)
    # Baseline: the same writes (create, update, update) without the job system.
    docs = stack.documents

    async def three_writes(i: int) -> None:
        result = await docs.put(
            instance, "io.cozy.bench", {"_id": f"d{i}", "n": i}, create_db=True
        )
        result = await docs.put(
            instance, "io.cozy.bench", {"_id": f"d{i}", "_rev": result["rev"], "n": i + 1}
        )
        await docs.put(
            instance, "io.cozy.bench", {"_id": f"d{i}", "_rev": result["rev"], "n": i + 2}
        )

    await docs.put(instance, "io.cozy.bench", {"_id": "warm"}, create_db=True)
    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(three_writes(i)) for i in range(n)])
    baseline = n / (time.perf_counter() - start)
    return jobs_per_second, baseline


async def lateness(
    stack, instance, triggers: int, seconds: float, interval: float
) -> tuple[list, list]:
    stack.scheduler.lateness.clear()
    made = []
    for i in range(triggers):
        made.append(
            await stack.scheduler.add(
                instance,
                {
                    "type": "@every",
                    "arguments": f"{interval:g}s",
                    "worker": "log",
                    "message": {"i": i},
                },
            )
        )
    timers: list[float] = []
    now = reactor.seconds()
    for i in range(int(seconds) * 200):
        due = now + (i % 1000) / 1000 * seconds

        def fired(due=due):
            timers.append(reactor.seconds() - due)

        reactor.callLater(max(0.0, due - reactor.seconds()), fired)
    await task.deferLater(reactor, seconds, lambda: None)
    late = list(stack.scheduler.lateness)
    await stack.scheduler.stopService()  # the triggers go with the directory
    return late, timers


async def run(args) -> None:
    backends = [("memory", "", 0), ("memory", "", 32)]
    if args.redis_url:
        # A database of its own per run: no trigger of a run fires in the next.
        base = args.redis_url.rsplit("/", 1)[0]
        backends += [("redis", f"{base}/1", 0), ("redis", f"{base}/2", 32)]
    for name, url, concurrency in backends:
        with tempfile.TemporaryDirectory(prefix="cozyd-bench-jobs-") as workdir:
            stack, instance, pools = await make_stack(workdir, url, concurrency)
            try:
                print(
                    f"== {name} backend, embedded engine, log concurrency "
                    f"{stack.jobs.concurrency('log')}"
                )
                jobs, baseline = await throughput(stack, instance, args.jobs)
                print(f"  log jobs end to end: {jobs:8.0f} jobs/s ({args.jobs} jobs)")
                print(f"  3 document writes:   {baseline:8.0f} /s (baseline)")
                print(f"  ratio jobs/baseline: {jobs / baseline:8.2f}")
                late, timers = await lateness(
                    stack, instance, args.triggers, args.seconds, args.interval
                )
                if late:
                    print(
                        f"  {args.triggers} @every {args.interval:g}s triggers, "
                        f"{len(late)} firings: lateness "
                        f"p50 {percentile(late, 0.5) * 1000:.1f} ms, "
                        f"p99 {percentile(late, 0.99) * 1000:.1f} ms, "
                        f"max {max(late) * 1000:.1f} ms"
                    )
                print(
                    f"  plain callLater timers under the same load: p50 "
                    f"{statistics.median(timers) * 1000:.1f} ms, "
                    f"p99 {percentile(timers, 0.99) * 1000:.1f} ms"
                )
            finally:
                await stop(stack, pools)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    # 1,000 triggers every 10 s: 100 jobs/s, within what the log worker takes.
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--sandbox-runs", type=int, default=30)
    args = parser.parse_args()
    outcome: list = []

    def go():
        d = defer.ensureDeferred(run(args))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if outcome and hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    if args.sandbox_runs > 0:
        sandbox_figures(args.sandbox_runs)


def sandbox_figures(runs: int) -> None:
    """The konnector sandbox's cost (a child process: it runs its reactor)."""
    import subprocess

    from bench.konnector_sandbox import measure, print_figures

    print(f"== konnector sandbox, empty konnector, {runs} runs each")
    try:
        figures = measure(runs)
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr or "").strip().splitlines()[-1:] or [str(exc)]
        print(f"  not measured: {reason[0]}")
        return
    print_figures(figures)


if __name__ == "__main__":
    main()
