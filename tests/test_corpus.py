"""A corpus of files annotated exactly once: the manifest and the to-do list (pure), and
`streamseg annotate DIR -o OUTDIR --jobs 2` killed halfway and run again (real runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import wait_until

from streamseg.fleet import corpus, manifest
from streamseg.fleet.corpus import Task
from streamseg.fleet.manifest import Entry, InputKey

# -- manifest (pure) -------------------------------------------------------------------------


def entry(name: str = "a.mp4", size: int = 10, frames: int = 3, out: int = 99) -> Entry:
    return Entry(
        name=name,
        key=InputKey(size=size, mtime_ns=5),
        frames=frames,
        results_sha256="ab" * 32,
        outputs={name.replace(".mp4", ".jsonl"): out},
    )


def test_manifest_line_round_trips():
    e = entry()
    line = manifest.encode(e)
    assert line.endswith("\n") and line.count("\n") == 1
    assert manifest.decode(line) == e


@pytest.mark.parametrize(
    "line",
    [
        "",
        "{",
        "[]",
        '{"v": 2}',
        '{"v":1,"name":"a","key":{"size":1},"frames":1,"results_sha256":"x","outputs":{}}',
        '{"v":1,"name":"a","key":{"size":-1,"mtime_ns":0},"frames":1,"results_sha256":"x",'
        '"outputs":{}}',
        '{"v":1,"name":"","key":{"size":1,"mtime_ns":0},"frames":1,"results_sha256":"x",'
        '"outputs":{}}',
        '{"v":1,"name":"a","key":{"size":1,"mtime_ns":0},"frames":true,"results_sha256":"x",'
        '"outputs":{}}',
    ],
)
def test_manifest_refuses_what_is_not_a_whole_entry(line):
    with pytest.raises(ValueError):
        manifest.decode(line)


def test_parse_skips_a_torn_line_and_the_last_entry_wins():
    a1, b, a2 = entry("a.mp4", frames=1), entry("b.mp4"), entry("a.mp4", frames=2)
    text = manifest.encode(a1) + manifest.encode(b)[:-9] + "\n" + manifest.encode(a2)
    entries, skipped = manifest.parse(text)
    assert entries == [a1, a2] and skipped == 1
    assert manifest.latest(entries) == {"a.mp4": a2}
    assert manifest.parse("") == ([], 0)


def test_append_starts_a_new_line_after_a_torn_one(tmp_path):
    path = tmp_path / "manifest.jsonl"
    assert manifest.read(path) == ([], 0)
    manifest.append(path, entry("a.mp4"))
    with open(path, "a") as f:
        f.write('{"v":1,"name":"b.mp')  # a crash mid-write
    manifest.append(path, entry("c.mp4"))
    entries, skipped = manifest.read(path)
    assert [e.name for e in entries] == ["a.mp4", "c.mp4"] and skipped == 1


def test_is_done_needs_the_same_input_and_whole_outputs():
    e = entry(size=10, out=99)
    key = InputKey(10, 5)
    assert manifest.is_done(e, key, {"a.jsonl": 99})
    assert not manifest.is_done(None, key, {"a.jsonl": 99})
    assert not manifest.is_done(e, InputKey(11, 5), {"a.jsonl": 99})  # the input changed
    assert not manifest.is_done(e, InputKey(10, 6), {"a.jsonl": 99})
    assert not manifest.is_done(e, key, {"a.jsonl": None})  # the output was removed
    assert not manifest.is_done(e, key, {"a.jsonl": 98})
    assert not manifest.is_done(e, key, {})


# -- corpus naming and to-do (pure) ----------------------------------------------------------


def test_names_are_relative_to_the_common_folder():
    paths = [Path("/d/x/a.mp4"), Path("/d/x/sub/b.mp4"), Path("/d/y/a.mp4")]
    assert corpus.names(paths) == ["x/a.mp4", "x/sub/b.mp4", "y/a.mp4"]
    assert corpus.names([Path("/d/a.mp4")]) == ["a.mp4"]
    assert corpus.names([]) == []


def test_outputs_of_a_task():
    assert corpus.outputs_of("x/a.mp4", video=False) == {"results": "x/a.jsonl"}
    assert corpus.outputs_of("a.mkv", video=True) == {"results": "a.jsonl", "video": "a.mp4"}


def test_outdir_checks(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "a.mkv"
    for p in (a, b):
        p.write_bytes(b"x")
    with pytest.raises(corpus.CorpusError, match="would both write"):
        corpus.check_outdir(tmp_path / "out", corpus.tasks([a, b]), video=False)
    with pytest.raises(corpus.CorpusError, match="would overwrite an input"):
        corpus.check_outdir(tmp_path, corpus.tasks([a]), video=True)
    with pytest.raises(corpus.CorpusError, match="not a folder"):
        corpus.check_outdir(a, corpus.tasks([b]), video=False)
    corpus.check_outdir(tmp_path / "out", corpus.tasks([a]), video=True)
    inside = tmp_path / "out" / "a.mp4"
    assert corpus.outside([a, inside], tmp_path / "out") == [a]


def test_todo_is_what_has_no_valid_entry():
    ts = [Task(f"{n}.mp4", Path(f"/c/{n}.mp4"), InputKey(10, 5)) for n in "abc"]
    done = {"a.mp4": entry("a.mp4"), "b.mp4": entry("b.mp4")}
    sizes = {"a.jsonl": 99, "b.jsonl": None}
    assert [t.name for t in corpus.todo(ts, done, sizes)] == ["b.mp4", "c.mp4"]
    assert corpus.todo([], done, sizes) == []
    assert corpus.todo(ts, {}, {}) == ts


def test_is_corpus_keeps_the_one_run_uses(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    a = str(tmp_path / "a.mp4")
    assert not corpus.is_corpus([a], None)
    assert not corpus.is_corpus([a], "x.mp4")
    assert not corpus.is_corpus([a, a], "x.{stream}.mp4")
    assert not corpus.is_corpus(["cam=rtsp://h/x"], None)
    assert corpus.is_corpus([str(tmp_path)], "o")
    assert corpus.is_corpus([str(tmp_path / "*.mp4")], "o")
    assert corpus.is_corpus(["@list.txt"], "o")
    assert corpus.is_corpus([a, a], str(tmp_path / "out"))
    assert corpus.is_corpus([a], "new/")
    assert corpus.is_corpus([a], "x.mp4", forced=True)


def test_expand_folders_globs_and_lists(tmp_path):
    for rel in ("a.mp4", "sub/b.mkv", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# clips\na.mp4\n\nsub/b.mkv\na.mp4\n")
    got = corpus.expand([str(tmp_path)])
    assert got == [tmp_path / "a.mp4", tmp_path / "sub/b.mkv"]
    assert corpus.expand([str(tmp_path / "*.mp4")]) == [tmp_path / "a.mp4"]
    assert corpus.expand([f"@{tmp_path / 'list.txt'}"]) == got  # the duplicate once
    with pytest.raises(corpus.CorpusError, match="no video files"):
        corpus.expand([str(tmp_path / "*.avi")])
    with pytest.raises(corpus.CorpusError, match="no such file"):
        corpus.expand([str(tmp_path / "missing")])


# -- a real corpus run, killed and resumed ---------------------------------------------------

CLIPS = 8


def annotate(*args: str | Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamseg.cli", "annotate", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """8 short clips (10 frames, 96x64) in a folder, one of them in a subfolder."""
    from streamseg.tools import synth

    d = tmp_path_factory.mktemp("corpus")
    for i in range(CLIPS):
        path = d / ("sub" if i == 5 else "") / f"clip{i}.mp4"
        path.parent.mkdir(exist_ok=True)
        synth.write_clip(path, d / f"gt{i}.json", seed=i, frames=10, size=(96, 64), fps=25)
        (d / f"gt{i}.json").unlink()
    return d


@pytest.fixture(scope="module")
def trained_config(tmp_path_factory) -> Path:
    """The shipped weights at tiny sizes: deterministic results (random weights differ from
    one process to the next), so a corpus run can be compared with runs file by file."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(
        "[model]\n"
        'arch = "shapes_mobilenet_v3_fpn"\n'
        'weights = "streamseg:shapes.pt"\n'
        'labels = ["__background__", "circle", "square", "triangle"]\n'
        "score_threshold = 0.0\n"
        "detections_per_img = 5\n"
        "min_size = 128\n"
        "max_size = 160\n"
        "[runtime]\n"
        'device = "cpu"\n'
        "max_batch = 1\n"  # batches of 2 round a score differently in its 5th digit
        "max_wait_ms = 0.0\n"
        "threads = 1\n"
    )
    return path


