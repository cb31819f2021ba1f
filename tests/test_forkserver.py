"""The fork server (streamseg.pipeline.forkserver): real processes, real signals.

A stage forked from it must be indistinguishable, to the supervisor and to whoever looks at the
machine, from one started as `python -m streamseg.stage ...`: a child of the supervisor, with
that command line, the same exit codes, and dying when signalled. A server that is killed,
hung, or unsafe to fork from only means the usual way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import wait_until

from streamseg.pipeline.forkserver import ForkServer, make_subreaper
from streamseg.stage.trust import ENV, Tokens, new_token

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture
def server():
    undo = make_subreaper()
    assert undo is not None
    servers: list[ForkServer] = []

    def start(preload=("json",)) -> ForkServer:
        fs = ForkServer.start(list(preload))
        assert fs is not None
        servers.append(fs)
        return fs

    yield start
    for fs in servers:
        fs.close()
    undo()


def _dispatcher_kwargs(tmp_path: Path) -> dict:
    """A dispatcher: binds its endpoints, then waits for frames until it is stopped."""
    return {
        "frames_endpoint": f"ipc://{tmp_path}/frames",
        "work_endpoint": f"ipc://{tmp_path}/work",
        "detections_endpoint": f"ipc://{tmp_path}/detections",
    }


def _env() -> dict[str, str]:
    return {ENV: Tokens(new_token(), {}).to_env()}


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> list[str]:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    while args and not args[-1]:
        args.pop()
    return args


def _spawned(stage: str, kwargs: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamseg.stage", stage, json.dumps(kwargs)]
    return subprocess.Popen(cmd, env=dict(os.environ, **_env()), stderr=subprocess.PIPE)


def _alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_forked_stage_is_our_child_like_a_spawned_one(server, tmp_path, sig):
    fs = server()
    (tmp_path / "f").mkdir()
    (tmp_path / "s").mkdir()
    kwargs = _dispatcher_kwargs(tmp_path / "f")
    forked = fs.spawn("dispatcher", json.dumps(kwargs), _env())
    assert forked is not None
    spawned = _spawned("dispatcher", _dispatcher_kwargs(tmp_path / "s"))
    try:
        bound = [tmp_path / d / e for d in "fs" for e in ("frames", "work")]  # ipc socket files
        wait_until(lambda: all(p.exists() for p in bound), 60, "both to bind their endpoints")
        assert forked.poll() is None and spawned.poll() is None
        assert _ppid(forked.pid) == os.getpid()  # re-parented to us: we reap it
        assert _cmdline(forked.pid) == [
            sys.executable, "-m", "streamseg.stage", "dispatcher", json.dumps(kwargs)
        ]  # fmt: skip
        assert os.getsid(forked.pid) == forked.pid  # its own session, as start_new_session
        with pytest.raises(subprocess.TimeoutExpired):
            forked.wait(timeout=0.1)
    finally:
        forked.send_signal(sig)
        spawned.send_signal(sig)
    assert forked.wait(timeout=30) == spawned.wait(timeout=30)
    assert forked.returncode == (-sig if sig == signal.SIGKILL else spawned.returncode)
    assert not _alive(forked.pid)
    forked.kill()  # after the end: nothing to signal, no error (as Popen)


def test_a_forked_stage_fails_as_a_spawned_one(server, capfd):
    fs = server()
    forked = fs.spawn("nosuch", "{}", _env())
    assert forked is not None
    assert forked.wait(timeout=30) == 1
    err = capfd.readouterr().err
    spawned = _spawned("nosuch", {})
    assert spawned.wait(timeout=30) == 1
    assert "unknown stage 'nosuch'" in err
    assert "unknown stage 'nosuch'" in spawned.stderr.read().decode()
    assert "Traceback" not in err


def test_stages_keep_running_when_the_server_ends(server, tmp_path):
    fs = server()
    forked = fs.spawn("dispatcher", json.dumps(_dispatcher_kwargs(tmp_path)), _env())
    assert forked is not None
    # the kernel sends a death signal (PR_SET_PDEATHSIG) as a process ends, to its children
    # only: ours, so the server's end below cannot reach it
    assert _ppid(forked.pid) == os.getpid()
    fs.close()  # returns once the server has ended
    assert fs._popen.poll() is not None
    assert forked.poll() is None  # it was never the server's child
    forked.send_signal(signal.SIGTERM)
    assert forked.wait(timeout=30) is not None


def test_a_killed_server_means_the_usual_way(server):
    fs = server()
    assert fs.spawn("nosuch", "{}", _env()) is not None  # ready, then killed
    fs._popen.kill()
    t0 = time.monotonic()
    assert fs.spawn("nosuch", "{}", _env()) is None
    assert fs.spawn("nosuch", "{}", _env()) is None  # and it stays that way, at once
    assert time.monotonic() - t0 < 15


def test_a_server_that_cannot_preload_means_the_usual_way(server):
    fs = server(preload=["streamseg_no_such_module"])
    assert fs.spawn("nosuch", "{}", _env()) is None
    assert "preload failed" in fs.why


def test_a_server_with_threads_refuses_to_fork(server, tmp_path, monkeypatch):
    """A fork copies a thread's locks but not the thread: with one running, never fork."""
    (tmp_path / "threaded_at_import.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    fs = server(preload=["threaded_at_import"])
    assert fs.spawn("nosuch", "{}", _env()) is None
    assert "2 threads" in fs.why


def test_a_slow_server_is_given_up(server, tmp_path, monkeypatch):
    (tmp_path / "slow_at_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    fs = server(preload=["slow_at_import"])
    t0 = time.monotonic()
    assert fs.spawn("nosuch", "{}", _env(), ready_timeout_s=1.0) is None
    assert time.monotonic() - t0 < 5
    fs2 = server(preload=["slow_at_import"])
    t0 = time.monotonic()
    asked = [0]

    def give_up() -> bool:  # e.g. Ctrl-C while the run starts
        asked[0] += 1
        return time.monotonic() - t0 > 0.5

    assert fs2.spawn("nosuch", "{}", _env(), give_up=give_up) is None
    assert time.monotonic() - t0 < 5 and asked[0] > 1


# -- asking without waiting (the supervisor's loop never waits on the server) --


def _fallback(stage: str, text: str):
    """How the supervisor starts a stage the usual way, as a Pending's fallback."""

    def start() -> subprocess.Popen:
        cmd = [sys.executable, "-m", "streamseg.stage", stage, text]
        return subprocess.Popen(cmd, env=dict(os.environ, **_env()), stderr=subprocess.DEVNULL)

    return start


def _resolved(pending) -> bool:
    """Polled as the supervisor's loop does: forked, or started the usual way, by now."""
    pending.poll()
    return pending.proc is not None


def test_a_stopped_server_never_blocks_a_request(server, tmp_path):
    fs = server()
    assert fs.spawn("nosuch", "{}", _env()) is not None  # ready
    os.kill(fs._popen.pid, signal.SIGSTOP)
    text = json.dumps(_dispatcher_kwargs(tmp_path))
    t0 = time.monotonic()
    pending = fs.submit("dispatcher", text, _env(), fallback=_fallback("dispatcher", text))
    assert pending.poll() is None and time.monotonic() - t0 < 0.5  # asked, not waited for
    wait_until(lambda: _resolved(pending), 30, "the stage, started the usual way")
    assert isinstance(pending.proc, subprocess.Popen) and pending.poll() is None
    assert fs.ready is False and "too slow" in fs.why
    pending.terminate()
    assert pending.wait(timeout=30) is not None


def test_a_server_stuck_in_its_imports_is_given_up_by_its_progress(server, tmp_path, monkeypatch):
    """Stopped while importing (no CPU time used): given up after STALL_S, not READY_TIMEOUT_S."""
    (tmp_path / "stops_at_import.py").write_text("import os, signal\nos.kill(os.getpid(), 19)\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    fs = server(preload=["stops_at_import"])
    t0 = time.monotonic()
    pending = fs.submit("nosuch", "{}", _env(), fallback=_fallback("nosuch", "{}"))
    wait_until(lambda: _resolved(pending), 30, "the stage, started the usual way")
    assert "no progress" in fs.why
    assert time.monotonic() - t0 < 20  # (READY_TIMEOUT_S: 60)
    assert pending.wait(timeout=30) == 1  # the usual way's answer to an unknown stage


def test_a_request_given_up_before_its_fork_never_runs(server, tmp_path, monkeypatch):
    (tmp_path / "slowish_at_import.py").write_text("import time\ntime.sleep(1.5)\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    fs = server(preload=["slowish_at_import"])
    text = json.dumps(_dispatcher_kwargs(tmp_path))
    pending = fs.submit("dispatcher", text, _env())
    pending.terminate()  # e.g. Ctrl-C while the server still imports
    assert pending.poll() == -signal.SIGTERM and pending.proc is None
    wait_until(lambda: fs.pump() or fs.ready, 30, "the server's imports")  # it forks it...
    fs.close()  # ...and the fork it answers with is killed and reaped
    assert [s.returncode for s in fs._strays] == [-signal.SIGKILL]
