"""The lab's pebble (`lab up --acme`): configuration, environment, listener CA and bundle, status."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner import lab
from provisioner.errors import LabError


def test_pebble_listens_on_the_bridge_only_and_validates_on_standard_ports() -> None:
    config = lab.pebble_config("10.210.3.1", Path("/l/c.pem"), Path("/l/k.pem"))["pebble"]
    assert config["listenAddress"] == "10.210.3.1:14000"
    assert config["managementListenAddress"] == "10.210.3.1:15000"
    assert (config["httpPort"], config["tlsPort"]) == (80, 443)
    assert (config["certificate"], config["privateKey"]) == ("/l/c.pem", "/l/k.pem")
    assert lab.acme_directory_url("10.210.3.1") == "https://10.210.3.1:14000/dir"


def test_pebble_environment_never_fakes_validation() -> None:
    env = lab.pebble_env({"PATH": "/usr/bin", "PEBBLE_VA_ALWAYS_VALID": "1", "HTTPS_PROXY": "http://x"})
    assert env["PEBBLE_VA_NOSLEEP"] == "1"
    assert env["PEBBLE_WFE_NONCEREJECT"] == "0" and env["PEBBLE_AUTHZREUSE"] == "0"
    assert "PEBBLE_VA_ALWAYS_VALID" not in env and "HTTPS_PROXY" not in env
    assert env["PATH"] == "/usr/bin"
    assert lab.pebble_env({})["PATH"]


def test_listener_ca_signs_a_certificate_for_the_bridge_address(tmp_path: Path) -> None:
    ca_path, cert_path, key_path = lab.make_listener_ca(tmp_path / "acme", "10.210.3.1")
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert leaf.issuer == ca.subject
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.210.3.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / "acme").glob("*ca*.key"))  # the CA's key is never written


def test_bundle_is_pebbles_root_then_the_listener_ca() -> None:
    root = "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n"
    listener = "-----BEGIN CERTIFICATE-----\nLISTENER\n-----END CERTIFICATE-----"
    bundle = lab.acme_bundle(root, listener)
    assert bundle.index("ROOT") < bundle.index("LISTENER") and bundle.endswith("-----\n")
    with pytest.raises(LabError, match="roots/0"):
        lab.acme_bundle("<html>404</html>", listener)


def test_status_shows_acme_only_when_started(tmp_path: Path) -> None:
    the_lab = lab.Lab(tmp_path)
    assert the_lab.status()["acme"] is None
    state = {
        "resolver": "10.210.3.1",
        "subnet": "10.210.3.0/24",
        "hosts": {},
        "acme": {
            "pid": 999999999,
            "pid_start": 1,
            "directory": "https://10.210.3.1:14000/dir",
            "ca_bundle": str(tmp_path / "acme/ca-bundle.pem"),
        },
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    acme = the_lab.status()["acme"]
    assert acme == {
        "directory": "https://10.210.3.1:14000/dir",
        "ca_bundle": str(tmp_path / "acme/ca-bundle.pem"),
        "state": "stopped",  # the recorded process is not running
    }


def test_acme_without_pebble_installed_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from provisioner.errors import UsageError

    monkeypatch.setattr(lab, "check_prerequisites", lambda *a, **k: None)
    monkeypatch.setattr(lab, "_which", lambda tool: None)
    with pytest.raises(UsageError, match=r"--acme: pebble is not installed.*apt-get install pebble"):
        lab.Lab(tmp_path).up(["mx1"], acme=True)
    assert not (tmp_path / "state.json").exists()  # nothing started, nothing written
