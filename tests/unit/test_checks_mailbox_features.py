"""Pure parts of imap.quota, sieve.managesieve and smtp.spam_filter: ManageSieve and IMAP QUOTA parsing, judges."""

from __future__ import annotations

import base64
import io

import pytest

from provisioner.checks.bounded import ProtocolError, ReplyTooLarge
from provisioner.checks.managesieve import (
    Response,
    Token,
    capabilities,
    plain_command,
    quoted,
    read_response,
    sasl_mechanisms,
    tokenize,
)
from provisioner.checks.quota import (
    Quota,
    QuotaSyntaxError,
    flatten,
    judge_quota,
    parse_list_name,
    parse_quota,
    parse_quotaroot,
    spam_tag,
)
from provisioner.checks.sieve import judge_plaintext_authenticate
from provisioner.checks.smtp import GTUBE, gtube_message

# A Dovecot 2.3 greeting before STARTTLS, as recorded on port 4190.
DOVECOT_GREETING = (
    b'"IMPLEMENTATION" "Dovecot (Debian) Pigeonhole"\r\n'
    b'"SIEVE" "fileinto reject envelope vacation"\r\n'
    b'"NOTIFY" "mailto"\r\n'
    b'"SASL" ""\r\n'
    b'"STARTTLS"\r\n'
    b'"VERSION" "1.0"\r\n'
    b'OK "Dovecot (Debian) ready."\r\n'
)


def response(data: bytes) -> Response:
    return read_response(io.BytesIO(data))


# ---- ManageSieve tokens and responses ------------------------------------------------------------


def test_tokenize_atoms_strings_parens_and_escapes() -> None:
    tokens, literal = tokenize(rb'NO (QUOTA/MAXSIZE) "a \"quoted\" \\ text"')
    assert literal is None
    assert tokens == [
        Token("atom", "NO"),
        Token("atom", "("),
        Token("atom", "QUOTA/MAXSIZE"),
        Token("atom", ")"),
        Token("string", 'a "quoted" \\ text'),
    ]


@pytest.mark.parametrize(("line", "length"), [(b'"SIEVE" {12}', 12), (b"OK {5+}", 5), (b'"X"', None)])
def test_tokenize_finds_the_literal_at_the_end(line: bytes, length: int | None) -> None:
    assert tokenize(line)[1] == length


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b'"unterminated', "unterminated"),
        (b'"bad \\n escape"', "bad escape"),
        (b"OK }", "unexpected"),
    ],
)
def test_tokenize_refuses_malformed_lines(line: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        tokenize(line)


def test_dovecot_greeting() -> None:
    greeting = response(DOVECOT_GREETING)
    caps = capabilities(greeting)
    assert greeting.ok and greeting.text == "Dovecot (Debian) ready."
    assert caps["STARTTLS"] == "" and caps["VERSION"] == "1.0"
    assert caps["IMPLEMENTATION"] == "Dovecot (Debian) Pigeonhole"
    assert sasl_mechanisms(caps) == []


def test_capabilities_with_literals_and_lower_case_names() -> None:
    data = b'"implementation" {7}\r\nExample\r\n{4}\r\nSASL {11}\r\nPLAIN login\r\n"StartTLS"\r\nOK\r\n'
    caps = capabilities(response(data))
    assert caps == {"IMPLEMENTATION": "Example", "SASL": "PLAIN login", "STARTTLS": ""}
    assert sasl_mechanisms(caps) == ["PLAIN", "LOGIN"]


def test_final_line_with_code_arguments_and_literal_text() -> None:
    answer = response(b'NO (SASL "c2VydmVyIGRhdGE=") {20}\r\nAuthentication\r\nfail\r\n')
    assert answer.status == "NO" and answer.code == "SASL"
    assert answer.code_args == ["c2VydmVyIGRhdGE="]
    assert answer.text == "Authentication\r\nfail"
    bye = response(b'BYE (ENCRYPT-NEEDED) "Go away"\r\n')
    assert (bye.status, bye.code, bye.text) == ("BYE", "ENCRYPT-NEEDED", "Go away")
    assert bye.summary() == 'BYE (ENCRYPT-NEEDED) "Go away"'


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b'"SASL" {1073741824}\r\n', ReplyTooLarge, "literal of 1073741824 bytes"),
        (b'"X" "' + b"a" * 5000 + b'"\r\nOK\r\n', ReplyTooLarge, "line over"),
        (b'"X"\r\n' * 200 + b"OK\r\n", ReplyTooLarge, "over 100 lines"),
        ((b'"X" "' + b"a" * 4000 + b'"\r\n') * 20, ReplyTooLarge, "over 65536 bytes"),
        (b'"X" {10}\r\nshort', ConnectionError, "inside a literal"),
        (b'"SASL" "PLAIN"\r\n', ConnectionError, "closed"),
        (b'OK "a" "b"\r\n', ProtocolError, "after OK"),
        (b"OK (TAG\r\n", ProtocolError, "without"),
        (b"\r\n", ProtocolError, "empty"),
        (b"220 smtp.example ESMTP\r\n", ProtocolError, "not a ManageSieve response"),
    ],
)
def test_hostile_or_broken_responses_are_refused(data: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        response(data)


def test_a_capability_line_must_be_strings() -> None:
    with pytest.raises(ProtocolError, match="not a ManageSieve response"):
        capabilities(response(b'SASL "PLAIN"\r\nOK\r\n'))
    with pytest.raises(ProtocolError, match="not a capability line"):
        capabilities(response(b'"SASL" ("PLAIN")\r\nOK\r\n'))
    with pytest.raises(ProtocolError, match="not a capability line"):
        capabilities(response(b'"SASL" "PLAIN" "extra"\r\nOK\r\n'))


def test_plain_command_and_quoting() -> None:
    command = plain_command("alice@example.org", 'p"w\\d')
    assert command.startswith(b'AUTHENTICATE "PLAIN" "') and command.endswith(b'"\r\n')
    token = command.split(b'"')[3]
    assert base64.b64decode(token) == b'\0alice@example.org\0p"w\\d'
    assert quoted('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError, match="line break"):
        quoted("a\r\nb")


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (
            b'NO (ENCRYPT-NEEDED) "Authentication not allowed until SSL/TLS is enabled."\r\n',
            "pass",
            "refused",
        ),
        (b'NO "Plaintext authentication disallowed on non-secure connections."\r\n', "pass", "refused"),
        (b'NO "Authentication failed."\r\n', "fail", "checked in plaintext"),
        (b'OK "Logged in."\r\n', "fail", "accepted before STARTTLS"),
        (b'NO "Nope."\r\n', "warn", "unstated reason"),
    ],
)
def test_judge_plaintext_authenticate(data: bytes, status: str, words: str) -> None:
    verdict, reason = judge_plaintext_authenticate(response(data))
    assert verdict == status and words in reason


