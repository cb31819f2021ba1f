"""Which file each stream's output goes to, and which names can take a video. Pure: no I/O.

Shared by the check before a run (`pipeline.preflight`) and the sinks that write the files
(`postprocess.sinks`), so the two always agree; it imports nothing of either.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".ts", ".flv")
"""Containers PyAV (FFmpeg) muxes H.264 into, by extension; .mp4 and .mov are written fragmented,
.mkv and .ts are streamable by nature (see postprocess.sinks.files.VideoSink)."""


def output_path(template: str, stream: str, n_streams: int) -> Path:
    """The file for `stream`: `template` with {stream} filled in; several streams and no
    placeholder -> NAME.STREAM.EXT, so no two streams ever write the same file."""
    if "{stream}" in template:
        return Path(template.replace("{stream}", stream))
    if n_streams > 1:
        p = Path(template)
        return p.with_name(f"{p.stem}.{stream}{p.suffix}")
    return Path(template)


def part_path(template: str, part: int) -> str:
    """out.mp4 -> out.part2.mp4: the outputs of a restarted postprocess's `part`-th life, next to
    the last life's (a new life never overwrites what an earlier one wrote)."""
    path = Path(template)
    return str(path.with_name(f"{path.stem}.part{part}{path.suffix}"))


def video_format_problem(path: Path) -> str | None:
    """Why `path` cannot take an H.264 video (by its extension), or None."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return None
    if not suffix:
        return (
            f"{path}: no video file extension, so no container to write; "
            f"add one, e.g. -o {path}.mp4"
        )
    others = ", ".join(VIDEO_EXTENSIONS[1:])
    return (
        f"{path}: {suffix} is not a container streamseg writes H.264 into; use .mp4 (or {others})"
    )
