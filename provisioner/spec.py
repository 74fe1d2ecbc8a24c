"""mail.yml -> a validated, typed model. All input validation happens here, once.

Downstream code (render, dns, apply, verify) trusts the model and reads its derived values; nothing
re-checks. Errors name the field's dotted path (``domains[0].mailboxes[1].address``), the line in
mail.yml when known, and the expected form.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from provisioner import inputfiles
from provisioner.errors import SpecError
from provisioner.grammar import (
    HASH_SCHEMES,
    check_address,
    check_domain,
    check_duration,
    check_host,
    check_https_url,
    check_ip_list,
    check_mail_root,
    check_mailbox_address,
    check_network,
    check_password_hash,
    check_sasl_username,
    check_selector,
    check_sender_grant,
    domain_of,
    format_size,
    local_of,
    no_control,
    parse_size,
    text_value,
)

__all__ = [
    "HASH_SCHEMES",
    "Spec",
    "check_address",
    "check_domain",
    "check_mailbox_address",
    "domain_of",
    "format_size",
    "from_data",
    "load",
    "loads",
    "local_of",
    "parse_size",
]

#: Message sizes Postfix handles (message_size_limit), and mailbox quotas (Dovecot storage rule).
MESSAGE_SIZE_MIN, MESSAGE_SIZE_MAX = 1024**2, 4 * 1024**3
QUOTA_MIN, QUOTA_MAX = 1024**2, 1024**5
#: Targets of one alias: Postfix's virtual_alias_expansion_limit is 1000 addresses.
ALIAS_TARGETS_MAX = 1000
#: Longest alias -> alias chain; Postfix's virtual_alias_recursion_limit is 1000, real specs use 1-3.
ALIAS_DEPTH_MAX = 100
#: Nesting of the YAML document (mail.yml's own nesting is 5 levels deep).
YAML_DEPTH_MAX = 32
#: Longest single string value (a path, a hash, an address are far shorter).
STRING_MAX = 4096


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC while building large acyclic structures (keeps big specs linear in time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _path_value(value: Any) -> Any:
    """A file path field: a string (no control characters) -> Path; None stays None."""
    if value is None or isinstance(value, Path):
        return value
    text = text_value(value, "path")
    if not text:
        raise ValueError("expected a file path, got an empty string")
    return Path(text)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mailbox(_Strict):
    """One mailbox: an address that receives and stores mail (and logs in), with a password hash."""

    address: str
    password_hash: str
    quota: int | None = None
    #: Envelope senders this mailbox may use on submission besides its own address and the aliases that
    #: deliver to it: addresses, or @domain for a whole domain.
    send_as: list[str] = Field(default_factory=list)
    #: A Sieve script (file on the control machine) run for this mailbox before the user's own filters.
    sieve: Path | None = None
    _sieve_text: str | None = PrivateAttr(default=None)

    @field_validator("sieve", mode="before")
    @classmethod
    def _sieve_path(cls, value: Any) -> Any:
        return _path_value(value)

    @model_validator(mode="after")
    def _read_sieve(self) -> Mailbox:
        if self.sieve is not None:
            self._sieve_text = read_sieve_script(self.sieve)
        return self

    @property
    def sieve_text(self) -> str | None:
        """The mailbox's Sieve script as read at load."""
        return self._sieve_text

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> str:
        return check_mailbox_address(value)

    @field_validator("send_as", mode="before")
    @classmethod
    def _send_as(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("expected a list of addresses or @domain grants such as [team@example.org]")
        out: list[str] = []
        for item in value:
            grant = check_sender_grant(item)
            if grant in out:
                raise ValueError(f"{grant} is listed twice")
            out.append(grant)
        return out

    @field_validator("password_hash", mode="before")
    @classmethod
    def _hash(cls, value: Any) -> str:
        return check_password_hash(value)

    @field_validator("quota", mode="before")
    @classmethod
    def _quota(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value, QUOTA_MIN, QUOTA_MAX)

    @property
    def scheme(self) -> str:
        """The hash scheme, e.g. SHA512-CRYPT."""
        return self.password_hash[1 : self.password_hash.index("}")]

    @property
    def maildir(self) -> str:
        """Path of the mailbox below the mail store root: domain/user/."""
        return f"{domain_of(self.address)}/{local_of(self.address)}/"


class Domain(_Strict):
    """A mail domain hosted here: its mailboxes, aliases and optional catch-all."""

    name: str
    mailboxes: list[Mailbox] = Field(default_factory=list)
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    catch_all: str | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return check_domain(value)

    @field_validator("mailboxes", mode="before")
    @classmethod
    def _mailboxes(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> dict[str, list[str]]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of alias address -> list of target addresses")
        out: dict[str, list[str]] = {}
        for key, targets in value.items():
            if isinstance(targets, str):
                targets = [targets]
            address = check_address(key)
            if not isinstance(targets, list) or not targets:
                raise ValueError(f"alias {address}: expected a non-empty list of target addresses")
            if len(targets) > ALIAS_TARGETS_MAX:
                raise ValueError(
                    f"alias {address}: {len(targets)} targets; expected at most {ALIAS_TARGETS_MAX}"
                    " (Postfix's virtual_alias_expansion_limit)"
                )
            if address in out:
                raise ValueError(f"alias {address} is listed twice")
            checked = []
            for target in targets:
                try:
                    checked.append(check_address(target))
                except ValueError as exc:
                    raise ValueError(f"alias {address}: {exc}") from None
            if len(set(checked)) != len(checked):
                raise ValueError(f"alias {address}: a target is listed twice")
            out[address] = checked
        return out

    @field_validator("catch_all", mode="before")
    @classmethod
    def _catch_all(cls, value: Any) -> str | None:
        return None if value is None else check_address(value)

    @model_validator(mode="after")
    def _own_addresses(self) -> Domain:
        for i, box in enumerate(self.mailboxes):
            if domain_of(box.address) != self.name:
                raise ValueError(f"mailboxes[{i}].address {box.address} is not in domain {self.name}")
        for key in self.aliases:
            if domain_of(key) != self.name:
                raise ValueError(f"aliases: {key} is not in domain {self.name}")
        return self


#: Let's Encrypt's production ACME directory: the default for tls.mode acme.
LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


class TLS(_Strict):
    """Where the server certificate comes from; in files mode the files are read and judged at load.

    acme: certbot on the host gets a certificate for the hostname, the mta-sts names of the domains and
    `extra_names` from `directory` (HTTP-01, answered by nginx on port 80); renewal runs from the host's
    timer through the same deploy path as the first issue.
    """

    mode: Literal["self-signed", "files", "acme"] = "self-signed"
    cert: Path | None = None
    key: Path | None = None
    #: Files mode only: an optional CA chain appended after the certificate.
    chain: Path | None = None
    #: ACME: the account's contact address (required), the directory URL, and a CA bundle (PEM) to trust
    #: for a private or test CA (its directory's HTTPS and the certificates it issues).
    email: str | None = None
    directory: str = LETSENCRYPT_DIRECTORY
    ca_bundle: Path | None = None
    extra_names: list[str] = Field(default_factory=list)
    _pair: inputfiles.CertificatePair | None = PrivateAttr(default=None)
    _ca_pem: str | None = PrivateAttr(default=None)

    @field_validator("cert", "key", "chain", "ca_bundle", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _path_value(value)

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, value: Any) -> str | None:
        return None if value is None else check_address(value)

    @field_validator("directory", mode="before")
    @classmethod
    def _directory(cls, value: Any) -> str:
        return check_https_url(value)

    @field_validator("extra_names", mode="before")
    @classmethod
    def _extra(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("expected a list of host names such as [webmail.example.org]")
        return list(dict.fromkeys(check_domain(v) for v in value))

    @model_validator(mode="after")
    def _files(self) -> TLS:
        acme_only = {"email": self.email, "ca_bundle": self.ca_bundle, "extra_names": self.extra_names}
        if self.mode == "files":
            for name in ("cert", "key"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: required when mode is files (path to a PEM file)")
            assert self.cert is not None and self.key is not None
            try:
                self._pair = inputfiles.load_certificate_pair(self.cert, self.key, self.chain)
            except inputfiles.FieldProblem as exc:
                raise _error(("tls", exc.field), str(exc)) from None
        elif self.cert or self.key or self.chain:
            raise ValueError("cert/key/chain are only used with mode: files")
        if self.mode == "acme":
            if self.email is None:
                raise _error(
                    ("tls", "email"), "required when mode is acme (the ACME account's contact address)"
                )
            if self.ca_bundle is not None:
                try:
                    self._ca_pem = inputfiles.read_ca_bundle(self.ca_bundle)
                except ValueError as exc:
                    raise _error(("tls", "ca_bundle"), str(exc)) from None
        else:
            for name, value in acme_only.items():
                if value:
                    raise _error(("tls", name), "only used with mode: acme")
            if self.directory != LETSENCRYPT_DIRECTORY:
                raise _error(("tls", "directory"), "only used with mode: acme")
        return self

    @property
    def pair(self) -> inputfiles.CertificatePair | None:
        """Files mode: the certificate chain and key exactly as judged at load (apply installs these)."""
        return self._pair

    @property
    def ca_pem(self) -> str | None:
        """ACME: the CA bundle to trust, as read at load."""
        return self._ca_pem


class Submission(_Strict):
    """Client submission ports (RFC 6409 / RFC 8314)."""

    starttls_587: StrictBool = True
    implicit_tls_465: StrictBool = True


class RelayHost(_Strict):
    """An optional smarthost that all outgoing mail goes through, with SASL credentials if it needs them.

    With credentials, TLS to the relay is mandatory and verified (Postfix smtp_tls_security_level = secure
    against the system CA store, or `ca`), so the password never crosses the network in the clear.
    """

    host: str
    port: StrictInt = Field(default=587, ge=1, le=65535)
    #: false (default) sends to the host itself ([host]); true looks up its MX first.
    mx_lookup: StrictBool = False
    #: SASL login at the relay; the password is the first line of password_file (never in mail.yml).
    username: str | None = None
    password_file: Path | None = None
    #: PEM CA certificate(s) that the relay's certificate must chain to (default: the system store).
    ca: Path | None = None
    _password: str | None = PrivateAttr(default=None)
    _ca_pem: str | None = PrivateAttr(default=None)

    @field_validator("host", mode="before")
    @classmethod
    def _host(cls, value: Any) -> str:
        return check_host(value)

    @field_validator("username", mode="before")
    @classmethod
    def _username(cls, value: Any) -> str | None:
        return None if value is None else check_sasl_username(value)

    @field_validator("password_file", "ca", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _path_value(value)

    @model_validator(mode="after")
    def _checks(self) -> RelayHost:
        if self.mx_lookup and (":" in self.host or self.host.replace(".", "").isdigit()):
            raise ValueError("mx_lookup: an IP address has no MX; expected false, or a host name")
        if (self.username is None) != (self.password_file is None):
            missing = "password_file" if self.password_file is None else "username"
            raise _error(
                ("relay_host", missing), "username and password_file go together (SASL login at the relay)"
            )
        if self.password_file is not None:
            try:
                self._password = inputfiles.read_secret_line(self.password_file)
            except ValueError as exc:
                raise _error(("relay_host", "password_file"), str(exc)) from None
        if self.ca is not None:
            try:
                self._ca_pem = inputfiles.read_ca_bundle(self.ca)
            except ValueError as exc:
                raise _error(("relay_host", "ca"), str(exc)) from None
        return self

    @property
    def authenticated(self) -> bool:
        """True when the relay needs a SASL login."""
        return self.username is not None

    @property
    def password(self) -> str | None:
        """The relay password as read at load (secret: rendered only into the 0600 sasl_passwd table)."""
        return self._password

    @property
    def ca_pem(self) -> str | None:
        """The CA certificates the relay must chain to, as read at load."""
        return self._ca_pem


class Network(_Strict):
    """Where the daemons listen and which IP versions they use."""

    interfaces: Literal["all", "loopback-only"] | list[str] = "all"
    ipv4: StrictBool = True
    ipv6: StrictBool = False

    @field_validator("interfaces", mode="before")
    @classmethod
    def _interfaces(cls, value: Any) -> Any:
        if isinstance(value, list):
            return check_ip_list(value)
        if value not in ("all", "loopback-only"):
            raise ValueError(f"expected 'all', 'loopback-only' or a list of IP addresses, got {value!r}")
        return value

    @model_validator(mode="after")
    def _versions(self) -> Network:
        if not (self.ipv4 or self.ipv6):
            raise ValueError("at least one of ipv4, ipv6 must be true")
        if isinstance(self.interfaces, list):
            for addr in self.interfaces:
                version = 6 if ":" in addr else 4
                if (version == 4 and not self.ipv4) or (version == 6 and not self.ipv6):
                    raise ValueError(f"interfaces: {addr} is IPv{version}, which is switched off")
        return self


class DKIM(_Strict):
    """DKIM: the selector whose public key is published at SELECTOR._domainkey.DOMAIN, and the signing key.

    One key signs mail of every domain of the spec (d=DOMAIN, s=SELECTOR); its public half is published
    for each domain.
    """

    selector: str = "mail"
    #: Path of a PEM public key (or a "v=DKIM1; ..." record text) to publish; otherwise a placeholder.
    public_key: Path | None = None
    #: Path of a PEM RSA private key (>= 2048 bits) on the control machine: OpenDKIM signs with it.
    private_key: Path | None = None
    #: DNS resolvers OpenDKIM asks when verifying signatures. Empty: it resolves recursively by itself
    #: (its libunbound ignores /etc/resolv.conf), which needs the internet and fails for .test names.
    resolvers: list[str] = Field(default_factory=list)
    _public_b64: str | None = PrivateAttr(default=None)
    _private_pem: bytes | None = PrivateAttr(default=None)

    @field_validator("public_key", "private_key", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _path_value(value)

    @field_validator("selector", mode="before")
    @classmethod
    def _selector(cls, value: Any) -> str:
        return check_selector(value)

    @field_validator("resolvers", mode="before")
    @classmethod
    def _resolvers(cls, value: Any) -> list[str]:
        if value is None or value == []:
            return []
        if not isinstance(value, list):
            raise ValueError("expected a list of IP addresses such as [127.0.0.53]")
        return check_ip_list(value, "resolver IP address")

    @model_validator(mode="after")
    def _keys(self) -> DKIM:
        public = None
        if self.public_key is not None:
            try:
                public = public_key_b64(self.public_key)
            except ValueError as exc:
                raise _error(("dkim", "public_key"), str(exc)) from None
        if self.private_key is not None:
            try:
                pem, derived = _read_private_key(self.private_key)
            except ValueError as exc:
                raise _error(("dkim", "private_key"), str(exc)) from None
            if public is not None and public != derived:
                raise _error(
                    ("dkim", "public_key"),
                    f"public_key {self.public_key} is not the public half of private_key {self.private_key};"
                    " expected the same key pair (or set only private_key: the record is derived from it)",
                )
            self._private_pem, public = pem, derived
        self._public_b64 = public
        return self

    @property
    def signing(self) -> bool:
        """True when mail is signed (a private key is set)."""
        return self.private_key is not None

    @property
    def public_key_b64(self) -> str | None:
        """The base64 key for the p= tag of the DKIM record, from private_key or public_key; None if neither."""
        return self._public_b64

    @property
    def private_key_pem(self) -> bytes | None:
        """The signing key exactly as judged at load (apply installs these bytes)."""
        return self._private_pem


_KEYGEN_HINT = "(create one with `mailprov dkim-keygen -o dkim/mail.key`)"
DKIM_MIN_BITS = 2048
_DKIM_P_RE = re.compile(r'p=([A-Za-z0-9+/=\s"]{1,8192})')


def _der_rsa_public(der: bytes, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        raise ValueError(
            f"{path} holds no valid public key; expected a PEM public key or DKIM record"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 1024:
        raise ValueError(f"{path} is not an RSA public key of at least 1024 bits")


def public_key_b64(path: Path) -> str:
    """The base64 key material for p= from a PEM public key or an existing 'v=DKIM1; ... p=...' text."""
    text = inputfiles.read_text(path, inputfiles.PEM_MAX_BYTES, "DKIM public key")
    if "p=" in text and "BEGIN" not in text:
        match = _DKIM_P_RE.search(text)
        body = re.sub(r'[\s"]', "", match.group(1)) if match else ""
    else:
        body = "".join(
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----")
        )
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{path} is not a PEM public key or DKIM record") from None
    if not der:
        raise ValueError(f"{path} is not a PEM public key or DKIM record")
    _der_rsa_public(der, path)
    return base64.b64encode(der).decode("ascii")


def _read_private_key(path: Path) -> tuple[bytes, str]:
    """(PEM bytes, base64 DER public half) of a DKIM signing key; ValueError if unfit."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    expected = f"expected a PEM RSA private key of at least {DKIM_MIN_BITS} bits {_KEYGEN_HINT}"
    try:
        data = inputfiles.read_regular(path, inputfiles.PEM_MAX_BYTES, "PEM private key")
    except ValueError as exc:
        raise ValueError(f"{exc}; {expected}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not an unencrypted PEM private key; {expected}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA key; {expected}")
    if key.key_size < DKIM_MIN_BITS:
        raise ValueError(f"{path} is a {key.key_size}-bit key; {expected}")
    problem = inputfiles.key_mode_problem(path)
    if problem:
        raise ValueError(problem)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return pem, base64.b64encode(der).decode("ascii")


def private_key_b64(path: Path) -> str:
    """Base64 DER (SubjectPublicKeyInfo) of the public half of a PEM RSA private key; ValueError if unfit."""
    return _read_private_key(path)[1]


class SieveSettings(_Strict):
    """Sieve filtering at delivery (Dovecot Pigeonhole) and ManageSieve for users' own filters."""

    enabled: StrictBool = False
    #: ManageSieve on 4190 (STARTTLS, AUTH only after TLS): users upload their own filters.
    managesieve: StrictBool = True
    #: Global scripts (files on the control machine): run before, and after, every user's own filters.
    before: Path | None = None
    after: Path | None = None
    _texts: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("before", "after", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _path_value(value)

    @model_validator(mode="after")
    def _read(self) -> SieveSettings:
        for name in ("before", "after"):
            path = getattr(self, name)
            if path is not None:
                if not self.enabled:
                    raise _error(("sieve", name), "a global script needs sieve.enabled: true")
                try:
                    self._texts[name] = read_sieve_script(path)
                except ValueError as exc:
                    raise _error(("sieve", name), str(exc)) from None
        return self

    def text(self, name: str) -> str | None:
        """The global 'before' or 'after' script as read at load."""
        return self._texts.get(name)


class Antispam(_Strict):
    """rspamd as a Postfix milter: SPF, DKIM and DMARC verdicts, spam scores, GTUBE."""

    enabled: StrictBool = False
    #: Score at which mail is refused at SMTP time (5xx), and at which it gets X-Spam headers (and is filed
    #: in Junk by the global Sieve script).
    reject_score: float = Field(default=15.0, gt=0, le=1000)
    add_header_score: float = Field(default=6.0, gt=0, le=1000)

    @field_validator("reject_score", "add_header_score", mode="before")
    @classmethod
    def _score(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number such as 6 or 15")
        return value

    @model_validator(mode="after")
    def _order(self) -> Antispam:
        if self.add_header_score >= self.reject_score:
            raise ValueError("add_header_score must be below reject_score")
        return self


class Inbound(_Strict):
    """Policy for mail arriving unauthenticated on port 25."""

    #: Refuse mail from outside whose envelope sender is one of this spec's mailboxes or aliases (they send
    #: through submission). Turn off when outside services send as your addresses to your own MX: a
    #: forwarder that keeps the original envelope sender, a newsletter or ticket service relaying directly.
    reject_own_senders: StrictBool = True


class Fail2ban(_Strict):
    """Bans clients that keep failing to authenticate (Postfix SASL, Dovecot IMAP/POP3/ManageSieve)."""

    enabled: StrictBool = True
    #: Never banned (loopback always is): monitoring hosts, your office, a test runner.
    ignore_ip: list[str] = Field(default_factory=list)
    maxretry: StrictInt = Field(default=5, ge=1, le=100)
    findtime: str = "10m"
    bantime: str = "1h"

    @field_validator("ignore_ip", mode="before")
    @classmethod
    def _ignore(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("expected a list of IP addresses or networks such as [192.0.2.0/24]")
        out: list[str] = []
        for item in value:
            network = check_network(item)
            if network not in out:
                out.append(network)
        return out

    @field_validator("findtime", "bantime", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> str:
        return check_duration(value)


class MtaSts(_Strict):
    """The MTA-STS policy (RFC 8461) served for every domain at https://mta-sts.DOMAIN/.well-known/mta-sts.txt."""

    #: testing (the default) reports failures without refusing delivery; enforce makes senders refuse to
    #: deliver without valid TLS to a listed MX; none withdraws a policy.
    mode: Literal["enforce", "testing", "none"] = "testing"
    #: Seconds senders cache the policy (RFC 8461: at most 31557600; a day or more is sensible).
    max_age: StrictInt = Field(default=604800, ge=86400, le=31557600)


class DNSPolicy(_Strict):
    """Policy records published for every domain."""

    dmarc_policy: Literal["quarantine", "reject"] = "quarantine"
    dmarc_rua: str | None = None
    tlsrpt_rua: str | None = None
    mta_sts: MtaSts = Field(default_factory=MtaSts)

    @field_validator("dmarc_rua", "tlsrpt_rua", mode="before")
    @classmethod
    def _rua(cls, value: Any) -> str | None:
        return None if value is None else check_address(value)


@dataclass(frozen=True)
class Tables:
    """The lookup tables derived from a spec, computed together once (Spec.tables())."""

    alias_entries: list[AliasEntry]
    sender_owners: dict[str, list[str]]
    own_senders: list[str]


@dataclass(frozen=True)
class AliasEntry:
    """One line of the Postfix virtual alias table."""

    key: str
    targets: tuple[str, ...]


class Spec(_Strict):
    """A whole mail service: the model behind mail.yml."""

    hostname: str
    domains: list[Domain]
    tls: TLS = Field(default_factory=TLS)
    submission: Submission = Field(default_factory=Submission)
    imap: StrictBool = True
    pop3: StrictBool = True
    message_size_limit: int = 50 * 1024**2
    relay_host: RelayHost | None = None
    dkim: DKIM = Field(default_factory=DKIM)
    network: Network = Field(default_factory=Network)
    dns: DNSPolicy = Field(default_factory=DNSPolicy)
    #: Root of the mail store on the host (Maildirs live in ROOT/domain/user/).
    mail_root: str = "/var/vmail"
    #: Backup MX hosts (lower priority): they accept and queue mail for the domains while this host is away.
    backup_mx: list[str] = Field(default_factory=list)
    inbound: Inbound = Field(default_factory=Inbound)
    fail2ban: Fail2ban = Field(default_factory=Fail2ban)
    sieve: SieveSettings = Field(default_factory=SieveSettings)
    antispam: Antispam = Field(default_factory=Antispam)

    @field_validator("hostname", mode="before")
    @classmethod
    def _hostname(cls, value: Any) -> str:
        return check_domain(value)

    @field_validator("message_size_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value, MESSAGE_SIZE_MIN, MESSAGE_SIZE_MAX)

    @field_validator("mail_root", mode="before")
    @classmethod
    def _mail_root(cls, value: Any) -> str:
        return check_mail_root(value)

    @field_validator("backup_mx", mode="before")
    @classmethod
    def _backup_mx(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("expected a list of host names such as [mx2.example.org]")
        out: list[str] = []
        for item in value:
            name = check_domain(item)
            if name in out:
                raise ValueError(f"{name} is listed twice")
            out.append(name)
        return out

    @field_validator("domains", mode="after")
    @classmethod
    def _some_domains(cls, value: list[Domain]) -> list[Domain]:
        if not value:
            raise ValueError("expected at least one domain")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        if self.hostname in self.backup_mx:
            raise _error(
                ("backup_mx",), f"{self.hostname} is the spec's hostname (the primary MX), not a backup"
            )
        _check_unique(self)
        _check_aliases(self)
        return self

    # ---- derived values (templates and other modules read these, never re-derive) ----

    @property
    def domain_names(self) -> list[str]:
        """Hosted domain names, in spec order."""
        return [d.name for d in self.domains]

    @property
    def mailboxes(self) -> list[Mailbox]:
        """All mailboxes of all domains, in spec order."""
        return [box for d in self.domains for box in d.mailboxes]

    @property
    def primary_domain(self) -> str:
        """The first domain: Postfix's mydomain."""
        return self.domains[0].name

    @property
    def mx_hosts(self) -> list[tuple[int, str]]:
        """(preference, host) of every MX: 10 for the hostname, then 20, 30, ... for the backups."""
        return [(10 * (i + 1), host) for i, host in enumerate([self.hostname, *self.backup_mx])]

    @property
    def alias_entries(self) -> list[AliasEntry]:
        """The virtual alias table: spec aliases, derived postmaster aliases and catch-alls."""
        entries: list[AliasEntry] = []
        mailbox_set = {box.address for box in self.mailboxes}
        first_box = self.mailboxes[0].address
        for domain in self.domains:
            for key, targets in domain.aliases.items():
                entries.append(AliasEntry(key, tuple(targets)))
            postmaster = f"postmaster@{domain.name}"
            if postmaster not in domain.aliases and postmaster not in mailbox_set:
                # RFC 5321 requires postmaster@ for every domain; send it to the domain's first mailbox.
                target = domain.mailboxes[0].address if domain.mailboxes else first_box
                entries.append(AliasEntry(postmaster, (target,)))
            if domain.catch_all:
                # virtual_alias_maps is consulted before virtual_mailbox_maps: without these identity
                # entries the catch-all would swallow mail for real mailboxes.
                for box in domain.mailboxes:
                    if box.address not in domain.aliases:
                        entries.append(AliasEntry(box.address, (box.address,)))
                entries.append(AliasEntry(f"@{domain.name}", (domain.catch_all,)))
        return entries

    @property
    def sender_owners(self) -> dict[str, list[str]]:
        """smtpd_sender_login_maps: each envelope sender -> the mailbox logins that may use it.

        A mailbox owns its address, every alias that delivers to it (through other aliases too), and its
        send_as grants (addresses or @domain). Catch-alls grant nothing. Postfix strips +tags before the
        lookup, so alice may also send as alice+news.
        """
        return self.tables().sender_owners

    def tables(self) -> Tables:
        """The derived tables, each computed once (render and its guard read them from here)."""
        entries = self.alias_entries
        mailbox_list = self.mailboxes
        owners: dict[str, list[str]] = {box.address: [box.address] for box in mailbox_list}
        mailboxes = set(owners)
        aliases = {entry.key: entry.targets for entry in entries if not entry.key.startswith("@")}
        for key in aliases:
            reached = _reachable_mailboxes(key, aliases, mailboxes)
            if reached:  # an alias that only forwards outside is owned by nobody here
                logins = owners.setdefault(key, [])
                logins.extend(login for login in reached if login not in logins)
        for box in mailbox_list:
            for sender in box.send_as:
                logins = owners.setdefault(sender, [])
                if box.address not in logins:
                    logins.append(box.address)
        own: list[str] = []
        if self.inbound.reject_own_senders:
            own = list(dict.fromkeys([*(box.address for box in mailbox_list), *aliases]))
        return Tables(entries, owners, own)

    @property
    def own_senders(self) -> list[str]:
        """Addresses refused as envelope sender from outside on port 25 (mailboxes and aliases)."""
        return self.tables().own_senders

    @property
    def own_helo_names(self) -> list[str]:
        """HELO/EHLO names refused from outside on port 25: our host name and our domains."""
        return list(dict.fromkeys([self.hostname, *self.domain_names]))

    @property
    def open_ports(self) -> list[int]:
        """The ports this spec serves, ascending."""
        return sorted(p for p, on in self.ports.items() if on)

    @property
    def dovecot_protocols(self) -> list[str]:
        """Dovecot's `protocols` setting."""
        wanted = (
            ("imap", self.imap),
            ("pop3", self.pop3),
            ("lmtp", True),
            ("sieve", self.sieve.enabled and self.sieve.managesieve),
        )
        return [p for p, on in wanted if on]

    @property
    def mta_sts_names(self) -> list[str]:
        """mta-sts.DOMAIN for every domain."""
        return [f"mta-sts.{d}" for d in self.domain_names]

    @property
    def mta_sts_served(self) -> bool:
        """Whether this server serves the MTA-STS policy (nginx, HTTPS) and `_mta-sts` is published.

        Only with tls.mode acme, whose certificate covers the mta-sts names. (Serving it with a `files`
        certificate that covers them needs apply to install nginx for files mode too: not yet. A
        self-signed certificate never: senders could not verify the policy host.)
        """
        return self.tls.mode == "acme"

    @property
    def mta_sts_policy(self) -> str:
        """The policy file: every MX (primary and backups) listed, CRLF line ends as RFC 8461 writes them."""
        policy = self.dns.mta_sts
        lines = ["version: STSv1", f"mode: {policy.mode}"]
        lines += [f"mx: {host}" for _, host in self.mx_hosts]
        lines.append(f"max_age: {policy.max_age}")
        return "".join(line + "\r\n" for line in lines)

    @property
    def mta_sts_id(self) -> str:
        """The `_mta-sts` TXT id: derived from the policy text, so it changes exactly when the policy does."""
        return hashlib.sha256(self.mta_sts_policy.encode()).hexdigest()[:20]

    @property
    def certificate_names(self) -> list[str]:
        """ACME: the names the certificate covers (hostname first, then mta-sts names, then extra names)."""
        names = [
            self.hostname,
            *(self.mta_sts_names if self.tls.mode == "acme" else []),
            *self.tls.extra_names,
        ]
        return list(dict.fromkeys(names))

    @property
    def web_served(self) -> bool:
        """Whether nginx runs: ACME's HTTP-01 on port 80, the MTA-STS policy on 443."""
        return self.tls.mode == "acme" or self.mta_sts_served

    @property
    def sieve_before(self) -> list[tuple[str, str]]:
        """(Pigeonhole setting, script path on the host) of the global scripts run before users' own.

        Spam to Junk first (when antispam is on), then the spec's global `before`; a mailbox's own script
        (from the spec) takes the next setting name, through its userdb extra field.
        """
        if not self.sieve.enabled:
            return []
        paths = []
        if self.antispam.enabled:
            paths.append(f"{SIEVE_DIR}/spam-to-junk.sieve")
        if self.sieve.before is not None:
            paths.append(f"{SIEVE_DIR}/before.sieve")
        return [(_numbered("sieve_before", i), path) for i, path in enumerate(paths)]

    @property
    def sieve_after(self) -> list[tuple[str, str]]:
        """(setting, path) of the global script run after users' own filters."""
        if not self.sieve.enabled or self.sieve.after is None:
            return []
        return [("sieve_after", f"{SIEVE_DIR}/after.sieve")]

    def mailbox_sieve(self, box: Mailbox) -> tuple[str, str] | None:
        """(setting, path) of a mailbox's own spec script (a userdb extra field), or None."""
        if not self.sieve.enabled or box.sieve_text is None:
            return None
        return _numbered("sieve_before", len(self.sieve_before)), f"{SIEVE_DIR}/mailbox/{box.address}.sieve"

    @property
    def ports(self) -> dict[int, bool]:
        """Every mail port and whether this spec serves it."""
        return {
            25: True,
            465: self.submission.implicit_tls_465,
            587: self.submission.starttls_587,
            110: self.pop3,
            995: self.pop3,
            143: self.imap,
            993: self.imap,
            4190: self.sieve.enabled and self.sieve.managesieve,
        }

    @property
    def inet_interfaces(self) -> str:
        """Postfix's inet_interfaces."""
        if self.network.interfaces == "all":
            return "all"
        if self.network.interfaces == "loopback-only":
            return "loopback-only"
        return ", ".join(self.network.interfaces)

    @property
    def inet_protocols(self) -> str:
        """Postfix's inet_protocols."""
        if self.network.ipv4 and self.network.ipv6:
            return "all"
        return "ipv4" if self.network.ipv4 else "ipv6"

    @property
    def dovecot_listen(self) -> str:
        """Dovecot's `listen` setting."""
        if isinstance(self.network.interfaces, list):
            return ", ".join(self.network.interfaces)
        loopback = self.network.interfaces == "loopback-only"
        parts = []
        if self.network.ipv4:
            parts.append("127.0.0.1" if loopback else "*")
        if self.network.ipv6:
            parts.append("::1" if loopback else "::")
        return ", ".join(parts)

    @property
    def relayhost(self) -> str:
        """Postfix's relayhost value ('' when mail goes direct to MX)."""
        if self.relay_host is None:
            return ""
        host = self.relay_host.host
        if ":" in host:  # IPv6 literal
            host = f"ipv6:{host}"
        if not self.relay_host.mx_lookup:
            host = f"[{host}]"
        return f"{host}:{self.relay_host.port}"


#: Where the Sieve scripts from the spec live on the host (compiled there by apply).
SIEVE_DIR = "/etc/dovecot/sieve"
SIEVE_MAX_BYTES = 256 * 1024


def _numbered(name: str, index: int) -> str:
    """Pigeonhole's numbered settings: sieve_before, sieve_before2, sieve_before3, ..."""
    return name if index == 0 else f"{name}{index + 1}"


def read_sieve_script(path: Path) -> str:
    """A Sieve script file: regular, bounded, UTF-8 text without NUL (sievec judges the language)."""
    text = inputfiles.read_text(path, SIEVE_MAX_BYTES, "Sieve script")
    if "\x00" in text:
        raise ValueError(f"{path} holds a NUL byte; expected a Sieve script")
    return text


def _reachable_mailboxes(start: str, aliases: dict[str, tuple[str, ...]], mailboxes: set[str]) -> list[str]:
    """The local mailboxes an alias delivers to, following aliases iteratively (loops are refused at load)."""
    found: list[str] = []
    seen = {start}
    stack = [start]
    while stack:
        node = stack.pop()
        for target in aliases.get(node, ()):
            if target in mailboxes and target not in found:
                found.append(target)
            if target in aliases and target not in seen:
                seen.add(target)
                stack.append(target)
    return sorted(found)


def _error(loc: tuple[int | str, ...], message: str) -> SpecError:
    error = SpecError(_field_path(loc), message)
    error.loc = loc
    return error


def _check_unique(spec: Spec) -> None:
    seen_domains: dict[str, int] = {}
    for i, domain in enumerate(spec.domains):
        if domain.name in seen_domains:
            raise _error(("domains", i, "name"), f"domain {domain.name} is listed twice")
        seen_domains[domain.name] = i
    seen_boxes: set[str] = set()
    for i, domain in enumerate(spec.domains):
        for j, box in enumerate(domain.mailboxes):
            if box.address in seen_boxes:
                raise _error(("domains", i, "mailboxes", j, "address"), f"duplicate mailbox {box.address}")
            seen_boxes.add(box.address)
    if not seen_boxes:
        raise _error(("domains",), "expected at least one mailbox (postmaster mail must land somewhere)")


def _check_aliases(spec: Spec) -> None:
    local_domains = set(spec.domain_names)
    mailboxes = {box.address for box in spec.mailboxes}
    aliases: dict[str, list[str]] = {}
    where: dict[str, tuple[int | str, ...]] = {}
    for i, domain in enumerate(spec.domains):
        for key, targets in domain.aliases.items():
            field: tuple[int | str, ...] = ("domains", i, "aliases", key)
            if key in mailboxes and key not in targets:
                raise _error(
                    field,
                    f"{key} is a mailbox; an alias of the same address must keep a copy "
                    f"(list {key} among its targets) or be removed",
                )
            aliases[key] = targets
            where[key] = field
    for i, domain in enumerate(spec.domains):
        if domain.catch_all:
            aliases.setdefault(f"@{domain.name}", [domain.catch_all])
            where[f"@{domain.name}"] = ("domains", i, "catch_all")
    for key, targets in aliases.items():
        for target in targets:
            if domain_of(target) in local_domains and target not in mailboxes and target not in aliases:
                raise _error(
                    where[key],
                    f"{target} points nowhere: expected a mailbox or alias of this spec, "
                    "or an address in another domain",
                )
    _check_alias_graph(aliases, where)


def _check_alias_graph(aliases: dict[str, list[str]], where: dict[str, tuple[int | str, ...]]) -> None:
    """Refuse alias loops and chains deeper than ALIAS_DEPTH_MAX, iteratively (no recursion limit)."""
    depth: dict[str, int] = {}  # finished nodes: the longest alias chain below them
    on_path: set[str] = set()
    for root in aliases:
        if root in depth:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        on_path.add(root)
        while stack:
            node, index = stack[-1]
            targets = aliases[node]
            if index < len(targets):
                stack[-1] = (node, index + 1)
                target = targets[index]
                if target == node or target not in aliases or target in depth:
                    continue
                if target in on_path:
                    cycle = [*path[path.index(target) :], target]
                    raise _error(where[node], "alias loop: " + " -> ".join(cycle))
                stack.append((target, 0))
                path.append(target)
                on_path.add(target)
                continue
            stack.pop()
            path.pop()
            on_path.discard(node)
            below = [depth[t] for t in targets if t != node and t in depth]
            depth[node] = 1 + max(below, default=0)
            if depth[node] > ALIAS_DEPTH_MAX:
                raise _error(
                    where[node],
                    f"alias chain deeper than {ALIAS_DEPTH_MAX} levels (alias -> alias -> ...); expected a"
                    " shallower chain (point aliases at mailboxes)",
                )


# ---------------------------------------------------------------- loading


def _line_of(root: Any, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort 1-based line of the YAML node at `loc` (pydantic error location) in a composed node tree."""
    import yaml

    node = root
    line: int | None = None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((pair for pair in node.value if getattr(pair[0], "value", None) == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against `mailprov init`'s example)"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in ("bool_parsing", "bool_type"):
        return "expected true or false"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "expected a whole number"
    if kind in ("string_type", "str_type"):
        return "expected a string"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "expected a mapping (key: value)"
    if kind == "list_type":
        return "expected a list"
    if kind == "literal_error":
        return f"expected {message.removeprefix('Input should be ')}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"expected a number {message.removeprefix('Input should be ')}"
    return message


#: File-path fields; relative paths in mail.yml are relative to the file itself.
_PATH_FIELDS = {
    "tls": ("cert", "key", "chain", "ca_bundle"),
    "dkim": ("public_key", "private_key"),
    "relay_host": ("password_file", "ca"),
    "sieve": ("before", "after"),
}


def _joined(value: Any, base_dir: Path | None) -> Any:
    if isinstance(value, str) and value.strip():
        path = Path(value.strip()).expanduser()
        return str(path if path.is_absolute() or base_dir is None else base_dir / path)
    return value


def _resolve_paths(data: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """A copy of data whose relative file paths are joined to base_dir (~ expanded); only the changed
    branches are copied."""
    out = dict(data)
    for section, keys in _PATH_FIELDS.items():
        block = out.get(section)
        if isinstance(block, dict) and any(k in block for k in keys):
            out[section] = {k: (_joined(v, base_dir) if k in keys else v) for k, v in block.items()}
    domains = out.get("domains")
    if isinstance(domains, list) and any(
        isinstance(d, dict)
        and isinstance(d.get("mailboxes"), list)
        and any(isinstance(b, dict) and "sieve" in b for b in d["mailboxes"])
        for d in domains
    ):
        out["domains"] = [_resolve_mailbox_paths(d, base_dir) for d in domains]
    return out


def _resolve_mailbox_paths(domain: Any, base_dir: Path | None) -> Any:
    if not isinstance(domain, dict) or not isinstance(domain.get("mailboxes"), list):
        return domain
    boxes = [
        {**b, "sieve": _joined(b["sieve"], base_dir)} if isinstance(b, dict) and "sieve" in b else b
        for b in domain["mailboxes"]
    ]
    return {**domain, "mailboxes": boxes}


class _Refused(Exception):
    """A structural refusal of parsed YAML (too deep, too many values): no line lookup is attempted."""


def check_document(data: Any, budget: int) -> None:
    """Judge parsed YAML as a whole before the model sees it, iteratively (no recursion).

    Refuses more than `budget` values (aliases that expand a small text into a huge document), nesting
    deeper than YAML_DEPTH_MAX, mapping keys that are not strings, strings longer than STRING_MAX and
    control characters (line breaks, tabs, NUL, ESC) in any key or string anywhere.
    Raises SpecError naming the field; structural ones carry no location (they are not looked up again).
    """
    if _looks_clean(data, budget):
        return
    _locate_problem(data, budget)


def _fine(text: str) -> bool:
    return len(text) <= STRING_MAX and (text.isprintable() or _control_free(text))


def _control_free(text: str) -> bool:
    try:
        no_control(text)
    except ValueError:
        return False
    return True


def _looks_clean(data: Any, budget: int) -> bool:
    """The fast pass: True when nothing is wrong (no location bookkeeping)."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    push, pop = stack.append, stack.pop
    while stack:
        node, depth = pop()
        count += 1
        if count > budget or depth > YAML_DEPTH_MAX:
            return False
        if isinstance(node, str):
            if not _fine(node):
                return False
        elif isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str) or not _fine(key):
                    return False
                push((value, depth + 1))
        elif isinstance(node, list):
            for value in node:
                push((value, depth + 1))
        elif node is not None and not isinstance(node, bool | int | float):
            return False
    return True


def _locate_problem(data: Any, budget: int) -> None:
    """The slow pass, run only when the fast one found something: raise naming where."""
    count = 0
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while stack:
        node, loc = stack.pop()
        count += 1
        if count > budget:
            error = SpecError(
                "",
                f"the document expands to more than {budget} values (YAML aliases?); expected the values"
                " written out",
            )
            raise _Refused(error)
        if len(loc) > YAML_DEPTH_MAX:
            raise _Refused(
                SpecError(_field_path(loc[:4]) + "...", f"nested deeper than {YAML_DEPTH_MAX} levels")
            )
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise _error(loc, f"key {key!r} is not a string; expected names or addresses as keys")
                _check_string(key, loc, "key")
                stack.append((value, (*loc, key)))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                stack.append((value, (*loc, i)))
        elif isinstance(node, str):
            _check_string(node, loc, "value")
        elif node is not None and not isinstance(node, bool | int | float):
            raise _error(
                loc, f"unexpected {type(node).__name__} value; expected text, a number or true/false"
            )


def _check_string(text: str, loc: tuple[int | str, ...], what: str) -> None:
    if len(text) > STRING_MAX:
        raise _error(loc, f"{what} of {len(text)} characters; expected at most {STRING_MAX}")
    try:
        no_control(text, what)
    except ValueError as exc:
        raise _error(loc, str(exc)) from None


#: Values a document built from an API (no text to measure) may have: 200,000 mailboxes fit.
DATA_BUDGET = 5_000_000


def from_data(
    data: Any, source: str = "mail.yml", base_dir: Path | None = None, budget: int = DATA_BUDGET
) -> Spec:
    """Validate already-parsed YAML data (or the same shape from Ansible vars); raise SpecError.

    Relative file paths (tls.cert, dkim.private_key, ...) are taken relative to base_dir, the directory of
    mail.yml, so a spec means the same whatever the working directory. The error's `loc` is the failing
    field's location, for finding its line.
    """
    if data is None:
        raise SpecError("", f"{source} is empty; expected a mapping with hostname and domains")
    if not isinstance(data, dict):
        raise SpecError("", "expected a mapping at the top level (hostname:, domains:, ...)")
    try:
        check_document(data, budget)
    except _Refused as refused:
        raise refused.args[0] from None
    try:
        return Spec.model_validate(_resolve_paths(data, base_dir))
    except ValidationError as exc:
        # An unknown key usually explains the other errors (a misspelt required field), so report it first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        loc = tuple(first["loc"])
        # Pydantic appends union member names to locations (e.g. 'list[str]'); drop them.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("literal"))))
        raise _error(loc, _describe(first)) from None


#: Above this size the slow, position-keeping YAML parse for error line numbers is skipped.
_LINE_LOOKUP_MAX = 8_000_000


def _parse_fast(text: str) -> Any:
    """Parse YAML quickly (Rust yaml-rs: YAML 1.2, duplicate keys refused, alias replays limited)."""
    import yaml_rs

    try:
        return yaml_rs.loads(text, parse_datetime=False)
    except yaml_rs.YAMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"line (\d+)", message)
        lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else "invalid YAML"
        if "duplicate" in message or "limit" in message:
            reason = lines[0] if lines else reason
        reason = no_control_repr(reason)[:300]
        raise SpecError("", f"YAML syntax error: {reason}", int(match.group(1)) if match else None) from None
    except RecursionError:
        raise SpecError("", f"YAML nested too deeply; expected at most {YAML_DEPTH_MAX} levels") from None


def no_control_repr(text: str) -> str:
    """Text with control characters shown escaped (for messages that quote the input)."""
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


def _parse_with_positions(text: str) -> Any:
    """The YAML node tree with positions (libyaml's composer: fast, aliases not expanded), or None.

    Only used to find an error's line after yaml-rs parsed the same text and the document passed the
    structural checks, so its size and depth are already bounded.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.compose(text, Loader=loader)  # builds nodes only, constructs no objects
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


def loads(text: str, source: str = "mail.yml", base_dir: Path | None = None) -> Spec:
    """Parse and validate mail.yml text; on a validation error, find the offending line.

    Relative file paths resolve against base_dir (load() passes the file's directory); None keeps them
    relative to the working directory.
    """
    if len(text) > inputfiles.SPEC_MAX_BYTES:
        raise SpecError(
            "", f"{source} has {len(text)} characters; expected at most {inputfiles.SPEC_MAX_BYTES}"
        )
    data = _parse_fast(text)
    try:
        with paused_gc():
            # A document has at most about one value per character; more means aliases multiplied it.
            return from_data(data, source, base_dir, budget=len(text) + 1000)
    except SpecError as exc:
        if exc.line is not None or not exc.loc or len(text) > _LINE_LOOKUP_MAX:
            raise
        line = _line_of(_parse_with_positions(text), exc.loc)
        if line is None:
            raise
        raise SpecError(exc.field, exc.message, line) from None


def load(path: str | Path) -> Spec:
    """Read and validate a mail.yml file (a regular file of bounded size, never a FIFO or device)."""
    p = Path(path)
    try:
        data = inputfiles.read_regular(p, inputfiles.SPEC_MAX_BYTES, "mail.yml")
    except ValueError as exc:
        raise SpecError("", str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{p} is not UTF-8 text (byte {exc.start}); expected a YAML file") from None
    return loads(text, p.name, p.parent.absolute())
