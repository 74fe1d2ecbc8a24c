"""The grammar of every place a spec value lands, as whole-string checks.

Each function takes untrusted input and returns the normalised value or raises ValueError with the expected
form. They match the value as a whole (``re.fullmatch``), never with a bare ``$`` (which matches before a
trailing newline), and every pattern is linear: no nested or adjacent unbounded quantifiers over the same
characters, so no input makes them backtrack. The rules are the narrower of what Postfix and Dovecot accept,
because one value usually lands in both (a mailbox address is a Postfix table key and a Dovecot login).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: never valid in any field.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
#: Mailbox local parts: Dovecot's default auth_username_chars (a-z 0-9 . - _ @) in dot-atom form; a login
#: with any other character is refused by Dovecot, so such a mailbox could never read its mail. '+' is
#: Postfix's recipient_delimiter (user+tag), never part of a mailbox name.
_MAILBOX_LOCAL_RE = re.compile(r"[a-z0-9_][a-z0-9_-]*(?:\.[a-z0-9_-]+)*")
#: Other local parts (aliases, outside targets, report addresses): dot-atom without the characters that
#: route or mean something to Postfix or Dovecot (% ! / | # : , " \\ and whitespace), not starting with '-'
#: (Postfix's allow_min_user=no refuses those).
_ATEXT = r"a-z0-9&'*+=?^_`{}~$-"
_LOCAL_RE = re.compile(rf"[a-z0-9&'*+=?^_`{{}}~$][{_ATEXT}]*(?:\.[{_ATEXT}]+)*")
_SIZE_RE = re.compile(r"([0-9]{1,19}) ?([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SELECTOR_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

#: Bounds of a value that fits every program the spec feeds (ints in YAML can be arbitrarily large).
MAX_INT = 2**53


def no_control(text: str, what: str = "value") -> str:
    """Refuse any control character (line breaks, tabs, NUL, ESC, ...) in text."""
    if text.isascii() and text.isprintable():  # the common case, decided in C
        return text
    match = _CONTROL_RE.search(text)
    if match:
        raise ValueError(
            f"{what} contains a control character ({match.group()!r}); expected printable text on one line"
        )
    return text


def text_value(value: Any, what: str = "value") -> str:
    """A string value, stripped, with no control characters; anything else is refused (no str(None))."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return no_control(value, what).strip()


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_domain(value: Any) -> str:
    """Return the domain name in lower-case A-label form, or raise ValueError with the expected form.

    Internationalised names (U-labels such as bücher.example) are converted to their A-labels
    (xn--bcher-kva.example): that is the form Postfix, Dovecot and DNS zone files take.
    """
    return _check_domain_text(text_value(value, "domain name"))


@functools.lru_cache(maxsize=65536)
def _check_domain_text(value: str) -> str:
    expected = f"expected a fully qualified domain name such as example.org, got {value!r}"
    name = value.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > 253:
        raise ValueError(f"{expected} (longer than 253 characters)")
    if not name.isascii():
        name = _to_alabels(name, expected)
    if not _DOMAIN_RE.fullmatch(name) or name.rsplit(".", 1)[-1].isdigit():
        raise ValueError(expected)
    for label in name.split("."):
        if label.startswith("xn--"):
            _check_alabel(label, expected)
    return name


def _to_alabels(name: str, expected: str) -> str:
    import idna

    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise ValueError(f"{expected} (not a valid internationalised domain name)") from None


def _check_alabel(label: str, expected: str) -> None:
    import idna

    try:
        idna.decode(label)
    except (idna.IDNAError, UnicodeError, ValueError):
        raise ValueError(f"{expected} (label {label!r} is not a valid A-label)") from None


def split_address(value: Any, what: str = "mail address") -> tuple[str, str]:
    """(local, domain) of an address, lower-cased; the domain checked; the local part not yet."""
    text = text_value(value, what).lower()
    expected = f"expected a {what} such as user@example.org, got {value!r}"
    local, sep, domain = text.rpartition("@")
    if not sep or not local or len(local) > 64:
        raise ValueError(expected)
    try:
        domain = check_domain(domain)
    except ValueError:
        raise ValueError(expected) from None
    return local, domain


