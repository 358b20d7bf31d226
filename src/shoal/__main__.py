"""The command line: ``python -m shoal <command>``, also installed as ``shoal``.

One small function per subcommand: ``_add_<command>(subparsers)`` declares its arguments and
``_cmd_<command>(args) -> int`` runs it. The work itself lives in the library modules; each
command imports what it needs only when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser"]

_Subparsers = Any    # argparse's _SubParsersAction, which is private


# -- demo --------------------------------------------------------------------------------------

def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run
    return run(start_method=args.start_method)


def _add_demo(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "demo",
        help="run the shared-dict-across-a-Pool scenario on multiprocessing.Manager and on shoal",
        description=(
            "Run the scenario shoal started from, a dict shared by the workers of a Pool(4),\n"
            "on multiprocessing.Manager and on shoal side by side:\n"
            "  (a) 100 tasks fill the dict;\n"
            "  (b) 100 tasks write into a nested dict, d['test'][i] = i;\n"
            "  (c) 4 processes increment a counter without a lock (d['n'] += 1 on Manager,\n"
            "      d.incr('n') on shoal);\n"
            "  (d) the Lock + copy-back idiom, and shoal's lock-free equivalents.\n"
            "Prints a table of results and timings, then one-line verdicts; takes a few\n"
            "seconds. Exits with 0 when every shoal row is complete, 1 otherwise."
        ),
        epilog="example:\n  python -m shoal demo\n  python -m shoal demo --start-method spawn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default=None,
                   help="how worker processes are started (default: the platform's default)")
    p.set_defaults(func=_cmd_demo)


# -- serve -------------------------------------------------------------------------------------

def _cmd_serve(args: argparse.Namespace) -> int:
    from ._serve import serve
    return serve(args.address, args.authkey_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
                 persist=args.persist, fsync=args.fsync, verbose=args.verbose,
                 handshake_timeout=args.handshake_timeout, max_connections=args.max_connections)


def _add_serve(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "serve",
        help="run a standalone shoal server",
        description=(
            "Run a shoal server until SIGINT or SIGTERM, logging to stderr. Clients reach it\n"
            "with shoal.connect(ADDRESS, authkey=KEY[, tls=CA]). A HOST:PORT address binds\n"
            "TCP (':PORT' means 127.0.0.1; port 0 picks a free port); anything else is a\n"
            "Unix socket path. The first line on stdout gives the address served."
        ),
        epilog=(
            "example:\n"
            "  head -c 32 /dev/urandom | base64 > key && chmod 600 key\n"
            "  python -m shoal serve --address 127.0.0.1:7070 --authkey-file key\n"
            "  python -m shoal serve --address 0.0.0.0:7070 --authkey-file key \\\n"
            "      --tls-cert cert.pem --tls-key key.pem"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--address", required=True, help="HOST:PORT for TCP, or a Unix socket path")
    p.add_argument("--authkey-file", required=True,
                   help="file holding the key (whitespace stripped); must be chmod 600")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve TCP over TLS")
    p.add_argument("--tls-key", help="PEM private key (if not in --tls-cert)")
    p.add_argument("--persist", metavar="DIR", help="keep the shared state in DIR")
    p.add_argument("--fsync", choices=("always", "everysec", "no"), default="everysec",
                   help="with --persist: when writes reach the disk (default everysec)")
    p.add_argument("--handshake-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="close a peer that has not authenticated within this time (default 5)")
    p.add_argument("--max-connections", type=int, default=4096,
                   help="refuse connections beyond this many (default 4096)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    p.set_defaults(func=_cmd_serve)


# -- inspect -----------------------------------------------------------------------------------

def _interval(text: str) -> float:
    """``--interval``: seconds above 0, at most a day (far beyond, time.sleep() overflows)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds <= 86400:        # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 86400 seconds, not {text}")
    return seconds


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ._inspect import inspect
    return inspect(args.address, args.authkey_file, as_json=args.json, watch=args.watch,
                   interval=args.interval, tls=args.tls_ca)


def _add_inspect(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "inspect",
        help="show what a running server holds: objects, clients, locks and holders, queues",
        description=(
            "Connect to a running shoal server and show its objects by type and size, its\n"
            "clients (pid, host, since when), every lock and semaphore with its holder and\n"
            "how long it has been held, waiters, queue depths and operations per second.\n"
            "--json prints one JSON document (its layout is in docs/inspect.md);\n"
            "--watch refreshes like top until Ctrl-C."
        ),
        epilog="example:\n  python -m shoal inspect 127.0.0.1:7070 --authkey-file key --watch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("address", help="the server: HOST:PORT, tcp://HOST:PORT or a socket path")
    p.add_argument("--authkey-file", required=True, help="file holding the server's key")
    p.add_argument("--json", action="store_true", help="print JSON (with --watch: one per line)")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help="with --watch: seconds between refreshes (default 1)")
    p.add_argument("--tls-ca", metavar="CAFILE", help="connect with TLS, trusting this CA file")
    p.set_defaults(func=_cmd_inspect)


# -- bench -------------------------------------------------------------------------------------

def _cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import run
    return run(quick=args.quick, png=args.png, as_json=args.json, redis_url=args.redis)


def _add_bench(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "bench",
        help="time shoal beside multiprocessing.Manager, print a table and draw a plot",
        description=(
            "Time single operations (dict set/get, a counter, list append, Lock, Queue) on\n"
            "multiprocessing.Manager and on shoal (and on Redis with --redis URL) in one run,\n"
            "in interleaved rounds, and print the medians with the ratio to Manager. --png\n"
            "draws a bar chart (needs matplotlib: pip install 'shoal[plot]'). The fuller\n"
            "suite is in benchmarks/ (see benchmarks/README.md)."
        ),
        epilog="example:\n  python -m shoal bench --quick --png docs/bench.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds: well under a minute")
    p.add_argument("--png", metavar="FILE", help="write a bar chart of the medians")
    p.add_argument("--json", metavar="FILE", help="write the medians as JSON")
    p.add_argument("--redis", metavar="URL", help="also time shoal on Redis at URL")
    p.set_defaults(func=_cmd_bench)


# -- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``shoal`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="shoal: shared Python objects for many processes, a faster drop-in for "
                    "multiprocessing.Manager.",
        epilog="example:\n  python -m shoal demo\n\n"
               "Run 'python -m shoal <command> --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="<command>")
    _add_demo(sub)
    _add_serve(sub)
    _add_inspect(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head -1``). Point stdout at /dev/null, so that flushing it
        # at exit fails no more, and end as a process killed by SIGPIPE would: 128 + 13.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
