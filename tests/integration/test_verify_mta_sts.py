"""`mailprov verify --only dns.mta_sts` against a real HTTPS policy server on loopback and a fake DNS zone.

One zone holds a domain per case (`CASE.sts.test`: MX, `_mta-sts` TXT, `mta-sts.CASE.sts.test` A on
the policy server's address); one HTTPS server answers each policy host its own way (good, redirect,
wrong Content-Type, mx missing a host, bad max_age, oversized, trickled, 404). Each case runs the real
command in a subprocess with a hang guard and asserts the status and the reason's words.

Needs root (the policy server binds port 443).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_servers import FakeZone
from policy_server import GOOD_POLICY, Answer, PolicyServer
from verify_servers import TestCA

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the policy server binds port 443"),
]

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = "127.79.0.20"
CLOSED = "127.79.0.21"  # nothing listens there: connections are refused
TIMEOUT = 2.0
HASH = "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"


def _policy(mx: str = "mail.{case}.sts.test", **fields: str) -> str:
    return GOOD_POLICY.format(mx=mx) if not fields else "".join(f"{k}: {v}\r\n" for k, v in fields.items())


#: case -> (answer of its policy host, or None for no policy host in DNS; TXT record, or None)
CASES: dict[str, tuple[Answer | None, str | None]] = {
    "good": (Answer(GOOD_POLICY.format(mx="mail.good.sts.test").encode()), "v=STSv1; id=20260101T000000"),
    "wildcard": (Answer(GOOD_POLICY.format(mx="*.wildcard.sts.test").encode()), "v=STSv1; id=w1"),
    "charset": (
        Answer(
            GOOD_POLICY.format(mx="mail.charset.sts.test").encode(),
            headers={"Content-Type": "text/plain; charset=utf-8"},
            length=False,
        ),
        "v=STSv1; id=c1",
    ),
    "redirect": (
        Answer(
            b"", status=301, headers={"Location": "https://mta-sts.good.sts.test/.well-known/mta-sts.txt"}
        ),
        "v=STSv1; id=r1",
    ),
    "html": (
        Answer(GOOD_POLICY.format(mx="mail.html.sts.test").encode(), headers={"Content-Type": "text/html"}),
        "v=STSv1; id=h1",
    ),
    "notype": (Answer(GOOD_POLICY.format(mx="mail.notype.sts.test").encode(), headers={}), "v=STSv1; id=n1"),
    "missingmx": (Answer(GOOD_POLICY.format(mx="other.sts.test").encode()), "v=STSv1; id=m1"),
    "maxage": (
        Answer(b"version: STSv1\r\nmode: enforce\r\nmx: mail.maxage.sts.test\r\nmax_age: 99999999\r\n"),
        "v=STSv1; id=a1",
    ),
    "badmode": (
        Answer(b"version: STSv1\r\nmode: strict\r\nmx: mail.badmode.sts.test\r\nmax_age: 86400\r\n"),
        "v=STSv1; id=b1",
    ),
    "oversized": (
        Answer((GOOD_POLICY.format(mx="mail.oversized.sts.test") + "x: " + "y" * 70000 + "\r\n").encode()),
        "v=STSv1; id=o1",
    ),
    "oversizedstream": (Answer(b"version: STSv1\r\n" + b"z" * 200_000, length=False), "v=STSv1; id=o2"),
    "slow": (Answer(GOOD_POLICY.format(mx="mail.slow.sts.test").encode(), trickle=0.5), "v=STSv1; id=s1"),
    "notfound": (Answer(b"nothing here\n", status=404), "v=STSv1; id=f1"),
    "nohost": (None, "v=STSv1; id=x1"),
    "badid": (Answer(GOOD_POLICY.format(mx="mail.badid.sts.test").encode()), "v=STSv1; id=2026-01-01"),
    "absent": (Answer(GOOD_POLICY.format(mx="mail.absent.sts.test").encode()), None),
    "refused": (Answer(b""), "v=STSv1; id=q1"),
    "secondaddr": (Answer(GOOD_POLICY.format(mx="mail.secondaddr.sts.test").encode()), "v=STSv1; id=t2"),
    "modenone": (Answer(b"version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n"), "v=STSv1; id=z1"),
}


def _zone() -> dict[tuple[str, str], list[str | bytes]]:
    zone: dict[tuple[str, str], list[str | bytes]] = {("mail.sts.test", "A"): [ADDRESS]}
    for case, (answer, txt) in CASES.items():
        domain = f"{case}.sts.test"
        zone[(domain, "MX")] = [f"10 mail.{domain}."]
        zone[(f"mail.{domain}", "A")] = [ADDRESS]
        if txt is not None:
            zone[(f"_mta-sts.{domain}", "TXT")] = [txt]
        if answer is not None:
            zone[(f"mta-sts.{domain}", "A")] = [ADDRESS]
    # The policy host's first address refuses connections: the second one serves the policy.
    zone[("mta-sts.secondaddr.sts.test", "A")] = [CLOSED, ADDRESS]
    zone[("mta-sts.refused.sts.test", "A")] = [CLOSED]
    zone[("wildcard.sts.test", "MX")] = ["10 mx1.wildcard.sts.test.", "20 mx2.wildcard.sts.test."]
    zone[("mx1.wildcard.sts.test", "A")] = [ADDRESS]
    zone[("mx2.wildcard.sts.test", "A")] = [ADDRESS]
    return zone


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The CA, the policy server and the zone, for the whole module."""
    directory = tmp_path_factory.mktemp("mta-sts")
    ca = TestCA(directory)
    names = tuple(f"mta-sts.{case}.sts.test" for case in CASES)
    chain, key = ca.issue("policy", names[0], extra=names[1:])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(chain), str(key))
    answers = {f"mta-sts.{case}.sts.test": answer for case, (answer, _) in CASES.items() if answer}
    with PolicyServer(ADDRESS, context, answers) as server, FakeZone(_zone()) as zone:
        yield {"ca": ca.path, "zone": zone, "server": server}


