"""Settings out of type or range, in a pipeline file, a model config or on the command line:
`streamseg annotate` stops before any stage starts, exit 2, with one line naming the file (or
the option), the key and the allowed range. NaN and inf are out of every range (hang_s = nan
turned hang detection off), and max_batch has a bound that fits memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # (each case a streamseg process)

ENDPOINTS = '[endpoints]\nframes = "ipc://{run}/f"\ndetections = "ipc://{run}/d"\n' \
            'stats = "ipc://{run}/s"\n'  # fmt: skip

HANG = "[supervisor] hang_s must be a number in [0.1, 3600]"
PIPELINES = [
    ("[supervisor]\nhang_s = -1\n", f"{HANG}, got -1"),
    ("[supervisor]\nhang_s = nan\n", f"{HANG}, got nan"),
    ('[supervisor]\nhang_s = "2"\n', f"{HANG}, got '2'"),
    ('[inference]\ndepth = "x"\n', "[inference] depth must be an integer in [1, 64], got 'x'"),
    ("[inference]\ndepth = 0\n", "[inference] depth must be an integer in [1, 64], got 0"),
    ("[inference]\nworkers = 100000\n", "[inference] workers must be \"auto\" or a whole number"),
    ("[postprocess]\ntrack_max_missed = inf\n",
     "[postprocess] track_max_missed must be an integer in [0, 100000], got inf"),
    ('[postprocess]\ntrack = "no"\n', "[postprocess] track must be true or false, got 'no'"),
    ('[source]\nlive = 1\n', "[source] live must be true or false, got 1"),
    ("[inference]\nweights = { cam = nan }\n", "[inference] weights must map stream ids"),
]  # fmt: skip

CONFIG = """\
[model]
arch = "shapes_mobilenet_v3_fpn"
weights = "random"
labels = ["__background__", "circle", "square", "triangle"]
min_size = 128
max_size = 160
[runtime]
device = "cpu"
threads = 1
"""

CONFIGS = [
    ("[runtime]\nmax_batch = 3000000000\n",
     "max_batch must be an integer in [1, 256], got 3000000000 ([runtime])"),
    ("[model]\nscore_threshold = nan\n", "score_threshold must be in [0, 1], got nan ([model])"),
    ("[runtime]\nmax_wait_ms = inf\n", "max_wait_ms must be in [0, 10000], got inf ([runtime])"),
    ("[model]\ndetections_per_img = 100000\n",
     "detections_per_img must be an integer in [1, 1000], got 100000 ([model])"),
    ("[model]\nmask_nms = nan\n", "mask_nms must be in [0, 1] (0: off), got nan ([model])"),
]  # fmt: skip

BATCH, WAIT = "max_batch must be an integer in [1, 256]", "max_wait_ms must be in [0, 10000]"
SCORE = "score_threshold must be in [0, 1]"
FLAGS = [
    (["--max-batch", "3000000000"], f"{BATCH}, got 3000000000 (--max-batch)"),
    (["--max-batch", "100000"], f"{BATCH}, got 100000 (--max-batch)"),
    (["--max-wait-ms", "-5"], f"{WAIT}, got -5.0 (--max-wait-ms)"),
    (["--max-wait-ms", "nan"], f"{WAIT}, got nan (--max-wait-ms)"),
    (["--score-threshold", "2"], f"{SCORE}, got 2.0 (--score-threshold)"),
    (["--score-threshold", "nan"], f"{SCORE}, got nan (--score-threshold)"),
]  # fmt: skip


def annotate(tmp: Path, clip: Path, *args: str | Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "streamseg.cli", "annotate", "-q", clip, "-o", "out.mp4", *args]
    return subprocess.run(list(map(str, cmd)), cwd=tmp, capture_output=True, text=True, timeout=120)


def refused(out: subprocess.CompletedProcess, where: str, message: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert where in out.stderr and message in out.stderr, out.stderr


@pytest.mark.parametrize(("text", "message"), PIPELINES)
def test_pipeline_settings_out_of_range_are_refused(text, message, clip, tmp_path):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(ENDPOINTS + text)
    refused(annotate(tmp_path, clip[0], "--pipeline", pipeline), str(pipeline), message)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize(("text", "message"), CONFIGS)
def test_model_settings_out_of_range_are_refused(text, message, clip, tmp_path):
    # (a second [model] or [runtime] table is not TOML: put the line into the table it names)
    table, line = text.split("\n", 1)
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace(table + "\n", table + "\n" + line))
    refused(annotate(tmp_path, clip[0], "--config", config), str(config), message)


@pytest.mark.parametrize(("flags", "message"), FLAGS)
def test_command_line_overrides_out_of_range_are_refused(flags, message, clip, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    refused(annotate(tmp_path, clip[0], "--config", config, *flags), str(config), message)


TRAIN = [
    (["[train]\nlr = nan\n"], "[train] lr must be a number in [1e-09, 1], got nan"),
    (["[train]\niterations = 0\n"], "[train] iterations must be an integer in [1, 10000000]"),
    (["[train]\nbatch_size = 100000\n"], "[train] batch_size must be an integer in [1, 256]"),
    (["[train]\nframe_sizes = [[0, 0]]\n"], "[train] frame_sizes must be [[width, height], ...]"),
    (["[train]\n", "--batch-size", "100000"], "--batch-size must be an integer in [1, 256]"),
    (["[train]\n", "--iterations", "0"], "--iterations must be an integer in [1, 10000000]"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), TRAIN)
def test_training_settings_out_of_range_are_refused(args, message, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG + args[0])
    cmd = [sys.executable, "-m", "streamseg.cli", "train", "--config", config, "--out", "m.pt"]
    out = subprocess.run(
        list(map(str, cmd + args[1:])), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    refused(out, str(config), message)
    assert not (tmp_path / "m.pt").exists()
