#!/usr/bin/env bash
# Installs everything mailprov and its tests need on Debian 12 (run as root). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(postfix postfix-lmdb dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd
          dovecot-sieve dovecot-managesieved sieve-connect fail2ban python3-systemd nginx
          debootstrap systemd-container unbound iproute2 util-linux openssl openssh-client
          ca-certificates vagrant)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix on the control machine is only used to judge rendered configs: keep it unconfigured.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
if [ -f requirements.yml ] && [ -x scripts/collections.sh ]; then
  scripts/collections.sh
fi
echo "setup: done"
