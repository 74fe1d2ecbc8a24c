"""mail.yml -> a validated, typed model. All input validation happens here, once.

Downstream code (render, dns, apply, verify) trusts the model and reads its derived values; nothing
re-checks. Errors name the field's dotted path (``domains[0].mailboxes[1].address``), the line in
mail.yml when known, and the expected form.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from provisioner.errors import SpecError

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+$")
# Dot-atom local part (RFC 5322), the form mail administrators actually use.
_LOCAL_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Hash schemes Dovecot verifies that are not reversible or trivially crackable.
HASH_SCHEMES = ("SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID", "SSHA512", "PBKDF2")
_CRYPT_PREFIXES = {"$6$": "SHA512-CRYPT", "$5$": "SHA256-CRYPT", "$2y$": "BLF-CRYPT", "$2b$": "BLF-CRYPT"}
_HASH_RE = re.compile(r"^\{([A-Z0-9.-]+)\}(\S+)$")
_SELECTOR_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


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


def parse_size(value: Any, field: str = "size") -> int:
    """Parse a size such as 50M, 2G, 1024 into bytes (binary units)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size such as 50M or 2G, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a non-negative size")
        return value
    return _parse_size_text(value)


@functools.lru_cache(maxsize=4096)
def _parse_size_text(value: str) -> int:
    # Cached: large specs repeat the same few quota strings thousands of times.
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"expected a size such as 50M, 2G or a number of bytes, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_size(nbytes: int) -> str:
    """Render bytes with the largest exact binary unit (2147483648 -> 2G), as Dovecot and humans read it."""
    for suffix, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("k", 1024)):
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return f"{nbytes}B"


def check_domain(value: str) -> str:
    """Return the lower-cased domain name or raise ValueError with the expected form."""
    return _check_domain_text(str(value))


@functools.lru_cache(maxsize=65536)
def _check_domain_text(value: str) -> str:
    # Cached: every address of a domain repeats the domain's check.
    name = value.strip().lower().rstrip(".")
    if not _DOMAIN_RE.match(name) or name.split(".")[-1].isdigit():
        raise ValueError(f"expected a fully qualified domain name such as example.org, got {value!r}")
    return name


def check_address(value: str) -> str:
    """Return the lower-cased mail address or raise ValueError with the expected form."""
    text = str(value).strip().lower()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or len(local) > 64 or not _LOCAL_RE.match(local):
        raise ValueError(f"expected a mail address such as user@example.org, got {value!r}")
    try:
        check_domain(domain)
    except ValueError:
        raise ValueError(f"expected a mail address such as user@example.org, got {value!r}") from None
    return text


def domain_of(address: str) -> str:
    """The domain part of a validated address."""
    return address.rpartition("@")[2]


def local_of(address: str) -> str:
    """The local part of a validated address."""
    return address.rpartition("@")[0]


def _ip_list(items: list[Any]) -> list[str]:
    """Normalised IP addresses, or ValueError naming the first item that is not one."""
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_address(str(item).strip())))
        except ValueError:
            raise ValueError(f"expected an IP address, got {item!r}") from None
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Mailbox(_Strict):
    """One mailbox: an address that receives and stores mail, with a password hash."""

    address: str
    password_hash: str
    quota: int | None = None

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> str:
        return check_address(value)

    @field_validator("password_hash", mode="before")
    @classmethod
    def _hash(cls, value: Any) -> str:
        text = str(value).strip()
        for prefix, scheme in _CRYPT_PREFIXES.items():
            if text.startswith(prefix):
                return f"{{{scheme}}}{text}"
        match = _HASH_RE.match(text)
        if not match:
            raise ValueError(
                "expected a password hash such as {SHA512-CRYPT}$6$... (run `mailprov hash-password`);"
                " plaintext passwords are refused"
            )
        scheme = match.group(1)
        if scheme not in HASH_SCHEMES:
            raise ValueError(
                f"hash scheme {{{scheme}}} is not accepted; expected one of "
                + ", ".join("{" + s + "}" for s in HASH_SCHEMES)
                + " (run `mailprov hash-password`)"
            )
        return text

    @field_validator("quota", mode="before")
    @classmethod
    def _quota(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)

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
            if not isinstance(targets, list) or not targets:
                raise ValueError(f"alias {key}: expected a non-empty list of target addresses")
            address = check_address(key)
            if address in out:
                raise ValueError(f"alias {address} is listed twice")
            out[address] = [check_address(t) for t in targets]
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


