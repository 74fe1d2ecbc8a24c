"""Command-line values are checked like spec fields: a bad one is exit 2, one line on stderr naming the option,
no traceback, and nothing written anywhere (the whole scratch area is compared before and after).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner import passwords, spec
from provisioner.cli import app

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
MINIMAL = GOLDEN / "minimal" / "mail.yml"
runner = CliRunner()


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = ("link", os.readlink(path))
        elif path.is_file():
            out[str(path.relative_to(root))] = ("file", path.read_bytes().hex())
        else:
            out[str(path.relative_to(root))] = ("dir", "")
    return out


def refused(argv: list[str], option: str, area: Path, stdin: str | bytes | None = None) -> str:
    """Run the CLI, expect the one-line refusal naming `option`, and that `area` is untouched."""
    before = snapshot(area)
    result = runner.invoke(app, argv, input=stdin)
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stderr.startswith(f"mailprov: error: {option}: "), result.stderr
    assert result.stderr.count("\n") == 1, f"one line: {result.stderr!r}"
    assert "Traceback" not in result.output
    assert snapshot(area) == before, "nothing may be written"
    return result.stderr


# -- init -----------------------------------------------------------------------------------------------

BAD_NAMES = [
    "example.org\n",
    "exa\nmple.org",
    "\nexample.org",
    "example.org\r",
    "example.org\t",
    "example .org",
    " example.org",
    "example.org\x00",
    "example.org\u2028",
    "exa\u200bmple.org",
    "example.org\x1b[31m",
    "",
    "-bad.example.org",
    "bad-.example.org",
    "example",
    "example..org",
    "192.0.2.1",
    "example.org/x",
    "example.org:25",
    "user@example.org",
    "*.example.org",
    "a" * 64 + ".example.org",
    ".".join(["abcdefghij" * 6] * 5) + ".org",
]


def _init_argv(area: Path, *extra: str) -> list[str]:
    return ["init", *extra, "-o", str(area / "mail.yml"), "--inventory", str(area / "inventory.ini")]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_init_refuses_a_bad_domain(name: str, tmp_path: Path) -> None:
    argv = ["init", "-o", str(tmp_path / "mail.yml"), "--inventory", str(tmp_path / "i"), "--", name]
    refused(argv, "DOMAIN", tmp_path)  # `--`: a name starting with "-" is DOMAIN, not an option


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_init_refuses_a_bad_hostname(name: str, tmp_path: Path) -> None:
    refused(_init_argv(tmp_path, "example.org", "--hostname", name), "--hostname", tmp_path)


def test_default_hostname_too_long_names_domain(tmp_path: Path) -> None:
    """DOMAIN itself fits in 253 characters, but mail.DOMAIN (the default --hostname) does not."""
    domain = ".".join(["a" * 62] * 4)[:249] + ".org"
    assert len(domain) <= 253 < len("mail." + domain)
    refused(_init_argv(tmp_path, domain), "DOMAIN", tmp_path)


@pytest.mark.parametrize(
    ("domain", "hostname", "want_domain", "want_host"),
    [
        ("example.org", None, "example.org", "mail.example.org"),
        ("Example.ORG", "MX1.Example.org", "example.org", "mx1.example.org"),
        ("example.org.", None, "example.org", "mail.example.org"),
        ("bücher.example", None, "xn--bcher-kva.example", "mail.xn--bcher-kva.example"),
        ("example.org", "mail.other.example", "example.org", "mail.other.example"),
    ],
)
def test_init_writes_files_that_render(
    domain: str, hostname: str | None, want_domain: str, want_host: str, tmp_path: Path
) -> None:
    extra = ["--hostname", hostname] if hostname else []
    result = runner.invoke(app, _init_argv(tmp_path, domain, *extra))
    assert result.exit_code == 0, result.output
    model = spec.load(tmp_path / "mail.yml")
    assert list(model.domain_names) == [want_domain] and model.hostname == want_host
    assert (tmp_path / "inventory.ini").read_text().count(f"\n{want_host} ansible_user=root") == 1
    rendered = runner.invoke(app, ["render", str(tmp_path / "mail.yml"), "-o", str(tmp_path / "build")])
    assert rendered.exit_code == 0, rendered.output
    assert f"myhostname = {want_host}\n" in (tmp_path / "build/etc/postfix/main.cf").read_text()


def test_init_output_options(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "adir").mkdir()
    refused(
        ["init", "example.org", "-o", str(tmp_path / "adir"), "--inventory", str(tmp_path / "i")],
        "-o/--output",
        tmp_path,
    )
    refused(
        ["init", "example.org", "-o", str(tmp_path / "afile/m.yml"), "--inventory", str(tmp_path / "i")],
        "-o/--output",
        tmp_path,
    )
    refused(
        ["init", "example.org", "-o", str(tmp_path / "m.yml"), "--inventory", str(tmp_path / "afile/i")],
        "--inventory",
        tmp_path,
    )
    refused(
        ["init", "example.org", "-o", str(tmp_path / "same"), "--inventory", str(tmp_path / "same")],
        "--inventory",
        tmp_path,
    )
    refused(
        ["init", "example.org", "-o", str(tmp_path / "afile"), "--inventory", str(tmp_path / "i")],
        "-o/--output",
        tmp_path,
    )


def test_init_force_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "mail.yml").symlink_to(victim)
    result = runner.invoke(app, [*_init_argv(tmp_path, "example.org"), "--force"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "mail.yml").is_symlink()
    assert spec.load(tmp_path / "mail.yml").hostname == "mail.example.org"


def test_init_creates_missing_directories(tmp_path: Path) -> None:
    argv = ["init", "example.org", "-o", str(tmp_path / "a/b/mail.yml"), "--inventory", str(tmp_path / "c/i")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert spec.load(tmp_path / "a/b/mail.yml").domain_names == ["example.org"]
    assert sorted(p.name for p in (tmp_path / "a/b").iterdir()) == ["mail.yml"], "no temporary file left"


# -- dns ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "::1",
        "2001:db8::25",
        "fe80::1%eth0",
        "192.0.2.1%eth0",
        "0.0.0.0",
        "127.0.0.1",
        "127.1.2.3",
        "169.254.10.1",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1\n",
        "192.0.2.1\nexample.org. 60 IN A 6.6.6.6",
        " 192.0.2.1",
        "192.0.2.01",
        "192.0.2",
        "192.0.2.1/24",
        "",
        "example.org",
    ],
    ids=repr,
)
def test_dns_refuses_a_bad_ip(value: str, tmp_path: Path) -> None:
    refused(["dns", str(MINIMAL), "--ip", value], "--ip", tmp_path)


@pytest.mark.parametrize(
    "value",
    [
        "fe80::1%eth0",
        "2001:db8::1%1",
        "2001:db8::1%",
        "::",
        "::1",
        "fe80::1",
        "ff02::1",
        "::ffff:192.0.2.1",
        "192.0.2.1",
        "2001:db8::1\n",
        "2001:db8::g",
        "[2001:db8::1]",
        "",
    ],
    ids=repr,
)
def test_dns_refuses_a_bad_ipv6(value: str, tmp_path: Path) -> None:
    refused(["dns", str(MINIMAL), "--ipv6", value], "--ipv6", tmp_path)


def test_dns_wrong_version_says_which_option_fits(tmp_path: Path) -> None:
    assert "use --ipv6" in refused(["dns", str(MINIMAL), "--ip", "2001:db8::1"], "--ip", tmp_path)
    assert "use --ip" in refused(["dns", str(MINIMAL), "--ipv6", "192.0.2.1"], "--ipv6", tmp_path)


def test_dns_format_is_checked(tmp_path: Path) -> None:
    refused(["dns", str(MINIMAL), "--format", "xml"], "--format", tmp_path)
    refused(["dns", str(MINIMAL), "--format", "json\n"], "--format", tmp_path)


def test_dns_good_addresses_are_canonical() -> None:
    result = runner.invoke(app, ["dns", str(MINIMAL), "--ip", "192.0.2.25", "--ipv6", "2001:DB8:0::25"])
    assert result.exit_code == 0, result.output
    model = spec.load(MINIMAL)
    assert f"{model.hostname}.\t3600\tIN\tA\t192.0.2.25" in result.stdout
    assert f"{model.hostname}.\t3600\tIN\tAAAA\t2001:db8::25" in result.stdout
    assert "25.2.0.192.in-addr.arpa." in result.stdout
    assert "%" not in result.stdout


def test_dns_private_addresses_are_fine() -> None:
    """Labs and internal servers publish private addresses: those are valid server addresses."""
    result = runner.invoke(app, ["dns", str(MINIMAL), "--ip", "10.210.3.2", "--ipv6", "fd00::25"])
    assert result.exit_code == 0, result.output


# -- hash-password --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stdin",
    ["a\x00b\n", "a\rb\n", "a\x1bb\n", "\n", "", "x" * 1025 + "\n", b"\xff\xfe\n", "a\x7fb\n"],
    ids=repr,
)
def test_hash_password_refuses_bad_input(stdin: str | bytes, tmp_path: Path) -> None:
    refused(["hash-password", "--stdin"], "--stdin", tmp_path, stdin=stdin)


def test_hash_password_accepts_a_crlf_line_and_unicode() -> None:
    for typed, meant in (("s3cret\r\n", "s3cret"), ("pässwörd with spaces\n", "pässwörd with spaces")):
        result = runner.invoke(app, ["hash-password", "--stdin"], input=typed)
        assert result.exit_code == 0, result.output
        assert passwords.verify_password(meant, result.stdout.strip())


# -- dkim-keygen ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", ["abc", "1024", " 2048", "2048.0", "-2048", "99999999999999999999", ""])
def test_dkim_keygen_refuses_bad_bits(bits: str, tmp_path: Path) -> None:
    refused(["dkim-keygen", "-o", str(tmp_path / "k"), "--bits", bits], "--bits", tmp_path)


def test_dkim_keygen_output_checked(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "adir").mkdir()
    refused(["dkim-keygen", "-o", str(tmp_path / "afile/k.key")], "-o/--output", tmp_path)
    refused(["dkim-keygen", "-o", str(tmp_path / "adir")], "-o/--output", tmp_path)
    refused(["dkim-keygen", "-o", str(tmp_path / "afile")], "-o/--output", tmp_path)


def test_dkim_keygen_force_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "k.key").symlink_to(victim)
    result = runner.invoke(app, ["dkim-keygen", "-o", str(tmp_path / "k.key"), "--force"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "k.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")


# -- render --os ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["el11", "", "el9\n", "debian12 ", "../el9"], ids=repr)
def test_render_refuses_a_bad_os(value: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused(["render", str(MINIMAL), "--os", value, "-o", str(out)], "--os", tmp_path)