def check_address(value: Any) -> str:
    """A mail address as Postfix tables and DNS report URIs take it (alias keys and targets, rua)."""
    local, domain = split_address(value)
    if not _LOCAL_RE.fullmatch(local):
        raise ValueError(
            f"expected a mail address such as user@example.org, got {value!r} (the local part may use"
            " letters, digits and . _ - + = & ' * ? ^ ` { } ~ $, not starting with - or .)"
        )
    return f"{local}@{domain}"


def check_mailbox_address(value: Any) -> str:
    """A mailbox address: also a Dovecot login name, so only letters, digits, '.', '-' and '_'."""
    local, domain = split_address(value, "mailbox address")
    if not _MAILBOX_LOCAL_RE.fullmatch(local):
        raise ValueError(
            f"expected a mailbox address such as alice@example.org, got {value!r} (a mailbox is a Dovecot"
            " login: its local part may use letters, digits, '.', '-' and '_' only, not starting with"
            " '-' or '.'; use an alias for other forms)"
        )
    return f"{local}@{domain}"


def domain_of(address: str) -> str:
    """The domain part of a validated address."""
    return address.rpartition("@")[2]


def local_of(address: str) -> str:
    """The local part of a validated address."""
    return address.rpartition("@")[0]


def check_selector(value: Any) -> str:
    """A DKIM selector: one DNS label."""
    text = text_value(value, "selector").lower()
    if not _SELECTOR_RE.fullmatch(text):
        raise ValueError(f"expected a DNS label such as mail or s2024, got {value!r}")
    return text


def parse_size(value: Any, minimum: int = 0, maximum: int = 1024**5) -> int:
    """Parse a size such as 50M, 2G or 1024 (bytes, binary units) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size such as 50M or 2G, got {_type_name(value)}")
    nbytes = value if isinstance(value, int) else _parse_size_text(text_value(value, "size"))
    if nbytes < minimum or nbytes > maximum:
        raise ValueError(
            f"expected a size from {format_size(minimum)} to {format_size(maximum)}, got {value!r}"
        )
    return nbytes


@functools.lru_cache(maxsize=4096)
def _parse_size_text(value: str) -> int:
    # Cached: large specs repeat the same few quota strings thousands of times.
    match = _SIZE_RE.fullmatch(value) if len(value) <= 32 else None
    if not match:
        raise ValueError(f"expected a size such as 50M, 2G or a number of bytes, got {value[:40]!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_size(nbytes: int) -> str:
    """Render bytes with the largest exact binary unit (2147483648 -> 2G), as Dovecot and humans read it."""
    for suffix, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("k", 1024)):
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return f"{nbytes}B"


def check_ip(value: Any, what: str = "IP address") -> str:
    """A unicast IP address in canonical form, without a zone id (%eth0), which no target file takes."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected an {what} such as 192.0.2.25 or 2001:db8::25, got {_type_name(value)}")
    text = text_value(value, what)
    expected = f"expected an {what} such as 192.0.2.25 or 2001:db8::25, got {value!r}"
    if "%" in text:
        raise ValueError(f"{expected} (zone ids such as %eth0 are not accepted)")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(expected) from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{expected} (an unspecified or multicast address cannot be used here)")
    return str(address)


def check_ip_list(items: Any, what: str = "IP address") -> list[str]:
    """A non-empty list of unique IP addresses (check_ip each)."""
    if not isinstance(items, list) or not items:
        raise ValueError(f"expected a non-empty list of {what}es such as [192.0.2.25]")
    out: list[str] = []
    for item in items:
        address = check_ip(item, what)
        if address in out:
            raise ValueError(f"{address} is listed twice")
        out.append(address)
    return out


def check_network(value: Any, what: str = "network") -> str:
    """An IP address or CIDR network (192.0.2.0/24, 2001:db8::/32) in canonical form, without zone ids."""
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address or network such as 192.0.2.0/24, got {_type_name(value)}")
    text = text_value(value, what)
    expected = f"expected an IP address or network such as 192.0.2.0/24, got {value!r}"
    if "%" in text or len(text) > 64:
        raise ValueError(expected)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(expected) from None
    return str(network)


_DURATION_RE = re.compile(r"([1-9][0-9]{0,6})([smhdw]?)")


