"""A stage process's links: who it is, what it signs with, its CURVE keys and its reporter.

Built once in a stage's `main()` (`Links.from_env(name, link_keys=..., stats_endpoint=...)`)
and asked for each socket's security, the accept policies' peers and the stats reporter, so
that no call site repeats the tokens or the keys:

    links = Links.from_env("inference", link_keys=link_keys, stats_endpoint=stats_endpoint)
    reporter = links.reporter(counters)
    pull = sockets.pull(frames_endpoint, security=links.security(frames_endpoint, bind=True))
    receiver = Receiver(pull, name="inference", accept=from_sources(links.peers))
    links.send(push, detections)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from streamseg.accounting import Counters
from streamseg.stage.shell import StatsReporter
from streamseg.stage.trust import Tokens
from streamseg.wire import curve, sockets
from streamseg.wire.messages import Message
from streamseg.wire.security import Security


class Links:
    """One stage process's links (see the module docstring).

    name: the process, as reports and tokens name it ("source[cam1]", "inference[0]"); its
    stage is the part before "[". tokens: its own and its peers' (stage.trust). keys: the
    pipeline's keypair DIR/NAME (`[security] keys`), read when a tcp link first needs it.
    stats_endpoint: where the runner hears reports (None: a stage run alone, no reports).
    """

    def __init__(
        self,
        name: str,
        tokens: Tokens | None = None,
        *,
        keys: str | Path | None = None,
        stats_endpoint: str | None = None,
    ) -> None:
        self.name = name
        self.tokens = tokens if tokens is not None else Tokens()
        self.keys = keys or None
        self.stats_endpoint = stats_endpoint

    @classmethod
    def from_env(
        cls,
        name: str,
        *,
        link_keys: str | Path | None = None,
        stats_endpoint: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> Links:
        """The links of a stage process: its tokens from the environment the supervisor gave
        it (none for a stage started by hand), the pipeline's keys and the stats endpoint."""
        return cls(name, Tokens.from_env(environ), keys=link_keys, stats_endpoint=stats_endpoint)

    @property
    def stage(self) -> str:
        """The kind of stage ("source" for "source[cam1]")."""
        return self.name.split("[", 1)[0]

    @property
    def auth(self) -> str:
        """What this process signs its messages with ("": nothing)."""
        return self.tokens.own

    @property
    def peers(self) -> dict[str, str]:
        """The tokens of the processes it receives from, by name (for stage.trust's policies)."""
        return self.tokens.peers

    @cached_property
    def _keypair(self) -> tuple[str, str]:
        assert self.keys is not None
        return curve.read_keypair(self.keys)

    def security(self, endpoint: str | None, *, bind: bool) -> Security | None:
        """CURVE for a tcp link between the stages of one pipeline, which all hold its keypair:
        the binding side admits only that key, the connecting side expects it. None for ipc://
        and inproc:// (the kernel keeps those on the host) or when the pipeline has no keys.
        KeyFileError when the keypair cannot be read."""
        if self.keys is None or not endpoint or not endpoint.startswith("tcp://"):
            return None
        public, secret = self._keypair
        if bind:
            return Security(public, secret, allowed_keys=frozenset({public}))
        return Security(public, secret, server_key=public)

    def reporter(self, counters: Counters, **options: Any) -> StatsReporter:
        """The stage's stats reporter, signed and secured as its other links (`options`:
        StatsReporter's, e.g. every_s, clock)."""
        return StatsReporter(
            self.stats_endpoint,
            self.stage,
            counters,
            name=self.name,
            auth=self.auth,
            security=self.security(self.stats_endpoint, bind=False),
            **options,
        )

    def send(self, sock: Any, msg: Message, *, block: bool = True) -> bool:
        """`sockets.send`, signed with this process's token."""
        return sockets.send(sock, msg, block=block, auth=self.auth)

    def send_to(self, sock: Any, peer: bytes, msg: Message) -> bool:
        """`sockets.send_to` (a ROUTER to one peer), signed with this process's token."""
        return sockets.send_to(sock, peer, msg, auth=self.auth)
