"""OS profiles as data: everything that differs between EL9, EL10 and Debian 12.

Templates and playbooks read these fields; nothing else branches on the OS. Facts are from
the distributions' packaging (see shared/rhel.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioner.errors import UsageError

#: Mozilla's "intermediate" TLS 1.2 suites (AEAD, forward secrecy; no CBC, CAMELLIA, ARIA, 3DES, RC4).
MOZILLA_INTERMEDIATE = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
#: The RHEL crypto policy's suites without those whose MAC is SHA-1 or SHA-2 (that is, without CBC).
EL_POLICY_AEAD = "PROFILE=SYSTEM:!SHA1:!SHA256:!SHA384"


@dataclass(frozen=True)
class Profile:
    """Facts about one OS family/version that the rendered files and the playbook depend on."""

    name: str
    title: str
    family: str  # "RedHat" or "Debian": Ansible's ansible_os_family
    major_versions: tuple[str, ...]  # ansible_distribution_major_version values
    postfix_version: tuple[int, int]
    dovecot_version: tuple[int, int]
    packages: tuple[str, ...]
    daemon_directory: str
    map_type: str  # lookup table type for postmap: hash or lmdb
    chroot: str  # master.cf chroot column: y or n
    tls_cert: str  # where mailprov installs the server certificate (full chain)
    tls_key: str
    dovecot_group: str
    firewalld_services: dict[int, str] = field(default_factory=dict)
    #: SELinux-capable family: apply labels the mail store mail_spool_t.
    selinux: bool = False
    #: TLS 1.2 suites where TLS is mandatory (Postfix 587/465 tls_high_cipherlist, every Dovecot port):
    #: AEAD with forward secrecy only. Debian: Mozilla's "intermediate" list. EL: the system crypto policy
    #: (PROFILE=SYSTEM) minus every suite with a SHA-1/SHA-2 MAC, i.e. minus CBC: the policy still decides
    #: protocols, key sizes and which AEAD suites exist; TLS 1.3 suites are all AEAD.
    tls_mandatory_ciphers: str = MOZILLA_INTERMEDIATE
    mta_alternative: str = ""
    #: fail2ban (spec fail2ban.enabled): packages and how a ban is enforced. EL: EPEL's fail2ban with its
    #: firewalld actions (firewalld is EL's host firewall); Debian: nftables, with or without firewalld.
    fail2ban_packages: tuple[str, ...] = ("fail2ban", "python3-systemd", "nftables")
    fail2ban_banaction: str = "nftables-multiport"
    #: Debian 12's stock sshd jail reads /var/log/auth.log, which bookworm (journal only) does not have,
    #: and fail2ban refuses to start: the jail file points it at the journal.
    fail2ban_sshd_journal: bool = True
    #: Where Dovecot's helper programs live (dovecot-lda for quota warnings, sievec).
    dovecot_libexec: str = "/usr/lib/dovecot"
    #: Sieve and ManageSieve (spec sieve.enabled): Debian splits Pigeonhole in two packages.
    sieve_packages: tuple[str, ...] = ("dovecot-sieve", "dovecot-managesieved")
    #: rspamd (spec antispam.enabled). EL: not in the distribution nor EPEL; rspamd's own package
    #: repository must be enabled before applying (unverified here: no EL repositories reachable).
    antispam_packages: tuple[str, ...] = ("rspamd",)
    antispam_service: str = "rspamd"
    #: The system's CA bundle (a smarthost's certificate is verified against it unless the spec names one).
    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    #: OpenDKIM (signing when the spec has dkim.private_key). EL: from EPEL (enable EPEL, and CRB on EL9,
    #: before applying; EPEL 10's opendkim is unverified); Debian: the distribution's package.
    dkim_packages: tuple[str, ...] = ("opendkim",)
    dkim_user: str = "opendkim"
    dkim_service: str = "opendkim"
    #: Directory of the signing key: created by the package, owner dkim_user.
    dkim_key_dir: str = "/etc/opendkim/keys"
    #: Where the unit expects the pid file (the rendered opendkim.conf must agree).
    dkim_pidfile: str = "/run/opendkim/opendkim.pid"

    @property
    def dkim_key(self) -> str:
        """Where apply installs the DKIM signing key (owner dkim_user, mode 0600)."""
        return f"{self.dkim_key_dir}/mailprov.private"

    @property
    def compatibility_level(self) -> str:
        """Postfix compatibility_level matching the shipped version (3.6 introduced the new defaults)."""
        return "3.6" if self.postfix_version >= (3, 6) else "2"

    @property
    def tls_protocols(self) -> str:
        """TLS 1.2+ in the syntax this Postfix understands (`>=TLSv1.2` needs Postfix 3.6)."""
        if self.postfix_version >= (3, 6):
            return ">=TLSv1.2"
        return "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1"

    @property
    def tls_dir(self) -> str:
        """Directory of the certificate."""
        return self.tls_cert.rsplit("/", 1)[0]

    @property
    def tls_key_dir(self) -> str:
        """Directory of the private key."""
        return self.tls_key.rsplit("/", 1)[0]


_EL_FIREWALL = {
    25: "smtp",
    465: "smtps",
    587: "smtp-submission",
    110: "pop3",
    995: "pop3s",
    143: "imap",
    993: "imaps",
    4190: "managesieve",
}

PROFILES: dict[str, Profile] = {
    "el9": Profile(
        name="el9",
        title="RHEL / AlmaLinux / Rocky Linux 9",
        family="RedHat",
        major_versions=("9",),
        postfix_version=(3, 5),
        dovecot_version=(2, 3),
        packages=("postfix", "dovecot", "openssl"),
        daemon_directory="/usr/libexec/postfix",
        map_type="hash",
        chroot="n",
        tls_cert="/etc/pki/tls/certs/mailprov.pem",
        tls_key="/etc/pki/tls/private/mailprov.key",
        dovecot_group="dovecot",
        firewalld_services=_EL_FIREWALL,
        selinux=True,
        tls_mandatory_ciphers=EL_POLICY_AEAD,
        fail2ban_packages=("fail2ban-server", "fail2ban-firewalld", "python3-systemd"),
        fail2ban_banaction="firewallcmd-rich-rules",
        fail2ban_sshd_journal=False,
        mta_alternative="/usr/sbin/sendmail.postfix",
        dovecot_libexec="/usr/libexec/dovecot",
        sieve_packages=("dovecot-pigeonhole",),
        ca_bundle="/etc/pki/tls/certs/ca-bundle.crt",
    ),
    "el10": Profile(
        name="el10",
        title="RHEL / AlmaLinux / Rocky Linux 10",
        family="RedHat",
        major_versions=("10",),
        postfix_version=(3, 8),
        dovecot_version=(2, 3),
        packages=("postfix", "postfix-lmdb", "dovecot", "openssl"),
        daemon_directory="/usr/libexec/postfix",
        map_type="lmdb",
        chroot="n",
        tls_cert="/etc/pki/tls/certs/mailprov.pem",
        tls_key="/etc/pki/tls/private/mailprov.key",
        dovecot_group="dovecot",
        firewalld_services={**_EL_FIREWALL, 587: "submission"},
        selinux=True,
        tls_mandatory_ciphers=EL_POLICY_AEAD,
        fail2ban_packages=("fail2ban-server", "fail2ban-firewalld", "python3-systemd"),
        fail2ban_banaction="firewallcmd-rich-rules",
        fail2ban_sshd_journal=False,
        mta_alternative="/usr/sbin/sendmail.postfix",
        dovecot_libexec="/usr/libexec/dovecot",
        sieve_packages=("dovecot-pigeonhole",),
        ca_bundle="/etc/pki/tls/certs/ca-bundle.crt",
    ),
    "debian12": Profile(
        name="debian12",
        title="Debian 12 (bookworm)",
        family="Debian",
        major_versions=("12",),
        postfix_version=(3, 7),
        dovecot_version=(2, 3),
        packages=("postfix", "dovecot-core", "dovecot-imapd", "dovecot-pop3d", "dovecot-lmtpd", "openssl"),
        daemon_directory="/usr/lib/postfix/sbin",
        map_type="hash",
        chroot="y",
        tls_cert="/etc/ssl/certs/mailprov.pem",
        tls_key="/etc/ssl/private/mailprov.key",
        dovecot_group="dovecot",
        # Debian 12's firewalld 1.3 has EL9's service names.
        firewalld_services=_EL_FIREWALL,
        # The package makes /etc/dkimkeys (opendkim, 0700) for keys.
        dkim_key_dir="/etc/dkimkeys",
    ),
}

#: Accepted spellings of profile names.
ALIASES = {"rhel9": "el9", "alma9": "el9", "rocky9": "el9", "rhel10": "el10", "bookworm": "debian12"}


def get(name: str) -> Profile:
    """Look up a profile by name (el9, el10, debian12, or an alias such as rhel9)."""
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return PROFILES[key]
    except KeyError:
        raise UsageError(
            f"--os: unknown OS profile {name!r}; expected one of {', '.join(PROFILES)}"
        ) from None


def from_facts(os_family: str, major_version: str) -> Profile:
    """Pick the profile for a host from Ansible facts (ansible_os_family, ansible_distribution_major_version)."""
    for profile in PROFILES.values():
        if profile.family == os_family and str(major_version) in profile.major_versions:
            return profile
    raise UsageError(f"unsupported OS: {os_family} {major_version}; supported: {', '.join(PROFILES)}")
