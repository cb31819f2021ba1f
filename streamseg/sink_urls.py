"""`--sink URL` and `[[sinks]]`: which broker sink a URL means, and its settings. Pure, light.

The scheme picks the sink; settings are the URL's query parameters (docs/sinks.md lists them):

    mqtt://[USER[:PASSWORD]@]HOST[:PORT][?topic=streamseg/{stream}&qos=1&ca=FILE&...]  (mqtts://)
    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?key=streamseg:{stream}&maxlen=10000&...] (rediss://)
    http://HOST[:PORT]/PATH[?batch=10&interval_s=1&retries=5&secret_env=VAR&...]   (https://)

Every problem is a `ConfigError` of one line naming the sink (its URL with credentials
redacted) and the fix, raised before any stage starts. A URL's password and a webhook's
secret never appear in a repr, a log line, the run report or /metrics: every sink is shown
by `SinkUrl.shown`. This module imports neither the clients nor torch (the CLI and the
pipeline-file reader use it); `streamseg.postprocess.sinks.brokers.build` makes the sink.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from streamseg.config import ConfigError

KINDS = {"mqtt": "mqtt", "mqtts": "mqtt", "redis": "redis", "rediss": "redis"}
KINDS.update({"http": "webhook", "https": "webhook"})
"""URL scheme -> sink kind."""

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "redis": 6379, "rediss": 6379}
DEFAULT_PORTS.update({"http": 80, "https": 443})

EXTRAS = {"mqtt": ("paho.mqtt", "mqtt"), "redis": ("redis", "redis"), "webhook": None}
"""kind -> (module it needs, the streamseg extra that installs it); None: stdlib only."""

COMMON = {"name", "payload", "polygons", "max_pending", "drain_s"}
OPTIONS = {
    "mqtt": COMMON | {"topic", "status_topic", "qos", "ca", "client_id", "password_env"},
    "redis": COMMON | {"key", "maxlen", "ca", "password_env"},
    "webhook": COMMON
    | {"batch", "interval_s", "retries", "timeout_s", "secret", "secret_env"}
    | {"ca"},
}
"""The query parameters each kind takes (any other is a typo: an error)."""

BUILT_IN = ("results", "video", "publish", "preview", "push")
"""The postprocess stage's own outputs' names (a sink's name must differ)."""

SECRET_OPTIONS = ("secret",)
"""Query parameters redacted like a password."""


@dataclass(frozen=True)
class SinkUrl:
    """One broker sink, parsed and checked. `url` (and the password in it) is never shown:
    logs, reports and metrics use `shown` and `name`."""

    kind: str
    """"mqtt", "redis" or "webhook"."""
    name: str
    """Its key in the run's sink counts ("mqtt", "redis-2", or the `name` option)."""
    shown: str
    """The URL with its password and secret replaced by "***"."""
    scheme: str
    host: str
    port: int
    path: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    payload: str = "full"
    """"full" (the results-file record) or "slim" (no masks; postprocess.sinks.payload)."""
    polygons: bool = False
    max_pending: int = 1000
    """Results kept while the broker is slow or down; beyond that the oldest are dropped."""
    drain_s: float | None = None
    """At the end, how long queued results may still take (None: the sink's default)."""

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "rediss", "https")

    def option(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def secret(self, key: str) -> str | None:
        """A secret given as `key` or, read now from the environment, as `key`_env."""
        env = self.options.get(f"{key}_env")
        if env:
            return os.environ.get(env)
        return self.password if key == "password" else self.options.get(key)

    def __repr__(self) -> str:
        return f"SinkUrl({self.name}: {self.shown})"


def redact(url: str) -> str:
    """`url` with a password and any secret query parameter replaced by "***" (for errors
    about URLs that may not even parse)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            netloc = f"{user}:***@{netloc.rsplit('@', 1)[1]}"
        query = [(k, "***" if k in SECRET_OPTIONS else v) for k, v in parse_qsl(parts.query)]
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="{}/*"), ""))
    except ValueError:
        return "<a URL that does not parse>"


def parse(url: str, *, origin: str = "--sink") -> SinkUrl:
    """One `--sink URL`, checked: scheme, host, port, options and their values, the CA file
    and the secret's environment variable. ConfigError (one line, starting with `origin` and
    the URL, redacted) for anything wrong; the extra a kind needs is checked by `check_extra`."""
    shown = redact(url)
    where = f"{origin} {shown}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{where}: not a usable URL ({e})") from None
    scheme = parts.scheme.lower()
    kind = KINDS.get(scheme)
    if kind is None:
        known = ", ".join(f"{s}://" for s in KINDS)
        raise ConfigError(
            f"{where}: unknown sink scheme {scheme or '(none)'!r}; use one of {known}"
        )
    if not parts.hostname:
        raise ConfigError(f"{where}: no host; e.g. {scheme}://localhost")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    options = dict(pairs)
    if len(options) != len(pairs):
        raise ConfigError(f"{where}: an option is given twice")
    unknown = sorted(set(options) - OPTIONS[kind])
    if unknown:
        raise ConfigError(
            f"{where}: unknown option {unknown[0]!r}; "
            f"{kind} takes {', '.join(sorted(OPTIONS[kind]))}"
        )
    spec = SinkUrl(
        kind=kind,
        name=options.get("name") or kind,
        shown=shown,
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        path=parts.path,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        options=options,
        payload=_choice(where, options, "payload", ("full", "slim"), "full"),
        polygons=_flag(where, options, "polygons"),
        max_pending=int(_number(where, options, "max_pending", 1000, 1, 1_000_000, whole=True)),
        drain_s=(
            _number(where, options, "drain_s", 0.0, 0.0, 3600.0) if "drain_s" in options else None
        ),
    )
    _check_kind(where, spec)
    return spec


def parse_all(urls: Sequence[str]) -> tuple[SinkUrl, ...]:
    """Several sinks; names made unique in order ("mqtt", "mqtt-2", ...). ConfigError when two
    given the same `name` option clash."""
    out: list[SinkUrl] = []
    taken: set[str] = set()
    for url in urls:
        spec = parse(url)
        name = spec.name
        if name in BUILT_IN:
            raise ConfigError(f"--sink {spec.shown}: name={name} is the name of a built-in output")
        if name in taken:
            if "name" in spec.options:
                raise ConfigError(f"--sink {spec.shown}: another sink is named {name!r}")
            n = 2
            while f"{name}-{n}" in taken:
                n += 1
            name = f"{name}-{n}"
        taken.add(name)
        out.append(replace(spec, name=name))
    return tuple(out)


def hide_secrets(url: str, env_name: str) -> tuple[str, dict[str, str]]:
    """`url` with its password and webhook secret moved to environment variables (ENV_NAME
    _PASSWORD, ENV_NAME_SECRET, named in its query as password_env, secret_env), and those
    variables: the stage processes get the URL on their command line, which every local user
    can read; the environment they inherit only its owner can."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    env: dict[str, str] = {}
    netloc = parts.netloc
    if parts.password is not None:
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{parts.username}@{host}" if parts.username else host
        if not any(k == "password_env" for k, _ in query):
            env[f"{env_name}_PASSWORD"] = unquote(parts.password)
            query.append(("password_env", f"{env_name}_PASSWORD"))
    secret = [v for k, v in query if k == "secret"]
    if secret:
        query = [(k, v) for k, v in query if k != "secret"]
        env[f"{env_name}_SECRET"] = secret[0]
        query.append(("secret_env", f"{env_name}_SECRET"))
    if not env and netloc == parts.netloc:
        return url, {}
    text = urlencode(query, safe="{}/")
    return urlunsplit((parts.scheme, netloc, parts.path, text, parts.fragment)), env


