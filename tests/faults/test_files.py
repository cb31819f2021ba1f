"""Files against what goes wrong with them: bad output paths, a disk that fills up, a killed
postprocess, damaged input and a variable frame rate. Real runs of `streamseg annotate`, real
processes and signals, real encoded video; the files they leave are checked afterwards.

The CLI cases of bad output paths need `preflight.check_outputs` hooked into the CLI
(`streamseg.cli._run_pipeline`), which refuses them before any stage starts.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from faultkit import Run, lines_so_far, results_lines, video_frames

from streamseg.pipeline.preflight import check_outputs
from streamseg.source.decode import DecodeErrors, decode_frames
from streamseg.tools import synth

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a corrupt file's run may take 600 s

TICK = Fraction(1, 90000)


def cli(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "streamseg.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """400 frames, 160x120 at 25 fps: long enough to break something in the middle of a run."""
    d = tmp_path_factory.mktemp("long")
    synth.write_clip(d / "long.mp4", d / "long.json", seed=8, frames=400, size=(160, 120), fps=25)
    return d / "long.mp4"


# -- bad output paths: refused at once ----------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("/proc/x.mp4", "/proc/x.mp4: /proc is a kernel filesystem"),
        (
            "out_noext",
            "out_noext: no video file extension, so no container to write; add one, "
            "e.g. -o out_noext.mp4",
        ),
    ],
)
def test_bad_video_path_is_one_line_and_exit_2_before_any_stage(
    output, expected, clip, random_config, tmp_path
):
    video, _ = clip
    (problem,) = check_outputs(output, None, ["shapes"])
    assert problem.startswith(expected)
    t0 = time.monotonic()
    proc = cli("annotate", "-q", video, "-o", output, "--config", random_config, cwd=tmp_path)
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"streamseg: error: {problem}"]
    assert took < 5, f"took {took:.1f} s: the check must come before any stage starts"
    assert list(tmp_path.iterdir()) == []


# -- a disk that fills up during the run --------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 120 MB tmpfs: more than preflight asks for, small enough to fill during a run."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(mnt)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(folder: Path) -> int:
    """Write a file into `folder` until its filesystem is full; returns the bytes written."""
    block = b"\0" * 2**20
    written = 0
    with open(folder / "filler", "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                return written


def test_disk_full_mid_run_is_one_line_nonzero_exit_and_whole_lines(
    small_disk, long_clip, random_config
):
    out, results = small_disk / "out.mp4", small_disk / "r.jsonl"
    run = Run(
        small_disk.parent, "annotate", "-q", long_clip, "--config", random_config,
        "-o", out, "--results", results,
    )  # fmt: skip
    # 3 s in: the video holds whole fragments by now (the first is written after 1 s)
    run.wait_for(lambda: len(lines_so_far(results)) >= 75, 300, "75 results lines")
    fill(small_disk)
    code = run.wait(timeout=60)
    err = run.stderr()
    assert code != 0, err
    assert "Traceback" not in err, err
    full = [line for line in err.splitlines() if "disk full" in line]
    assert full, err
    assert all(f"{small_disk}/" in line for line in full), full
    lines = results_lines(results)  # whole lines only, in frame order
    assert [r["frame"] for r in lines] == list(range(len(lines))) and len(lines) >= 75
    # what was written before the disk filled still plays, to its last whole fragment
    assert video_frames(out) >= 25


# -- postprocess killed: what it wrote survives -------------------------------------------------


def test_kill_9_of_postprocess_leaves_a_playable_video_and_whole_lines(
    long_clip, random_config, tmp_path
):
    out, results = tmp_path / "out.mp4", tmp_path / "r.jsonl"
    run = Run(
        tmp_path, "annotate", "-q", long_clip, "--config", random_config,
        "-o", out, "--results", results,
    )  # fmt: skip
    pid = run.stage_pid("postprocess")
    run.wait_for(lambda: len(lines_so_far(results)) >= 75, 300, "75 results lines (3 s)")
    os.kill(pid, signal.SIGKILL)
    run.wait(timeout=30)
    lines = results_lines(results)
    assert [r["frame"] for r in lines] == list(range(len(lines)))
    with av.open(str(out)) as c:  # plain decoding: not one broken packet at the end
        times = [f.time for f in c.decode(video=0)]
    assert times == [i / 25 for i in range(len(times))]
    # at most a fragment (1 s = 25 frames) and the encoder's lookahead behind the results
    print(f"\nkill -9 at {len(lines)} results lines: {len(times)} video frames decode")
    assert len(times) >= len(lines) - 50


# -- damaged input: corrupt packets are skipped -------------------------------------------------


@pytest.fixture(scope="module")
def corrupt_clip(tmp_path_factory) -> Path:
    """A 300-frame H.264 clip with 400 bytes flipped (seeded) in the middle third."""
    d = tmp_path_factory.mktemp("corrupt")
    path = d / "corrupt.mp4"
    synth.write_clip(path, d / "gt.json", seed=3, frames=300, size=(320, 240), fps=30)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(400)
    third = len(data) // 3
    for i in rng.choice(np.arange(third, 2 * third), 400, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_decoder_skips_corrupt_packets_and_counts_them(corrupt_clip):
    with av.open(str(corrupt_clip)) as c:  # what decoding did before: it stops at the damage
        stopped_at = 0
        with pytest.raises(av.error.FFmpegError):
            for _ in c.decode(video=0):
                stopped_at += 1
    errors = DecodeErrors()
    with av.open(str(corrupt_clip)) as c:
        decoded = sum(1 for _ in decode_frames(c, errors))
    print(f"\ncorrupt clip: {decoded}/300 frames decode skipping {errors.corrupt_packets} "
          f"corrupt packets (plain decoding stopped at {stopped_at})")  # fmt: skip
    assert errors.corrupt_packets >= 1
    # each skipped packet costs about its own frame, not the rest of the clip
    assert decoded >= 300 - errors.corrupt_packets - 10 and decoded > stopped_at


def test_decoder_gives_up_after_too_many_corrupt_packets_in_a_row(corrupt_clip):
    errors = DecodeErrors()
    with av.open(str(corrupt_clip)) as c, pytest.raises(av.error.FFmpegError):
        for _ in decode_frames(c, errors, max_consecutive_errors=0):
            pass
    assert errors.corrupt_packets == errors.consecutive == 1


def test_corrupt_file_run_has_results_for_every_decoded_frame_and_exit_3(
    corrupt_clip, random_config, tmp_path
):
    with av.open(str(corrupt_clip)) as c:
        errors = DecodeErrors()
        decoded = sum(1 for _ in decode_frames(c, errors))
    results = tmp_path / "r.jsonl"
    proc = cli(
        "annotate", "-q", corrupt_clip, "--results", results, "--config", random_config,
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"skipped {errors.corrupt_packets} corrupt packets" in proc.stderr
    assert f"done: {decoded}/{decoded} frames with results" in proc.stderr
    assert len(results_lines(results)) == decoded


# -- variable frame rate: kept ------------------------------------------------------------------


def write_vfr_clip(path: Path, pts_ms: list[int], size: tuple[int, int] = (320, 240)) -> None:
    """H.264 MP4 whose frames sit at `pts_ms` (milliseconds, irregular); each frame lasts until
    the next, the last as long as the one before it."""
    tb = Fraction(1, 1000)
    steps = np.diff(pts_ms).tolist()
    durations = dict(zip(pts_ms, [*steps, steps[-1]], strict=True))
    world = synth.World(*size, np.random.default_rng(5))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = *size, "yuv420p"
        s.options = {"bf": "0"}  # packets in presentation order: each one's duration is known
        s.codec_context.time_base = s.time_base = tb

        def mux(packets: list[av.Packet]) -> None:
            for p in packets:
                p.duration = durations[p.pts]
                c.mux(p)

        for t in pts_ms:
            frame = av.VideoFrame.from_ndarray(world.render().image, format="rgb24")
            frame.pts, frame.time_base = t, tb
            mux(s.encode(frame))
        mux(s.encode(None))


def timing(path: Path) -> tuple[list[float], float]:
    """Each frame's time and the stream's duration, seconds."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return [f.time for f in c.decode(vs)], float(vs.duration * vs.time_base)


def test_variable_frame_rate_keeps_its_timestamps(random_config, tmp_path):
    rng = np.random.default_rng(11)
    steps = rng.choice([17, 33, 50, 100, 250], 59)  # ms: 60, 30, 20, 10 and 4 fps mixed
    pts_ms = np.concatenate([[0], np.cumsum(steps)]).tolist()
    source, out = tmp_path / "vfr.mp4", tmp_path / "out.mp4"
    write_vfr_clip(source, pts_ms)
    times_in, duration_in = timing(source)
    assert times_in == pytest.approx([t / 1000 for t in pts_ms])
    results = tmp_path / "r.jsonl"
    proc = cli(
        "annotate", "-q", source, "-o", out, "--results", results, "--config", random_config,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    times_out, duration_out = timing(out)
    assert len(times_out) == len(times_in) == 60
    tick = float(TICK)
    assert np.abs(np.subtract(times_out, times_in)).max() <= tick
    assert abs(duration_out - duration_in) <= tick
    assert [r["pts"] for r in results_lines(results)] == pytest.approx(times_in)
