"""postprocess.sinks.files: video timing (constant and variable rate), fragments that survive a cut,
results files of whole lines only, and one clear error on a full disk."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from harness import Clock

from streamseg.outputs import VIDEO_EXTENSIONS, output_path
from streamseg.postprocess.sinks import files
from streamseg.postprocess.sinks.files import OutputError, ResultsSink, VideoSink
from streamseg.tools.synth import World

TICK = Fraction(1, 90000)


def frames(n: int, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """n pictures of the synthetic moving-shapes world, uint8[H, W, 3] RGB (size is W, H)."""
    world = World(*size, np.random.default_rng(3))
    return [world.render().image for _ in range(n)]


def packets(path: Path) -> list[tuple[int, int, bool]]:
    """(pts, duration, keyframe) of every video packet, in presentation order."""
    with av.open(str(path)) as c:
        out = [(p.pts, p.duration, p.is_keyframe) for p in c.demux(video=0) if p.pts is not None]
    return sorted(out)


def decoded_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """(type, offset, size) of the top-level ISO-BMFF boxes of an MP4."""
    boxes, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        if size == 1:
            size = struct.unpack(">Q", data[at + 8 : at + 16])[0]
        boxes.append((kind.decode("latin-1"), at, size))
        if size < 8:
            break
        at += size
    return boxes


# -- output_path --------------------------------------------------------------------------------


def test_output_path_one_stream_placeholder_and_several_streams():
    assert output_path("out.mp4", "cam1", 1) == Path("out.mp4")
    assert output_path("out.mp4", "cam1", 2) == Path("out.cam1.mp4")
    assert output_path("d/{stream}.jsonl", "cam1", 2) == Path("d/cam1.jsonl")


# -- video: timing ------------------------------------------------------------------------------


def test_constant_rate_video_numbers_frames_at_its_rate(tmp_path):
    path = tmp_path / "cfr.mp4"
    sink = VideoSink(path, 64, 48, 25.0)
    for img in frames(10):
        sink.write(img)
    sink.close()
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert vs.average_rate == 25 and vs.frames == 10
        assert sum(1 for _ in c.decode(vs)) == 10


def test_source_timestamps_keep_a_constant_rate(tmp_path):
    """The pipeline's settings on a 25 fps source: same frame count and rate as before."""
    path = tmp_path / "cfr.mp4"
    sink = VideoSink(path, 64, 48, 25.0, time_base=TICK, fragment_s=1.0)
    for i, img in enumerate(frames(60)):
        sink.write(img, pts=i / 25)
    sink.close()
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert vs.average_rate == 25
        assert vs.duration * vs.time_base == Fraction(60, 25)
    assert decoded_pts(path) == [i * 3600 for i in range(60)]


def test_variable_rate_keeps_every_frame_time_and_the_duration(tmp_path):
    rng = np.random.default_rng(7)
    steps = rng.choice([1 / 30, 1 / 15, 0.1, 0.02], 40)
    pts = 0.5 + np.concatenate([[0.0], np.cumsum(steps[:-1])])  # starts late, like a cut clip
    path = tmp_path / "vfr.mp4"
    sink = VideoSink(path, 64, 48, 20.0, time_base=TICK, fragment_s=1.0)
    for t, img in zip(pts, frames(40), strict=True):
        sink.write(img, pts=float(t))
    sink.close()
    ticks = [round((t - pts[0]) * 90000) for t in pts]  # the file starts at its first frame
    assert decoded_pts(path) == ticks
    got = packets(path)
    # each frame lasts until the next; the last one as long as the one before it
    assert [d for _, d, _ in got] == [*np.diff(ticks).tolist(), ticks[-1] - ticks[-2]]


def test_equal_or_backward_timestamps_are_bumped_one_tick(tmp_path):
    path = tmp_path / "bump.mp4"
    sink = VideoSink(path, 64, 48, 25.0, time_base=TICK)
    for t, img in zip([0.0, 0.04, 0.04, 0.03, 0.2], frames(5), strict=True):
        sink.write(img, pts=t)
    sink.close()
    assert decoded_pts(path) == [0, 3600, 3601, 3602, 18000]


def test_missing_timestamps_continue_at_the_last_step(tmp_path):
    path = tmp_path / "nopts.mp4"
    sink = VideoSink(path, 64, 48, 25.0, time_base=TICK)
    for t, img in zip([0.0, 0.1, None, None], frames(4), strict=True):
        sink.write(img, pts=t)
    sink.close()
    assert decoded_pts(path) == [0, 9000, 18000, 27000]


def test_odd_sizes_and_a_single_frame(tmp_path):
    path = tmp_path / "one.mp4"
    sink = VideoSink(path, 63, 47, 30.0, time_base=TICK, fragment_s=1.0)
    sink.write(frames(1, (63, 47))[0], pts=0.0)
    sink.close()
    assert len(decoded_pts(path)) == 1


def test_closing_without_frames_raises_nothing(tmp_path):
    sink = VideoSink(tmp_path / "empty.mp4", 64, 48, 25.0, time_base=TICK, fragment_s=1.0)
    sink.close()
    sink.close()  # twice is harmless


@pytest.mark.parametrize("ext", VIDEO_EXTENSIONS)
def test_every_extension_preflight_accepts_is_written_and_decodes(tmp_path, ext):
    path = tmp_path / f"out{ext}"
    sink = VideoSink(path, 64, 48, 25.0, time_base=TICK, fragment_s=1.0)
    for i, img in enumerate(frames(30)):
        sink.write(img, pts=i / 25)
    sink.close()
    assert len(decoded_pts(path)) == 30


# -- video: fragments ---------------------------------------------------------------------------