def check_extra(spec: SinkUrl) -> None:
    """ConfigError naming the extra to install when the sink's client library is missing."""
    need = EXTRAS[spec.kind]
    if need is None:
        return
    module, extra = need
    top = importlib.util.find_spec(module.split(".")[0])
    if top is None or importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"--sink {spec.shown}: {spec.kind} sinks need the {module} package: "
            f"pip install 'streamseg[{extra}]'"
        )


def unreachable(spec: SinkUrl, timeout_s: float = 2.0) -> str | None:
    """Why the sink's server cannot be reached now (a TCP connection to host:port), or None."""
    try:
        socket.create_connection((spec.host, spec.port), timeout=timeout_s).close()
    except OSError as e:
        return f"--sink {spec.shown}: cannot reach {spec.host}:{spec.port} ({e.strerror or e})"
    return None


def from_table(table: Mapping[str, Any], where: str) -> str:
    """A pipeline file's `[[sinks]]` table (`url` plus options) as one URL with the options
    in its query; ConfigError when it has no url."""
    url = table.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError(f'{where}: each [[sinks]] needs url = "SCHEME://HOST..."')
    extra = []
    for key, value in table.items():
        if key == "url":
            continue
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        extra.append(f"{quote(str(key))}={quote(text, safe='{}/')}")
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


# -- checks of the values ------------------------------------------------------------------------


