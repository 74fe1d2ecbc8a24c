"""The verify runner (timeouts, skips, exceptions), the reports (JSON keys, JUnit validity) and the catalog.

Fake checks here only exercise the runner's plumbing; real checks are tested against real servers in
tests/integration/test_verify_servers.py.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from provisioner.checks import CATALOG, ordered_catalog
from provisioner.checks.base import Check, Result, Skip, aggregate, select, worst
from provisioner.checks.context import Context, Options
from provisioner.checks.parsers import LookupFailed
from provisioner.checks.report import to_dict, to_json, to_junit, to_table
from provisioner.checks.runner import Report, run, run_one

CATALOG_IDS = [
    "dns.mx",
    "dns.null_mx",
    "dns.a",
    "dns.ptr",
    "dns.spf",
    "dns.dmarc",
    "dns.dkim",
    "dns.mta_sts",
    "dns.tlsrpt",
    "smtp.port.25",
    "smtp.port.587",
    "smtp.port.465",
    "smtp.banner",
    "smtp.ehlo",
    "smtp.starttls.25",
    "smtp.starttls.587",
    "smtp.implicit_tls.465",
    "smtp.auth_after_tls",
    "smtp.open_relay",
    "smtp.postmaster",
    "smtp.unknown_user",
    "smtp.auth",
    "smtp.roundtrip",
    "smtp.sender_ownership",
    "smtp.spoof_local_sender",
    "smtp.helo_own_name",
    "smtp.spam_filter",
    "tls.versions",
    "tls.cert.name",
    "tls.cert.chain",
    "tls.cert.expiry",
    "tls.cert.key",
    "tls.cert.same",
    "tls.cert.disk",
    "tls.ciphers",
    "imap.port.143",
    "imap.port.993",
    "imap.login_disabled",
    "imap.login",
    "imap.quota",
    "pop3.port.110",
    "pop3.port.995",
    "pop3.login",
    "sieve.managesieve",
    "host.packages",
    "host.services",
    "host.listening",
    "host.postfix_check",
    "host.doveconf",
    "host.file_modes",
    "host.queue",
    "host.firewall",
    "host.selinux",
    "host.drift",
]


def test_catalog_has_every_id_of_checks_md() -> None:
    assert [c.id for c in ordered_catalog()] == CATALOG_IDS


def test_catalog_metadata() -> None:
    for check in CATALOG.values():
        assert check.title and check.fn.__doc__, check.id
        assert check.severity in ("high", "medium", "low")
    assert CATALOG["smtp.unknown_user"].needs == ("net",)  # runs without a spec (issue 9)
    assert CATALOG["smtp.sender_ownership"].needs == ("net", "creds")
    assert CATALOG["smtp.roundtrip"].needs == ("net", "creds")
    assert CATALOG["dns.dkim"].needs == ("dns", "spec")
    assert CATALOG["host.drift"].needs == ("ssh", "spec")
    assert CATALOG["tls.cert.disk"].needs == ("net", "ssh")  # skipped with the reason without host access
    assert CATALOG["dns.mta_sts"].needs == ("dns", "net")  # fetches the policy over HTTPS
    assert CATALOG["imap.quota"].needs == ("net", "creds")
    assert CATALOG["sieve.managesieve"].needs == ("net",)  # logins only with credentials
    assert CATALOG["smtp.spam_filter"].needs == ("net",)  # runs only when antispam is expected


def test_select_patterns() -> None:
    assert [c.id for c in select(["smtp.port.*"])] == ["smtp.port.25", "smtp.port.587", "smtp.port.465"]
    assert {c.id for c in select(["tls"])} == {i for i in CATALOG_IDS if i.startswith("tls.")}
    assert [c.id for c in select(["dns.spf", " ", "dns.spf"])] == ["dns.spf"]
    assert len(select(["tls.cert"])) == 6
    with pytest.raises(ValueError, match="nope"):
        select(["dns.spf", "nope"])


def test_worst_and_aggregate() -> None:
    assert worst([]) == "pass"
    assert worst(["pass", "skip", "warn"]) == "warn"
    assert worst(["warn", "fail", "pass"]) == "fail"
    result = aggregate(
        "x", {"a.org": ("pass", "fine"), "b.org": ("fail", "broken"), "c.org": ("fail", "gone")}
    )
    assert (result.status, result.reason) == ("fail", "b.org: broken; c.org: gone")
    assert aggregate("x", {"a.org": ("warn", "meh")}).reason == "meh"
    assert aggregate("x", {}).status == "skip"


def _fake(id: str, fn: object, needs: tuple[str, ...] = (), scale: float = 1.0) -> Check:
    return Check(id, f"fake {id}", id.split(".")[0], needs, "medium", fn, scale)  # type: ignore[arg-type]


def ctx(**kwargs: object) -> Context:
    return Context(Options(target="192.0.2.1", **kwargs))  # type: ignore[arg-type]


def test_run_one_turns_exceptions_into_results() -> None:
    def boom(_: Context) -> Result:
        raise RuntimeError("kaput\nsecond line")

    def skip(_: Context) -> Result:
        raise Skip("not today")

    def dns_down(_: Context) -> Result:
        raise LookupFailed("127.0.0.1:53 did not answer")

    def refused(_: Context) -> Result:
        raise ConnectionRefusedError(111, "Connection refused")

    assert run_one(_fake("x.boom", boom), ctx()).reason == "kaput second line"
    assert run_one(_fake("x.boom", boom), ctx()).status == "fail"
    assert (run_one(_fake("x.skip", skip), ctx()).status, run_one(_fake("x.skip", skip), ctx()).reason) == (
        "skip",
        "not today",
    )
    assert run_one(_fake("x.dns", dns_down), ctx()).reason == "127.0.0.1:53 did not answer"
    assert run_one(_fake("x.refused", refused), ctx()).reason == "connection refused"


def test_unmet_needs_skip_without_running() -> None:
    ran = []

    def fn(_: Context) -> Result:
        ran.append(1)
        return Result("x", "pass", "ok")

    checks = [
        _fake("x.ssh", fn, ("ssh",)),
        _fake("x.spec", fn, ("spec",)),
        _fake("x.creds", fn, ("net", "creds")),
    ]
    report = run(checks, ctx())
    assert [r.status for r in report.results] == ["skip", "skip", "skip"]
    assert "--ssh" in report.results[0].reason and "--spec" in report.results[1].reason
    assert "--password-file" in report.results[2].reason
    assert ran == []


def test_runner_timeout_costs_one_timeout_not_a_hang() -> None:
    release = threading.Event()
    together = threading.Barrier(5)
    met = threading.Event()

    def hang(_: Context) -> Result:
        # All five hanging checks are running at once (concurrency), then block past their deadline.
        together.wait(10)
        met.set()
        release.wait(30)
        return Result("x.hang", "pass", "late")

    def quick(_: Context) -> Result:
        return Result("x.quick", "pass", "fast")

    checks = [_fake(f"x.hang{i}", hang) for i in range(5)] + [_fake("x.quick", quick)]
    report = run(checks, ctx(timeout=0.3))
    release.set()
    statuses = {r.id: (r.status, r.reason) for r in report.results}
    assert statuses["x.quick"] == ("pass", "fast")
    assert all(statuses[f"x.hang{i}"] == ("fail", "timed out after 0.3s") for i in range(5))
    assert met.wait(10)


def test_runner_keeps_catalog_order_and_scales_timeouts() -> None:
    def slow(_: Context) -> Result:
        time.sleep(0.4)
        return Result("x.slow", "pass", "slow but allowed")

    report = run(
        [_fake("x.slow", slow, scale=10), _fake("x.other", lambda _: Result("x", "warn", "w"))],
        ctx(timeout=0.1),
    )
    assert [(r.id, r.status) for r in report.results] == [("x.slow", "pass"), ("x.other", "warn")]


def test_runner_starts_long_waiting_checks_first_and_reports_in_order() -> None:
    started: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> object:
        def fn(_: Context) -> Result:
            with lock:
                started.append(name)
            return Result(name, "pass", "ok")

        return fn

    checks = [_fake(f"x.quick{i}", record(f"x.quick{i}")) for i in range(20)]
    checks.insert(15, _fake("x.login", record("x.login"), scale=3))
    report = run(checks, ctx(timeout=2))
    assert started[0] == "x.login"
    assert [r.id for r in report.results] == [c.id for c in checks]


def test_verifying_context_is_built_once_per_trust_store() -> None:
    from provisioner.checks.context import verifying_context

    assert verifying_context() is verifying_context()
    assert verifying_context().verify_mode == ssl.CERT_REQUIRED


def test_memo_shares_work_and_errors() -> None:
    c = ctx()
    calls = []

    def work() -> int:
        calls.append(1)
        time.sleep(0.05)
        return 42

    threads = [threading.Thread(target=lambda: c.memo("k", work)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.memo("k", work) == 42 and calls == [1]

    def fail() -> int:
        calls.append(2)
        raise LookupFailed("dead")

    for _ in range(3):
        with pytest.raises(LookupFailed):
            c.memo("bad", fail)
    assert calls.count(2) == 1


def sample_report() -> Report:
    return Report(
        "mail.example.org",
        [
            Result("dns.mx", "pass", "10 mail.example.org", {"example.org": ["10 mail.example.org"]}, 0.01),
            Result("dns.dmarc", "warn", "p=none: receivers only monitor", ["v=DMARC1; p=none"], 0.01),
            Result(
                "smtp.open_relay",
                "fail",
                "open relay: RCPT TO:<x@example.net> -> 250 2.1.5 Ok",
                "250 Ok",
                0.2,
            ),
            Result("host.drift", "skip", "needs --spec to know what to expect", None, 0.0),
        ],
        1.25,
    )


def test_json_report_keys_are_stable() -> None:
    data = json.loads(to_json(sample_report()))
    assert list(data) == ["target", "results", "summary", "duration"]
    assert data["target"] == "mail.example.org"
    assert data["summary"] == {"pass": 1, "warn": 1, "fail": 1, "skip": 1}
    first = data["results"][0]
    assert list(first)[:4] == ["id", "status", "reason", "evidence"]
    assert (
        first["area"] == "dns" and first["title"] == CATALOG["dns.mx"].title and first["severity"] == "high"
    )
    assert to_dict(sample_report())["results"][3]["evidence"] is None


def test_junit_is_valid_and_marks_failures_and_skips() -> None:
    root = ET.fromstring(to_junit(sample_report()).split("\n", 1)[1])
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["smtp.open_relay"].get("classname") == "smtp"
    failure = cases["smtp.open_relay"].find("failure")
    assert failure is not None and failure.get("message", "").startswith("open relay")
    skipped = cases["host.drift"].find("skipped")
    assert skipped is not None and "--spec" in skipped.get("message", "")
    out = cases["dns.dmarc"].find("system-out")
    assert out is not None and (out.text or "").startswith("WARN: p=none")
    assert cases["dns.mx"].find("failure") is None


def test_table_lists_every_check_and_counts() -> None:
    text = to_table(sample_report())
    for check_id in ("dns.mx", "dns.dmarc", "smtp.open_relay", "host.drift"):
        assert check_id in text
    assert "1 pass, 1 warn, 1 fail, 1 skip" in text


HOSTILE = "[/] [link=http://evil.test]x[/link] \x1b]0;title\x07\x1b[2J\x00 \ud800 end"


def test_untrusted_text_stays_text_in_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    from provisioner.checks.report import print_table
    from provisioner.checks.runner import clean

    raw = Result("smtp.banner", "fail", HOSTILE + " x" * 5000, {"banner": HOSTILE, "bytes": b"\x00\xff"})
    report = Report("mail.example.org", [clean(raw)], 0.1)
    reason = report.results[0].reason
    assert "\x1b" not in reason and "\\x1b" in reason and len(reason) <= 1000 and "truncated" in reason
    text = to_table(report, width=300)
    assert "[/]" in text and "[link=http://evil.test]" in text  # literal, not markup
    print_table(report)
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x00" not in printed and "[/]" in printed
    root = ET.fromstring(to_junit(report).split("\n", 1)[1])  # well-formed
    assert "\\x1b" in root.find(".//failure").get("message", "")  # type: ignore[union-attr]
    data = json.loads(to_json(report))
    assert data["results"][0]["evidence"]["banner"].startswith("[/]")


def test_junit_replaces_characters_xml_cannot_hold() -> None:
    report = Report("mail.example.org", [Result("dns.mx", "fail", "bad \x00 \x1b \x0b", "\x07")], 0.1)
    root = ET.fromstring(to_junit(report).split("\n", 1)[1])
    assert root.find(".//failure") is not None


class _Result:
    def __init__(self, rc: int, stderr: str) -> None:
        self.rc, self.stderr, self.stdout = rc, stderr, ""


class _Host:
    """A testinfra host whose SSH fails like ssh does (exit 255 and a message)."""

    def __init__(self, stderr: str) -> None:
        self.stderr = stderr
        self.calls = 0

    def run(self, cmd: str) -> _Result:
        self.calls += 1
        return _Result(255, self.stderr)


@pytest.mark.parametrize(
    ("stderr", "words"),
    [
        ("Host key verification failed.\r\n", ["host key is unknown", "--ssh-config", "known_hosts"]),
        ("root@10.0.0.5: Permission denied (publickey).\r\n", ["authentication refused", "--ssh-key"]),
        ("ssh: connect to host 10.0.0.5 port 22: Connection refused\r\n", ["unreachable", "--ssh"]),
        ("ssh: connect to host 10.0.0.5 port 22: Connection timed out\r\n", ["unreachable"]),
    ],
)
def test_ssh_failure_is_one_clear_line_for_every_host_check(stderr: str, words: list[str]) -> None:
    host = _Host(stderr)
    ctx = Context(Options(target="mail.example.org", host=host, timeout=2))
    report = run([c for c in ordered_catalog() if c.area == "host" and "spec" not in c.needs], ctx)
    reasons = {r.reason for r in report.results}
    assert len(reasons) == 1 and all(r.status == "fail" for r in report.results)
    (reason,) = reasons
    assert all(w in reason for w in words), reason
    assert "CommandResult" not in reason and "\n" not in reason
    assert host.calls == 1  # SSH tried once per run, not once per check
