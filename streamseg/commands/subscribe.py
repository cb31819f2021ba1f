"""`streamseg subscribe ENDPOINT`: print the results a pipeline publishes, one line per frame."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from streamseg.client import FrameResult, Subscriber
from streamseg.wire import curve, sockets
from streamseg.wire.security import Security


def format_line(r: FrameResult) -> str:
    """`cam1 frame 42 latency 85 ms: 2 circle, 1 square` (instances by label, most first)."""
    counts = Counter(i.label_name for i in r.instances).most_common()
    what = ", ".join(f"{n} {name}" for name, n in counts) or "nothing"
    return f"{r.stream} frame {r.frame} latency {r.latency * 1000:.0f} ms: {what}"


def _security(args: argparse.Namespace) -> Security | None:
    """CURVE keys from --server-key and --keys (both or neither); KeyFileError if unusable."""
    if not (args.server_key or args.keys):
        return None
    if not (args.server_key and args.keys):
        raise curve.KeyFileError(
            "CURVE needs both --server-key (the publisher's NAME.key) and --keys DIR/NAME (this "
            "subscriber's keypair, from `streamseg keys`, allowed by the publisher)"
        )
    return curve.client_security(args.keys, args.server_key)


def cmd_subscribe(args: argparse.Namespace) -> int:
    try:
        security = _security(args)
    except curve.KeyFileError as e:
        print(f"streamseg subscribe: error: {e}", file=sys.stderr)
        return 2
    if (args.endpoint is None) == (args.fleet is None):
        print("streamseg subscribe: error: give an ENDPOINT or --fleet ADDRESS", file=sys.stderr)
        return 2
    if args.fleet is not None:
        from streamseg.fleet.cli import subscribe_fleet

        return subscribe_fleet(args, security)
    sub = Subscriber(args.endpoint, args.streams, timeout_s=args.timeout, security=security)
    n = 0
    timed_out = False
    try:
        for result in sub:
            print(format_line(result), flush=True)
            n += 1
            if args.count and n >= args.count:
                break
        else:
            timed_out = True
        connected = sub.connected
    except KeyboardInterrupt:
        connected = True  # the user stopped it: nothing to report
    except sockets.HandshakeError as e:
        print(f"streamseg subscribe: error: {e}", file=sys.stderr)
        return 2
    finally:
        sub.close()
        sockets.close_all(abort=True)
    if timed_out and not connected:
        print(
            f"streamseg subscribe: error: no publisher answered at {args.endpoint} within "
            f"{args.timeout:g} s; is a pipeline running with --publish {args.endpoint}?",
            file=sys.stderr,
        )
        return 1
    missed = sum(sub.missed.values())
    print(
        f"received {n} results, missed {missed}, rejected {sub.rejected} malformed",
        file=sys.stderr,
    )
    return 0


def register(sub: Any) -> None:
    """Add the `subscribe` command to the CLI's subparsers."""
    p = sub.add_parser(
        "subscribe",
        help="print the results a pipeline publishes (one line per frame)",
        description="Subscribe to a pipeline's --publish endpoint and print one line per frame: "
        "stream, frame, latency (capture to receive) and instances by label. Results missed "
        "because this subscriber was too slow are counted from gaps in the publish sequence.",
    )
    p.add_argument(
        "endpoint",
        nargs="?",
        help="ZeroMQ endpoint the pipeline publishes on, e.g. tcp://HOST:5555",
    )
    p.add_argument(
        "--fleet",
        metavar="ADDRESS",
        help="instead of ENDPOINT: every cell of the fleet on the Ray cluster at ADDRESS "
        "(`streamseg fleet`), following cells that move; lines start with the cell",
    )
    p.add_argument("--streams", nargs="+", metavar="STREAM", help="only these stream ids")
    p.add_argument("--count", type=int, help="stop after N results")
    p.add_argument("--timeout", type=float, help="stop when nothing came for this many seconds")
    p.add_argument(
        "--server-key",
        metavar="FILE",
        help="the publisher's public key (its NAME.key): connect with CURVE, encrypted and "
        "authenticated (a publisher bound on the network requires it)",
    )
    p.add_argument(
        "--keys",
        metavar="DIR/NAME",
        help="this subscriber's keypair from `streamseg keys DIR --name NAME`; the publisher "
        "must have its NAME.key among its allowed keys",
    )
    p.set_defaults(func=cmd_subscribe)
