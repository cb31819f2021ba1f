"""source.spec: what a user's source argument means (stream id, URL, kind), without PyAV."""

from __future__ import annotations

import pytest

from streamseg.source.spec import SourceError, SourceSpec, parse_source, parse_sources


@pytest.mark.parametrize(
    ("arg", "stream", "url"),
    [
        ("clip.mp4", "clip", "clip.mp4"),
        ("/data/videos/front door.mkv", "front door", "/data/videos/front door.mkv"),
        ("./a/b.c.mp4", "b.c", "./a/b.c.mp4"),
        ("front=/data/a.mp4", "front", "/data/a.mp4"),
        ("back=clip.mp4", "back", "clip.mp4"),
    ],
)
def test_files(arg, stream, url):
    assert parse_source(arg) == SourceSpec(stream, url, "file")


@pytest.mark.parametrize(
    ("arg", "stream", "url"),
    [
        ("rtsp://10.0.0.5:554/stream1", "10.0.0.5_554_stream1", "rtsp://10.0.0.5:554/stream1"),
        ("rtsps://cam.local/live", "cam.local_live", "rtsps://cam.local/live"),
        ("rtsp://cam.local", "cam.local", "rtsp://cam.local"),
        ("rtsp://", "rtsp", "rtsp://"),  # nothing to derive an id from
        ("door=rtsp://cam.local/live", "door", "rtsp://cam.local/live"),
    ],
)
def test_rtsp_urls(arg, stream, url):
    assert parse_source(arg) == SourceSpec(stream, url, "rtsp")


@pytest.mark.parametrize(
    ("arg", "stream"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "10.0.0.5_554_stream1"),
        ("rtsps://admin:s3cret@cam.local/live", "cam.local_live"),
        ("rtsp://admin@cam.local/live", "cam.local_live"),
        ("rtsp://admin:s3cret@cam.local", "cam.local"),
        ("rtsp://admin:p%40ss%3Aw0rd@cam.local/live", "cam.local_live"),  # percent-encoded @ and :
    ],
)
def test_credentials_never_reach_the_stream_id(arg, stream):
    spec = parse_source(arg)
    assert spec == SourceSpec(stream, arg, "rtsp")  # the URL keeps them: it is what connects


def test_password_with_a_raw_at_sign_never_reaches_the_stream_id():
    spec = parse_source("rtsp://admin:p@ssw0rd@cam.local/live")
    assert spec.stream == "cam.local_live"


@pytest.mark.parametrize(
    ("arg", "stream"),
    [
        ("rtsp://cam.local/stream?channel=1&subtype=0", "cam.local_stream_channel_1_subtype_0"),
        ("rtsps://cam.local/stream?token=a=b", "cam.local_stream_token_a_b"),
        ("rtsp://u:p@cam.local/stream?channel=1", "cam.local_stream_channel_1"),
    ],
)
def test_equals_in_a_url_query_is_no_name(arg, stream):
    assert parse_source(arg) == SourceSpec(stream, arg, "rtsp")


def test_named_rtsp_url_with_query_keeps_the_whole_url():
    spec = parse_source("door=rtsp://cam.local/s?channel=1")
    assert spec == SourceSpec("door", "rtsp://cam.local/s?channel=1", "rtsp")


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("0", SourceSpec("cam0", "/dev/video0", "camera")),
        ("12", SourceSpec("cam12", "/dev/video12", "camera")),
        ("/dev/video2", SourceSpec("cam2", "/dev/video2", "camera")),
        ("desk=0", SourceSpec("desk", "/dev/video0", "camera")),
        ("desk=/dev/video3", SourceSpec("desk", "/dev/video3", "camera")),
    ],
)
def test_cameras(arg, expected):
    assert parse_source(arg) == expected


def test_collisions_get_numbered_suffixes_in_order():
    specs = parse_sources(["a/clip.mp4", "b/clip.mp4", "c/clip.mp4", "other.mp4"])
    assert [s.stream for s in specs] == ["clip", "clip-2", "clip-3", "other"]
    assert [s.url for s in specs] == ["a/clip.mp4", "b/clip.mp4", "c/clip.mp4", "other.mp4"]
    assert {s.kind for s in specs} == {"file"}


def test_suffix_skips_ids_already_taken():
    specs = parse_sources(["clip.mp4", "clip-2=x.mp4", "y/clip.mp4", "clip=z.mp4"])
    assert [s.stream for s in specs] == ["clip", "clip-2", "clip-3", "clip-4"]


def test_same_camera_twice_and_mixed_kinds():
    specs = parse_sources(["0", "/dev/video0", "rtsp://u:p@h/x", "rtsp://h/x"])
    assert specs == [
        SourceSpec("cam0", "/dev/video0", "camera"),
        SourceSpec("cam0-2", "/dev/video0", "camera"),
        SourceSpec("h_x", "rtsp://u:p@h/x", "rtsp"),
        SourceSpec("h_x-2", "rtsp://h/x", "rtsp"),
    ]


def test_no_sources():
    assert parse_sources([]) == []


@pytest.mark.parametrize("arg", ["a/b=clip.mp4", "a\\b=clip.mp4", "x\ty=clip.mp4"])
def test_unusable_stream_ids_are_refused_up_front(arg):
    with pytest.raises(SourceError, match="stream id"):
        parse_source(arg)


@pytest.mark.parametrize(
    ("arg", "hint"),
    [
        ("rtps://cam.local/live", "did you mean rtsp://?"),
        ("rstp://cam.local/live", "did you mean rtsp://?"),
        ("door=rtps://cam.local/live", "did you mean rtsp://?"),
        ("http://cam.local/video.mp4", "sources are rtsp:// or rtsps:// URLs"),
    ],
)
def test_unknown_schemes_are_refused_for_good(arg, hint):
    with pytest.raises(SourceError, match="unknown scheme") as e:
        parse_source(arg)
    assert hint in str(e.value) and e.value.permanent
    assert "no such file" not in str(e.value)


def test_a_password_is_never_shown():
    with pytest.raises(SourceError) as e:
        parse_source("rtps://admin:s3cret@cam.local/live")
    assert "s3cret" not in str(e.value) and "admin:***@cam.local" in str(e.value)
