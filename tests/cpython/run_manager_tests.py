"""Run CPython's own multiprocessing *manager* tests, on the stdlib or on shoal.

Usage::

    python tests/cpython/run_manager_tests.py [--start-method fork|spawn|forkserver]
                                              [--shoal] [--strict] [-k PATTERN] [--list]

The tests come from ``test._test_multiprocessing``, the module that ships with CPython and
backs ``test.test_multiprocessing_{fork,spawn,forkserver}``. Only the parts that exercise
managers are built and run:

* ``install_tests_in_module_dict(..., only_type='manager')`` generates the ``WithManagerTest*``
  classes: every ``BaseTestCase`` whose ``ALLOWED_TYPES`` contains ``'manager'`` mixed with
  ``ManagerMixin`` (one shared ``multiprocessing.Manager()`` per class; the tests get their
  Queue/Lock/.../dict/list/Namespace/Pool from it). In 3.11: Queue, Lock, Semaphore, Condition,
  Event, Barrier, Containers, Pool, MyManager, RemoteManager, ManagerRestart.
* the plain ``unittest.TestCase`` classes that are about managers: ``TestSyncManagerTypes``
  (a ``managers.SyncManager`` per test, proxies handed to a child process) and
  ``TestInitializers`` (``SyncManager.start(initializer, args)``).

The last line printed is the summary, for example::

    manager tests (forkserver, stdlib): 79 passed, 9 skipped, 1 failed, 0 errors of 89

``passed + skipped + failed + errors == total`` (the number of collected tests). Tests that
never ran because their ``setUpClass`` failed count as errors. Errors raised by other fixtures
(``tearDownClass``, module fixtures) are listed separately under "fixture errors" and are not
part of the counts. The exit status is 0 whatever the outcome, unless ``--strict`` is given
(then 1 on any failure, error or fixture error). 2 means the run could not be set up (for
example ``--shoal`` without an importable shoal), 3 that the watchdog gave up on a hang.

Order of operations with ``--shoal`` (why the patch runs before the import)
--------------------------------------------------------------------------

``test._test_multiprocessing`` binds manager names when it is *imported*, not when a test runs:

* ``from multiprocessing.managers import BaseManager, BaseProxy, RemoteError`` (module level);
* ``class MyManager(BaseManager)``, ``class QueueManager(BaseManager)``,
  ``class QueueManager2(BaseManager)`` and ``class IteratorProxy(BaseProxy)`` are defined and
  ``register()``-ed at import time, so their base classes are frozen then;
* ``TestSyncManagerTypes.manager_class = multiprocessing.managers.SyncManager`` is evaluated
  in the class body, i.e. at import time;
* ``_TestPool.test_make_pool`` expects the ``RemoteError`` bound at import time.

Names looked up at call time need no particular order: ``ManagerMixin.setUpClass`` calls
``multiprocessing.Manager()`` (a bound method of the default context, whose ``Manager``
imports ``SyncManager`` from ``multiprocessing.managers`` on each call) and
``TestInitializers`` uses ``multiprocessing.managers.SyncManager()``.

So, in every process that imports the test module:

1. ``shoal.patch_multiprocessing()`` runs first;
2. then ``import test._test_multiprocessing``;
3. then the test classes are built into this module's globals;
4. only in the parent: the tests run (``setUpModule`` sets the start method).

Child processes need the same order. With *spawn* the child re-runs this file as
``__mp_main__`` before it unpickles the process target (targets are bound classmethods of the
generated classes, pickled as ``__main__.WithManagerTestQueue._test_put`` and so on, which is
why the classes must be built at import time of this file and not inside ``main()``). With
*forkserver*, ``setUpModule`` asks the fork server to preload ``__main__``, i.e. this file, so
the fork server is patched and its children inherit that. With *fork* children inherit
everything. The parent passes the choice down through the environment variable
``SHOAL_CPYTHON_TESTS_PATCH=1`` (``sys.argv`` is not restored in the fork server), and the
module-level code below applies the patch whenever it sees it. ``sys.path`` (including the
``src/`` fallback used when shoal is not installed) reaches children through the normal
multiprocessing preparation data.

Hangs
-----

A watchdog thread watches progress (test start and end). If nothing moves for ``--timeout``
seconds (default 60; this window also covers class fixtures between two tests) it dumps every
thread's stack to stderr and raises ``TestTimedOut`` in the main thread through SIGALRM; that
interrupts blocking socket and lock calls, so unittest records an error and carries on. If
the same stall survives three interruptions, or the whole run exceeds ``--total-timeout``
(default 600 s), the watchdog prints the summary so far (tests not reached count as errors),
kills the child processes this run started, and exits with status 3. ``faulthandler`` is armed
as a last resort for a stall the watchdog thread cannot see (a C call holding the GIL) and for a
hang at interpreter shutdown.
"""

