"""The DNS records a spec's domains must publish: one source of truth with the render.

`records()` is pure and returns data; `to_zone()` and `to_json()` format it. The lab DNS server
serves exactly these records, and `mailprov verify` checks them.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner.errors import UsageError
from provisioner.spec import Spec, public_key_b64

DEFAULT_TTL = 3600


@dataclass(frozen=True)
class Record:
    """One resource record. `name` is an FQDN without the trailing dot; TXT values are unquoted text."""

    name: str
    type: str
    value: str
    ttl: int = DEFAULT_TTL

    def zone_line(self) -> str:
        """The record in zone-file syntax (long TXT split into 255-byte strings)."""
        value = self.value
        if self.type == "TXT":
            value = " ".join(f'"{chunk}"' for chunk in split_txt(value))
        elif self.type in ("MX", "PTR", "CNAME", "NS"):
            value = value if value.endswith(".") else value + "."
        return f"{self.name}.\t{self.ttl}\tIN\t{self.type}\t{value}"


def split_txt(text: str, size: int = 255) -> list[str]:
    """Split TXT text into character-strings of at most `size` bytes (RFC 1035 limit)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return [escaped[i : i + size] for i in range(0, len(escaped), size)] or [""]


def reverse_name(address: str) -> str:
    """The PTR owner name of an IPv4 or IPv6 address (without trailing dot)."""
    return ipaddress.ip_address(address).reverse_pointer


def dkim_public_key_b64(path: Path) -> str:
    """The base64 key material for p= from a PEM public key or an existing 'v=DKIM1; ... p=...' text.

    Kept for callers with a bare path; a loaded spec's key is `spec.dkim.public_key_b64` (from the
    private or the public key), which is what records() and verify use.
    """
    try:
        return public_key_b64(path)
    except ValueError as exc:
        raise UsageError(f"dkim.public_key: {exc}") from None


def check_server_address(value: str, version: int, label: str) -> str:
    """The mail server's address for an A (version 4) or AAAA (6) record, canonical; UsageError naming label.

    Refused: another IP version, zone ids (fe80::1%eth0), and addresses no other host can reach the server
    at (unspecified, loopback, link-local, multicast, broadcast, IPv4-mapped IPv6).
    """
    example = "192.0.2.25" if version == 4 else "2001:db8::25"
    expected = f"expected the server's IPv{version} address such as {example}"
    if not isinstance(value, str) or "%" in value:
        raise UsageError(f"{label}: {expected} (no zone id such as %eth0), got {value!r}")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise UsageError(f"{label}: {expected}, got {value!r}") from None
    if address.version != version:
        other = "--ipv6" if address.version == 6 else "--ip"
        raise UsageError(f"{label}: {expected}, got the IPv{address.version} address {value!r} (use {other})")
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("broadcast", address == ipaddress.IPv4Address("255.255.255.255")),
        ("IPv4-mapped", isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None),
    )
    for kind, found in kinds:
        if found:
            raise UsageError(
                f"{label}: {expected} that other hosts reach it at, got the {kind} address {value!r}"
            )
    return str(address)


