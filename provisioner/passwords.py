"""Dovecot-compatible password hashes (SHA512-CRYPT); plaintext never leaves this function."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from passlib.hash import sha512_crypt

#: glibc's default is 5000; more rounds cost an attacker more, and a login ~50 ms here.
ROUNDS = 100_000


def hash_password(password: str, rounds: int = ROUNDS) -> str:
    """Hash a password as {SHA512-CRYPT}$6$rounds=N$salt$hash, which Dovecot verifies natively."""
    if not password:
        raise ValueError("empty password")
    return "{SHA512-CRYPT}" + sha512_crypt.using(rounds=rounds).hash(password)


def verify_password(password: str, hashed: str) -> bool:
    """Check a password against a {SHA512-CRYPT} hash made by hash_password (for tests and tooling)."""
    scheme, _, value = hashed.partition("}")
    if scheme != "{SHA512-CRYPT":
        raise ValueError("only {SHA512-CRYPT} hashes can be checked here")
    return bool(sha512_crypt.verify(password, value))
