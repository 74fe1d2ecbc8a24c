"""`mailprov init`: a commented starter mail.yml and an example inventory."""

from __future__ import annotations

from provisioner.errors import SpecError, UsageError
from provisioner.spec import check_domain

# The design example hash (of "example-only", SHA512-CRYPT); the starter file says to replace it.
PLACEHOLDER_HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)

SPEC_TEMPLATE = """\
# mail.yml -- the whole mail service for {domain}, read by mailprov.
# Validate and look at the result:  mailprov render mail.yml --os el9 -o build/ --check
# Records to publish in DNS:         mailprov dns mail.yml --ip SERVER_ADDRESS
# Provision:                         mailprov apply mail.yml -i inventory.ini

# The server's own name: what its banner says, what MX points to, what the certificate covers.
hostname: {hostname}

domains:
  - name: {domain}
    mailboxes:
      # Password hashes only: make one with `mailprov hash-password`.
      # This placeholder hashes "example-only": REPLACE IT before you apply.
      - address: admin@{domain}
        password_hash: "{hash}"
        quota: 2G                # optional; sizes like 500M, 2G
    aliases:
      # alias -> list of targets (mailboxes, other aliases, or outside addresses)
      postmaster@{domain}: [admin@{domain}]
      abuse@{domain}: [admin@{domain}]
    # catch_all: admin@{domain}  # mail to unknown addresses of the domain (invites spam; off by default)

# Certificate: generated on the host (self-signed), or your own files (e.g. from your ACME client):
#   tls: {{mode: files, cert: /path/fullchain.pem, key: /path/privkey.pem}}
tls: {{mode: self-signed}}

# Client submission: 587 with STARTTLS and 465 with implicit TLS; both require authentication.
submission: {{starttls_587: true, implicit_tls_465: true}}
imap: true                       # 143 (STARTTLS) and 993
pop3: true                       # 110 (STARTTLS) and 995
message_size_limit: 50M

# Optional smarthost for all outgoing mail:
# relay_host: {{host: smtp.provider.example, port: 587}}

# DKIM: `mailprov dkim-keygen -o dkim/mail.key` makes a signing key; with private_key set, OpenDKIM signs
# every domain's mail (d=DOMAIN, s=SELECTOR) and `mailprov dns` prints the record to publish.
#   dkim: {{selector: mail, private_key: dkim/mail.key}}
dkim: {{selector: mail}}
dns: {{dmarc_policy: quarantine}} # or reject

# Where the daemons listen: all, loopback-only, or a list of addresses.
network: {{interfaces: all, ipv4: true, ipv6: false}}
"""

INVENTORY_TEMPLATE = """\
# Ansible inventory for `mailprov apply mail.yml -i inventory.ini`.
# Targets use their system Python; mailprov needs root (become) on them.
[mail]
{hostname} ansible_user=root ansible_python_interpreter=/usr/bin/python3

# For a host reached through a sudo user instead:
# {hostname} ansible_user=admin ansible_become=true ansible_python_interpreter=/usr/bin/python3
"""


def check_name(value: str, option: str) -> str:
    """DOMAIN or --hostname as the spec's domain rule takes it (A-labels), or a UsageError naming `option`."""
    # Checked before the spec's rule, which the value must pass unchanged: no stripping of spaces or
    # line breaks (printable excludes control, format and separator characters; ' ' is refused apart).
    bad = next((char for char in value if char == " " or not char.isprintable()), None)
    if not value or bad:
        what = f" (it contains {bad!r})" if bad else ""
        raise UsageError(f"{option}: expected a domain name such as example.org, got {value!r}{what}")
    try:
        return check_domain(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def starter_files(domain: str, hostname: str | None = None) -> tuple[str, str]:
    """The starter mail.yml and inventory for DOMAIN (and --hostname), proven to load as a spec.

    Refusals are UsageError naming DOMAIN or --hostname; nothing the command writes can fail to load.
    """
    from provisioner import spec as spec_mod

    name = check_name(domain, "DOMAIN")
    host = check_name(hostname, "--hostname") if hostname is not None else f"mail.{name}"
    text = SPEC_TEMPLATE.format(domain=name, hostname=host, hash=PLACEHOLDER_HASH)
    try:
        model = spec_mod.loads(text)
    except SpecError as exc:
        option = "--hostname" if exc.field == "hostname" and hostname is not None else "DOMAIN"
        raise UsageError(f"{option}: the starter spec would not load: {exc.message}") from None
    if model.hostname != host or list(model.domain_names) != [name]:
        raise UsageError(f"DOMAIN: the starter spec would not say {name!r} (got {model.domain_names})")
    return text, INVENTORY_TEMPLATE.format(hostname=host)


def starter_spec(domain: str, hostname: str | None = None) -> str:
    """The commented starter mail.yml for a domain (UsageError naming DOMAIN/--hostname if refused)."""
    return starter_files(domain, hostname)[0]


def starter_inventory(domain: str, hostname: str | None = None) -> str:
    """The example inventory for a domain's mail host (UsageError naming DOMAIN/--hostname if refused)."""
    return starter_files(domain, hostname)[1]
