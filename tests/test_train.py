"""A short real training run lowers the loss, writes loadable checkpoints and resumes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from streamseg.config import ConfigError, load_config
from streamseg.inference.model import build_from_config, load_model, read_checkpoint
from streamseg.tools.train import (
    TrainConfig,
    learning_rate,
    load_train_config,
    make_batch,
    train,
    training_model,
)


def test_learning_rate_schedule():
    kw = dict(lr=1.0, warmup=10, iterations=110)
    assert learning_rate(0, **kw) == pytest.approx(0.1)
    assert learning_rate(9, **kw) == pytest.approx(1.0)
    assert learning_rate(60, **kw) == pytest.approx(0.05 + 0.95 * 0.5)
    assert learning_rate(110, **kw) == pytest.approx(0.05)


def test_batches_are_reproducible_per_iteration():
    a_images, a_targets = make_batch(3, 7, 2, ((160, 120),))
    b_images, b_targets = make_batch(3, 7, 2, ((160, 120),))
    assert all(torch.equal(x, y) for x, y in zip(a_images, b_images, strict=True))
    assert all(
        torch.equal(x["masks"], y["masks"]) for x, y in zip(a_targets, b_targets, strict=True)
    )
    c_images, _ = make_batch(3, 8, 2, ((160, 120),))
    assert not torch.equal(a_images[0], c_images[0])


def _loss(model, images, targets) -> float:
    model.train()
    with torch.no_grad():
        return float(sum(model(images, targets).values()))


@pytest.mark.slow  # trains a model: heavy, not a unit test (make test runs it)
def test_short_training_lowers_loss_and_resumes(random_config, tmp_path):
    torch.manual_seed(0)
    cfg = load_config(random_config)
    cfg_train = TrainConfig(
        iterations=10, batch_size=2, lr=3e-3, warmup=2, frame_sizes=((160, 120),),
        checkpoint_every=5, log_every=5,
    )  # fmt: skip
    held_out = make_batch(99, 0, 4, ((160, 120),))
    torch.manual_seed(1)
    before = _loss(build_from_config(cfg), *held_out)

    out = tmp_path / "m.pt"
    torch.manual_seed(1)  # same initial weights as `before`
    train(cfg, TrainConfig(**{**cfg_train.__dict__, "iterations": 5}), out, device="cpu")
    assert read_checkpoint(out)["model"] and (tmp_path / "m.pt.resume.pt").is_file()
    train(cfg, cfg_train, out, resume=True, device="cpu")  # continues at iteration 5
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["iteration"] == 10 and ckpt["arch"] == cfg.arch

    trained = build_from_config(cfg)
    trained.load_state_dict(read_checkpoint(out)["model"])
    after = _loss(trained, *held_out)
    assert after < 0.7 * before, (before, after)

    # the checkpoint is what configs point at: load_model takes it (weights_only=True)
    path = tmp_path / "trained.toml"
    path.write_text(random_config.read_text().replace('weights = "random"', 'weights = "m.pt"'))
    model = load_model(str(path))
    assert not model.training


@pytest.mark.slow  # trains a model: heavy, not a unit test (make test runs it)
def test_multi_scale_training_sizes_come_from_the_train_table(random_config, tmp_path):
    """[train] input_sizes: torchvision's transform picks one per image while training; the
    trained model then runs at the config's own min_size."""
    cfg = load_config(random_config)  # min_size 128, max_size 160
    toml = tmp_path / "t.toml"
    toml.write_text("[train]\ninput_sizes = [96, 160]\n")
    cfg_train = load_train_config(toml)
    assert cfg_train.input_sizes == (96, 160)
    model = training_model(cfg, cfg_train).train()
    image = torch.rand(3, 120, 160)
    torch.manual_seed(0)
    seen = {tuple(model.transform([image])[0].image_sizes[0]) for _ in range(40)}
    # the longer side capped at 160 * 160 / 128 = 200
    assert seen == {(96, 128), (150, 200)}, seen
    assert training_model(cfg, TrainConfig()).transform.min_size == (128,)

    out = tmp_path / "m.pt"
    train(cfg, replace(cfg_train, iterations=2, batch_size=2, frame_sizes=((160, 120),)), out,
          device="cpu")  # fmt: skip
    path = tmp_path / "trained.toml"
    path.write_text(random_config.read_text().replace('weights = "random"', 'weights = "m.pt"'))
    model = load_model(str(path))
    assert model.transform.min_size == (128,) and model.transform.max_size == 160
    assert tuple(model.transform([image])[0].image_sizes[0]) == (120, 160)


@pytest.mark.parametrize(
    "text", ["input_sizes = 96\n", 'input_sizes = ["a"]\n', "input_sizes = [0]\n"]
)
def test_bad_input_sizes_are_one_clear_error(tmp_path, text):
    toml = tmp_path / "t.toml"
    toml.write_text("[train]\n" + text)
    with pytest.raises(ConfigError, match="input_sizes"):
        load_train_config(toml)


def test_progress_lines_come_from_the_first_iteration_and_at_least_every_30_s():
    from streamseg.tools.train import LOG_EVERY_S, log_due

    due = lambda done, since=0.0, first=0: log_due(  # noqa: E731
        done, first=first, total=100, log_every=20, since_s=since
    )
    assert [d for d in range(1, 101) if due(d)] == [1, 20, 40, 60, 80, 100]
    assert due(7, first=6) and not due(8, first=6)  # a resumed run speaks at once too
    assert due(5, since=LOG_EVERY_S) and not due(5, since=LOG_EVERY_S - 0.1)


def test_progress_line_says_the_pace_and_the_time_left():
    from streamseg.tools.train import duration, progress_line

    line = progress_line(
        3, 123, lr=2e-4, means={"loss": 1.5, "loss_mask": 0.25}, first=0, elapsed_s=12.0
    )
    assert line == "it 3/123 lr 2.00e-04 loss 1.500 mask 0.250 (4.00 s/it, 8m00s left)"
    assert [duration(s) for s in (0, 59.4, 61, 3600 * 3 + 7 * 60 + 5)] == [
        "0s",
        "59s",
        "1m01s",
        "3h07m",
    ]
