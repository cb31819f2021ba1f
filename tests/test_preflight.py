"""pipeline.preflight: every bad output path is one line naming it and the fix, before any stage
starts; good paths give no lines and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamseg.pipeline.preflight import (
    check_outputs,
    kernel_path_problem,
    output_path,
    video_format_problem,
)


def test_good_outputs_have_no_problems_and_leave_nothing_behind(tmp_path):
    video, results = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert check_outputs(str(video), str(results), ["cam1"]) == []
    assert list(tmp_path.iterdir()) == []  # the write probe was removed


def test_no_outputs_no_streams_empty_case():
    assert check_outputs(None, None, []) == []


def test_missing_folders_that_can_be_created_are_fine(tmp_path):
    video = tmp_path / "new" / "deeper" / "out.mp4"
    assert check_outputs(str(video), None, ["a"]) == []
    assert not (tmp_path / "new").exists()  # nothing created by the check


def test_proc_and_sys_are_refused():
    problems = check_outputs("/proc/x.mp4", "/sys/r.jsonl", ["a"])
    assert problems == [
        "/proc/x.mp4: /proc is a kernel filesystem, not a place for output files; "
        "give a path in a normal folder",
        "/sys/r.jsonl: /sys is a kernel filesystem, not a place for output files; "
        "give a path in a normal folder",
    ]


def test_video_without_extension_suggests_mp4(tmp_path):
    path = tmp_path / "out_noext"
    assert check_outputs(str(path), None, ["a"]) == [
        f"{path}: no video file extension, so no container to write; add one, e.g. -o {path}.mp4"
    ]


def test_video_extension_that_cannot_hold_h264(tmp_path):
    (problem,) = check_outputs(str(tmp_path / "out.webm"), None, ["a"])
    assert ".webm is not a container streamseg writes H.264 into; use .mp4" in problem


def test_results_take_any_extension(tmp_path):
    assert check_outputs(None, str(tmp_path / "results"), ["a"]) == []
    assert check_outputs(None, "/dev/null", ["a"]) == []


def test_a_folder_is_not_a_file(tmp_path):
    assert check_outputs(str(tmp_path), None, ["a"]) == [
        f"{tmp_path}: is a folder; give a file name in it, e.g. {tmp_path / 'out.mp4'}"
    ]
    assert check_outputs(None, str(tmp_path), ["a"]) == [
        f"{tmp_path}: is a folder; give a file name in it, e.g. {tmp_path / 'out.jsonl'}"
    ]


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "f").write_text("x")
    path = tmp_path / "f" / "out.mp4"
    assert check_outputs(str(path), None, ["a"]) == [
        f"{path}: {tmp_path / 'f'} is a file, not a folder; choose another folder"
    ]


def test_too_little_free_space_names_the_folder(tmp_path):
    path = tmp_path / "out.mp4"
    (problem,) = check_outputs(str(path), None, ["a"], min_free_bytes=2**62)
    assert problem.startswith(f"{path}: only ")
    assert f"MB free in {tmp_path} (at least" in problem
    assert problem.endswith("free some space or write elsewhere")


def test_video_and_results_in_the_same_file(tmp_path):
    path = tmp_path / "out.mp4"
    assert check_outputs(str(path), str(path), ["a"]) == [
        f"{path}: both -o and --results would write this file; give them different names"
    ]


def test_an_output_that_is_also_an_input(tmp_path):
    source = tmp_path / "in.mp4"
    source.write_bytes(b"video")
    (problem,) = check_outputs(str(source), None, ["in"], inputs=[str(source)])
    assert problem.startswith(f"{source}: is also an input")


def test_several_streams_check_each_stream_file(tmp_path):
    # NAME.STREAM.mp4 per stream: a folder named like one stream's file is found
    (tmp_path / "out.b.mp4").mkdir()
    problems = check_outputs(str(tmp_path / "out.mp4"), None, ["a", "b"])
    assert problems == [
        f"{tmp_path / 'out.b.mp4'}: is a folder; give a file name in it, "
        f"e.g. {tmp_path / 'out.b.mp4' / 'out.mp4'}"
    ]
    assert check_outputs(str(tmp_path / "{stream}" / "v.mp4"), None, ["a", "b"]) == []


def test_one_line_per_problem_even_for_many_streams(tmp_path):
    problems = check_outputs("/proc/{stream}.mp4", None, ["a", "b"])
    assert len(problems) == 2 and all(p.startswith("/proc/") for p in problems)
    assert all("\n" not in p for p in problems)


def test_read_only_filesystem(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mount.stderr.decode().strip()}")
    try:
        (problem,) = check_outputs(str(mnt / "out.mp4"), None, ["a"])
        assert problem == (
            f"{mnt / 'out.mp4'}: cannot create files in {mnt} (Read-only file system); "
            "choose a writable folder"
        )
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_pure_helpers():
    assert video_format_problem(Path("a.MP4")) is None
    assert video_format_problem(Path("a.mkv")) is None
    assert kernel_path_problem(Path("/process/x.mp4")) is None
    assert kernel_path_problem(Path("/proc")) is not None
    assert output_path("x.jsonl", "s", 3) == Path("x.s.jsonl")


def test_imports_neither_av_nor_torch():
    code = (
        "import sys, streamseg.pipeline.preflight; "
        "print(sorted(m for m in ('av', 'torch', 'zmq') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_without_write_permission(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (problem,) = check_outputs(str(folder / "out.mp4"), None, ["a"])
        assert "cannot create files in" in problem and "Permission denied" in problem
    finally:
        folder.chmod(0o700)
