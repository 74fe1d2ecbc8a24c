"""Property-based tests (hypothesis): generated specs with hostile strings in every field are either refused
(SpecError; on the command line exit 2, one line, nothing written) or render a tree whose parsed-back tables
equal the model, for every profile. Never a traceback.

The normal suite runs a bounded, deterministic number of examples (derandomized); `make fuzz` runs the
same properties much longer (HYPOTHESIS_PROFILE=fuzz).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml_rs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from provisioner import profiles, render, spec
from provisioner.cli import app
from provisioner.errors import SpecError

settings.register_profile(
    "ci", max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=5000, derandomize=False, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)
#: Fragments that mean something to one of the files a value lands in.
HOSTILE = [
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x1b[2J",
    "\u2028",
    "\x85",
    ":",
    "::::::",
    ",",
    " ",
    "#",
    "%",
    "%eth0",
    "/",
    "..",
    "|",
    '"',
    "'",
    "\\",
    "{PLAIN}",
    "$",
    "${x}",
    "=",
    "\nrelay_domains = static:ALL",
    "\n}\nauth_debug = yes\n{",
    "@",
    "@@",
    "-",
    ".",
    "*",
    "[",
    "]",
    "{",
    "}",
    "<",
    ">",
    ";",
    "ü",
    "ß",
    "xn--",
    "\ufeff",
    "0" * 300,
]
SAFE_LOCAL = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
SAFE_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


def spiced(base: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A valid-looking value, sometimes with a hostile fragment inserted, or a wrong type."""
    insert = st.tuples(base, st.sampled_from(HOSTILE), st.integers(0, 40)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )
    return st.one_of(
        base,
        base,
        insert,
        st.text(max_size=30),
        st.sampled_from([None, True, 1, 0, -1, 2**70, 1.5, [], {}]),
    )


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    domain = draw(SAFE_LABEL) + ".test"
    boxes = []
    for _ in range(draw(st.integers(1, 3))):
        local = draw(SAFE_LOCAL)
        box: dict[str, Any] = {
            "address": draw(spiced(st.just(f"{local}@{domain}"))),
            "password_hash": draw(spiced(st.just(HASH))),
        }
        if draw(st.booleans()):
            box["quota"] = draw(spiced(st.sampled_from(["1G", "500M", "2048M"])))
        boxes.append(box)
    aliases = {}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(
            spiced(SAFE_LOCAL.map(lambda lp: f"{lp}@{domain}")).filter(
                lambda k: not isinstance(k, list | dict)
            )
        )
        aliases[key] = [
            draw(spiced(st.just(boxes[0]["address"] if isinstance(boxes[0]["address"], str) else "")))
        ]
    data: dict[str, Any] = {
        "hostname": draw(spiced(st.just(f"mail.{domain}"))),
        "domains": [{"name": draw(spiced(st.just(domain))), "mailboxes": boxes, "aliases": aliases}],
    }
    if draw(st.booleans()):
        data["domains"][0]["catch_all"] = draw(spiced(st.just(f"all@{domain}")))
    if draw(st.booleans()):
        data["network"] = {
            "interfaces": [draw(spiced(st.sampled_from(["192.0.2.1", "fe80::1", "2001:db8::5"])))],
            "ipv6": True,
        }
    if draw(st.booleans()):
        data["relay_host"] = {
            "host": draw(spiced(st.just("smtp.relay.test"))),
            "port": draw(st.one_of(st.just(587), spiced(st.just("587")))),
        }
    if draw(st.booleans()):
        data["mail_root"] = draw(spiced(st.sampled_from(["/var/vmail", "/srv/mail", "/etc", "/"])))
    if draw(st.booleans()):
        data["message_size_limit"] = draw(spiced(st.sampled_from(["50M", "10M", "1G"])))
    if draw(st.booleans()):
        data["dns"] = {"dmarc_rua": draw(spiced(st.just(f"dmarc@{domain}")))}
    if draw(st.booleans()):
        data["dkim"] = {
            "selector": draw(spiced(st.just("mail"))),
            "resolvers": [draw(spiced(st.just("10.0.0.53")))],
        }
    if draw(st.booleans()):
        data["imap"] = draw(st.one_of(st.just(True), spiced(st.just("true"))))
    return data


def _no_control(text: str) -> bool:
    return all(ch == "\n" or (ch.isprintable() and ch not in "\u2028\u2029") for ch in text)


@given(specs())
def test_generated_spec_is_refused_or_renders_exactly_the_model(data: dict[str, Any]) -> None:
    try:
        model = spec.from_data(data)
    except SpecError as exc:
        assert "\n" not in str(exc)
        return
    for name in sorted(profiles.PROFILES):
        files = render.render(model, profiles.get(name))  # renderguard parses back inside render
        users = [line for line in files["etc/dovecot/users"].split("\n") if line and not line.startswith("#")]
        assert len(users) == len(model.mailboxes)
        vmailbox = [
            line for line in files["etc/postfix/vmailbox"].split("\n") if line and not line.startswith("#")
        ]
        assert [line.split(" ")[0] for line in vmailbox] == [b.address for b in model.mailboxes]
        for rel, text in files.items():
            assert _no_control(text), f"{rel} holds a control character"


@settings(max_examples=25)
@given(specs())
def test_generated_spec_on_the_command_line(tmp_path_factory: Any, data: dict[str, Any]) -> None:
    directory = Path(tmp_path_factory.mktemp("prop"))
    spec_file = directory / "mail.yml"
    spec_file.write_text(yaml_rs.dumps(data) if data else "", encoding="utf-8")
    out = directory / "build"
    result = CliRunner().invoke(app, ["render", str(spec_file), "--os", "el9", "-o", str(out)])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert not out.exists(), "a refused spec wrote files"
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("mailprov: error: ")
    else:
        assert (out / "etc/postfix/main.cf").is_file()
