"""CURVE key files (`streamseg keys DIR --name NAME` writes them), and `Security` from them.

The files are ZeroMQ certificates, the format czmq and pyzmq's `zmq.auth` write and read:

    DIR/NAME.key         the public key: hand it to peers (a server's allowed-keys folder holds
                         one per client; a client needs the server's)
    DIR/NAME.key_secret  public and secret key, mode 0600: it never leaves this host

A server admits exactly the clients whose NAME.key files are in its allowed-keys folder, read
when its socket is made (restart it after adding or removing a key). Reading a key file checks
everything: a bad file is one error line naming the file, never a server that silently admits
no one. No zmq here: the keypair itself comes from `security.curve_keypair`.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from streamseg.wire.security import Security, curve_keypair, curve_public_key

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_Z85 = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")

_SECRET_BANNER = (
    "#   ZeroMQ CURVE **Secret** Certificate, made by `streamseg keys`\n"
    "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
)
_PUBLIC_BANNER = (
    "#   ZeroMQ CURVE Public Certificate, made by `streamseg keys`\n"
    "#   Give it to the peers that must recognise this one; check it arrived unchanged.\n\n"
)


class KeyFileError(ValueError):
    """A key file or folder that is missing or not a CURVE certificate."""


def write_keypair(directory: str | Path, name: str = "streamseg") -> tuple[Path, Path]:
    """Write a new keypair as DIR/NAME.key (public) and DIR/NAME.key_secret (mode 0600);
    returns both paths. KeyFileError if NAME is not a plain file name or a file exists."""
    if not name or name != Path(name).name or name.startswith("."):
        raise KeyFileError(f"key name {name!r}: give a plain file name, e.g. --name server")
    directory = Path(directory)
    public_file = directory / (name + PUBLIC_SUFFIX)
    secret_file = directory / (name + SECRET_SUFFIX)
    for path in (public_file, secret_file):
        if path.exists():
            raise KeyFileError(f"{path} exists: remove it, or choose another --name")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = curve_keypair()
    body = f'metadata\ncurve\n    public-key = "{public}"\n'
    # The secret file is created 0600 (O_EXCL: never through an existing file or link), so it is
    # never readable by others, not even for a moment as with open() then chmod().
    _write_new(secret_file, _SECRET_BANNER + body + f'    secret-key = "{secret}"\n', 0o600)
    _write_new(public_file, _PUBLIC_BANNER + body, 0o644)
    return public_file, secret_file


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def read_key_file(path: str | Path) -> tuple[str, str | None]:
    """(public key, secret key or None) from a certificate file, Z85 text; KeyFileError for a
    missing file or one without a valid public key."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read key file {path}: {getattr(e, 'strerror', e)}") from None
    keys: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if sep and name.strip() in ("public-key", "secret-key"):
            keys[name.strip()] = _check_key(value.strip().strip("\"'"), path)
    if "public-key" not in keys:
        raise KeyFileError(f"{path} is not a CURVE key file (no public-key); see `streamseg keys`")
    return keys["public-key"], keys.get("secret-key")


def _check_key(text: str, path: Path) -> str:
    if len(text) != 40 or not set(text) <= _Z85:
        raise KeyFileError(f"{path}: a key is not 40 Z85 characters (damaged file?)")
    return text


def read_public_key(path: str | Path) -> str:
    """The public key in NAME.key (or NAME.key_secret), Z85 text."""
    return read_key_file(path)[0]


def secret_path(keys: str | Path) -> Path:
    """The secret file of a keypair named DIR/NAME, DIR/NAME.key or DIR/NAME.key_secret."""
    keys = Path(keys)
    if keys.name.endswith(SECRET_SUFFIX):
        return keys
    return keys.with_name(keys.name.removesuffix(PUBLIC_SUFFIX) + SECRET_SUFFIX)


def read_keypair(keys: str | Path) -> tuple[str, str]:
    """(public, secret) of the keypair DIR/NAME (its NAME.key_secret file), Z85 text.

    KeyFileError when the file has no secret key or the two keys do not belong together; a
    warning when others may read the file (it should be 0600).
    """
    path = secret_path(keys)
    public, secret = read_key_file(path)
    if secret is None:
        raise KeyFileError(
            f"{path} has no secret key: give the keypair DIR/NAME of `streamseg keys`"
        )
    if curve_public_key(secret) != public:
        raise KeyFileError(f"{path}: the public and secret key do not belong together")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: others can read this secret key; `chmod 600 %s`", path, path)
    return public, secret


def read_allowed_keys(directory: str | Path) -> frozenset[str]:
    """The public keys of every *.key file in `directory` (a server's allow-list)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"allowed keys: {directory} is not a folder of client NAME.key files")
    keys = frozenset(read_public_key(p) for p in sorted(directory.glob("*" + PUBLIC_SUFFIX)))
    if not keys:
        raise KeyFileError(f"allowed keys: no *.key files in {directory}; copy each client's in")
    return keys


def server_security(keys: str | Path, allowed: str | Path) -> Security:
    """For sockets that bind: this server's keypair DIR/NAME and the folder of allowed clients'
    public keys."""
    public, secret = read_keypair(keys)
    return Security(public, secret, allowed_keys=read_allowed_keys(allowed))


def client_security(keys: str | Path, server_key: str | Path) -> Security:
    """For sockets that connect: this client's keypair DIR/NAME and the server's NAME.key."""
    public, secret = read_keypair(keys)
    return Security(public, secret, server_key=read_public_key(server_key))
