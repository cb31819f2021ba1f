"""The CPU thread budget (streamseg.threads) and the config's `threads` setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamseg.config import ConfigError, load_config
from streamseg.threads import ThreadPlan, plan, workers


def test_auto_on_cpu_leaves_a_core_for_the_other_stages() -> None:
    assert plan("auto", cores=2, cuda=False) == ThreadPlan(model=1, encoder=1, decoder=1, cores=2)
    assert plan("auto", cores=8, cuda=False) == ThreadPlan(model=7, encoder=1, decoder=1, cores=8)
    assert plan("auto", cores=1, cuda=False) == ThreadPlan(model=1, encoder=1, decoder=1, cores=1)


def test_auto_splits_the_model_cores_between_workers() -> None:
    assert plan("auto", cores=2, cuda=False, workers=2).model == 1  # never 0 threads
    assert plan("auto", cores=9, cuda=False, workers=2) == ThreadPlan(4, 1, 1, 9)
    assert plan("auto", cores=16, cuda=False, workers=3) == ThreadPlan(5, 1, 1, 16)


def test_auto_workers_one_per_core_on_cpu_one_per_gpu() -> None:
    assert [workers("auto", cores=c, cuda=False) for c in (1, 2, 3, 4, 16)] == [1, 2, 3, 4, 4]
    assert workers("auto", cores=16, cuda=True) == 1
    assert workers("auto", cores=16, cuda=True, devices=3) == 3
    assert workers(3, cores=2, cuda=False) == 3  # a number is what the user asked for
    for bad in (0, -1, 1.5, "2", None):
        with pytest.raises(ValueError, match="workers"):
            workers(bad, cores=2, cuda=False)


def test_fixed_model_threads_give_the_encoder_what_is_left() -> None:
    assert plan(2, cores=8, cuda=False) == ThreadPlan(model=2, encoder=4, decoder=1, cores=8)
    assert plan(3, cores=8, cuda=False, workers=2).encoder == 2
    assert plan(4, cores=2, cuda=False).encoder == 1  # oversubscribed by request: still 1


def test_zero_keeps_every_library_default() -> None:
    assert plan(0, cores=4, cuda=False) == ThreadPlan(model=0, encoder=0, decoder=0, cores=4)


def test_cuda_model_needs_one_cpu_thread() -> None:
    assert plan("auto", cores=16, cuda=True).model == 1
    assert plan(3, cores=16, cuda=True).model == 3


@pytest.mark.parametrize(
    ("cores", "streams", "encoder", "decoder"),
    [
        (16, 1, 4, 2),  # one stream: room to spare, still capped
        (16, 4, 2, 1),  # 15 cores beside the feeder / 4 streams
        (16, 8, 2, 1),
        (16, 64, 2, 1),  # more streams than cores: never 0 (a library default)
        (2, 1, 1, 1),  # a small machine: one x264 thread
    ],
)
def test_cuda_gives_decoders_and_encoders_modest_explicit_threads(
    cores: int, streams: int, encoder: int, decoder: int
) -> None:
    """With the model on a GPU every stream's decoder and encoder get a fixed, small pool (not
    the libraries' defaults: about cores + 1 and 1.5 x cores threads each); together they stay
    near the cores the GPU feeder leaves."""
    p = plan("auto", cores=cores, cuda=True, streams=streams)
    assert (p.model, p.encoder, p.decoder) == (1, encoder, decoder)
    if streams * 3 <= cores:
        assert streams * (p.encoder + p.decoder) <= cores - p.model
    assert plan(2, cores=16, cuda=True, workers=2, streams=8).encoder >= 1  # never 0
    assert plan(0, cores=16, cuda=True, streams=8) == ThreadPlan(0, 0, 0, 16)  # 0: defaults


@pytest.mark.parametrize("bad", ["many", -1, 1.5])
def test_bad_requests(bad: object) -> None:
    with pytest.raises(ValueError, match="threads"):
        plan(bad, cores=2, cuda=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cores"):
        plan("auto", cores=0, cuda=False)


def test_config_threads_default_auto_and_validated(tmp_path: Path) -> None:
    assert load_config("shapes").threads == "auto"
    text = Path(load_config("shapes").path).read_text()
    for value, ok in (('"auto"', True), ("0", True), ("3", True), ('"all"', False), ("-2", False)):
        path = tmp_path / f"c{len(value)}{ok}.toml"
        body = re.sub(r"(?m)^threads = .*$", f"threads = {value}", text, count=1)
        assert f"threads = {value}" in body
        path.write_text(body.replace("streamseg:shapes.pt", "random"))
        if ok:
            load_config(path)
        else:
            with pytest.raises(ConfigError, match="threads must be"):
                load_config(path)
