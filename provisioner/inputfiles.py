"""Bounded, parsed reads of the files a spec names: mail.yml itself, TLS certificate/chain/key, DKIM keys.

Only regular files are read (never a FIFO, a device or a /proc or /sys file), with a size limit, through a
non-blocking open so that a FIFO cannot hang the reader. What is read is parsed and judged here, once, and
the model keeps the bytes it judged: apply installs exactly those, not whatever the path holds later.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: mail.yml of 200,000 mailboxes is about 32 MB; anything much larger is not a spec.
SPEC_MAX_BYTES = 64 * 1024 * 1024
#: A PEM chain of a dozen certificates, or a private key, is a few KB.
PEM_MAX_BYTES = 256 * 1024
_PSEUDO_FS = ("/proc/", "/sys/", "/dev/")


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; ValueError naming the problem otherwise."""
    resolved = os.path.realpath(path)
    if resolved.startswith(_PSEUDO_FS) or resolved in ("/proc", "/sys", "/dev"):
        raise ValueError(f"{path} is a system pseudo-file; expected a regular {what} file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}; expected a {what} file") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory; expected a {what} file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = (
                "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (FIFO, device or socket)"
            )
            raise ValueError(f"{path} is {kind}; expected a regular {what} file")
        if info.st_size > limit:
            raise ValueError(
                f"{path} is {info.st_size} bytes; expected a {what} file of at most {limit} bytes"
            )
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ValueError(f"{path} is larger than {limit} bytes; expected a {what} file")
        return b"".join(chunks)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_text(path: Path, limit: int, what: str) -> str:
    """read_regular decoded as UTF-8 (ValueError when it is not text)."""
    data = read_regular(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; expected a {what} file") from None


def _pem_text(path: Path, what: str) -> str:
    text = read_text(path, PEM_MAX_BYTES, what)
    if "\x00" in text:
        raise ValueError(f"{path} holds binary data; expected a {what} file")
    return text


def key_mode_problem(path: Path) -> str | None:
    """Why a private key file's mode is unsafe (readable or writable by others), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o007 or mode & 0o020:
        return (
            f"{path} has mode {stat.S_IMODE(mode):04o}: a private key must not be accessible to other users"
            f" or writable by its group; expected mode 0600 or 0640 (chmod 600 {path})"
        )
    return None


class FieldProblem(ValueError):
    """A file that is unfit, and which spec field named it (cert, key or chain)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@contextlib.contextmanager
def blame(field: str) -> Iterator[None]:
    """Re-raise ValueError from the block as FieldProblem(field, ...)."""
    try:
        yield
    except FieldProblem:
        raise
    except ValueError as exc:
        raise FieldProblem(field, str(exc)) from None


def read_secret_line(path: Path) -> str:
    """A password file: its first line, printable, no surrounding spaces; the file not readable by others."""
    text = read_text(path, 4096, "password")
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise ValueError(f"{path} is empty; expected the password on its first line")
    if password != password.strip() or not password.isprintable():
        raise ValueError(f"{path}: the password has surrounding spaces or control characters")
    if any(line.strip() for line in lines[1:]):
        raise ValueError(f"{path} has more than one line; expected only the password")
    problem = key_mode_problem(path)
    if problem:
        raise ValueError(problem.replace("a private key", "a password file"))
    return password


def read_ca_bundle(path: Path) -> str:
    """PEM CA certificates (one or more), normalised; nothing else in the file."""
    from cryptography.hazmat.primitives import serialization

    certs = _parse_certs(path, _pem_text(path, "PEM CA certificate"))
    return "".join(item.public_bytes(serialization.Encoding.PEM).decode("ascii") for item in certs)


@dataclass(frozen=True)
class CertificatePair:
    """A validated certificate chain (leaf first) and its private key, as PEM text."""

    chain_pem: str
    key_pem: str
    fingerprint_sha256: str
    not_after: datetime.datetime
    names: tuple[str, ...]


def load_certificate_pair(cert: Path, key: Path, chain: Path | None) -> CertificatePair:
    """Read and judge TLS files: an X.509 PEM chain in order, a matching unencrypted key, not expired."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    with blame("cert"):
        certs = _parse_certs(cert, _pem_text(cert, "PEM certificate"))
    own = len(certs)
    if chain is not None:
        with blame("chain"):
            certs += _parse_certs(chain, _pem_text(chain, "PEM certificate chain"))
    with blame("cert" if own > 1 or chain is None else "chain"):
        _check_order(cert if chain is None else chain, certs)
    now = datetime.datetime.now(datetime.UTC)
    leaf = certs[0]
    for i, item in enumerate(certs):
        if item.not_valid_after_utc <= now:
            raise FieldProblem(
                "cert" if i < own else "chain",
                f"{cert if i < own else chain}: certificate {item.subject.rfc4514_string()!r} expired on "
                f"{item.not_valid_after_utc:%Y-%m-%d}; expected a valid certificate",
            )
    with blame("key"):
        private = _load_private_key(key, _pem_text(key, "PEM private key").encode())
        problem = key_mode_problem(key)
        if problem:
            raise ValueError(problem)
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(
            serialization.Encoding.DER, public
        ) != leaf.public_key().public_bytes(serialization.Encoding.DER, public):
            raise ValueError(
                f"{key} is not the private key of the certificate in {cert}; expected the matching key"
            )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    chain_pem = "".join(item.public_bytes(serialization.Encoding.PEM).decode("ascii") for item in certs)
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return CertificatePair(
        chain_pem, key_pem, leaf.fingerprint(hashes.SHA256()).hex(), leaf.not_valid_after_utc, names
    )


def _parse_certs(path: Path, text: str) -> list:
    from cryptography import x509

    stripped = [line.strip() for line in text.splitlines() if line.strip()]
    if not stripped or stripped[0] != "-----BEGIN CERTIFICATE-----":
        raise ValueError(f"{path} is not a PEM certificate (expected '-----BEGIN CERTIFICATE-----' first)")
    if any(line.startswith("-----BEGIN") and "PRIVATE KEY" in line for line in stripped):
        raise ValueError(f"{path} holds a private key; expected certificates only (the key goes in tls.key)")
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise ValueError(f"{path} is not a valid PEM certificate chain") from None
    begins = sum(1 for line in stripped if line.startswith("-----BEGIN"))
    if begins != len(certs):
        raise ValueError(
            f"{path} holds {begins} PEM blocks of which {len(certs)} are certificates; expected certificates only"
        )
    return certs


def _check_order(path: Path, certs: list) -> None:
    """Each certificate must be issued (and signed) by the next one."""
    from cryptography.exceptions import InvalidSignature

    for child, parent in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValueError(
                f"{path}: the chain is out of order or incomplete: {child.subject.rfc4514_string()!r} is not"
                f" signed by the next certificate {parent.subject.rfc4514_string()!r} ({type(exc).__name__});"
                " expected leaf first, then each issuer"
            ) from None


def _load_private_key(path: Path, data: bytes):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"{path} is an encrypted private key; expected an unencrypted PEM key the daemons can read"
        ) from None
    except ValueError:
        raise ValueError(f"{path} is not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"{path} is a {key.key_size}-bit RSA key; expected RSA >= 2048 or ECDSA >= 256")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size < 256:
            raise ValueError(f"{path} is a {key.curve.key_size}-bit EC key; expected ECDSA >= 256")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is a {type(key).__name__}; expected an RSA, ECDSA or Ed25519 key")
    return key
