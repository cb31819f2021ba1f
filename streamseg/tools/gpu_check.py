"""`make gpu-check` (`python -m streamseg.tools.gpu_check`): prove the GPU path in one command.

On a CUDA machine, within a time budget (default 8 minutes), in this order:

  1. machine    GPUs, driver, CUDA, torch/torchvision/PyAV versions, CPU
  2. tests      the CUDA-marked tests (`pytest -m cuda`), pass/fail/skip counts
  3. parity     fp16 (and bf16) mixed precision against float32: the shipped shapes model on
                a synthetic clip, R50-FPN with random weights at 1920x1080
  4. bench      `streamseg bench` over a matrix (R50-FPN v1 and v2, random weights, 20
                instances a frame, 1920x1080, batch x streams in 1/4/8): model-only, naive and
                pipeline fps, their ratios, latency p50/p99, GPU utilisation and memory. The
                smallest useful points run first; the first always runs, a later one only
                if its estimated time (from the points before it) fits what is left.

Everything goes into one JSON file (--out), written again after every step, so a run cut short
still leaves its figures. Without CUDA (or with --dry-run) every step runs on the CPU at tiny
sizes: the script itself is tested by the suite (tests/test_gpu_check.py) before a GPU is seen.
Exit code: 0 when every step that ran passed, 1 otherwise; 2 with one line for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamseg.tools.bench.figures import json_safe

DEFAULT_BUDGET_S = 480.0
REPO = Path(__file__).resolve().parents[2]
CUDA_TESTS = ("tests/test_gpu_cuda.py", "tests/test_masks.py")


@dataclass(frozen=True)
class Point:
    """One benchmark run: config, batch, streams, frames per stream, size."""

    config: str
    batch: int
    streams: int
    frames: int
    size: str

    @property
    def total(self) -> int:
        return self.streams * self.frames


TINY_CONFIG = """# gpu-check --dry-run: the shapes architecture, random weights, tiny input
[model]
arch = "shapes_mobilenet_v3_fpn"
weights = "random"
labels = ["__background__", "circle", "square", "triangle"]
min_size = 96
max_size = 128
"""


def matrix(dry_run: bool, tiny_config: str = "") -> list[Point]:
    """The benchmark points, most useful first (the budget cuts from the end). Dry run: the
    plumbing only, `tiny_config` (a TINY_CONFIG file) on 160x120 clips."""
    if dry_run:
        return [Point(tiny_config, 2, 1, 8, "160x120"), Point(tiny_config, 1, 2, 8, "160x120")]
    v1, v2, size, frames = "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "1920x1080", 60
    order = [(v1, 8, 8), (v1, 4, 4), (v1, 1, 1), (v2, 8, 8), (v1, 8, 1), (v1, 4, 8)]
    order += [(v2, 4, 4), (v2, 1, 1), (v1, 1, 8), (v1, 8, 4), (v1, 4, 1), (v1, 1, 4)]
    order += [(v2, 8, 1), (v2, 4, 8), (v2, 1, 8), (v2, 8, 4), (v2, 4, 1), (v2, 1, 4)]
    return [Point(c, b, s, frames, size) for c, b, s in order]


def estimate_s(point: Point, done: list[dict[str, Any]], *, first_guess_s: float) -> float:
    """Seconds `point` will take: the slowest seconds per frame of the done points of its
    config (or of any config), times its frames, plus their largest fixed start-up cost."""
    same = [d for d in done if d["point"]["config"] == point.config] or done
    if not same:
        return first_guess_s
    per_frame = max((d["seconds"] - d["startup_s"]) / d["frames"] for d in same)
    return max(d["startup_s"] for d in same) + per_frame * point.total


@dataclass
class Report:
    """The JSON file, rewritten after each step (a run cut short still leaves its figures)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(json_safe(self.data), indent=1, allow_nan=False) + "\n")
        tmp.replace(self.path)