class TLS(_Strict):
    """Where the server certificate comes from."""

    mode: Literal["self-signed", "files"] = "self-signed"
    cert: Path | None = None
    key: Path | None = None
    #: Files mode only: an optional CA chain appended after the certificate.
    chain: Path | None = None

    @model_validator(mode="after")
    def _files(self) -> TLS:
        if self.mode == "files":
            for name in ("cert", "key"):
                path = getattr(self, name)
                if path is None:
                    raise ValueError(f"{name}: required when mode is files (path to a PEM file)")
                if not Path(path).is_file():
                    raise ValueError(f"{name}: file not found: {path}")
            if self.chain is not None and not Path(self.chain).is_file():
                raise ValueError(f"chain: file not found: {self.chain}")
        elif self.cert or self.key or self.chain:
            raise ValueError("cert/key/chain are only used with mode: files")
        return self


class Submission(_Strict):
    """Client submission ports (RFC 6409 / RFC 8314)."""

    starttls_587: bool = True
    implicit_tls_465: bool = True


class RelayHost(_Strict):
    """An optional smarthost that all outgoing mail goes through."""

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    #: false (default) sends to the host itself ([host]); true looks up its MX first.
    mx_lookup: bool = False

    @field_validator("host", mode="before")
    @classmethod
    def _host(cls, value: Any) -> str:
        text = str(value).strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            return check_domain(text)


