"""--sink URLs (streamseg.sink_urls) and the broker payloads (postprocess.sinks.payload): pure.

Every bad URL is one line naming the sink and the fix, and no password or secret is ever in
a message, a repr or a name."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pytest

from streamseg.config import ConfigError
from streamseg.postprocess.sinks.payload import encode, outline, record
from streamseg.postprocess.sinks.webhook import body_of, sign
from streamseg.postprocess.tracking import local_masks
from streamseg.sink_urls import from_table, parse, parse_all, redact
from streamseg.wire.results import Result

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_per_scheme():
    m = parse("mqtt://broker")
    assert (m.kind, m.name, m.host, m.port, m.payload, m.max_pending) == (
        "mqtt", "mqtt", "broker", 1883, "full", 1000
    )  # fmt: skip
    assert parse("mqtts://b").port == 8883 and parse("mqtts://b").tls
    r = parse("redis://h:7000/3?maxlen=50&payload=slim&polygons=1")
    assert (r.kind, r.port, r.path, r.payload, r.polygons) == ("redis", 7000, "/3", "slim", True)
    w = parse("https://hooks.example/in?batch=5&interval_s=0.5")
    assert (w.kind, w.port, w.path, w.option("batch")) == ("webhook", 443, "/in", "5")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("kafka://h", "unknown sink scheme 'kafka'"),
        ("mqtt://", "no host"),
        ("mqtt://h?qso=1", "unknown option 'qso'"),
        ("mqtt://h?qos=2", "qos must be one of 0, 1"),
        ("mqtt://h?topic=a/%23", "without wildcards"),
        ("mqtt://h?topic=fixed", "must contain {stream}"),
        ("mqtt://h?ca=/etc/hostname", "ca= needs a TLS scheme"),
        ("mqtts://h?ca=/no/such/ca.pem", "cannot read the CA file /no/such/ca.pem"),
        ("mqtt://h?max_pending=0", "max_pending must be a whole number in 1..1e+06"),
        ("mqtt://h?payload=tiny", "payload must be one of full, slim"),
        ("redis://h/x", "database number"),
        ("redis://h?key=k", "must contain {stream}"),
        ("http://h?retries=-1", "retries must be"),
        ("http://h?password_env=X", "unknown option 'password_env'"),
        ("http://h?secret_env=STREAMSEG_NO_SUCH_VAR", "$STREAMSEG_NO_SUCH_VAR is not set"),
        ("mqtt://h:99999", "not a usable URL"),
    ],
)
def test_bad_urls_are_one_line_naming_the_fix(url, says):
    with pytest.raises(ConfigError) as e:
        parse(url)
    text = str(e.value)
    assert says in text and "\n" not in text and text.startswith("--sink ")


def test_passwords_and_secrets_never_show():
    spec = parse("mqtt://user:hunter2@h?qos=1")
    assert spec.secret("password") == "hunter2"
    assert "hunter2" not in repr(spec) and "hunter2" not in spec.shown and "***" in spec.shown
    hook = parse("http://h/x?secret=s3cret&batch=2")
    assert hook.secret("secret") == "s3cret" and "s3cret" not in repr(hook) + hook.shown
    with pytest.raises(ConfigError) as e:
        parse("mqtt://user:hunter2@h?qos=7")
    assert "hunter2" not in str(e.value)
    assert "hunter2" not in redact("redis://:hunter2@h:1/0")


def test_secret_from_the_environment(monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "abc")
    assert parse("http://h?secret_env=HOOK_SECRET").secret("secret") == "abc"
    monkeypatch.setenv("MQ_PW", "pw")
    assert parse("mqtt://u@h?password_env=MQ_PW").secret("password") == "pw"


def test_names_are_unique_in_order():
    specs = parse_all(["mqtt://a", "mqtt://b", "redis://c", "mqtt://d?name=cloud"])
    assert [s.name for s in specs] == ["mqtt", "mqtt-2", "redis", "cloud"]
    with pytest.raises(ConfigError, match="another sink is named 'x'"):
        parse_all(["mqtt://a?name=x", "redis://b?name=x"])
    with pytest.raises(ConfigError, match="name=results is the name of a built-in output"):
        parse_all(["mqtt://a?name=results"])


def test_mqtt_wildcards_in_a_stream_id_leave_its_topic():
    from streamseg.postprocess.sinks.mqtt import topic_word

    assert topic_word("cam+1#b") == "cam_1_b" and topic_word("cam 1") == "cam 1"


def test_a_pipeline_table_is_a_url_with_its_options():
    url = from_table({"url": "mqtt://h", "qos": 1, "polygons": True, "topic": "a/{stream}"}, "f")
    spec = parse(url)
    assert (spec.option("qos"), spec.polygons, spec.option("topic")) == ("1", True, "a/{stream}")
    with pytest.raises(ConfigError, match="needs url"):
        from_table({"qos": 1}, "f")


# -- payloads ------------------------------------------------------------------------------------


def _result(instances: list[dict]) -> Result:
    return Result("cam", 7, 0.28, 123.0, 32, 24, instances, seq=7)


def test_full_is_the_results_file_record_and_slim_has_no_masks():
    inst = {"label": 1, "label_name": "circle", "score": 0.9, "box": [1.0, 2.0, 5.0, 6.0],
            "rle": {"size": [24, 32], "counts": "abc"}, "track_id": 4}  # fmt: skip
    result = _result([inst])
    assert record(result, None, payload="full", polygons=False) == result.to_json()
    slim = record(result, None, payload="slim", polygons=False)
    assert slim["instances"] == [
        {"label": 1, "label_name": "circle", "score": 0.9, "box": [1.0, 2.0, 5.0, 6.0],
         "track_id": 4}
    ]  # fmt: skip
    assert {k: v for k, v in slim.items() if k != "instances"} == {
        k: v for k, v in result.to_json().items() if k != "instances"
    }
    assert json.loads(encode(slim)) == slim
    assert record(_result([]), None, payload="slim", polygons=True)["instances"] == []


def test_polygons_are_exterior_rings_in_frame_pixels():
    full = np.zeros((2, 24, 32), bool)
    full[0, 5:10, 20:30] = True  # a 10 x 5 rectangle at column 20, row 5
    full[1, 0:2, 0:2] = True
    full[1, 20:22, 30:32] = True  # two parts
    masks = local_masks(full)
    assert outline(masks, 0) == [[[20, 5], [20, 9], [29, 9], [29, 5]]]
    assert sorted(map(len, outline(masks, 1))) == [4, 4]
    insts = [{"label": 1, "label_name": "a", "score": 0.5, "box": [0, 0, 1, 1], "rle": {},
              "track_id": None}] * 2  # fmt: skip
    slim = record(_result(insts), masks, payload="slim", polygons=True)
    assert slim["instances"][0]["polygons"] == outline(masks, 0)
    empty = local_masks(np.zeros((0, 24, 32), bool))
    assert record(_result([]), empty, payload="slim", polygons=True)["instances"] == []


def test_webhook_signature_is_hmac_sha256_of_the_body():
    body = body_of([b'{"frame":0}', b'{"frame":1}'])
    assert json.loads(body) == {"results": [{"frame": 0}, {"frame": 1}]}
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign(b"k", body) == f"sha256={expected}"


# -- the sinks' figures where users read them ---------------------------------------------------


def test_sink_counts_in_the_summary_line_and_metrics():
    from streamseg.pipeline.report import sinks_line
    from streamseg.serve.metrics import sink_families

    sinks = {
        "results": {"delivered": 10, "dropped": {}, "pending": 0},
        "mqtt": {"delivered": 480, "dropped": {"queue_full": 20}, "pending": 3},
        "redis": {"delivered": 500, "dropped": {}, "pending": 0},
    }
    assert sinks_line(sinks) == (
        "sinks: mqtt delivered 480, dropped 20 (queue_full 20), pending 3; "
        "redis delivered 500, dropped 0, pending 0"
    )  # the results file appears only when it dropped something
    assert sinks_line({}) == "" and sinks_line("garbage") == ""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in sink_families(sinks)
        for s in family.samples
    }
    assert samples["streamseg_sink_delivered_total", (("sink", "mqtt"),)] == 480
    assert (
        samples["streamseg_sink_dropped_total", (("reason", "queue_full"), ("sink", "mqtt"))] == 20
    )
    assert samples["streamseg_sink_pending", (("sink", "mqtt"),)] == 3
    assert sink_families({"x": "not a record"})[0].samples == []


# -- [[sinks]] in a pipeline file ----------------------------------------------------------------


def _pipeline(tmp_path, sinks: str):
    from streamseg.pipeline.spec import load_pipeline

    text = (ROOT / "pipelines" / "watch.toml").read_text() + sinks
    path = tmp_path / "p.toml"
    path.write_text(text)
    return load_pipeline(path)


def test_pipeline_file_sinks(tmp_path):
    p = _pipeline(
        tmp_path,
        '\n[[sinks]]\nurl = "mqtt://h"\nqos = 1\npayload = "slim"\n'
        '\n[[sinks]]\nurl = "redis://h/2?maxlen=5"\n',
    )
    assert [parse(u).name for u in p.sinks] == ["mqtt", "redis"]
    assert parse(p.sinks[0]).option("qos") == "1" and parse(p.sinks[0]).payload == "slim"
    assert parse(p.sinks[1]).option("maxlen") == "5"
    with pytest.raises(ConfigError) as e:
        _pipeline(tmp_path, '\n[[sinks]]\nurl = "mqtt://u:pw@h"\nqos = 3\n')
    assert "p.toml: [[sinks]] mqtt://u:***@h" in str(e.value) and ":pw@" not in str(e.value)
    with pytest.raises(ConfigError, match="needs url"):
        _pipeline(tmp_path, "\n[[sinks]]\nqos = 1\n")


def test_secrets_leave_the_url_for_the_environment(monkeypatch):
    from streamseg.sink_urls import hide_secrets

    url, env = hide_secrets("mqtt://u:p%40ss@h:1?qos=1&topic=a/{stream}", "S0")
    assert url == "mqtt://u@h:1?qos=1&topic=a/{stream}&password_env=S0_PASSWORD"
    assert env == {"S0_PASSWORD": "p@ss"}
    url, env = hide_secrets("http://h/x?secret=abc&batch=2", "S1")
    assert (url, env) == ("http://h/x?batch=2&secret_env=S1_SECRET", {"S1_SECRET": "abc"})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert parse(url).secret("secret") == "abc"
    assert hide_secrets("redis://h/0?maxlen=5", "S2") == ("redis://h/0?maxlen=5", {})
    assert parse("mqtt://u:p%40ss@h").secret("password") == "p@ss"  # as the URL encodes it