def _note(text: str) -> None:
    print(f"gpu-check: {text}", file=sys.stderr, flush=True)


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str] | None:
    """`cmd` with its output captured, or None when it ran past `timeout_s` (killed)."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=max(1.0, timeout_s), cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return None


# -- 1. machine -----------------------------------------------------------------------------------


def machine(cuda: bool) -> dict[str, Any]:
    import av
    import torch

    from streamseg.tools.bench.machine import machine_info

    info = machine_info(torch.device("cuda" if cuda else "cpu"))
    info.update(
        python=platform.python_version(),
        av=av.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        gpus=[
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count() if cuda else 0)
        ],
    )
    if shutil.which("nvidia-smi"):
        smi = _run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"], 20)
        info["nvidia_smi"] = smi.stdout.strip() if smi else None
    return info


# -- 2. tests -------------------------------------------------------------------------------------


def run_tests(timeout_s: float, tmp: Path) -> dict[str, Any]:
    """The CUDA-marked tests in a pytest of their own; counts from its JUnit XML."""
    xml = tmp / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda"]
    # R50 parity is the parity step's (with its figures): not twice in a short GPU window
    cmd += ["-k", "not r50_fpn_fp16_parity", f"--junitxml={xml}", *CUDA_TESTS]
    proc = _run(cmd, timeout_s)
    if proc is None:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed: list[str] = []
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        if suite is not None:
            counts = {k: int(suite.get(k, 0)) for k in counts}
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {
        "ok": proc.returncode in (0, 5) and not failed,  # 5: nothing collected (no cuda marks)
        "exit_code": proc.returncode,
        "passed": passed,
        "failed": failed,
        "skipped": counts["skipped"],
        "tail": proc.stdout.strip().splitlines()[-3:],
    }


# -- 3. parity ------------------------------------------------------------------------------------


def parity(cuda: bool, tmp: Path) -> dict[str, Any]:
    """fp16/bf16 mixed precision against float32 on two models (see module docstring)."""
    import torch

    from streamseg.config import load_config, model_score_threshold, replace
    from streamseg.inference.model import load_model
    from streamseg.tools import synth
    from streamseg.tools.bench.fixtures import decode_clip
    from streamseg.tools.bench.parity import run_parity

    device = "cuda" if cuda else "cpu"
    size, frames, batch = ((1920, 1080), 8, 4) if cuda else ((160, 120), 1, 1)
    clip = tmp / "parity.mp4"
    synth.write_clip(clip, tmp / "parity.json", seed=7, frames=frames, size=size)
    images = decode_clip(clip, frames)
    halves = [torch.float16, torch.bfloat16] if cuda else [torch.bfloat16]
    out: dict[str, Any] = {}
    torch.manual_seed(0)
    shapes = load_config("shapes", device=device)
    r50 = replace(
        load_config("maskrcnn_resnet50_fpn", device=device),
        weights="random",
        score_threshold=0.0,
        detections_per_img=20,
        **({} if cuda else {"min_size": 128, "max_size": 160}),
    )
    for name, cfg in (("shapes", shapes), ("maskrcnn_resnet50_fpn_random", r50)):
        model = load_model(cfg)
        for half in halves:
            t0 = time.perf_counter()
            p = run_parity(
                model,
                images,
                half=half,
                batch=batch,
                score_threshold=model_score_threshold(cfg),
                limit=cfg.detections_per_img,
            )
            key = f"{name}/{str(half).removeprefix('torch.')}"
            out[key] = {**p.as_dict(), "seconds": round(time.perf_counter() - t0, 1)}
            if half == torch.bfloat16:  # 8 bits of mantissa: 9 in 10 within the limits
                out[key]["ok"] = p.matched >= 0.9 * p.counted and p.extra <= 0.1 * p.counted
            _note(f"parity {key}: {p.matched}/{p.counted} matched, extra {p.extra}")
        del model
    # random weights give near-tied scores, so a few instances may swap: the shapes model
    # (trained, confident) is the verdict; the random R50 is reported
    out["ok"] = all(v["ok"] for k, v in out.items() if k.startswith("shapes/"))
    return out


# -- 4. bench -------------------------------------------------------------------------------------


class GpuSampler:
    """GPU utilisation (%) and memory (MiB) sampled by nvidia-smi while a benchmark runs."""

    def __init__(self, every_ms: int = 250) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self.every_ms = every_ms

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        query = "--query-gpu=utilization.gpu,memory.used"
        cmd = ["nvidia-smi", query, "--format=csv,noheader,nounits", f"--loop-ms={self.every_ms}"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def figures(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_mem_max_mib": None}
        utils = [u for u, _ in self.samples]
        return {
            "gpu_util_mean": round(sum(utils) / len(utils), 1),
            "gpu_util_max": max(utils),
            "gpu_mem_max_mib": max(m for _, m in self.samples),
        }


BENCH_KEYS = (
    "model_only_fps",
    "naive_fps",
    "pipeline_fps",
    "pipeline_vs_model_only",
    "pipeline_vs_naive",
    "latency_p50_ms",
    "latency_p99_ms",
    "instances_per_frame",
    "stages",
    "model_only_s",
    "naive_wall_s",
    "pipeline_wall_s",
    "naive_load_s",
    "device",
)


def bench_point(point: Point, *, cuda: bool, timeout_s: float) -> dict[str, Any]:
    """`streamseg bench` for one point in a process of its own, with the GPU sampled."""
    cmd = [sys.executable, "-c", "import sys; from streamseg.cli import main; sys.exit(main())"]
    cmd += ["bench", "--config", point.config, "--size", point.size, "--json"]
    cmd += ["--batch", str(point.batch), "--streams", str(point.streams)]
    cmd += ["--frames", str(point.frames), "--instances", "20"]
    cmd += ["--random-weights"] + ([] if cuda else ["--device", "cpu"])
    t0 = time.perf_counter()
    with GpuSampler() as gpu:
        proc = _run(cmd, timeout_s)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"point": point.__dict__, "seconds": round(seconds, 1)}
    out["frames"] = point.total
    if proc is None or proc.returncode != 0:
        why = "timed out" if proc is None else proc.stderr.strip().splitlines()[-1:]
        return {**out, "ok": False, "error": why, "startup_s": seconds}
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update({k: figures.get(k) for k in BENCH_KEYS}, **gpu.figures(), ok=True)
    # the fixed part of a run (three start-ups: model-only's load, the naive loop's, the
    # pipeline's stages) is what remains once the frames' share is taken out
    frame_s = figures["model_only_s"] + (figures["naive_wall_s"] - figures["naive_load_s"])
    frame_s += sum(v.get("busy_s", 0.0) for v in (figures.get("stages") or {}).values()) / 3
    out["startup_s"] = round(max(0.0, seconds - frame_s), 1)
    return out


def bench(report: Report, *, cuda: bool, tmp: Path, deadline: float) -> dict[str, Any]:
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    first_guess = 150.0 if cuda else 30.0
    tiny = tmp / "tiny.toml"
    tiny.write_text(TINY_CONFIG)
    for point in matrix(not cuda, str(tiny)):
        left = deadline - time.monotonic()
        need = estimate_s(point, [d for d in done if d["ok"]], first_guess_s=first_guess)
        if done and need > left:  # the first point runs whatever the estimate
            skipped.append({**point.__dict__, "estimated_s": round(need), "left_s": round(left)})
            continue
        _note(f"bench {point} (about {need:.0f} s; {left:.0f} s left)")
        result = bench_point(point, cuda=cuda, timeout_s=max(left, 60.0))
        done.append(result)
        report.put("bench", {"runs": done, "skipped": skipped})
    return {"runs": done, "skipped": skipped, "ok": bool(done) and all(d["ok"] for d in done)}


# -- the command ----------------------------------------------------------------------------------


NEEDED = {  # module: what provides it (the bundle: `make gpu-bundle`, docs/benchmarks.md)
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "cv2": "opencv-python",
    "scipy": "scipy",
    "av": "av (gpu-bundle)",
    "zmq": "pyzmq (gpu-bundle)",
    "pycocotools": "pycocotools (gpu-bundle)",
}


def missing_modules(tests: bool) -> list[str]:
    """What this machine lacks for the check, as the packages that provide it."""
    import importlib.util

    needed = {**NEEDED, **({"pytest": "pytest (gpu-bundle)"} if tests else {})}
    return [pkg for module, pkg in needed.items() if importlib.util.find_spec(module) is None]


def check(*, out: Path, budget_s: float, dry_run: bool, tests: bool = True) -> int:
    import torch

    start = time.monotonic()
    deadline = start + budget_s
    cuda = torch.cuda.is_available() and not dry_run
    report = Report(out)
    report.put("check", {"dry_run": not cuda, "budget_s": budget_s, "argv": sys.argv[1:]})
    _note(f"{'CUDA' if cuda else 'dry run on the CPU'}; budget {budget_s:.0f} s; writing {out}")
    report.put("machine", machine(cuda))
    ok = True
    with tempfile.TemporaryDirectory(prefix="streamseg-gpu-check-") as tmpdir:
        tmp = Path(tmpdir)
        steps: list[tuple[str, Any]] = []
        if tests:
            steps.append(("tests", lambda: run_tests(max(90.0, 0.3 * budget_s), tmp)))
        steps.append(("parity", lambda: parity(cuda, tmp)))
        for name, step in steps:
            t0 = time.perf_counter()
            _note(name)
            try:
                result = step()
            except Exception as e:  # a broken step is a figure of the check, not its end
                result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            report.put(name, result)
            ok = ok and result["ok"]
        result = bench(report, cuda=cuda, tmp=tmp, deadline=deadline)
        report.put("bench", result)
        ok = ok and result["ok"]
    report.put("total_s", round(time.monotonic() - start, 1))
    report.put("ok", ok)
    _note(f"{'passed' if ok else 'FAILED'} in {time.monotonic() - start:.0f} s; figures in {out}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-check.json", help="the JSON file (%(default)s)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=float(os.environ.get("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S)),
        help="seconds for the whole check (default %(default)s; env GPU_CHECK_BUDGET_S)",
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (automatic w/o CUDA)")
    p.add_argument("--no-tests", action="store_true", help="skip the pytest step")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        print("gpu-check: error: --budget-s must be > 0", file=sys.stderr)
        return 2
    missing = missing_modules(tests=not args.no_tests)
    if missing:
        print(
            f"gpu-check: error: this Python lacks {', '.join(missing)}; install them "
            "(pip install --no-index gpu-bundle/*.whl, docs/benchmarks.md)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"gpu-check: error: --out: no such folder {out.parent}", file=sys.stderr)
        return 2
    return check(out=out, budget_s=args.budget_s, dry_run=args.dry_run, tests=not args.no_tests)


if __name__ == "__main__":
    sys.exit(main())