class Network(_Strict):
    """Where the daemons listen and which IP versions they use."""

    interfaces: Literal["all", "loopback-only"] | list[str] = "all"
    ipv4: bool = True
    ipv6: bool = False

    @field_validator("interfaces", mode="before")
    @classmethod
    def _interfaces(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("expected 'all', 'loopback-only' or a non-empty list of IP addresses")
            return _ip_list(value)
        if value not in ("all", "loopback-only"):
            raise ValueError(f"expected 'all', 'loopback-only' or a list of IP addresses, got {value!r}")
        return value

    @model_validator(mode="after")
    def _versions(self) -> Network:
        if not (self.ipv4 or self.ipv6):
            raise ValueError("at least one of ipv4, ipv6 must be true")
        if isinstance(self.interfaces, list):
            for addr in self.interfaces:
                version = ipaddress.ip_address(addr).version
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

    @field_validator("selector", mode="before")
    @classmethod
    def _selector(cls, value: Any) -> str:
        text = str(value).strip().lower()
        if not _SELECTOR_RE.match(text):
            raise ValueError(f"expected a DNS label such as mail or s2024, got {value!r}")
        return text

    @field_validator("public_key", mode="after")
    @classmethod
    def _public_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_file():
                raise ValueError(f"file not found: {value}")
            public_key_b64(value)
        return value

    @field_validator("resolvers", mode="before")
    @classmethod
    def _resolvers(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("expected a list of IP addresses such as [127.0.0.53]")
        return _ip_list(value)

    @field_validator("private_key", mode="after")
    @classmethod
    def _private_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            private_key_b64(value)
        return value

    @model_validator(mode="after")
    def _pair(self) -> DKIM:
        if (
            self.public_key is not None
            and self.private_key is not None
            and public_key_b64(self.public_key) != private_key_b64(self.private_key)
        ):
            raise ValueError(
                f"public_key {self.public_key} is not the public half of private_key {self.private_key};"
                " expected the same key pair (or set only private_key: the record is derived from it)"
            )
        return self

    @property
    def signing(self) -> bool:
        """True when mail is signed (a private key is set)."""
        return self.private_key is not None

    @property
    def public_key_b64(self) -> str | None:
        """The base64 key for the p= tag of the DKIM record, from private_key or public_key; None if neither."""
        if self.private_key is not None:
            return private_key_b64(self.private_key)
        if self.public_key is not None:
            return public_key_b64(self.public_key)
        return None


_KEYGEN_HINT = "(create one with `mailprov dkim-keygen -o dkim/mail.key`)"
DKIM_MIN_BITS = 2048


def public_key_b64(path: Path) -> str:
    """The base64 key material for p= from a PEM public key or an existing 'v=DKIM1; ... p=...' text."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if "p=" in text and "BEGIN" not in text:
        match = re.search(r"p=([A-Za-z0-9+/=\s\"]+)", text)
        if match:
            return re.sub(r"[\s\"]", "", match.group(1))
    body = "".join(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----")
    )
    try:
        base64.b64decode(body, validate=True)
    except ValueError:
        raise ValueError(f"{path} is not a PEM public key or DKIM record") from None
    return body


def private_key_b64(path: Path) -> str:
    """Base64 DER (SubjectPublicKeyInfo) of the public half of a PEM RSA private key; ValueError if unfit."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    expected = f"expected a PEM RSA private key of at least {DKIM_MIN_BITS} bits {_KEYGEN_HINT}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}; {expected}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not an unencrypted PEM private key; {expected}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA key; {expected}")
    if key.key_size < DKIM_MIN_BITS:
        raise ValueError(f"{path} is a {key.key_size}-bit key; {expected}")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


class DNSPolicy(_Strict):
    """Policy records published for every domain."""

    dmarc_policy: Literal["quarantine", "reject"] = "quarantine"
    dmarc_rua: str | None = None
    tlsrpt_rua: str | None = None

    @field_validator("dmarc_rua", "tlsrpt_rua", mode="before")
    @classmethod
    def _rua(cls, value: Any) -> str | None:
        return None if value is None else check_address(value)


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
    imap: bool = True
    pop3: bool = True
    message_size_limit: int = 50 * 1024**2
    relay_host: RelayHost | None = None
    dkim: DKIM = Field(default_factory=DKIM)
    network: Network = Field(default_factory=Network)
    dns: DNSPolicy = Field(default_factory=DNSPolicy)
    #: Root of the mail store on the host (Maildirs live in ROOT/domain/user/).
    mail_root: str = "/var/vmail"

    @field_validator("hostname", mode="before")
    @classmethod
    def _hostname(cls, value: Any) -> str:
        return check_domain(value)

    @field_validator("message_size_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        size = parse_size(value)
        if size < 1024 * 1024:
            raise ValueError("expected at least 1M (Postfix needs room for headers)")
        return size

    @field_validator("mail_root", mode="before")
    @classmethod
    def _mail_root(cls, value: Any) -> str:
        text = str(value).strip().rstrip("/")
        if not text.startswith("/") or not re.match(r"^/[A-Za-z0-9._/-]+$", text) or "/.." in text:
            raise ValueError(f"expected an absolute path such as /var/vmail, got {value!r}")
        return text

    @field_validator("domains", mode="after")
    @classmethod
    def _some_domains(cls, value: list[Domain]) -> list[Domain]:
        if not value:
            raise ValueError("expected at least one domain")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
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
        }

    @property
    def open_ports(self) -> list[int]:
        """The ports this spec serves, ascending."""
        return sorted(p for p, on in self.ports.items() if on)

    @property
    def dovecot_protocols(self) -> list[str]:
        """Dovecot's `protocols` setting."""
        return [p for p, on in (("imap", self.imap), ("pop3", self.pop3), ("lmtp", True)) if on]

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
    # Alias loops: follow alias -> alias edges (self-references keep a copy and are fine).
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in aliases.get(node, []):
            if target == node or target not in aliases:
                continue
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [node, target]
                raise _error(where[node], "alias loop: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target, [*path, target])
        state[node] = 2

    for key in aliases:
        if key not in state:
            visit(key, [key])


# ---------------------------------------------------------------- loading


def _line_of(data: Any, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort 1-based line of the YAML node at `loc` (pydantic error location)."""
    node = data
    line: int | None = None
    for part in loc:
        try:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError, AttributeError):
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
    if kind == "bool_parsing" or kind == "bool_type":
        return "expected true or false"
    if kind in ("model_type", "dict_type"):
        return "expected a mapping (key: value)"
    if kind == "list_type":
        return "expected a list"
    if kind == "literal_error":
        return f"expected {message.removeprefix('Input should be ')}"
    return message


#: File-path fields; relative paths in mail.yml are relative to the file itself.
_PATH_FIELDS = {"tls": ("cert", "key", "chain"), "dkim": ("public_key", "private_key")}


def _resolve_paths(data: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """A shallow copy of data whose relative file paths are joined to base_dir (~ expanded)."""
    out = dict(data)
    for section, keys in _PATH_FIELDS.items():
        block = out.get(section)
        if not isinstance(block, dict):
            continue
        block = dict(block)
        for key in keys:
            value = block.get(key)
            if isinstance(value, str) and value.strip():
                path = Path(value.strip()).expanduser()
                block[key] = str(path if path.is_absolute() or base_dir is None else base_dir / path)
        out[section] = block
    return out


def from_data(data: Any, source: str = "mail.yml", base_dir: Path | None = None) -> Spec:
    """Validate already-parsed YAML data; raise SpecError naming the field and line.

    Relative file paths (tls.cert, dkim.private_key, ...) are taken relative to base_dir, the directory of
    mail.yml, so a spec means the same whatever the working directory.
    """
    if data is None:
        raise SpecError("", f"{source} is empty; expected a mapping with hostname and domains")
    if not isinstance(data, dict):
        raise SpecError("", "expected a mapping at the top level (hostname:, domains:, ...)")
    try:
        return Spec.model_validate(_resolve_paths(data, base_dir))
    except ValidationError as exc:
        # An unknown key usually explains the other errors (a misspelt required field), so report it first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        loc = tuple(first["loc"])
        # Pydantic appends union member names to locations (e.g. 'list[str]'); drop them.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("literal"))))
        raise SpecError(_field_path(loc), _describe(first), _line_of(data, loc)) from None
    except SpecError as exc:
        if exc.line is None and exc.loc:
            raise SpecError(exc.field, exc.message, _line_of(data, exc.loc)) from None
        raise


#: Above this size the slow, position-keeping YAML parse for error line numbers is skipped.
_LINE_LOOKUP_MAX = 2_000_000


def _parse_fast(text: str) -> Any:
    """Parse YAML quickly (Rust yaml-rs: YAML 1.2, duplicate keys refused); ruamel as the fallback."""
    try:
        import yaml_rs
    except ImportError:  # pragma: no cover - yaml-rs is a dependency; keep working without it
        return _parse_with_positions(text)
    try:
        return yaml_rs.loads(text, parse_datetime=False)
    except yaml_rs.YAMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"line (\d+)", message)
        reason = message.strip().splitlines()[-1].strip() if message.strip() else "invalid YAML"
        if "duplicate" in message:
            reason = message.splitlines()[0]
        raise SpecError("", f"YAML syntax error: {reason}", int(match.group(1)) if match else None) from None


def _parse_with_positions(text: str) -> Any:
    """Parse YAML keeping node positions, for error messages with line numbers."""
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError("", f"YAML syntax error: {exc.problem or exc.context}", line) from None
    except YAMLError as exc:
        raise SpecError("", f"YAML error: {exc}") from None


def loads(text: str, source: str = "mail.yml", base_dir: Path | None = None) -> Spec:
    """Parse and validate mail.yml text; on a validation error, find the offending line.

    Relative file paths resolve against base_dir (load() passes the file's directory); None keeps them
    relative to the working directory.
    """
    try:
        with paused_gc():
            return from_data(_parse_fast(text), source, base_dir)
    except SpecError as exc:
        if exc.line is not None or len(text) > _LINE_LOOKUP_MAX:
            raise
        try:
            positioned = _parse_with_positions(text)
            return from_data(positioned, source, base_dir)
        except SpecError as located:
            raise located from None


def load(path: str | Path) -> Spec:
    """Read and validate a mail.yml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("", f"file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError("", f"cannot read {p}: {exc}") from None
    return loads(text, p.name, p.parent.absolute())