def reference(clips: Path, config: Path, out: Path) -> dict[str, bytes]:
    """Each clip annotated by its own `streamseg annotate` (two at a time): name -> results."""
    files = sorted(clips.rglob("*.mp4"))

    def one(video: Path) -> tuple[str, bytes]:
        rel = video.relative_to(clips).with_suffix(".jsonl").as_posix()
        results = out / rel.replace("/", "_")
        for _ in range(3):  # a lost run is retried, as the corpus runner does
            proc = annotate("-q", video, "--results", results, "--config", config)
            _, err = proc.communicate(timeout=300)
            if proc.returncode == 0:
                return rel, results.read_bytes()
        raise AssertionError(err)

    out.mkdir()
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, files))


def manifest_names(outdir: Path) -> list[str]:
    entries, _ = manifest.read(outdir / manifest.MANIFEST)
    return [e.name for e in entries]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_corpus_killed_halfway_resumes_and_does_each_file_once(clips, trained_config, tmp_path):
    outdir = tmp_path / "out"
    args = (clips, "-o", outdir, "--jobs", "2", "--retries", "4", "--config", trained_config)
    first = annotate(*args, start_new_session=True)
    try:
        wait_until(
            lambda: len(manifest_names(outdir)) >= 2,
            240,
            "the corpus run recorded 2 files",
            ended=lambda: first.poll() is not None,
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the runner and the runs it started
        first.communicate()
    after_kill = {p.relative_to(outdir).as_posix(): p.read_bytes() for p in outdir.rglob("*.jsonl")}
    recorded = manifest_names(outdir)
    assert 2 <= len(recorded) < CLIPS, "killed halfway"

    second = annotate(*args)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert f"corpus: {CLIPS} files, {len(recorded)} done before" in err

    want = reference(clips, trained_config, tmp_path / "ref")
    results = {p.relative_to(outdir).as_posix(): p.read_bytes() for p in outdir.rglob("*.jsonl")}
    results.pop(manifest.MANIFEST)
    assert results == want  # equal to annotate file by file: whole, none duplicated
    for name, data in results.items():
        frames = [json.loads(line)["frame"] for line in data.decode().splitlines()]
        assert frames == list(range(10)), name
    for name, data in after_kill.items():  # what a kill left was whole, or absent
        if name != manifest.MANIFEST:
            assert data == want[name], name
    names = manifest_names(outdir)
    assert sorted(names) == sorted(n.replace(".jsonl", ".mp4") for n in want)  # each once
    assert not list((outdir / ".partial").iterdir())

    third = annotate(*args)
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert f"corpus: {CLIPS} files, {CLIPS} done before, 0 to do" in err
    assert manifest_names(outdir) == names

    # a changed input is redone, and only it
    changed = clips / "clip3.mp4"
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    fourth = annotate(*args)
    _, err = fourth.communicate(timeout=300)
    assert fourth.returncode == 0, err
    assert f"{CLIPS - 1} done before, 1 to do" in err
    assert manifest_names(outdir) == [*names, "clip3.mp4"]


def test_corpus_refuses_bad_use_in_one_line(clips, tmp_path):
    for args, says in [
        ((clips,), "give -o OUTDIR"),
        ((clips, "-o", tmp_path / "o", "--results", "r.jsonl"), "--results names one file"),
        ((clips, "-o", tmp_path / "o", "--jobs", "0"), "--jobs must be 1 or more"),
        ((tmp_path / "none*.mp4", "-o", tmp_path / "o"), "no video files"),
        ((clips, "-o", clips / "clip0.mp4"), "is not a folder"),
        ((clips, "-o", tmp_path / "o", "--serve", "0"), "--serve is for one run"),
    ]:
        proc = annotate(*args)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, err)
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def runs_writing_into(outdir: Path) -> list[int]:
    """Pids of processes whose command line names OUTDIR/.partial (the corpus's runs)."""
    needle = str(outdir / ".partial").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_stops_the_corpus_and_its_runs_leaving_only_whole_files(
    clips, trained_config, tmp_path
):
    outdir = tmp_path / "out"
    runner = annotate(clips, "-o", outdir, "--jobs", "2", "--config", trained_config)
    wait_until(
        lambda: manifest_names(outdir),
        240,
        "the corpus run recorded a file",
        ended=lambda: runner.poll() is not None,
    )
    wait_until(lambda: runs_writing_into(outdir), 60, "a run under way")
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert "run the same command again" in err
    wait_until(lambda: not runs_writing_into(outdir), 30, "the runs stopped with the corpus")
    recorded = manifest_names(outdir)
    present = sorted(p.relative_to(outdir).as_posix() for p in outdir.rglob("*.jsonl"))
    assert present == sorted([manifest.MANIFEST, *(n.replace(".mp4", ".jsonl") for n in recorded)])
