"""Soak test: a live run under repeated faults for many minutes (docs/reliability.md).

    python tests/faults/soak.py --minutes 30 [--config shapes] [--out soak-report.json]

Two looping RTSP cameras (tests/rtsp_server.py, GStreamer) are watched by one `streamseg watch`
with a results file and a publisher; a slow subscriber reads one result a second. Every
`--server-every` seconds one camera server is killed and restarted; every `--kill-every` seconds
one stage process is killed with SIGKILL (source[a], inference, postprocess, source[b], ...).
At the end the run is stopped with Ctrl-C and the script prints frames in / out / dropped by
reason, restarts, and the RSS of the supervisor and its stages a minute in and at the end, and
checks: every decoded frame is either finished or dropped with a reason, RSS grew < 10 %, and
both streams had results in the last 30 s. Exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # rtspfixture
sys.path.insert(0, str(HERE))  # faultkit

from faultkit import stage_pids  # noqa: E402
from rtspfixture import RtspServer, free_port, rtsp_available  # noqa: E402

from streamseg.tools import synth  # noqa: E402


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss(parent: int) -> dict[str, float]:
    """RSS (MB) of the supervisor and of each of its stage processes, by stage name."""
    out = {"supervisor": rss_mb(parent)}
    for pid in stage_pids(parent, ""):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = cmd[cmd.index(b"streamseg.stage") + 1].decode()
        if name == "source":
            name = f"source[{json.loads(cmd[cmd.index(b'streamseg.stage') + 2])['stream']}]"
        out[name] = rss_mb(pid)
    return out


class SlowSubscriber:
    """Reads one published result a second (a consumer that cannot keep up), remembering when
    each stream last had one."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 10)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.last: dict[str, float] = {}
        self.received = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            while self.sock.poll(0):
                parts = self.sock.recv_multipart()
                self.received += 1
                self.last[parts[0].decode()] = time.monotonic()
                break  # one a second: the publisher's queue for us overflows, by design

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=3)
        self.sock.close(0)
        self.ctx.term()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--config", default="shapes")
    ap.add_argument("--server-every", type=float, default=120.0)
    ap.add_argument("--kill-every", type=float, default=300.0)
    ap.add_argument("--out", default="soak-report.json")
    args = ap.parse_args()
    if not rtsp_available():
        print("soak: the GStreamer RTSP server is missing (.ci/apt-packages.txt)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="streamseg-soak-"))
    clip = tmp / "cam.mp4"
    synth.write_clip(clip, tmp / "cam.json", seed=11, frames=50, size=(320, 240), fps=25)
    servers = {n: RtspServer(clip, loop=True, port=free_port()).start() for n in "ab"}
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "streamseg.cli", "watch", "-q"]
    cmd += [f"{n}={s.url}" for n, s in servers.items()]
    cmd += ["--config", args.config, "--publish", endpoint, "--results", str(tmp / "soak.jsonl")]
    cmd += ["--stall-s", "3", "--retry-max-s", "4", "--report", str(tmp / "report.json")]
    log = open(tmp / "watch.log", "w")  # noqa: SIM115
    watch = subprocess.Popen(cmd, stderr=log, start_new_session=True)
    sub = SlowSubscriber(endpoint)
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    victims = itertools.cycle(["source[a]", "inference", "postprocess", "source[b]"])
    cameras = itertools.cycle("ab")
    next_server, next_kill = t0 + args.server_every, t0 + args.kill_every
    rss_start: dict[str, float] = {}
    events: list[str] = []
    try:
        while time.monotonic() < end and watch.poll() is None:
            time.sleep(1.0)
            now = time.monotonic()
            if not rss_start and now - t0 >= 60:
                rss_start = tree_rss(watch.pid)
            if now >= next_server:
                next_server += args.server_every
                cam = next(cameras)
                servers[cam].kill()
                time.sleep(2.0)
                servers[cam].start()
                events.append(f"{now - t0:7.0f} s: camera {cam} server killed and restarted")
            if now >= next_kill:
                next_kill += args.kill_every
                victim = next(victims)
                stage = victim.split("[")[0]
                for pid in stage_pids(watch.pid, stage):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if stage != "source" or f'"stream": "{victim[7]}"'.encode() in cmdline:
                        os.kill(pid, signal.SIGKILL)
                        events.append(f"{now - t0:7.0f} s: {victim} (pid {pid}) killed")
                        break
            print(f"\rsoak: {(now - t0) / 60:5.1f} of {args.minutes:g} min", end="", flush=True)
        print()
        rss_end = tree_rss(watch.pid)
        last = {s: time.monotonic() - t for s, t in sub.last.items()}
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGINT)
        code = watch.wait(timeout=120)
        sub.close()
        for s in servers.values():
            s.stop()
        log.close()
    report = json.loads((tmp / "report.json").read_text())
    decoded = sum(c.get("in", 0) for c in report["sources"].values())
    done = sum(c.get("out", 0) for c in report["postprocess"].values())
    dropped = report["dropped"]
    before, after = sum(rss_start.values()), sum(rss_end.values())
    checks = {
        "exit code 0 after Ctrl-C": code == 0,
        "every decoded frame finished or dropped with a reason": decoded
        == done + sum(dropped.values()),
        "RSS growth < 10 %": after < 1.10 * before,
        "results for both streams in the last 30 s": all(last.get(s, 1e9) < 30 for s in "ab"),
    }
    figures = {
        "minutes": args.minutes,
        "decoded": decoded,
        "finished": done,
        "dropped": dropped,
        "restarts": report["restarts"],
        "reconnects": {s: c.get("reconnects", 0) for s, c in report["sources"].items()},
        "rss_mb_at_1_min": rss_start,
        "rss_mb_at_end": rss_end,
        "slow_subscriber_received": sub.received,
        "seconds_since_last_result": last,
        "events": events,
        "checks": checks,
        "exit_code": code,
    }
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(
        (tmp / "watch.log").read_text().splitlines()[-8:]
        and "\n".join((tmp / "watch.log").read_text().splitlines()[-8:])
    )
    print(json.dumps(figures, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
