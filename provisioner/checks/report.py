"""Verify reports: JSON (a stable interface), JUnit XML (for CI), and a table for people.

JSON format (stable; keys are only ever added, never renamed or removed)::

    {
      "target": "mail.example.org",             # TARGET as given
      "results": [
        {
          "id": "smtp.open_relay",              # stable check id (see docs / shared/checks.md)
          "status": "pass",                     # pass | warn | fail | skip
          "reason": "refused: 554 5.7.1 ...",   # one line
          "evidence": ...,                      # JSON value: record text, banner, cert facts, or null
          "title": "No relaying for strangers", # human title of the check
          "area": "smtp",                       # dns | smtp | tls | imap | pop3 | sieve | host
          "severity": "high",                   # high | medium | low
          "duration": 0.012                     # seconds the check took
        }
      ],
      "summary": {"pass": 30, "warn": 2, "fail": 0, "skip": 5},
      "duration": 1.234                         # seconds for the whole run
    }

Results appear in catalog order. A run with any "fail" exits 1.

Reasons and evidence quote servers and DNS, which may be hostile: the runner has already escaped their
control characters and capped their size; here the table prints them as plain text (never as Rich
markup), and JUnit replaces anything XML cannot hold.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from provisioner.checks.base import CATALOG
from provisioner.checks.parsers import clean_reason, escape_text
from provisioner.checks.runner import Report

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# Characters XML 1.0 cannot hold, even escaped.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """Text XML can hold: characters it forbids shown as escapes (\\x1b) instead."""
    return _XML_INVALID.sub(lambda m: escape_text(m.group()), text)


def to_dict(report: Report) -> dict[str, Any]:
    """The report as the documented JSON structure."""
    results = []
    for r in report.results:
        meta = CATALOG.get(r.id)
        results.append(
            {
                "id": r.id,
                "status": r.status,
                "reason": r.reason,
                "evidence": _jsonable(r.evidence),
                "title": meta.title if meta else r.id,
                "area": meta.area if meta else r.id.split(".")[0],
                "severity": meta.severity if meta else "medium",
                "duration": r.duration,
            }
        )
    return {
        "target": report.target,
        "results": results,
        "summary": report.summary,
        "duration": report.duration,
    }


def to_json(report: Report) -> str:
    """The report as JSON text."""
    return json.dumps(to_dict(report), indent=2) + "\n"


def to_junit(report: Report) -> str:
    """JUnit XML: one testsuite, one testcase per check (classname = area); fail = failure, skip = skipped."""
    summary = report.summary
    suites = ET.Element("testsuites", name="mailprov verify")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=xml_safe(f"mailprov verify {report.target}"),
        tests=str(len(report.results)),
        failures=str(summary["fail"]),
        errors="0",
        skipped=str(summary["skip"]),
        time=f"{report.duration:.3f}",
    )
    for r in report.results:
        meta = CATALOG.get(r.id)
        case = ET.SubElement(
            suite,
            "testcase",
            classname=xml_safe(meta.area if meta else r.id.split(".")[0]),
            name=xml_safe(r.id),
            time=f"{r.duration:.3f}",
        )
        evidence = "" if r.evidence is None else xml_safe(json.dumps(_jsonable(r.evidence), indent=2))
        reason = xml_safe(r.reason)
        if r.status == "fail":
            failure = ET.SubElement(case, "failure", message=reason, type="fail")
            failure.text = evidence
        elif r.status == "skip":
            ET.SubElement(case, "skipped", message=reason)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{r.status.upper()}: {reason}" + (f"\n{evidence}" if evidence else "")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _table(report: Report) -> Any:
    from rich.table import Table
    from rich.text import Text

    # Text objects, not strings: Rich would read "[...]" in a server's reply as markup.
    title = Text(f"mailprov verify {clean_reason(report.target, 200)}")
    table = Table(title=title, title_justify="left")
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for r in report.results:
        table.add_row(
            Text(r.status, style=_STYLE.get(r.status, "")),
            Text(clean_reason(r.id, 200)),
            Text(clean_reason(r.reason)),
        )
    return table


def _summary_line(report: Report) -> str:
    summary = report.summary
    counts = ", ".join(f"[{_STYLE[s]}]{summary[s]} {s}[/]" for s in ("pass", "warn", "fail", "skip"))
    return f"{counts} in {report.duration:.1f}s"


def to_table(report: Report, width: int = 160) -> str:
    """The table as plain text (for --output FILE): one row per check and a summary line."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    console.print(_table(report))
    console.print(_summary_line(report))
    return buffer.getvalue()


def print_table(report: Report) -> None:
    """Print the table to stdout (in colour on a terminal)."""
    from rich.console import Console

    console = Console()
    console.print(_table(report))
    console.print(_summary_line(report))


FORMATS = {"json": to_json, "junit": to_junit, "table": to_table}


def render_report(report: Report, fmt: str) -> str:
    """The report in one of FORMATS."""
    return FORMATS[fmt](report)