def check_duration(value: Any, what: str = "duration") -> str:
    """A duration as fail2ban reads it: seconds, or a number with s, m, h, d or w (10m, 1h, 2d)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a duration such as 600, 10m or 1h, got {_type_name(value)}")
    text = str(value) if isinstance(value, int) else text_value(value, what)
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"expected a duration such as 600, 10m or 1h, got {value!r}")
    return text


def check_sender_grant(value: Any) -> str:
    """A send_as grant: an address, or @domain for every address of a domain."""
    if isinstance(value, str) and value.strip().startswith("@"):
        return "@" + check_domain(value.strip()[1:])
    return check_address(value)


_SASL_USER_RE = re.compile(r"[!-9;-~]{1,256}")


def check_sasl_username(value: Any) -> str:
    """A SASL login for a relay: printable, no spaces and no ':' (the sasl_passwd user:password separator)."""
    text = text_value(value, "username")
    if not _SASL_USER_RE.fullmatch(text):
        raise ValueError(
            f"expected a login name without spaces or ':' such as user@example.org, got {value!r}"
        )
    return text


_URL_PATH_RE = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*")


def check_https_url(value: Any, what: str = "URL") -> str:
    """An https URL (an ACME directory): host name or IP, optional port, a plain path; nothing else."""
    from urllib.parse import urlsplit

    text = text_value(value, what)
    expected = f"expected an https URL such as https://acme.example.org/directory, got {value!r}"
    if len(text) > 2048 or " " in text:
        raise ValueError(expected)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(expected) from None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise ValueError(expected + " (https only, no user or password)")
    if parts.fragment or not _URL_PATH_RE.fullmatch(parts.path):
        raise ValueError(expected)
    if port == 0:
        raise ValueError(expected)
    try:
        check_host(parts.hostname)
    except ValueError:
        raise ValueError(expected + " (the host must be a domain name or an IP address)") from None
    return text


def check_host(value: Any) -> str:
    """A host name or an IP address (relay hosts)."""
    text = text_value(value, "host")
    try:
        return check_ip(text)
    except ValueError:
        pass
    try:
        return check_domain(text)
    except ValueError:
        raise ValueError(
            f"expected a host name such as smtp.example.org or an IP address, got {value!r}"
        ) from None


#: Directories the mail store must never be, nor contain, nor (for the first group) sit below.
_SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var/run",
    "/var/lock",
    "/var/tmp",
    "/var/log",
    "/var/cache",
    "/var/lib",
    "/var/spool",
    "/var/backups",
    "/var/empty",
    "/var/db",
    "/var/lib/dovecot",
    "/var/spool/postfix",
    "/selinux",
    "/snap",
    "/lost+found",
)
#: Shared parents: a dedicated directory below them is fine, they themselves are not.
_SHARED_PARENTS = (
    "/",
    "/var",
    "/srv",
    "/home",
    "/opt",
    "/mnt",
    "/media",
    "/data",
    "/var/mail",
    "/var/opt",
    "/var/www",
    "/usr/local",
)
_PATH_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_mail_root(value: Any) -> str:
    """The mail store: a dedicated absolute directory that apply may own (chown vmail, relabel).

    Never /, a system directory, a parent of one, or anything below the system trees (/etc, /usr,
    /var/spool/postfix, ...). Components are plain names (no '.', '..', '%' or spaces).
    """
    text = text_value(value, "mail_root")
    expected = f"expected a dedicated absolute directory such as /var/vmail, got {value!r}"
    if not text.startswith("/") or len(text) > 1024:
        raise ValueError(expected)
    parts = text.rstrip("/").split("/")[1:]
    if not parts or any(not _PATH_COMPONENT_RE.fullmatch(p) for p in parts):
        raise ValueError(f"{expected} (each part a plain name: letters, digits, '.', '_', '-')")
    path = "/" + "/".join(parts)
    for system in _SYSTEM_TREES:
        if path == system or path.startswith(system + "/") or system.startswith(path + "/"):
            raise ValueError(f"{expected} ({path} is, or is inside or above, the system directory {system})")
    if path in _SHARED_PARENTS:
        raise ValueError(
            f"{expected} ({path} is shared by other software; use a directory of its own below it)"
        )
    return path


# ---------------------------------------------------------------- password hashes

_B64 = "A-Za-z0-9+/"
_CRYPT64 = "./0-9A-Za-z"
#: Per scheme, the exact form of the hash part after {SCHEME}: alphabets and lengths, so no ':' (the
#: passwd-file's field separator), whitespace or a second line can ever be part of one.
_HASH_FORMS: dict[str, re.Pattern[str]] = {
    "SHA512-CRYPT": re.compile(
        rf"\$6\$(?:rounds=[1-9][0-9]{{3,8}}\$)?[{_CRYPT64}]{{1,16}}\$[{_CRYPT64}]{{86}}"
    ),
    "SHA256-CRYPT": re.compile(
        rf"\$5\$(?:rounds=[1-9][0-9]{{3,8}}\$)?[{_CRYPT64}]{{1,16}}\$[{_CRYPT64}]{{43}}"
    ),
    "BLF-CRYPT": re.compile(rf"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\$[{_CRYPT64}]{{53}}"),
    "ARGON2I": re.compile(
        rf"\$argon2i\$v=19\$m=[0-9]{{1,10}},t=[0-9]{{1,10}},p=[0-9]{{1,3}}\$[{_B64}]{{11,88}}\$[{_B64}]{{22,172}}"
    ),
    "ARGON2ID": re.compile(
        rf"\$argon2id\$v=19\$m=[0-9]{{1,10}},t=[0-9]{{1,10}},p=[0-9]{{1,3}}\$[{_B64}]{{11,88}}\$[{_B64}]{{22,172}}"
    ),
    # base64 of the 64-byte SHA-512 digest followed by a salt of 1..64 bytes
    "SSHA512": re.compile(rf"[{_B64}]{{88,172}}={{0,2}}"),
    # Dovecot's PBKDF2: $1$SALT$ROUNDS$HEX(SHA-1 key)
    "PBKDF2": re.compile(r"\$1\$[A-Za-z0-9./]{1,64}\$[1-9][0-9]{0,8}\$[0-9a-f]{40}"),
}
#: Hash schemes Dovecot verifies that are not reversible or trivially crackable.
HASH_SCHEMES = tuple(_HASH_FORMS)
_CRYPT_PREFIXES = {
    "$6$": "SHA512-CRYPT",
    "$5$": "SHA256-CRYPT",
    "$2y$": "BLF-CRYPT",
    "$2b$": "BLF-CRYPT",
    "$2a$": "BLF-CRYPT",
    "$argon2id$": "ARGON2ID",
    "$argon2i$": "ARGON2I",
}
_SCHEME_RE = re.compile(r"\{([A-Z0-9.-]{1,32})\}")
_HASH_HINT = "run `mailprov hash-password`; plaintext passwords are refused"


def check_password_hash(value: Any) -> str:
    """A Dovecot password hash as {SCHEME}hash, each scheme's hash in its exact form."""
    if not isinstance(value, str):
        raise ValueError(
            f"expected a password hash such as {{SHA512-CRYPT}}$6$... ({_HASH_HINT}), got {_type_name(value)}"
        )
    text = no_control(value, "password_hash").strip()
    for prefix, scheme in _CRYPT_PREFIXES.items():
        if text.startswith(prefix):
            text = f"{{{scheme}}}{text}"
            break
    scheme_match = _SCHEME_RE.match(text)
    if not scheme_match:
        raise ValueError(f"expected a password hash such as {{SHA512-CRYPT}}$6$... ({_HASH_HINT})")
    scheme = scheme_match.group(1)
    form = _HASH_FORMS.get(scheme)
    if form is None:
        raise ValueError(
            f"hash scheme {{{scheme}}} is not accepted; expected one of "
            + ", ".join("{" + s + "}" for s in HASH_SCHEMES)
            + f" ({_HASH_HINT})"
        )
    body = text[scheme_match.end() :]
    if len(body) > 512 or not form.fullmatch(body):
        raise ValueError(
            f"not a well-formed {{{scheme}}} hash (wrong characters or length); expected the exact output"
            f" of a {scheme} hasher ({_HASH_HINT})"
        )
    if scheme == "SSHA512":
        import base64
        import binascii

        try:
            if len(base64.b64decode(body, validate=True)) <= 64:
                raise ValueError("short")
        except (binascii.Error, ValueError):
            raise ValueError(
                f"not a well-formed {{SSHA512}} hash (base64 of digest + salt) ({_HASH_HINT})"
            ) from None
    return text