def records(spec: Spec, ipv4: str | None = None, ipv6: str | None = None) -> list[Record]:
    """Every record to publish for the spec; A/AAAA/PTR only when the server's addresses are given."""
    if ipv4 is not None:
        ipv4 = check_server_address(ipv4, 4, "--ip")
    if ipv6 is not None:
        ipv6 = check_server_address(ipv6, 6, "--ipv6")
    out: list[Record] = []
    host = spec.hostname
    # The mta-sts names (policy host) point at this server, which serves the policy over HTTPS.
    web_names = [host, *(spec.mta_sts_names if spec.mta_sts_served else [])]
    web_names += [n for n in spec.tls.extra_names if n not in web_names]
    for name in web_names:
        if ipv4:
            out.append(Record(name, "A", ipv4))
        if ipv6:
            out.append(Record(name, "AAAA", ipv6))
    # Each server's HELO name gets its own SPF so that bounces (empty MAIL FROM) are authorised too.
    mx_hosts = spec.mx_hosts
    for _, server in mx_hosts:
        out.append(Record(server, "TXT", "v=spf1 a -all"))
    dkim_key = spec.dkim.public_key_b64
    for domain in spec.domain_names:
        # MX 10 for the primary (hostname), then 20, 30, ... for the backup_mx hosts, in spec order.
        for preference, server in mx_hosts:
            out.append(Record(domain, "MX", f"{preference} {server}"))
        out.append(Record(domain, "TXT", "v=spf1 mx -all"))
        rua = spec.dns.dmarc_rua or f"postmaster@{domain}"
        out.append(
            Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={spec.dns.dmarc_policy}; rua=mailto:{rua}")
        )
        if dkim_key:
            out.append(
                Record(f"{spec.dkim.selector}._domainkey.{domain}", "TXT", f"v=DKIM1; k=rsa; p={dkim_key}")
            )
        if spec.mta_sts_served:
            out.append(Record(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={spec.mta_sts_id}"))
        tls_rua = spec.dns.tlsrpt_rua or f"postmaster@{domain}"
        out.append(Record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{tls_rua}"))
    if ipv4:
        out.append(Record(reverse_name(ipv4), "PTR", host))
    if ipv6:
        out.append(Record(reverse_name(ipv6), "PTR", host))
    return out


def advice(spec: Spec, ipv4: str | None, ipv6: str | None) -> list[str]:
    """Things to do that are not plain records in the domains' zones."""
    notes = []
    if not (ipv4 or ipv6):
        notes.append(f"publish an A (and AAAA) record for {spec.hostname}: pass --ip ADDR to include it")
    for _, backup in spec.mx_hosts[1:]:
        notes.append(f"publish A (and AAAA) and PTR records for the backup MX {backup}")
    for addr in (ipv4, ipv6):
        if addr:
            notes.append(
                f"ask the owner of {addr} (your provider) to set its PTR to {spec.hostname} "
                "(forward-confirmed reverse DNS)"
            )
    if spec.dkim.public_key_b64 is None:
        notes.append(
            f'DKIM: no key yet; publish {spec.dkim.selector}._domainkey.DOMAIN TXT "v=DKIM1; k=rsa; p=..." '
            "once you have one (`mailprov dkim-keygen`, then dkim.private_key in mail.yml signs and publishes)"
        )
    elif not spec.dkim.signing:
        notes.append("DKIM: the key is published but nothing signs with it (set dkim.private_key to sign)")
    policy = spec.mta_sts_policy.replace("\r\n", "; ").rstrip("; ")
    if spec.mta_sts_served:
        notes.append(
            f"MTA-STS: this server serves the policy over HTTPS for {', '.join(spec.mta_sts_names)}: {policy}"
        )
    else:
        notes.append(
            "MTA-STS: not published; it needs a certificate for the mta-sts names that senders can verify "
            "(tls.mode acme, or tls.mode files with a certificate covering "
            + ", ".join(spec.mta_sts_names)
            + ")"
        )
    return notes


def to_zone(spec: Spec, ipv4: str | None = None, ipv6: str | None = None) -> str:
    """Records as a zone-file snippet, with advice as comments."""
    lines = [f"; DNS records for {', '.join(spec.domain_names)} (mail host {spec.hostname}) -- by mailprov"]
    lines += [record.zone_line() for record in records(spec, ipv4, ipv6) if record.type != "PTR"]
    ptrs = [record for record in records(spec, ipv4, ipv6) if record.type == "PTR"]
    if ptrs:
        lines.append("; reverse DNS, set by whoever owns the address block:")
        lines += [record.zone_line() for record in ptrs]
    lines += [f"; {note}" for note in advice(spec, ipv4, ipv6)]
    return "\n".join(lines) + "\n"


def to_json(spec: Spec, ipv4: str | None = None, ipv6: str | None = None) -> str:
    """Records as JSON: {"records": [{name, type, value, ttl}], "advice": [...]}."""
    payload = {
        "records": [asdict(record) for record in records(spec, ipv4, ipv6)],
        "advice": advice(spec, ipv4, ipv6),
    }
    return json.dumps(payload, indent=2) + "\n"
