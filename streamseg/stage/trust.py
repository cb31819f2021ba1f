"""Who may send what: per-run secrets that stages sign their messages with, and the accept
policies that check them. Pure: no sockets (wire.receiver.Receiver calls the policies).

The supervisor makes one random token per stage process ("source[cam1]", "inference",
"postprocess") and hands each process its own token and those of the peers it receives from,
in its environment (never on the command line, which every local user can read). A message is
taken only from the stage that owns it:

  inference     Frame, StreamStart, EndOfStream of stream S, signed by source[S]
                (with several workers, "inference" is the dispatcher, and it also takes
                Credit named inference[i] from worker inference[i] only)
  worker        Assign and Frame, signed by the dispatcher ("inference")
  postprocess   Detections, StreamStart, EndOfStream, signed by inference (or a worker)
  supervisor    Stats named N, signed by N (a forged report cannot change the exit code)

Tokens are compared in constant time. A stage started by hand gets no tokens and checks none
(it trusts its endpoints, as before); tcp endpoints between hosts are protected by CURVE.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from streamseg.wire.messages import (
    Assign,
    Credit,
    Detections,
    EndOfStream,
    Frame,
    Message,
    Stats,
    StreamStart,
)

ENV = "STREAMSEG_TOKENS"

Accept = Callable[[Message, str], str | None]


@dataclass(frozen=True)
class Tokens:
    own: str = ""
    """What this process signs its messages with ("": nothing)."""
    peers: dict[str, str] = field(default_factory=dict)
    """The tokens of the stage processes it receives from, by name."""

    def to_env(self) -> str:
        return json.dumps({"own": self.own, "peers": self.peers})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Tokens:
        """This process's tokens (none when it was not started by a supervisor)."""
        raw = environ.get(ENV)
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(str(data.get("own", "")), {str(k): str(v) for k, v in data["peers"].items()})


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _same(auth: str, token: str) -> bool:
    return hmac.compare_digest(auth.encode(), token.encode())


def source_name(stream: str) -> str:
    return f"source[{stream}]"


def from_sources(peers: Mapping[str, str]) -> Accept | None:
    """Inference's policy: each stream's frames and controls only from that stream's source."""
    if not peers:
        return None

    def accept(msg: Message, auth: str) -> str | None:
        if not isinstance(msg, Frame | StreamStart | EndOfStream):
            return "unexpected_type"
        token = peers.get(source_name(msg.stream))
        if token is None:
            return "unknown_stream"
        return None if _same(auth, token) else "forged"

    return accept


def from_inference(peers: Mapping[str, str]) -> Accept | None:
    """Postprocess's policy: results and controls only from inference (the one process, or
    the dispatcher and its workers: every peer it was given is an inference process)."""
    if peers.get("inference") is None:
        return None
    tokens = list(peers.values())

    def accept(msg: Message, auth: str) -> str | None:
        if not isinstance(msg, Detections | StreamStart | EndOfStream):
            return "unexpected_type"
        ok = False
        for token in tokens:  # every one compared: the time says nothing of which matched
            ok |= _same(auth, token)
        return None if ok else "forged"

    return accept


def from_dispatcher(peers: Mapping[str, str]) -> Accept | None:
    """An inference worker's policy: work only from the dispatcher (named "inference")."""
    token = peers.get("inference")
    if token is None:
        return None

    def accept(msg: Message, auth: str) -> str | None:
        if not isinstance(msg, Assign | Frame):
            return "unexpected_type"
        return None if _same(auth, token) else "forged"

    return accept


def from_workers(peers: Mapping[str, str]) -> Accept | None:
    """The dispatcher's policy on its work link: Credit named W only from worker W."""
    if not peers:
        return None

    def accept(msg: Message, auth: str) -> str | None:
        if not isinstance(msg, Credit):
            return "unexpected_type"
        token = peers.get(msg.worker)
        if token is None or not msg.worker.startswith("inference["):
            return "unknown_worker"
        return None if _same(auth, token) else "forged"

    return accept


def from_stages(peers: Mapping[str, str]) -> Accept | None:
    """The supervisor's policy: a report named N only from N, and of N's own kind of stage."""
    if not peers:
        return None

    def accept(msg: Message, auth: str) -> str | None:
        if not isinstance(msg, Stats):
            return "unexpected_type"
        name = msg.sender
        token = peers.get(name)
        if token is None or name.split("[", 1)[0] != msg.stage:
            return "unknown_stage"
        return None if _same(auth, token) else "forged"

    return accept
