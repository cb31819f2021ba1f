"""`streamseg keys DIR --name NAME`: make a CURVE keypair (wire.curve writes and reads them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from streamseg.wire.curve import KeyFileError, read_public_key, write_keypair


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        public_path, secret_file = write_keypair(args.dir, args.name)
    except (KeyFileError, OSError) as e:
        print(f"streamseg keys: error: {e}", file=sys.stderr)
        return 2
    print(f"public key {read_public_key(public_path)}")
    print(f"wrote {public_path} (public: give it to peers) and {secret_file} (secret, mode 0600)")
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="folder for the key files (made if missing)")
    p.add_argument(
        "--name", default="streamseg", help="file name: NAME.key, NAME.key_secret (%(default)s)"
    )
    p.set_defaults(func=cmd_keys)


_DESCRIPTION = (
    "Make a CURVE keypair for ZeroMQ endpoints on the network: DIR/NAME.key (the public key, "
    "for peers: a publisher's allowed-keys folder holds one per subscriber, a subscriber needs "
    "the publisher's) and DIR/NAME.key_secret (mode 0600, stays on this host). "
    "See README, Security."
)


def register(sub: Any) -> None:
    """Add the `keys` command to the CLI's subparsers."""
    p = sub.add_parser(
        "keys", help="make a CURVE keypair (tcp endpoints)", description=_DESCRIPTION
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m streamseg.commands.keys DIR [--name NAME]`, the same as `streamseg keys`."""
    parser = argparse.ArgumentParser(prog="streamseg keys", description=_DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
