"""What a source is, from the user's argument: stream id, URL and kind. Pure: imports no av.

The supervisor and the CLI parse sources with this; only the source stage decodes.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from streamseg.wire.fields import ProtocolError, check_name


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message is one line for the user.

    permanent: trying again cannot help (no such file or device, an unknown scheme, the server
    refusing the URL: 401/403/404, not a video); False for what may pass (a refused connection,
    a timeout, a server error).
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


SCHEMES = ("rtsp", "rtsps")
"""URL schemes a source may have; anything else with `scheme://` is refused at once."""


@dataclass(frozen=True)
class SourceSpec:
    stream: str
    """Stream id: given as NAME=URL, else derived from the URL."""
    url: str
    kind: str
    """"file", "rtsp" or "camera"."""
    hwdecode: str = "off"
    """"auto": NVDEC (PyAV's CUDA hwaccel) where the machine has it, else software; "cuda";
    "off". Decoded frames come back to host memory either way."""


def _derive_id(url: str, kind: str) -> str:
    if kind == "camera":
        return "cam" + re.sub(r"\D", "", url)
    if kind == "rtsp":
        # drop scheme and credentials: userinfo ends at the LAST '@' before the path, as FFmpeg
        # reads it (a password may hold a raw '@')
        rest = re.sub(r"^[a-z]+://([^/]*@)?", "", url)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", rest).strip("_") or "rtsp"
    return Path(url).stem or "video"


def shown(url: str) -> str:
    """`url` fit to print: a password in it replaced by ***."""
    return re.sub(r"^([a-z]+://[^/:@]*:)[^/]*@", r"\1***@", url)


def parse_source(arg: str) -> SourceSpec:
    """ "[NAME=]URL" -> SourceSpec. URL: rtsp://..., /dev/videoN, a camera index, or a file path.
    SourceError (permanent) for a URL of another scheme, e.g. a typo like rtps://."""
    name, given = "", arg
    if "=" in arg and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://|[/.]", arg):
        name, arg = arg.split("=", 1)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", arg)
    if scheme and scheme.group(1).lower() not in SCHEMES:
        typed = scheme.group(1).lower()
        close = [v for v in SCHEMES if difflib.SequenceMatcher(None, typed, v).ratio() >= 0.7]
        hint = f"did you mean {close[0]}://? " if close else ""  # the plainer one first
        raise SourceError(
            f"{shown(arg)}: unknown scheme {scheme.group(1)}://; {hint}sources are rtsp:// or "
            "rtsps:// URLs, cameras (/dev/videoN or an index) and video files",
            permanent=True,
        )
    if arg.startswith(("rtsp://", "rtsps://")):
        kind = "rtsp"
    elif arg.isdigit() or re.fullmatch(r"/dev/video\d+", arg):
        kind = "camera"
        arg = arg if arg.startswith("/dev/") else f"/dev/video{arg}"
    else:
        kind = "file"
    stream = name or _derive_id(arg, kind)
    try:
        check_name(stream, "stream id")
    except ProtocolError:
        raise SourceError(
            f"stream id {stream!r} (from {given!r}): use 1-256 printable characters without / or "
            "\\, e.g. NAME=URL"
        ) from None
    return SourceSpec(stream=stream, url=arg, kind=kind)


def parse_sources(args: list[str]) -> list[SourceSpec]:
    """Parse many sources; derived ids that collide get -2, -3, ... suffixes."""
    specs, seen = [], set()
    for arg in args:
        spec = parse_source(arg)
        stream, n = spec.stream, 2
        while stream in seen:
            stream, n = f"{spec.stream}-{n}", n + 1
        seen.add(stream)
        specs.append(SourceSpec(stream, spec.url, spec.kind))
    return specs
