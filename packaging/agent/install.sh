#!/bin/sh
# Installs the Outpost agent from the tarball on a Linux host without dpkg
# (run as root from the unpacked directory; `outpost agent-installer
# --tarball` prints the line that downloads, verifies and runs it). Puts
# the binary in /usr/local/bin, the unit in /etc/systemd/system, the
# commented defaults in /etc/outpost/agent.toml (kept if present) and the
# state directory /var/lib/outpost-agent (0700). DESTDIR installs into
# another root (tests, images). Uninstall: systemctl disable --now
# outpost-agent; rm /usr/local/bin/outpost-agent
# /etc/systemd/system/outpost-agent.service; rm -r /var/lib/outpost-agent
# to forget the identity.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}

install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/outpost"
install -m 0755 "$here/outpost-agent" "$root/usr/local/bin/outpost-agent"
sed 's|/usr/bin/outpost-agent|/usr/local/bin/outpost-agent|' "$here/outpost-agent.service" \
    >"$root/etc/systemd/system/outpost-agent.service"
chmod 0644 "$root/etc/systemd/system/outpost-agent.service"
[ -e "$root/etc/outpost/agent.toml" ] || install -m 0644 "$here/agent.toml" "$root/etc/outpost/agent.toml"
install -d -m 0700 "$root/var/lib/outpost-agent"
[ -e "$root/var/lib/outpost-agent/agent.toml" ] || [ -L "$root/var/lib/outpost-agent/agent.toml" ] ||
    ln -s ../../../etc/outpost/agent.toml "$root/var/lib/outpost-agent/agent.toml"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    # An upgrade: the running agent takes the new binary.
    systemctl try-restart outpost-agent.service || true
fi
