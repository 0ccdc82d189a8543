"""The sandbox's cost: start-to-exit time of an empty konnector, with and
without bubblewrap, in one run.

Run from the repository root (after ``scripts/venv``)::

    .venv/bin/python bench/konnector_sandbox.py [--runs 30]

An empty Node konnector (``index.js`` that does nothing) is run ``--runs``
times each way, alternating, through ``cozyd.konnectors.process`` on the
real reactor, with the command lines of ``cozyd.konnectors.sandbox``: the
default bubblewrap sandbox (namespaces, read-only binds, private /tmp,
rlimits) and ``sandbox = none`` (the same rlimits, no namespaces). It
prints the median and p90 of each and the ratio bwrap / none.
``measure(runs)`` returns the figures (``bench/jobs.py`` prints them too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task

from cozyd.konnectors import process, sandbox


async def _measure(reactor, runs: int) -> dict[str, list[float]]:
    code = tempfile.mkdtemp(prefix="bench-konnector-")
    os.chmod(code, 0o755)
    with open(os.path.join(code, "index.js"), "w") as f:
        f.write("// an empty konnector\n")
    os.chmod(os.path.join(code, "index.js"), 0o644)
    modes = {
        "bwrap": sandbox.SandboxSettings(mode="bwrap"),
        "none": sandbox.SandboxSettings(mode="none"),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    env = {"COZY_URL": "http://bench.test/", "COZY_JOB_ID": "bench"}
    try:
        for i in range(runs + 1):
            for name, settings in modes.items():
                argv = sandbox.command_line(settings, code)
                started = time.perf_counter()
                outcome = await process.run_process(
                    reactor, argv, env=env, cwd=code, time_limit=60
                )
                elapsed = time.perf_counter() - started
                if outcome.process_error:
                    raise RuntimeError(
                        f"{name}: {outcome.process_error}: {outcome.stderr[-500:]!r}"
                    )
                if i:  # the first round warms the caches
                    times[name].append(elapsed)
    finally:
        shutil.rmtree(code, ignore_errors=True)
    return times


def print_figures(figures: dict) -> None:
    """What ``measure`` returned, as both benchmarks print it."""
    for name in ("bwrap", "none"):
        print(
            f"  {name:5}  p50 {figures[name + '_p50'] * 1000:7.1f} ms"
            f"   p90 {figures[name + '_p90'] * 1000:7.1f} ms"
        )
    print(
        f"  sandbox cost: x{figures['ratio']:.2f} (bwrap p50 / none p50), "
        f"+{(figures['bwrap_p50'] - figures['none_p50']) * 1000:.1f} ms a run"
    )


def measure(runs: int = 30) -> dict[str, float]:
    """Median and p90 seconds of each mode and the ratio of the medians
    (in a child process: it runs its own reactor)."""
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--runs", str(runs), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _figures(times: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in times.items():
        values = sorted(values)
        out[f"{name}_p50"] = statistics.median(values)
        out[f"{name}_p90"] = values[min(len(values) - 1, int(len(values) * 0.9))]
    out["ratio"] = out["bwrap_p50"] / out["none_p50"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def go(reactor):
        async def body():
            times = await _measure(reactor, args.runs)
            figures = _figures(times)
            if args.json:
                import json

                print(json.dumps(figures))
                return
            print(
                f"empty konnector, start to exit, {args.runs} runs each (node {_node()}):"
            )
            print_figures(figures)

        return defer.Deferred.fromCoroutine(body())

    task.react(go)


def _node() -> str:
    import subprocess

    return subprocess.run(
        ["node", "--version"], capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    main()
