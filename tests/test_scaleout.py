"""The processes that stand for the inference stage (streamseg.pipeline.plan): one inference
process, or a dispatcher and its workers; and stages started by hand from a pipeline file."""

import os
from dataclasses import replace

import pytest

from streamseg import threads
from streamseg.config import ConfigError, load_config
from streamseg.pipeline.plan import Outputs, plan, stage_plan, worker_names
from streamseg.pipeline.spec import load_pipeline, resolve_workers
from streamseg.source.spec import parse_sources

ENDPOINTS = (
    "[endpoints]\n"
    'frames = "tcp://10.0.0.2:5601"\n'
    'work = "tcp://10.0.0.2:5602"\n'
    'detections = "tcp://10.0.0.4:5603"\n'
    'stats = "tcp://10.0.0.9:5604"\n'
)


def pipeline(tmp_path, text: str, endpoints: str = ENDPOINTS):
    path = tmp_path / "p.toml"
    path.write_text(endpoints + text)
    return load_pipeline(path)


def inference(p, model):
    """(stage, name, args) of the inference stage's processes in a run of 3 live streams."""
    budget = threads.plan(1, cores=4, cuda=False, workers=max(1, len(worker_names(p))))
    run = plan(
        replace(p, live=True),
        model,
        parse_sources(["a=x.mp4", "b=y.mp4", "c=z.mp4"]),
        Outputs(results="r.jsonl"),
        rundir="/run",
        budget=budget,
        cuda=False,
    )
    return [
        (q.stage, q.name, q.args) for q in run.processes if q.stage not in ("source", "postprocess")
    ]


def test_one_worker_is_the_inference_process_itself(tmp_path, random_config):
    p = pipeline(tmp_path, "")
    assert p.workers == 1 and worker_names(p) == ()
    ((stage, name, args),) = inference(p, load_config(random_config))
    assert (stage, name, args.weights, args.streams) == ("inference", "inference", None, 3)


def test_workers_get_a_dispatcher_and_devices_in_turn(tmp_path, random_config):
    p = pipeline(
        tmp_path,
        '[inference]\nworkers = 3\ndevices = ["cuda:0", "cuda:1"]\nweights = { cam1 = 2 }\n',
    )
    procs = inference(p, load_config(random_config))
    assert [(s, n) for s, n, _ in procs] == [
        ("dispatcher", "inference"),
        ("worker", "inference[0]"),
        ("worker", "inference[1]"),
        ("worker", "inference[2]"),
    ]
    d = procs[0][2]
    assert (d.work_endpoint, d.max_batch, d.weights, d.lost_s) == (
        "tcp://10.0.0.2:5602",
        2,
        {"cam1": 2.0},
        2.0,
    )
    assert [a.model.device for _, _, a in procs[1:]] == ["cuda:0", "cuda:1", "cuda:0"]
    assert all(a.share_cpu == 1 for _, _, a in procs[1:])  # none on the CPU: no split


def test_cpu_workers_share_the_cores(tmp_path, random_config):
    p = pipeline(tmp_path, "[inference]\nworkers = 2\n")
    procs = inference(p, load_config(random_config))
    assert [a.share_cpu for _, _, a in procs[1:]] == [2, 2]


def test_auto_workers_resolve_where_the_run_starts(tmp_path):
    p = pipeline(tmp_path, '[inference]\nworkers = "auto"\ndevices = ["cuda:0", "cuda:1"]\n')
    assert p.workers == "auto"
    assert resolve_workers(p, "cuda").workers == 2  # one per listed device
    cpu = resolve_workers(p, "cpu").workers
    assert cpu == min(4, len(os.sched_getaffinity(0)))  # one 1-thread model per core
    assert resolve_workers(resolve_workers(p, "cpu"), "cuda").workers == cpu  # resolved once
    assert load_pipeline("annotate").workers == load_pipeline("watch").workers == "auto"


def test_stages_started_by_hand_need_a_number_of_workers(tmp_path, random_config):
    p = pipeline(tmp_path, '[inference]\nworkers = "auto"\n')
    model = load_config(random_config)
    for name in ("inference", "worker"):
        with pytest.raises(ConfigError, match="the same on every host"):
            stage_plan(name, p, model)
    assert stage_plan("postprocess", p, model).stage == "postprocess"


@pytest.mark.parametrize(
    "text",
    ['[inference]\nworkers = "many"\n', "[inference]\nworkers = 0\n",
     "[inference]\nworkers = 1.5\n", "[inference]\nweights = { cam1 = 0 }\n",
     '[inference]\nweights = { cam1 = "x" }\n'],
)  # fmt: skip
def test_bad_settings_are_one_clear_error(tmp_path, text):
    with pytest.raises(ConfigError, match=r"\[inference\]"):
        pipeline(tmp_path, text)


def test_a_lone_stage_takes_its_endpoints_from_the_file(tmp_path, random_config):
    p = pipeline(tmp_path, "[inference]\nworkers = 2\n")
    model = load_config(random_config)
    spec = stage_plan("inference", p, model, streams=2)
    kw = spec.args
    assert (spec.stage, kw.frames_endpoint, kw.work_endpoint, kw.streams) == (
        "dispatcher", "tcp://10.0.0.2:5601", "tcp://10.0.0.2:5602", 2,
    )  # fmt: skip
    assert kw.stats_endpoint == "tcp://10.0.0.9:5604"
    spec = stage_plan("worker", p, model, worker=1)
    assert (spec.stage, spec.args.name, spec.args.detections_endpoint) == (
        "worker", "inference[1]", "tcp://10.0.0.4:5603",
    )  # fmt: skip
    spec = stage_plan("postprocess", p, model, streams=2, results="r.jsonl")
    kw = spec.args
    assert (spec.stage, kw.detections_endpoint, kw.results, kw.n_outputs) == (
        "postprocess", "tcp://10.0.0.4:5603", "r.jsonl", 2,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="worker 2"):
        stage_plan("worker", p, model, worker=2)


def test_a_lone_stage_refuses_endpoints_private_to_a_run(tmp_path, random_config):
    p = load_pipeline("annotate")
    with pytest.raises(ConfigError, match="private to one supervised run"):
        stage_plan("postprocess", p, load_config(random_config))
