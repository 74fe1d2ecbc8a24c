#!/usr/bin/python3
"""Ansible module mailprov.mail.probe: check a freshly (re)configured mail host: ports answer, daemons healthy."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: probe
short_description: Check that the mail services answer after a configuration change
description:
  - Waits until every given port answers like the service it should carry (an SMTP, IMAP or POP3 greeting,
    or a TLS handshake for implicit-TLS ports), then checks C(postfix status), C(doveadm service status)
    and the LMTP and SASL sockets Dovecot creates for Postfix. Fails with every problem found.
options:
  host:
    description: Address to connect to on the host itself.
    type: str
    default: 127.0.0.1
  ports:
    description: >-
      Dicts with port and kind (smtp, imap, pop3, tls, or tcp: a connection is enough, e.g. a milter),
      and optionally host (default: the host option).
    type: list
    elements: dict
    required: true
  sockets:
    description: Unix sockets that must exist.
    type: list
    elements: path
    default: []
  services:
    description: Daemons whose own status must be good (C(postfix status), C(doveadm service status)).
    type: list
    elements: str
    default: [postfix, dovecot]
  timeout:
    description: Seconds to wait for each port to answer.
    type: int
    default: 20
author: mailprov
"""

GREETING = {"smtp": b"220", "imap": b"* OK", "pop3": b"+OK"}


def probe_port(host: str, port: int, kind: str, timeout: float) -> str | None:
    """None when the port answers as `kind` within timeout, else the last problem seen."""
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                if kind == "tcp":
                    return None
                if kind == "tls":
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    with context.wrap_socket(sock) as tls:
                        tls.do_handshake()
                    return None
                sock.settimeout(10)
                greeting = sock.recv(512)
                if greeting.startswith(GREETING[kind]):
                    return None
                problem = f"unexpected greeting {greeting[:60]!r}"
        except (OSError, ssl.SSLError) as exc:
            problem = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            return problem
        time.sleep(0.5)


def main() -> None:
    """Module entry point."""
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "ports": {"type": "list", "elements": "dict", "required": True},
            "sockets": {"type": "list", "elements": "path", "default": []},
            "services": {"type": "list", "elements": "str", "default": ["postfix", "dovecot"]},
            "timeout": {"type": "int", "default": 20},
        },
        supports_check_mode=True,
    )
    if module.check_mode:
        module.exit_json(changed=False, skipped_reason="check mode")
    params = module.params
    problems = []
    answered = []
    for item in params["ports"]:
        port, kind = int(item["port"]), item["kind"]
        host = item.get("host") or params["host"]
        problem = probe_port(host, port, kind, params["timeout"])
        if problem is None:
            answered.append(port)
        else:
            problems.append(f"port {port} ({kind}) on {host}: {problem}")
    if "postfix" in params["services"]:
        rc, out, err = module.run_command(["postfix", "status"])
        if rc != 0:
            problems.append(f"postfix status: {(err or out).strip() or f'exit {rc}'}")
    if "dovecot" in params["services"]:
        rc, out, err = module.run_command(["doveadm", "service", "status"])
        if rc != 0 and "Unknown command" in (err + out):
            # Older Dovecot 2.3 without `service status`: `who` also needs a running master (anvil).
            rc, out, err = module.run_command(["doveadm", "who"])
        if rc != 0:
            problems.append(f"doveadm: {(err or out).strip() or f'exit {rc}'}")
    for path in params["sockets"]:
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                problems.append(f"{path} is not a socket")
        except FileNotFoundError:
            problems.append(f"socket {path} is missing")
    if problems:
        module.fail_json(msg="probe failed: " + "; ".join(problems), problems=problems, answered=answered)
    module.exit_json(changed=False, answered=answered)


if __name__ == "__main__":
    main()
