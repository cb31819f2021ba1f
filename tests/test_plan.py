"""streamseg.pipeline.plan and streamseg.stage.args: the processes a run starts, each with its
typed arguments; stages started by hand get the same records; JSON at the process boundary."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from streamseg import threads
from streamseg.config import ConfigError, load_config
from streamseg.pipeline.plan import (
    Outputs,
    ProcessSpec,
    describe,
    plan,
    restart,
    stage_plan,
)
from streamseg.pipeline.spec import load_pipeline
from streamseg.source.spec import parse_sources
from streamseg.stage.args import (
    RECORDS,
    STAGES,
    DispatcherArgs,
    InferenceArgs,
    PostprocessArgs,
    SourceArgs,
    WorkerArgs,
    as_dict,
    from_json,
    to_json,
)

BUDGET = threads.ThreadPlan(model=2, encoder=1, decoder=1, cores=4)
SOURCES = ["a=/v/a.mp4", "b=/v/b.mp4", "cam=rtsp://10.1.1.1/s"]


@pytest.fixture(scope="module")
def model(random_config):
    return load_config(random_config)


def make(model, *, workers=1, outputs=None, cuda=False, sources=SOURCES, **kw):
    outputs = outputs or Outputs(results="r.jsonl")
    pipeline = replace(load_pipeline("annotate"), workers=workers)
    return plan(
        pipeline,
        model,
        parse_sources(sources),
        outputs,
        rundir="/tmp/run1",
        budget=BUDGET,
        cuda=cuda,
        **kw,
    )


def test_a_file_run_with_one_inference_process(model):
    run = make(model)
    assert run.names == ("postprocess", "inference", "source[a]", "source[b]", "source[cam]")
    assert run.workers == ()
    assert [p.stage for p in run.processes] == [
        "postprocess", "inference", "source", "source", "source",
    ]  # fmt: skip
    assert [p.start for p in run.processes] == ["first"] * 2 + ["after_ready"] * 3
    assert not any(p.forked for p in run.processes)
    sources = ("source[a]", "source[b]", "source[cam]")
    assert run.get("inference").senders == sources
    assert run.get("postprocess").senders == ("inference",)
    assert run.get("source[a]").senders == ()
    ep = run.endpoints
    assert ep["frames"] == "ipc:///tmp/run1/frames" and ep["stats"] == "ipc:///tmp/run1/stats"
    post = run.get("postprocess").args
    assert isinstance(post, PostprocessArgs)
    assert (post.detections_endpoint, post.streams, post.n_outputs) == (ep["detections"], 3, 3)
    assert (post.results, post.video, post.preview_endpoint, post.encoder_threads) == (
        "r.jsonl", None, None, 1,
    )  # fmt: skip
    assert (post.mask_nms, post.label_names) == (model.mask_nms, model.labels)
    inf = run.get("inference").args
    assert isinstance(inf, InferenceArgs)
    assert (inf.model.threads, inf.streams, inf.forward_images) == (2, 3, False)
    assert inf.model == replace(model, threads=2)
    cam = run.get("source[cam]").args
    assert isinstance(cam, SourceArgs)
    assert (cam.source, cam.kind, cam.stream, cam.stay, cam.decode_threads) == (
        "rtsp://10.1.1.1/s", "rtsp", "cam", True, 1,
    )  # fmt: skip
    for p in run.processes:  # every process reports to the supervisor, with the same links
        assert (p.args.stats_endpoint, p.args.link_keys, p.args.verbose) == (
            ep["stats"],
            None,
            False,
        )


def test_three_workers_are_a_dispatcher_and_forked_workers(model):
    run = make(model, workers=3, sources=SOURCES[:2])
    workers = ("inference[0]", "inference[1]", "inference[2]")
    assert run.workers == workers
    assert run.names == ("postprocess", "inference", *workers, "source[a]", "source[b]")
    assert run.get("inference").stage == "dispatcher"
    assert run.get("inference").senders == ("source[a]", "source[b]", *workers)  # credits too
    assert run.get("postprocess").senders == ("inference", *workers)
    for name in workers:
        spec = run.get(name)
        assert (spec.stage, spec.senders, spec.forked, spec.start) == (
            "worker", ("inference",), True, "first",
        )  # fmt: skip
        assert isinstance(spec.args, WorkerArgs)
        assert (spec.args.name, spec.args.model.threads, spec.args.share_cpu) == (name, 2, 3)
        assert spec.args.work_endpoint == run.endpoints["work"] == "ipc:///tmp/run1/work"
    d = run.get("inference").args
    assert isinstance(d, DispatcherArgs)
    assert (d.max_batch, d.max_wait_ms, d.streams, d.lost_s) == (
        model.max_batch, model.max_wait_ms, 2, 2.0,
    )  # fmt: skip
    # on a GPU no fork server: a GPU driver must not be initialised in a process that forks
    assert not any(p.forked for p in make(model, workers=3, cuda=True).processes)


@pytest.mark.parametrize(
    ("outputs", "pixels", "preview"),
    [
        (Outputs(results="r.jsonl"), False, False),
        (Outputs(video="v.mp4"), True, False),
        (Outputs(results="r.jsonl", preview=True), True, True),
        (Outputs(video="v.mp4", preview=True), True, True),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_pixels_travel_only_where_something_renders(model, outputs, pixels, preview, workers):
    run = make(model, workers=workers, outputs=outputs)
    forward = [p.args.forward_images for p in run.processes if p.stage in ("inference", "worker")]
    assert forward == [pixels] * workers
    post = run.get("postprocess").args
    assert post.preview_endpoint == ("ipc:///tmp/run1/preview" if preview else None)
    assert run.endpoints["preview"] == "ipc:///tmp/run1/preview"  # the supervisor's hub


def test_publish_and_live_options(model):
    watch = replace(load_pipeline("watch"), workers=1)
    keys = {"keys": "k/pub", "allow": "k/allow"}
    run = plan(watch, model, parse_sources(["cam=rtsp://h/s"]), Outputs(publish_keys=keys),
               rundir="/r", budget=BUDGET, cuda=False, live_options={"stall_s": 2.0})  # fmt: skip
    post = run.get("postprocess").args
    assert (post.publish, post.publish_keys, post.live, post.streams) == (
        watch.publish, keys, True, 1,
    )  # fmt: skip
    src = run.get("source[cam]").args
    assert (src.stall_s, src.retry_max_s, src.give_up_s, src.live) == (2.0, 10.0, None, True)
    run = plan(watch, model, parse_sources(["cam=rtsp://h/s"]), Outputs(publish="tcp://:6000"),
               rundir="/r", budget=BUDGET, cuda=False)  # fmt: skip
    assert run.get("postprocess").args.publish == "tcp://:6000"


@pytest.mark.parametrize("workers", [1, 3])
def test_every_record_goes_through_json_unchanged(model, workers):
    run = make(model, workers=workers, outputs=Outputs(video="v.mp4", preview=True))
    specs = [*run.processes, restart(run.get("postprocess"), frames_in=0, ended_sources=1,
                                     first_pts=0.0)]  # fmt: skip
    for spec in specs:
        text = to_json(spec.args)
        assert json.loads(text)["stats_endpoint"] == run.endpoints["stats"]
        back = from_json(spec.stage, text)
        assert back == spec.args and type(back) is type(spec.args)
    stages = {p.stage for p in run.processes}
    assert stages == ({"postprocess", "source", "dispatcher", "worker"} if workers > 1 else
                      {"postprocess", "source", "inference"})  # fmt: skip


def test_every_stage_has_a_record():
    assert set(STAGES) == set(RECORDS) == {
        "source", "inference", "dispatcher", "worker", "postprocess",
    }  # fmt: skip


def _post() -> dict:
    return {"detections_endpoint": "ipc:///x/d", "streams": 2, "label_names": ["a", "b"]}


@pytest.mark.parametrize(
    ("stage", "data", "says"),
    [
        ("postprocess", "{", "not valid JSON"),
        ("postprocess", "[1, 2]", "must be a JSON object"),
        ("postprocess", {**_post(), "bogus": 1, "other": 2}, "unknown argument(s) bogus, other"),
        ("postprocess", {"streams": 1}, "missing argument(s) detections_endpoint"),
        ("postprocess", {**_post(), "streams": "2"}, "streams must be a whole number, got '2'"),
        ("postprocess", {**_post(), "streams": True}, "streams must be a whole number"),
        ("postprocess", {**_post(), "streams": 2.0}, "streams must be a whole number"),
        ("postprocess", {**_post(), "track": 1}, "track must be true or false"),
        ("postprocess", {**_post(), "label_names": ["a", 3]}, "label_names must be a list of"),
        ("postprocess", {**_post(), "video": 5}, "video must be a string or null"),
        ("postprocess", {**_post(), "publish_keys": {"keys": 1}}, "publish_keys must be"),
        (
            "dispatcher",
            {
                "frames_endpoint": "f",
                "work_endpoint": "w",
                "detections_endpoint": "d",
                "weights": {"cam": "x"},
            },
            "weights must be",
        ),  # fmt: skip
        (
            "source",
            {
                "source": "a.mp4",
                "stream": "a",
                "kind": "file",
                "frames_endpoint": "f",
                "first_pts": "0",
            },
            "first_pts must be a number",
        ),  # fmt: skip
        (
            "worker",
            {
                "model": {"arch": "nosuch"},
                "name": "inference[0]",
                "work_endpoint": "w",
                "detections_endpoint": "d",
            },
            "argument model:",
        ),  # fmt: skip
        (
            "worker",
            {"model": [], "name": "n", "work_endpoint": "w", "detections_endpoint": "d"},
            "model must be a model config object",
        ),  # fmt: skip
        ("nosuch", {}, "unknown stage 'nosuch'"),
    ],
)
def test_malformed_arguments_are_one_line(stage, data, says):
    text = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(ConfigError) as e:
        from_json(stage, text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_whole_numbers_are_numbers_and_lists_tuples():
    args = from_json("postprocess", json.dumps({**_post(), "mask_nms": 0}))
    assert args.mask_nms == 0.0 and type(args.mask_nms) is float
    assert args.label_names == ("a", "b")
    assert args == PostprocessArgs(detections_endpoint="ipc:///x/d", streams=2,
                                   label_names=("a", "b"))  # fmt: skip


def test_a_stage_process_refuses_bad_arguments_in_one_line():
    cmd = [sys.executable, "-m", "streamseg.stage", "postprocess", json.dumps({"bogus": 1})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "streamseg stage: error: stage postprocess: unknown argument(s) bogus"
    )


# -- stages started by hand: the same records, different only where they must be --

TCP = (
    "[endpoints]\n"
    'frames = "tcp://127.0.0.1:5601"\n'
    'work = "tcp://127.0.0.1:5602"\n'
    'detections = "tcp://127.0.0.1:5603"\n'
    'stats = "tcp://127.0.0.1:5604"\n'
    "[inference]\nworkers = 2\n"
)

BY_HAND_DIFFERS = {
    # no supervisor: no thread budget (libraries' defaults; "auto" model threads resolved in the
    # process), no live views, no publisher keys, no one to stop a source that ended
    "source": {"stay", "decode_threads"},
    "dispatcher": set(),
    "worker": {"forward_images"},  # always sends pixels: postprocess elsewhere may render
    "postprocess": {"encoder_threads", "preview_endpoint", "publish_keys"},
}


def test_stages_started_by_hand_agree_with_the_supervised_plan(tmp_path, model):
    """The drift test: a supervised run of a file and the same stages started by hand get the
    same arguments, except where a stage started by hand must differ (BY_HAND_DIFFERS)."""
    path = tmp_path / "p.toml"
    path.write_text(TCP)
    pipeline = load_pipeline(path)
    outputs = Outputs(results="r.jsonl", video="v.mp4", publish="tcp://127.0.0.1:6000",
                      publish_keys={"keys": "k/p", "allow": "k/a"}, preview=True)  # fmt: skip
    (source,) = parse_sources(["a=/v/a.mp4"])
    run = plan(pipeline, model, [source], outputs, rundir="/r", budget=BUDGET, cuda=False)
    by_hand = [
        stage_plan("source", pipeline, None, source=source),
        stage_plan("inference", pipeline, model, streams=1),
        stage_plan("worker", pipeline, model, worker=0),
        stage_plan("worker", pipeline, model, worker=1),
        stage_plan(
            "postprocess",
            pipeline,
            model,
            streams=1,
            video="v.mp4",
            results="r.jsonl",
            publish="tcp://127.0.0.1:6000",
        ),  # fmt: skip
    ]
    assert [s.name for s in by_hand] == [
        "source[a]", "inference", "inference[0]", "inference[1]", "postprocess"
    ]  # fmt: skip
    for spec in by_hand:
        supervised = run.get(spec.name)
        assert (spec.stage, spec.senders, spec.start) == (supervised.stage, (), "first")
        mine, theirs = as_dict(spec.args), as_dict(supervised.args)
        differ = {k for k in mine if mine[k] != theirs[k]}
        if spec.stage == "worker":  # the model's threads: the budget's, or the config's "auto"
            assert (mine["model"]["threads"], theirs["model"]["threads"]) == (model.threads, 2)
            mine["model"]["threads"] = theirs["model"]["threads"]
            differ = {k for k in mine if mine[k] != theirs[k]}
        assert differ <= BY_HAND_DIFFERS[spec.stage], spec.name


def test_stats_go_to_a_monitor_only_over_tcp(tmp_path, model):
    path = tmp_path / "p.toml"
    path.write_text(TCP.replace('"tcp://127.0.0.1:5604"', '"ipc:///tmp/stats"'))
    spec = stage_plan("postprocess", load_pipeline(path), model)
    assert spec.args.stats_endpoint is None
    with pytest.raises(ConfigError, match="give the INPUT"):
        stage_plan("source", load_pipeline(path), None)


# -- restarts --


def test_a_restarted_source_numbers_on_and_others_take_fewer_streams(model):
    run = make(model, workers=2, sources=SOURCES[:2])
    src = run.get("source[a]")
    once = restart(src, frames_in=40, ended_sources=1, first_pts=12.5)
    assert (once.args.first_frame, once.args.first_pts) == (1040, 12.5)
    twice = restart(once, frames_in=1070, ended_sources=1, first_pts=20.0)
    assert (twice.args.first_frame, twice.args.first_pts) == (3110, 20.0)  # 1040 + 1070 + 1000
    assert (twice.name, twice.stage, twice.senders, twice.start) == (
        src.name, src.stage, src.senders, src.start,
    )  # fmt: skip
    post = restart(run.get("postprocess"), frames_in=0, ended_sources=1, first_pts=0.0)
    assert (post.args.restarted, post.args.part, post.args.streams) == (True, 1, 1)
    post = restart(post, frames_in=0, ended_sources=2, first_pts=0.0)
    assert (post.args.part, post.args.streams) == (2, 1)  # never below 1: its own end
    d = restart(run.get("inference"), frames_in=0, ended_sources=1, first_pts=0.0)
    assert (d.stage, d.args.restarted, d.args.streams) == ("dispatcher", True, 1)
    w = restart(run.get("inference[1]"), frames_in=0, ended_sources=1, first_pts=0.0)
    assert (w.args.restarted, w.args.name, w.forked) == (True, "inference[1]", True)
    live = replace(run.get("postprocess"), args=replace(run.get("postprocess").args, streams=0))
    assert restart(live, frames_in=0, ended_sources=1, first_pts=0.0).args.streams == 0


# -- describe and --plan --


def test_describe_names_processes_endpoints_hosts_and_threads(tmp_path, model):
    path = tmp_path / "p.toml"
    path.write_text(TCP.replace("127.0.0.1:5601", "10.0.0.2:5601"))
    pipeline = load_pipeline(path)
    run = plan(pipeline, model, parse_sources(["a=/v/a.mp4"]), Outputs(results="r.jsonl"),
               rundir="/r", budget=BUDGET, cuda=False)  # fmt: skip
    lines = describe(run).splitlines()
    assert lines[0] == f"pipeline {path}: file run, 2 inference workers"
    row = {line.split()[0]: line for line in lines[1:]}
    assert row["inference"].split()[1:3] == ["dispatcher", "10.0.0.2"]  # binds frames there
    assert "binds frames tcp://10.0.0.2:5601" in row["inference"]
    assert row["postprocess"].split()[1:4] == ["postprocess", "this", "host"]
    assert "binds detections tcp://127.0.0.1:5603" in row["postprocess"]
    assert "model threads 2; device cpu; forked" in row["inference[1]"]
    assert "connects frames tcp://10.0.0.2:5601" in row["source[a]"]
    assert "starts when the others are ready" in row["source[a]"]


def test_plan_flag_prints_the_graph_and_starts_nothing(tmp_path, clip, random_config):
    video, _ = clip
    results = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "streamseg.cli", "annotate", f"x={video}", "--config",
           str(random_config), "--results", str(results), "--workers", "2", "--plan"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:] if "  " in line[:4]]
    assert names[:6] == [
        "supervisor", "postprocess", "inference", "inference[0]", "inference[1]", "source[x]",
    ]  # fmt: skip
    assert not results.exists()  # nothing ran
    assert "ipc://{run}/frames" in proc.stdout


def test_process_spec_is_frozen(model):
    spec = make(model).get("postprocess")
    assert isinstance(spec, ProcessSpec)
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        spec.args.streams = 9  # type: ignore[misc]