# ---- IMAP QUOTA ------------------------------------------------------------------------------------


def test_parse_quota_dovecot() -> None:
    quota = parse_quota('"User quota" (STORAGE 12 10240 MESSAGE 3 1000)')
    assert quota.root == "User quota"
    assert quota.resources == {"STORAGE": (12, 10240), "MESSAGE": (3, 1000)}
    assert quota.storage_kib == 10240


def test_parse_quota_atom_root_escapes_and_empty_list() -> None:
    assert parse_quota("user.alice (storage 0 512)").resources == {"STORAGE": (0, 512)}
    assert parse_quota(r'"a \"b\"" ()').root == 'a "b"'
    empty = parse_quota('"" ()')
    assert empty.root == "" and empty.storage_kib is None


@pytest.mark.parametrize(
    "text",
    [
        '"root" (STORAGE 1)',
        '"root" (STORAGE x 10)',
        '"root" STORAGE 1 10',
        '"root" (STORAGE -1 10)',
        "",
        '"r" ("S" 1 2)',
    ],
)
def test_parse_quota_refuses_malformed(text: str) -> None:
    with pytest.raises(QuotaSyntaxError):
        parse_quota(text)


def test_parse_quotaroot_and_literals() -> None:
    assert parse_quotaroot('INBOX "User quota"') == ("INBOX", ["User quota"])
    assert parse_quotaroot("INBOX") == ("INBOX", [])
    lines = flatten([(b"{10}", b'User "q" x'), b" (STORAGE 1 2)", b'"other" (STORAGE 3 4)'])
    assert lines == ['"User \\"q\\" x" (STORAGE 1 2)', '"other" (STORAGE 3 4)']
    assert parse_quota(lines[0]).root == 'User "q" x'


def _q(limit: int | None) -> Quota:
    return Quota("User quota", {} if limit is None else {"STORAGE": (5, limit)})


@pytest.mark.parametrize(
    ("capable", "quotas", "expected", "known", "status", "words"),
    [
        (True, [_q(10240)], 10 * 1024**2, True, "pass", "is the spec's 10M"),
        (True, [_q(1464)], 1_500_000, True, "pass", "spec's 1500000B"),  # rounded down to KiB
        (True, [_q(1465)], 1_500_000, True, "pass", "spec's"),  # or up
        (True, [_q(20480)], 10 * 1024**2, True, "fail", "but the spec sets 10M"),
        (True, [_q(None)], 10 * 1024**2, True, "fail", "no STORAGE limit"),
        (False, [], 10 * 1024**2, True, "fail", "no QUOTA capability"),
        (True, [_q(10240)], None, False, "pass", "STORAGE limit"),
        (True, [_q(10240)], None, True, "warn", "the spec sets no quota"),
        (True, [_q(None)], None, True, "pass", "as the spec sets no quota"),
        (True, [], None, False, "skip", "no STORAGE limit"),
        (False, [], None, False, "skip", "server has no quota"),
    ],
)
def test_judge_quota(
    capable: bool, quotas: list[Quota], expected: int | None, known: bool, status: str, words: str
) -> None:
    verdict, reason = judge_quota(capable, quotas, expected, known, "alice@example.org")
    assert verdict == status, reason
    assert words in reason


def test_gtube_message_holds_the_test_string() -> None:
    message = gtube_message("a@example.org", "postmaster@example.net", "t0k")
    body = message.as_bytes()
    assert GTUBE.encode() in body and b"t0k" in body
    assert GTUBE == "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.mark.parametrize(
    ("line", "name"),
    [
        (b'(\\HasNoChildren) "/" "INBOX"', "INBOX"),
        (b'(\\HasNoChildren \\Junk) "." Junk', "Junk"),
        (b'() NIL "a \\"b\\""', 'a "b"'),
        (b"garbage", None),
        (b'(\\Noselect) "/"', None),
    ],
)
def test_parse_list_name(line: bytes, name: str | None) -> None:
    assert parse_list_name(line) == name


@pytest.mark.parametrize(
    ("header", "tag"),
    [
        ("Subject: x\r\nX-Spam-Flag: YES\r\n", "X-Spam-Flag: YES"),
        ("X-Spam: Yes\n", "X-Spam: Yes"),
        ("X-Spam-Status: Yes, score=1000.0 required=5.0 tests=GTUBE\n", "X-Spam-Status: Yes"),
        ("X-Spam-Status: No, score=0.1\nX-Spam-Flag: NO\n", None),
        ("Subject: X-Spam: Yes\n", None),  # not a header of its own
        ("", None),
    ],
)
def test_spam_tag(header: str, tag: str | None) -> None:
    assert spam_tag(header) == tag
