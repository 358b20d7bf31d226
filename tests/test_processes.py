"""Real processes: Pool workers under every start method, the seed's programs, lifetimes."""

from __future__ import annotations

import ast
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shoal
from shoal import _protocol as P

from . import helpers

SEED = pathlib.Path(__file__).parent / "seed"


def test_pool_workers_share_the_dict(ctx: object) -> None:
    with shoal.Manager() as m:
        d = m.dict()
        d["test"] = {}
        with ctx.Pool(4) as pool:  # type: ignore[attr-defined]
            pool.starmap(helpers.set_item, [(d, i, i * i) for i in range(50)])
            pool.starmap(helpers.nested_write, [(d, i) for i in range(50)])
        assert len(d) == 51
        assert d["test"] == {i: i for i in range(50)}


def test_process_arguments(ctx: object) -> None:
    with shoal.Manager() as m:
        d = m.dict()
        procs = [ctx.Process(target=helpers.incr_many, args=(d, "n", 100))  # type: ignore[attr-defined]
                 for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert d["n"] == 200


@pytest.mark.parametrize("worker", [helpers.incr_many, helpers.cas_many])
def test_four_processes_lose_no_update(worker: object) -> None:
    with shoal.Manager() as m:
        d = m.dict()
        import multiprocessing
        procs = [multiprocessing.Process(target=worker, args=(d, "n", 500)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert d["n"] == 2000


@pytest.mark.parametrize("program", ["program1.py", "program2.py", "program3.py",
                                     "program4.py"])
def test_seed_programs_print_complete_results(program: str, tmp_path: pathlib.Path) -> None:
    source = (SEED / program).read_text()
    source = "import shoal\n" + source.replace("multiprocessing.Manager()", "shoal.Manager()")
    script = tmp_path / program
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    expected = ({i: i for i in range(100)} if program == "program1.py"
                else {"test": {i: i for i in range(100)}})
    assert ast.literal_eval(out.stdout.strip()) == expected    # complete, in any order


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_patch_multiprocessing_inside_main_under(method: str, tmp_path: pathlib.Path) -> None:
    """The patch called in ``if __name__ == '__main__':`` only (so a spawned child has not
    got it): the manager's server process still starts."""
    script = tmp_path / "patched.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, shoal
        if __name__ == "__main__":
            shoal.patch_multiprocessing()
            with multiprocessing.get_context({method!r}).Manager() as m:
                d = m.dict(a=1)
                print(type(d).__module__, d.copy())
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["shoal._proxies", "{'a':", "1}"]


def test_threads_share_one_connection(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(300):
                d[(t, i)] = i
                assert d[(t, i)] == i
                d.incr("total")
        except BaseException as e:   # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and d["total"] == 2400 and len(d) == 2401


def test_a_blocked_thread_does_not_block_the_others(manager: shoal.SyncManager) -> None:
    e = manager.Event()
    t = threading.Thread(target=e.wait, args=(5,))
    t.start()
    time.sleep(0.1)
    d = manager.dict()
    start = time.monotonic()
    for i in range(50):
        d[i] = i
    assert time.monotonic() - start < 2
    e.set()
    t.join(5)
    assert not t.is_alive()


def test_server_dies_with_its_owner_even_by_sigkill(tmp_path: pathlib.Path) -> None:
    code = textwrap.dedent("""
        import os, sys, time, shoal
        m = shoal.Manager()
        print(m._process.pid, flush=True)
        time.sleep(600)
    """)
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True) as owner:
        assert owner.stdout is not None
        server_pid = int(owner.stdout.readline())
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        # The server is the owner's child: once it exits it is a zombie of init or gone.
        if _is_zombie(server_pid):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the server outlived its owner by more than 2 s")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_server_survives_a_client_that_disconnects_mid_call(manager: shoal.SyncManager) -> None:
    d = manager.dict()
    d["keep"] = 1
    address = manager.address
    assert isinstance(address, str)
    authkey = bytes(manager._authkey)
    for cut in (4, 8, 20):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(address)
        hello = sock.recv(P.HELLO_SIZE)
        proof, _ = P.client_proof(authkey, hello)
        sock.sendall(proof)
        sock.recv(33)
        body = b"\x93\x01\xab__setitem__\x92\xa1k\x01"
        frame = P.HEADER.pack(len(body), 7) + body
        sock.sendall(frame[:cut])                 # half a request, then gone
        sock.close()
    # A client that sends a whole request and leaves before the reply.
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    hello = sock.recv(P.HELLO_SIZE)
    proof, _ = P.client_proof(authkey, hello)
    sock.sendall(proof)
    sock.recv(33)
    sock.sendall(P.HEADER.pack(5, 9) + b"\x93\x00\xa4ping\x90")
    sock.close()
    assert d["keep"] == 1 and d.incr("keep") == 2


def test_wrong_authkey_is_refused_at_once(manager: shoal.SyncManager) -> None:
    start = time.monotonic()
    with pytest.raises(shoal.AuthenticationError):
        shoal.connect(manager.address, authkey=b"not the key").root
    assert time.monotonic() - start < 1
    assert manager.dict(a=1) == {"a": 1}


def test_tcp_on_a_free_port() -> None:
    with shoal.Manager(address=("127.0.0.1", 0), authkey=b"k" * 16) as m:
        host, port = m.address  # type: ignore[misc]
        assert port != 0
        other = shoal.connect(f"tcp://{host}:{port}", authkey=b"k" * 16)
        other.root["x"] = [1]
        assert m.root["x"] == [1]


def _sleeps(pid: int) -> int:
    """How many times process ``pid`` has gone to sleep (its voluntary context switches)."""
    with open(f"/proc/{pid}/status") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith("voluntary_ctxt_switches"))


def test_an_idle_server_sleeps() -> None:
    with shoal.Manager() as m:
        d = m.dict()
        for i in range(1000):
            d[i] = i                      # busy: the server spins after each turn
        time.sleep(0.3)                   # then idle: it sleeps
        pid = m._process.pid
        before = _sleeps(pid)
        time.sleep(2)
        assert _sleeps(pid) - before <= 10   # but for timers of 1 s and 0.5 s
        assert d[999] == 999              # and it wakes for the next request
