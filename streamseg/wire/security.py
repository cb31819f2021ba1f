"""Who may connect: the endpoint policy (which binds need keys) and CURVE on sockets (ZAP).

Trust boundary. A socket bound on a network address (anything but ipc://, inproc:// and loopback
tcp) needs CURVE keys (`Security`), or an explicit `insecure=True`: binding sockets are CURVE
servers that admit only the listed client keys (ZAP, pyzmq's ThreadAuthenticator); connecting
sockets are CURVE clients. Keys are made and read by `streamseg.wire.curve`; `wire.sockets`
applies what is here to each socket it makes.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import zmq
from zmq.auth.thread import ThreadAuthenticator

from streamseg.wire.receiver import REJECT_LOG_INTERVAL_S, RateLimit

log = logging.getLogger(__name__)

_LOCAL_SCHEMES = ("ipc://", "inproc://")
_LOOPBACK_NAMES = {"localhost"}
KEYS_HINT = "make keys with `streamseg keys DIR` (README: Security)"


class InsecureEndpointError(ValueError):
    """A socket would bind a network endpoint without CURVE keys."""


@dataclass(frozen=True)
class Security:
    """CURVE keys for one socket: Z85 text, 40 characters each (`streamseg keys` makes them).

    A socket that binds is a CURVE server: its own keypair, and `allowed_keys`, the public keys
    of the only clients it admits. A socket that connects is a CURVE client: its own keypair
    (its public key must be in the server's allowed keys) and the server's public key,
    `server_key`. Build it from key files with `streamseg.wire.curve`.
    """

    public_key: str
    secret_key: str = field(repr=False)
    server_key: str = ""
    """Connecting sockets: the public key of the server they connect to."""
    allowed_keys: frozenset[str] = frozenset()
    """Binding sockets: client public keys admitted; everyone else is refused in the handshake."""


def publish_endpoint(text: str) -> str:
    """The endpoint a `--publish` value means: loopback unless an address is given.

    "5555", ":5555", "tcp://:5555" -> "tcp://127.0.0.1:5555"; "HOST:5555" -> "tcp://HOST:5555";
    full endpoints ("tcp://*:5555", "tcp://0.0.0.0:5555", "ipc://...") are kept. ValueError for
    a tcp endpoint without a port number in 1-65535.
    """
    text = text.strip()
    if "://" in text and not text.startswith("tcp://"):
        return text
    rest = text.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = "", rest
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"publish endpoint {text!r}: needs a port number 1-65535, e.g. 5555 (loopback), "
            "tcp://*:5555 (every interface, needs keys) or tcp://HOST:5555"
        )
    return f"tcp://{host or '127.0.0.1'}:{int(port)}"


def needs_keys(endpoint: str) -> bool:
    """True when binding `endpoint` lets other hosts connect: any tcp:// address that is not
    loopback (127.0.0.0/8, ::1, localhost; `*`, 0.0.0.0 and interface names are not), and any
    network transport other than ipc:// and inproc://."""
    if endpoint.startswith(_LOCAL_SCHEMES):
        return False
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rpartition(":")[0].strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name
        return True


def check_bind(endpoint: str, security: Security | None, *, insecure: bool = False) -> None:
    """Raise InsecureEndpointError (one line, with the fix) when binding `endpoint` needs keys
    and `security` is None; `insecure=True` allows it anyway (a trusted network)."""
    if security is None and not insecure and needs_keys(endpoint):
        raise InsecureEndpointError(
            f"refusing to bind {endpoint} without CURVE keys (anyone who can reach it could "
            f"connect): {KEYS_HINT}, or bind loopback, e.g. tcp://127.0.0.1:PORT"
        )


def curve_keypair() -> tuple[str, str]:
    """A new CURVE keypair (public, secret), Z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def curve_public_key(secret_key: str) -> str:
    """The public key of a CURVE secret key (Z85 text); ValueError if it is not one."""
    try:
        return zmq.curve_public(secret_key.encode("ascii")).decode("ascii")
    except (zmq.ZMQError, ValueError):
        raise ValueError("not a CURVE secret key (40 Z85 characters)") from None


class _AllowList:
    """The ZAP check for one CURVE server socket (runs in the authenticator's thread)."""

    def __init__(self, keys: frozenset[str], name: str) -> None:
        self.keys = {k.encode("ascii") for k in keys}
        self.name = name
        self.refused = 0
        self.limit = RateLimit(REJECT_LOG_INTERVAL_S)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.refused += 1
        if self.limit.ready("refused", time.monotonic()):
            log.warning(
                "%s: refused a CURVE client whose key is not allowed (%s...; %d refused so far)",
                self.name,
                key[:8].decode("ascii", "replace"),
                self.refused,
            )
        return False


# One ZAP handler per process (ZeroMQ allows one per context); each CURVE server socket has its
# own ZAP domain, so sockets with different allowed keys never admit each other's clients.
_auth: ThreadAuthenticator | None = None
_auth_lock = threading.Lock()
_domains = itertools.count()


def _zap_domain(allowed: frozenset[str], name: str) -> str:
    global _auth
    with _auth_lock:
        if _auth is None:
            _auth = ThreadAuthenticator(zmq.Context.instance())
            _auth.start()
        domain = f"streamseg.{next(_domains)}"
        _auth.configure_curve_callback(domain, credentials_provider=_AllowList(allowed, name))
    return domain


def secure(sock: zmq.Socket, endpoint: str, security: Security, bind: bool) -> None:
    if endpoint.startswith("inproc://"):
        raise ValueError(f"{endpoint}: CURVE does not apply to inproc:// (give security=None)")
    _set_key(sock, zmq.CURVE_PUBLICKEY, security.public_key, endpoint)
    _set_key(sock, zmq.CURVE_SECRETKEY, security.secret_key, endpoint)
    if bind:
        if not security.allowed_keys:
            raise ValueError(f"CURVE server {endpoint}: no allowed client keys given")
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, _zap_domain(security.allowed_keys, endpoint).encode())
        # Without this, libzmq admits every client when no ZAP handler answers (e.g. after
        # close_all stopped it while sockets linger): fail closed instead.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    elif security.server_key:
        _set_key(sock, zmq.CURVE_SERVERKEY, security.server_key, endpoint)
    else:
        raise ValueError(f"CURVE client {endpoint}: the server's public key is missing")


def _set_key(sock: zmq.Socket, option: int, key: str, endpoint: str) -> None:
    try:
        sock.setsockopt(option, key.encode("ascii"))
    except (zmq.ZMQError, UnicodeEncodeError):
        raise ValueError(f"{endpoint}: a CURVE key is not 40 Z85 characters") from None


def stop_authenticator() -> None:
    """Stop this process's ZAP handler: CURVE servers refuse new handshakes from now on (fail
    closed). A socket made later starts a new one."""
    global _auth
    with _auth_lock:
        if _auth is not None:
            _auth.stop()
            _auth = None