from __future__ import annotations

import argparse
import faulthandler
import fnmatch
import os
import signal
import sys
import threading
import time
import unittest
from pathlib import Path

PATCH_ENV = "SHOAL_CPYTHON_TESTS_PATCH"
START_METHOD_ENV = "SHOAL_CPYTHON_TESTS_START_METHOD"

# Classes from test._test_multiprocessing that derive from unittest.TestCase directly (so
# install_tests_in_module_dict(only_type='manager') leaves them out) but test managers.
PLAIN_MANAGER_CLASSES = ("TestSyncManagerTypes", "TestInitializers")

MAX_KICKS = 3  # interruptions of one stall before the watchdog gives up on the run


def _import_shoal():
    try:
        import shoal
    except ImportError:
        # Not installed: fall back to the source tree this file lives in (repo/src).
        src = Path(__file__).resolve().parents[2] / "src"
        if not (src / "shoal").is_dir():
            raise
        sys.path.insert(0, str(src))
        import shoal
    return shoal


def _apply_shoal_patch():
    shoal = _import_shoal()
    shoal.patch_multiprocessing()
    return shoal


def _build_test_classes(namespace):
    """Import the CPython test module and put the manager test classes into ``namespace``.

    Returns the test module and the generated classes, in definition order.
    """
    import test._test_multiprocessing as mp_tests

    before = set(namespace)
    # The start method only matters for setUpModule(), which runs in the parent; children
    # just need the same class names to exist here.
    start_method = os.environ.get(START_METHOD_ENV, "fork")
    mp_tests.install_tests_in_module_dict(namespace, start_method, only_type="manager")
    classes = [namespace[name] for name in namespace
               if name not in before and name.startswith("WithManager")]
    for name in PLAIN_MANAGER_CLASSES:
        base = getattr(mp_tests, name, None)
        if base is None:  # not in this CPython version
            continue
        # Same wrapping install_tests_in_module_dict does for plain TestCase classes.
        cls = type(name, (base, object), {})
        cls.__qualname__ = name
        cls.__module__ = namespace["__name__"]
        namespace[name] = cls
        classes.append(cls)
    return mp_tests, classes


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run CPython's multiprocessing manager tests on the stdlib or on shoal.")
    parser.add_argument("--start-method", choices=("fork", "spawn", "forkserver"),
                        default="forkserver")
    parser.add_argument("--shoal", action="store_true",
                        help="call shoal.patch_multiprocessing() first, run on shoal")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if anything failed or errored")
    parser.add_argument("-k", dest="patterns", action="append", default=[],
                        help="only tests whose id contains PATTERN or matches it as a glob "
                             "(repeatable)")
    parser.add_argument("--list", action="store_true", help="list the tests and exit")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds without progress before a test is interrupted")
    parser.add_argument("--total-timeout", type=float, default=600.0,
                        help="seconds for the whole run")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-test lines")
    parser.add_argument("--durations", type=int, default=10,
                        help="show the N slowest tests (0: none)")
    return parser.parse_args(argv)


# --- module level: runs in the parent (as __main__) and in every child that re-imports this
# --- file (as __mp_main__). Order matters, see the module docstring.
if __name__ == "__main__":
    _ARGS = _parse_args()  # step 0, before anything is imported
    os.environ[START_METHOD_ENV] = _ARGS.start_method
    if _ARGS.shoal:
        os.environ[PATCH_ENV] = "1"
    else:
        os.environ.pop(PATCH_ENV, None)

_SHOAL = None
_SHOAL_IMPORT_ERROR = None
if os.environ.get(PATCH_ENV) == "1":
    try:
        _SHOAL = _apply_shoal_patch()  # step 1
    except Exception as exc:  # reported by main(); children would fail loudly anyway
        if __name__ != "__main__":
            raise
        _SHOAL_IMPORT_ERROR = exc

if _SHOAL_IMPORT_ERROR is None:
    _MP_TESTS, TEST_CLASSES = _build_test_classes(globals())  # steps 2 and 3


