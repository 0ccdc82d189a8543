"""The konnector's process: JSON lines, stderr, the time limit (TERM, then
KILL), cancellation, and exactly the environment given — real processes
on the real reactor (trial's TestCase)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from cozyd.konnectors import process

PY = sys.executable


def py(code: str) -> list[str]:
    # As the sandbox's command line: its own process group first.
    return ["/usr/bin/setsid", PY, "-c", code]


class ParseTests(TestCase):
    def test_lines(self):
        self.assertEqual(
            process.parse_line(b'{"type":"critical","message":"LOGIN_FAILED","no_retry":true}'),
            process.Message("critical", "LOGIN_FAILED", True),
        )
        self.assertIsNone(process.parse_line(b"Error: at node:internal"))
        self.assertIsNone(process.parse_line(b"[1, 2]"))
        self.assertIsNone(process.parse_line(b'{"message":"no type"}'))
        long = process.parse_line(json.dumps({"type": "info", "message": "x" * 9000}).encode())
        self.assertEqual(len(long.message), process.MAX_MESSAGE)

    def test_outcome_process_error(self):
        self.assertIsNone(process.Outcome(0, None).process_error)
        self.assertEqual(process.Outcome(3, None).process_error, "exit status 3")
        self.assertEqual(process.Outcome(None, signal.SIGKILL).process_error, "signal: killed")


class RunTests(TestCase):
    timeout = 60

    def run_py(self, code: str, *, time_limit: float = 20, env=None, kill_grace=0.5, on_message=None):
        return defer.Deferred.fromCoroutine(
            process.run_process(
                reactor,
                py(code),
                env=env if env is not None else {},
                cwd="/",
                time_limit=time_limit,
                on_message=on_message,
                kill_grace=kill_grace,
            )
        )

    @defer.inlineCallbacks
    def test_messages_and_errors(self):
        seen = []
        code = (
            "import json,sys\n"
            "print(json.dumps({'type':'info','message':'hello'}))\n"
            "print('not json')\n"
            "print(json.dumps({'type':'error','message':'first error'}))\n"
            "print(json.dumps({'type':'critical','message':'VENDOR_DOWN','no_retry':True}))\n"
            "sys.stdout.write('x'*(70*1024)+'\\n')\n"
            "print(json.dumps({'type':'error','message':'last error'}))\n"
            "sys.stderr.write('trace\\n')\n"
            "sys.exit(2)\n"
        )
        outcome = yield self.run_py(code, on_message=seen.append)
        self.assertEqual([m.type for m in seen], ["info", "error", "critical", "error"])
        self.assertEqual(outcome.critical, "VENDOR_DOWN")
        self.assertEqual(outcome.error, "last error")
        self.assertTrue(outcome.no_retry)
        self.assertEqual(outcome.process_error, "exit status 2")
        self.assertEqual(outcome.stderr, b"trace\n")

    @defer.inlineCallbacks
    def test_exactly_the_environment_given(self):
        seen = []
        code = "import json,os; print(json.dumps({'type':'info','message':json.dumps(dict(os.environ))}))"
        os.environ["COZYD_SECRET_OF_THE_DAEMON"] = "leak"
        self.addCleanup(os.environ.pop, "COZYD_SECRET_OF_THE_DAEMON", None)
        yield self.run_py(code, env={"COZY_URL": "http://a/"}, on_message=seen.append)
        env = json.loads(seen[0].message)
        env.pop("LC_CTYPE", None)  # Python's own locale coercion
        self.assertEqual(env, {"COZY_URL": "http://a/"})

    @defer.inlineCallbacks
    def test_time_limit_term_then_kill(self):
        # It ignores TERM: KILL comes after the grace delay; its child dies too.
        code = (
            "import signal,subprocess,sys,time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"child = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
            "print('{\"type\":\"info\",\"message\":\"%d\"}' % child.pid, flush=True)\n"
            "time.sleep(60)\n"
        )
        seen = []
        started = time.monotonic()
        outcome = yield self.run_py(code, time_limit=1, kill_grace=0.5, on_message=seen.append)
        elapsed = time.monotonic() - started
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.signal, signal.SIGKILL)
        self.assertLess(elapsed, 10)
        child = int(seen[0].message)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(_alive(child), "the konnector's child survived")

    @defer.inlineCallbacks
    def test_time_limit_term_is_enough(self):
        outcome = yield self.run_py("import time; time.sleep(60)", time_limit=0.5, kill_grace=10)
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.signal, signal.SIGTERM)

    @defer.inlineCallbacks
    def test_cancellation_stops_it_and_waits(self):
        seen = []
        code = "print('{\"type\":\"info\",\"message\":\"up\"}', flush=True); import time; time.sleep(60)"
        d = self.run_py(code, kill_grace=0.5, on_message=seen.append)
        while not seen:
            yield task.deferLater(reactor, 0.05, lambda: None)
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
