#!/usr/bin/python3
"""Documentation of the mailprov.mail.render action plugin (it runs on the controller, not as a module)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: render
short_description: Validate a mailprov spec and render its configuration files on the controller
description:
  - Loads the spec with mailprov's own model (the same validation as C(mailprov render)), checks which server
    of the spec this host is, and renders the files for every supported OS profile. Nothing touches the host.
  - "A bad spec fails with the role variable and the spec field named, e.g.
    C(mailprov_spec: domains[0].name: expected a domain name such as example.com)."
  - Needs the mailprov Python package in the environment that runs ansible-playbook.
options:
  spec:
    description: The spec (the content of mail.yml) as a mapping. Exactly one of O(spec) and O(spec_file).
    type: dict
  spec_file:
    description: Path of mail.yml on the controller (relative paths start at the playbook directory).
    type: path
  hostname:
    description: Which server of the spec this host is; empty means the spec's C(hostname).
    type: str
    default: ""
  append:
    description: Tests only. Text appended to rendered files (relative path -> text).
    type: dict
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: mailprov
"""

EXAMPLES = r"""
- name: Render the configuration for this host
  mailprov.mail.render:
    spec_file: mail.yml
  register: rendered
  no_log: true
"""

RETURN = r"""
hostname:
  description: The server this host is.
  type: str
  returned: success
plans:
  description: Per OS profile (el9, el10, debian12), the files with ownership and what the host tasks need.
  type: dict
  returned: success
profile_map:
  description: "OS family-major version -> profile name."
  type: dict
  returned: success
"""