# --- running ---------------------------------------------------------------------------------

class TestTimedOut(Exception):
    """Raised in the main thread by the watchdog when a test makes no progress."""


def _on_alarm(signum, frame):
    raise TestTimedOut(f"no progress for {_WATCHDOG.per_test:.0f}s in {_WATCHDOG.what}"
                       " (interrupted by the watchdog)")


class _Watchdog(threading.Thread):
    def __init__(self, per_test, total, give_up):
        super().__init__(name="manager-tests-watchdog", daemon=True)
        self.per_test = per_test
        self.total = total
        self.give_up = give_up
        self.started_at = self.last = time.monotonic()
        self.what = "module setup"
        self.kicks = 0
        self.main_ident = threading.main_thread().ident
        self._stopped = threading.Event()

    def progress(self, what):
        self.last = time.monotonic()
        self.what = what
        self.kicks = 0

    def stop(self):
        self._stopped.set()

    def run(self):
        while not self._stopped.wait(0.25):
            now = time.monotonic()
            if now - self.started_at > self.total:
                self._dump(f"the whole run exceeded {self.total:.0f}s (at {self.what})")
                self.give_up(f"total timeout of {self.total:.0f}s exceeded")
                return
            if now - self.last > self.per_test:
                self.kicks += 1
                self._dump(f"no progress for {self.per_test:.0f}s in {self.what}")
                if self.kicks > MAX_KICKS:
                    self.give_up(f"{self.what} still stuck after {MAX_KICKS} interruptions")
                    return
                self.last = now
                signal.pthread_kill(self.main_ident, signal.SIGALRM)

    @staticmethod
    def _dump(message):
        sys.stdout.flush()
        print(f"\n[watchdog] {message}; stacks of all threads:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()


_WATCHDOG: _Watchdog | None = None
_CURRENT_RESULT = None

_RANK = {"pass": 0, "skip": 1, "fail": 2, "error": 3}


class _Result(unittest.TextTestResult):
    """Keeps one final outcome per test id, plus fixture errors and durations."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}        # test id -> 'pass' | 'skip' | 'fail' | 'error'
        self.fixture_errors = []  # (description, traceback text)
        self.durations = {}
        self._t0 = {}
        global _CURRENT_RESULT
        _CURRENT_RESULT = self  # so the watchdog can report a run it cuts short

    def _record(self, test, outcome):
        if not isinstance(test, unittest.TestCase):
            return
        old = self.outcomes.get(test.id())
        if old is None or _RANK[outcome] > _RANK[old]:
            self.outcomes[test.id()] = outcome

    def startTest(self, test):
        if _WATCHDOG is not None:
            _WATCHDOG.progress(test.id())
        self._t0[test.id()] = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        t0 = self._t0.pop(test.id(), None)
        if t0 is not None:
            self.durations[test.id()] = time.monotonic() - t0
        if _WATCHDOG is not None:
            _WATCHDOG.progress(f"class fixtures after {test.id()}")

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "pass")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "pass")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skip")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "fail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "fail")

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._record(test, "error")
        else:  # unittest's _ErrorHolder for setUpClass/tearDownClass/module fixtures
            self.fixture_errors.append((str(test), self._exc_info_to_string(err, test)))


def _matches(test_id, patterns):
    if not patterns:
        return True
    return any(p in test_id or fnmatch.fnmatchcase(test_id, p) for p in patterns)


def _collect(patterns):
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for cls in TEST_CLASSES:
        for test in loader.loadTestsFromTestCase(cls):
            if _matches(test.id(), patterns):
                suite.addTest(test)
    return suite


def _tally(all_ids, result):
    counts = {"pass": 0, "skip": 0, "fail": 0, "error": 0}
    not_run = []
    for test_id in all_ids:
        outcome = result.outcomes.get(test_id)
        if outcome is None:
            not_run.append(test_id)
            outcome = "error"
        counts[outcome] += 1
    return counts, not_run


def _summary_line(start_method, backend, counts, total):
    return (f"manager tests ({start_method}, {backend}): {counts['pass']} passed, "
            f"{counts['skip']} skipped, {counts['fail']} failed, {counts['error']} errors "
            f"of {total}")


def _report(args, backend, all_ids, result, elapsed, stream):
    counts, not_run = _tally(all_ids, result)
    per_class = {}
    for test_id in all_ids:
        cls = test_id.split(".")[-2]
        outcome = result.outcomes.get(test_id, "error")
        per_class.setdefault(cls, {"pass": 0, "skip": 0, "fail": 0, "error": 0})[outcome] += 1
    w = stream.write
    w("\n" + "=" * 78 + "\n")
    w(f"{'class':40} {'pass':>6} {'skip':>6} {'fail':>6} {'error':>6}\n")
    for cls, c in per_class.items():
        w(f"{cls:40} {c['pass']:6} {c['skip']:6} {c['fail']:6} {c['error']:6}\n")
    bad = [t for t in all_ids if result.outcomes.get(t) in ("fail", "error")]
    if bad:
        w("\nfailed or errored:\n")
        for t in bad:
            w(f"  {result.outcomes[t].upper():5} {t}\n")
    if not_run:
        w("\nnot run (a class fixture failed or the run was cut short), counted as errors:\n")
        for t in not_run:
            w(f"  {t}\n")
    if result.fixture_errors:
        w("\nfixture errors (not in the counts):\n")
        for desc, _tb in result.fixture_errors:
            w(f"  {desc}\n")
    if args.durations and result.durations:
        w(f"\nslowest {args.durations}:\n")
        slowest = sorted(result.durations.items(), key=lambda kv: kv[1], reverse=True)
        for t, d in slowest[:args.durations]:
            w(f"  {d:7.2f}s {t}\n")
    w(f"\nwall time {elapsed:.1f}s\n")
    w(_summary_line(args.start_method, backend, counts, len(all_ids)) + "\n")
    stream.flush()
    return counts


def _kill_our_children():
    import multiprocessing
    for p in multiprocessing.active_children():
        try:
            p.kill()
        except Exception:
            pass


def main(args):
    global _WATCHDOG
    backend = "shoal" if args.shoal else "stdlib"
    out = sys.stdout
    if _SHOAL_IMPORT_ERROR is not None:
        print(f"cannot run on shoal: {_SHOAL_IMPORT_ERROR!r}", file=sys.stderr)
        return 2

    suite = _collect(args.patterns)
    all_ids = [t.id() for t in suite]
    if args.list:
        for t in all_ids:
            print(t)
        print(f"{len(all_ids)} tests")
        return 0

    print(f"python {sys.version.split()[0]}, start method {args.start_method}, "
          f"backend {backend}, {len(all_ids)} tests, "
          f"timeout {args.timeout:.0f}s per test, {args.total_timeout:.0f}s total", file=out)
    if args.shoal:
        print(f"shoal {getattr(_SHOAL, '__version__', '?')} from "
              f"{Path(_SHOAL.__file__).parent}; class hierarchy after the patch:", file=out)
        for cls in (_MP_TESTS.MyManager, _MP_TESTS.IteratorProxy,
                    _MP_TESTS.TestSyncManagerTypes.manager_class):
            chain = " -> ".join(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__)
            print(f"  {chain}", file=out)
    out.flush()

    runner = unittest.TextTestRunner(stream=out, verbosity=1 if args.quiet else 2,
                                     resultclass=_Result)
    t_start = time.monotonic()

    def give_up(reason):
        print(f"\n[watchdog] giving up: {reason}", file=sys.stderr, flush=True)
        result = _CURRENT_RESULT or _Result(out, True, 1)
        _report(args, backend, all_ids, result, time.monotonic() - t_start, out)
        _kill_our_children()
        os._exit(3)

    signal.signal(signal.SIGALRM, _on_alarm)
    _WATCHDOG = _Watchdog(args.timeout, args.total_timeout, give_up)
    # Last resort if the watchdog thread itself cannot run (GIL held in C code).
    faulthandler.dump_traceback_later(args.total_timeout + 60, exit=True)
    _WATCHDOG.start()
    try:
        result = runner.run(suite)
    finally:
        _WATCHDOG.stop()
        _WATCHDOG.join(5)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # a late kick must not kill the report
    counts = _report(args, backend, all_ids, result, time.monotonic() - t_start, out)

    # Guard interpreter shutdown (atexit handlers, non-daemon threads, finalizers).
    faulthandler.dump_traceback_later(60, exit=True)
    if args.strict and (counts["fail"] or counts["error"] or result.fixture_errors):
        return 1
    return 0


if __name__ == "__main__":
    faulthandler.enable()
    sys.exit(main(_ARGS))