def verify(env: dict[str, Any], case: str, *extra: str, ca: bool = True) -> tuple[int, dict[str, Any]]:
    """Run `mailprov verify --only dns.mta_sts` for CASE.sts.test; (exit code, the check's result)."""
    args = ["mail.sts.test", "--domain", f"{case}.sts.test", "--resolver", env["zone"].resolver]
    args += ["--only", "dns.mta_sts", "--timeout", f"{TIMEOUT:g}", "--format", "json", *extra]
    if ca:
        args += ["--ca", str(env["ca"])]
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner", "verify", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 10,  # the hang guard: a run that outlives its deadline fails the test
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    return proc.returncode, result


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("good", "pass", "id=20260101T000000; mode enforce, max_age 604800, mx mail.good.sts.test covers"),
        ("wildcard", "pass", "covers mx1.wildcard.sts.test, mx2.wildcard.sts.test"),
        ("charset", "pass", "mode enforce"),
        ("redirect", "fail", "redirects (301 to https://mta-sts.good.sts.test/"),
        ("html", "fail", "Content-Type 'text/html', not text/plain"),
        ("notype", "fail", "no Content-Type"),
        ("missingmx", "fail", "do not cover the MX host(s) mail.missingmx.sts.test"),
        ("maxage", "fail", "max_age 99999999 is over 31557600"),
        ("badmode", "fail", "mode 'strict' is not one of enforce, testing, none"),
        ("oversized", "fail", "over 65536"),
        ("oversizedstream", "fail", "over 65536 bytes"),
        ("slow", "fail", "timed out"),
        ("notfound", "fail", "answered HTTP 404"),
        ("nohost", "fail", "mta-sts.nohost.sts.test has no A or AAAA record"),
        ("badid", "fail", "invalid id='2026-01-01'"),
        ("absent", "warn", "no _mta-sts TXT record"),
        ("modenone", "warn", "mode none"),
        ("secondaddr", "pass", "mx mail.secondaddr.sts.test covers"),
        ("refused", "fail", "(127.79.0.21:443): connection refused"),
    ],
)
def test_policy_cases(env: dict[str, Any], case: str, status: str, words: str) -> None:
    code, result = verify(env, case, "--allow-loopback")
    assert (result["status"], words in result["reason"]) == (status, True), result["reason"]
    assert code == (1 if status == "fail" else 0)


