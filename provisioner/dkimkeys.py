"""DKIM signing keys: generate an RSA key for `dkim.private_key` (written 0600, never printed)."""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.errors import UsageError

DEFAULT_BITS = 2048
#: Below 2048 bits receivers may ignore the signature (RFC 8301); above 4096 the TXT record gets unwieldy.
ALLOWED_BITS = (2048, 3072, 4096)


def generate_pem(bits: int = DEFAULT_BITS) -> bytes:
    """A new RSA private key as unencrypted PKCS#8 PEM (what OpenDKIM reads)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, bits: int = DEFAULT_BITS, force: bool = False) -> Path:
    """Write a new key to path with mode 0600 (created that way: never readable by others, even briefly)."""
    if bits not in ALLOWED_BITS:
        raise UsageError(f"--bits: expected one of {', '.join(map(str, ALLOWED_BITS))}, got {bits}")
    if path.is_dir():
        raise UsageError(f"-o/--output: {path} is a directory; expected a file path such as dkim/mail.key")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; use --force to replace it (the published DKIM record changes too)")
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = generate_pem(bits)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