def test_fragments_are_about_a_second_and_each_cut_at_a_fragment_plays(tmp_path):
    path = tmp_path / "frag.mp4"
    sink = VideoSink(path, 160, 120, 25.0, time_base=TICK, fragment_s=1.0)
    for i, img in enumerate(frames(100, (160, 120))):
        sink.write(img, pts=i / 25)
    sink.close()
    data = path.read_bytes()
    boxes = top_level_boxes(data)
    assert [k for k, _, _ in boxes[:2]] == ["ftyp", "moov"]
    ends = [at + size for kind, at, size in boxes if kind == "mdat"]
    assert len(ends) == 4  # 100 frames at 25 fps, a keyframe every 25 frames
    keys = [pts for pts, _, key in packets(path) if key]
    assert np.diff(keys).tolist() == [90000] * 3  # one fragment = 1.0 s
    for n, end in enumerate(ends, 1):
        cut = tmp_path / f"cut{n}.mp4"
        cut.write_bytes(data[:end])
        assert len(decoded_pts(cut)) == 25 * n  # plain decode: no error at the end


def test_a_cut_inside_a_fragment_keeps_the_fragments_before_it(tmp_path):
    path = tmp_path / "frag.mp4"
    sink = VideoSink(path, 160, 120, 25.0, time_base=TICK, fragment_s=1.0)
    for i, img in enumerate(frames(75, (160, 120))):
        sink.write(img, pts=i / 25)
    sink.close()
    data = path.read_bytes()
    mdats = [(at, size) for kind, at, size in top_level_boxes(data) if kind == "mdat"]
    at, size = mdats[1]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: at + size // 2])  # half of the second fragment's frames
    got = 0
    with av.open(str(cut)) as c:
        for packet in c.demux(video=0):
            try:
                got += len(packet.decode())
            except av.error.FFmpegError:
                pass  # the cut frame
    assert got >= 25


# -- results ------------------------------------------------------------------------------------


def lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_results_are_written_in_whole_lines_at_most_every_flush_s(tmp_path):
    clock = Clock(100.0)
    path = tmp_path / "r.jsonl"
    sink = ResultsSink(path, flush_s=1.0, clock=clock)
    sink.write({"frame": 0})
    assert lines(path) == [{"frame": 0}]  # the first line goes out at once
    sink.write({"frame": 1})
    sink.write({"frame": 2})
    clock.t += 0.5
    sink.tick()
    assert len(lines(path)) == 1  # waiting: less than a second since the last write
    clock.t += 0.5
    sink.tick()
    assert [r["frame"] for r in lines(path)] == [0, 1, 2]
    clock.t += 0.1
    sink.write({"frame": 3})
    sink.close()
    assert [r["frame"] for r in lines(path)] == [0, 1, 2, 3]
    assert sink.lines == 4 and sink.size == path.stat().st_size


def test_results_without_frames_are_an_empty_file(tmp_path):
    sink = ResultsSink(tmp_path / "r.jsonl")
    sink.close()
    sink.close()
    assert (tmp_path / "r.jsonl").read_text() == ""


def test_a_full_disk_cuts_back_to_the_last_whole_line_and_names_the_file(tmp_path, monkeypatch):
    clock = Clock(100.0)
    path = tmp_path / "r.jsonl"
    sink = ResultsSink(path, flush_s=1.0, clock=clock)
    sink.write({"frame": 0})
    real_write = os.write
    room = [25]  # bytes left on the "disk"

    def full_disk(fd: int, data: bytes) -> int:
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, data[: room[0]])
        room[0] -= n
        return n

    monkeypatch.setattr(files.os, "write", full_disk)
    for i in range(1, 6):
        sink.write({"frame": i})
    clock.t += 1.0
    with pytest.raises(OutputError) as e:
        sink.tick()
    assert str(e.value) == f"{path}: disk full; free some space or write elsewhere"
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    monkeypatch.undo()
    sink.close()  # after a failure: closes, raises nothing more
    got = lines(path)  # whole lines only: the half-written one is gone
    assert [r["frame"] for r in got] == [0, 1, 2]  # 24 of the 25 bytes: two whole lines
    assert path.stat().st_size == sink.size


def test_unwritable_results_file_is_one_line(tmp_path):
    with pytest.raises(OutputError) as e:
        ResultsSink(tmp_path / "dir")  # fine: created
        ResultsSink(tmp_path)  # a folder
    assert str(e.value).startswith(f"{tmp_path}: cannot write (")


def test_a_video_name_without_a_container_is_one_line(tmp_path):
    with pytest.raises(OutputError) as e:
        VideoSink(tmp_path / "out_noext", 64, 48, 25.0)
    assert str(e.value).startswith(f"{tmp_path / 'out_noext'}: no video file extension")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs (skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_full_disk_stops_the_video_at_its_last_whole_fragment(tiny_disk):
    path = tiny_disk / "v.mp4"
    rng = np.random.default_rng(0)  # noise: ~40 kB a frame, the disk fills in a few fragments
    sink = VideoSink(path, 160, 120, 25.0, time_base=TICK, fragment_s=0.2)
    with pytest.raises(OutputError) as e:
        for i in range(1000):
            sink.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), pts=i / 25)
    assert str(e.value) == f"{path}: disk full; free some space or write elsewhere"
    sink.close()  # raises nothing more
    assert len(decoded_pts(path)) >= 5  # plain decoding: no broken fragment at the end


def test_a_first_frame_without_time_is_followed_at_the_nominal_rate(tmp_path):
    path = tmp_path / "late.mp4"
    sink = VideoSink(path, 64, 48, 25.0, time_base=TICK)
    for t, img in zip([None, 10.5, 10.6], frames(3), strict=True):
        sink.write(img, pts=t)
    sink.close()
    assert decoded_pts(path) == [0, 3600, 12600]