def test_good_policy_evidence_and_request(env: dict[str, Any]) -> None:
    _, result = verify(env, "good", "--allow-loopback")
    evidence = result["evidence"]["good.sts.test"]
    assert evidence["url"] == "https://mta-sts.good.sts.test/.well-known/mta-sts.txt"
    assert "mx: mail.good.sts.test" in evidence["policy"]
    assert "mta-sts.good.sts.test/.well-known/mta-sts.txt" in env["server"].requests_seen
    # The redirect was not followed: its target was never asked for on behalf of the redirect case.
    before = env["server"].requests_seen.count("mta-sts.good.sts.test/.well-known/mta-sts.txt")
    verify(env, "redirect", "--allow-loopback")
    assert env["server"].requests_seen.count("mta-sts.good.sts.test/.well-known/mta-sts.txt") == before


def test_untrusted_certificate_fails(env: dict[str, Any]) -> None:
    _, result = verify(env, "good", "--allow-loopback", ca=False)
    assert result["status"] == "fail" and "certificate verification failed" in result["reason"]


def test_loopback_policy_host_refused_without_allow_loopback(env: dict[str, Any]) -> None:
    requests = len(env["server"].requests_seen)
    _, result = verify(env, "good")
    assert result["status"] == "fail" and "--allow-loopback" in result["reason"]
    assert len(env["server"].requests_seen) == requests  # nothing connected


def _spec(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"mail-{mode}.yml"
    path.write_text(
        "hostname: mail.good.sts.test\n"
        "domains:\n  - name: good.sts.test\n    mailboxes:\n"
        f'      - address: alice@good.sts.test\n        password_hash: "{HASH}"\n'
        "tls: {mode: acme, email: hostmaster@good.sts.test}\n"
        f"dns: {{mta_sts: {{mode: {mode}, max_age: 604800}}}}\n"
    )
    return path


def test_with_a_spec_the_served_policy_and_id_are_the_specs(env: dict[str, Any], tmp_path: Path) -> None:
    from provisioner import spec as spec_mod

    enforce = _spec(tmp_path, "enforce")
    loaded = spec_mod.load(enforce)
    assert loaded.mta_sts_served
    zone = _zone()
    zone[("_mta-sts.good.sts.test", "TXT")] = [f"v=STSv1; id={loaded.mta_sts_id}"]
    with FakeZone(zone) as own:
        code, result = verify({**env, "zone": own}, "good", "--allow-loopback", "--spec", str(enforce))
        assert (code, result["status"]) == (0, "pass"), result["reason"]
        # The spec says testing: the served policy (enforce) is stale, and so is the published id.
        _, result = verify(
            {**env, "zone": own}, "good", "--allow-loopback", "--spec", str(_spec(tmp_path, "testing"))
        )
        assert result["status"] == "fail"
        assert "serves mode enforce, the spec says testing" in result["reason"]
        assert "the spec's policy has id=" in result["reason"]
    # The module's zone publishes another id for the same policy: republishing is due.
    _, result = verify(env, "good", "--allow-loopback", "--spec", str(enforce))
    assert (
        result["status"] == "fail"
        and f"id=20260101T000000, the spec's policy has id={loaded.mta_sts_id}" in result["reason"]
    )


def test_with_a_spec_that_serves_mta_sts_an_absent_record_fails(env: dict[str, Any], tmp_path: Path) -> None:
    spec = tmp_path / "absent.yml"
    spec.write_text(_spec(tmp_path, "enforce").read_text().replace("good.sts.test", "absent.sts.test"))
    _, result = verify(env, "absent", "--allow-loopback", "--spec", str(spec))
    assert result["status"] == "fail" and "the spec serves MTA-STS for absent.sts.test" in result["reason"]