def _check_kind(where: str, spec: SinkUrl) -> None:
    opts = spec.options
    ca = opts.get("ca")
    if ca is not None:
        if not spec.tls:
            raise ConfigError(f"{where}: ca= needs a TLS scheme ({spec.scheme}s://)")
        try:
            with open(ca, "rb"):
                pass
        except OSError as e:
            raise ConfigError(f"{where}: cannot read the CA file {ca}: {e.strerror or e}") from None
    for key in ("password_env", "secret_env"):
        env = opts.get(key)
        if env is not None and env not in os.environ:
            raise ConfigError(f"{where}: {key}={env}, but ${env} is not set")
    if spec.kind == "mqtt":
        _choice(where, opts, "qos", ("0", "1"), "0")
        topic = opts.get("topic", "streamseg/{stream}")
        for key in ("topic", "status_topic"):
            value = opts.get(key)
            if value is not None and (not value or "#" in value or "+" in value):
                raise ConfigError(f"{where}: {key} must be a topic name without wildcards")
        if "{stream}" not in topic:
            raise ConfigError(f"{where}: topic must contain {{stream}} (one topic per stream)")
    elif spec.kind == "redis":
        if "{stream}" not in opts.get("key", "streamseg:{stream}"):
            raise ConfigError(f"{where}: key must contain {{stream}} (one Redis Stream per stream)")
        _number(where, opts, "maxlen", 10000, 1, 10**9, whole=True)
        db = spec.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"{where}: the path must be a database number (redis://HOST/0)")
    else:
        _number(where, opts, "batch", 10, 1, 10_000, whole=True)
        _number(where, opts, "interval_s", 1.0, 0.0, 3600.0)
        _number(where, opts, "retries", 5, 0, 100, whole=True)
        _number(where, opts, "timeout_s", 5.0, 0.1, 600.0)
        if "secret" in opts and "secret_env" in opts:
            raise ConfigError(f"{where}: give secret or secret_env, not both")


def _choice(
    where: str, opts: Mapping[str, str], key: str, allowed: Sequence[str], default: str
) -> str:
    value = opts.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)} (not {value!r})")
    return value


def _flag(where: str, opts: Mapping[str, str], key: str) -> bool:
    value = opts.get(key, "0").lower()
    if value not in ("0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{where}: {key} must be 1 or 0 (not {value!r})")
    return value in ("1", "true", "yes")


def _number(
    where: str,
    opts: Mapping[str, str],
    key: str,
    default: float,
    low: float,
    high: float,
    *,
    whole: bool = False,
) -> float:
    text = opts.get(key)
    if text is None:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{where}: {key} must be {kind} in {low:g}..{high:g} (not {text!r})")
    return value


def number(spec: SinkUrl, key: str, default: float) -> float:
    """A checked numeric option of `spec` (parse checked it), or `default`."""
    text = spec.options.get(key)
    return default if text is None else float(text)


# -- --rtsp-out ----------------------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"
"""The python that has GStreamer's RTSP server (python3-gi): postprocess.sinks.rtsp_server."""

_RTSP_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')\n"
    "from gi.repository import Gst, GstRtspServer; Gst.init(None)\n"
    "names = ['appsrc', 'videoconvert', 'openh264enc', 'h264parse', 'rtph264pay']\n"
    "missing = ' '.join(n for n in names if Gst.ElementFactory.find(n) is None)\n"
    "raise SystemExit(missing and 'missing GStreamer elements: ' + missing or None)\n"
)


def rtsp_listen(value: str) -> tuple[str, int]:
    """--rtsp-out's [HOST:]PORT as (host, port): a port alone is loopback (this host only),
    like --serve. ConfigError with one line for anything else."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--rtsp-out {value}: give [HOST:]PORT with a port in 1..65535")
    return host.strip("[]") or "127.0.0.1", int(port)


def rtsp_urls(value: str, streams: Sequence[str]) -> dict[str, str]:
    """Each stream's URL on --rtsp-out [HOST:]PORT (a wildcard host: this host's name)."""
    host, port = rtsp_listen(value)
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    return {s: f"rtsp://{host}:{port}/{quote(s, safe='')}" for s in streams}


def rtsp_problem(value: str) -> str | None:
    """Why --rtsp-out VALUE cannot work here (no GStreamer RTSP server, the port taken), or
    None. ConfigError for a malformed value."""
    host, port = rtsp_listen(value)
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", _RTSP_PROBE], capture_output=True, timeout=60)
        lines = probe.stderr.decode(errors="replace").strip().splitlines()
        why = None if probe.returncode == 0 else (lines[-1] if lines else "it failed")
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if why is not None:
        return (
            f"--rtsp-out needs GStreamer's RTSP server under {SYSTEM_PYTHON} ({why}): "
            "apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-bad"
        )
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        return f"--rtsp-out {value}: cannot listen on {host}:{port} ({e.strerror or e})"
    return None
