#!/usr/bin/env bash
# Installs the Debian packages Outpost's build and tests need, if missing.
# Used by scripts/demo.sh, scripts/test.sh and .ci/run;
# `scripts/deps.sh --packages P...` installs just P... (the benches' scripts).
set -euo pipefail

packages=(clang libclang-dev)
if [ "${1:-}" = "--packages" ]; then
  shift
  packages=("$@")
elif [ "${1:-}" = "--test" ]; then
  # A real SMTP server for the alerting e-mail tests.
  packages+=(python3-aiosmtpd)
  # The patch cache tests build and sign a real apt repository (dpkg-deb,
  # gpg, gpg-agent, gpgconf), the cache checks InRelease with gpgv, and a
  # real isolated apt-get downloads through it.
  packages+=(dpkg apt gpg gpg-agent gpgconf gpgv)
  # The fuzz build links Debian's zstd instead of compiling it (scripts/fuzz.sh).
  packages+=(libzstd-dev pkg-config)
  # outpost-patch compares its rpm version order with rpm's own (rpm.vercmp).
  packages+=(rpm)
  packages+=(chromium)
  # The PDF compliance reports are checked by extracting their text (pdftotext).
  packages+=(poppler-utils)
  # scripts/demo.sh --check (run by the demo:: end-to-end test) talks HTTP with curl.
  packages+=(curl)
  # The packaging tests (scripts/package.sh, then dpkg into an isolated
  # root): systemd-sysusers (the maintainer scripts' user creation),
  # systemd-analyze verify (the units), setpriv (util-linux, essential).
  packages+=(systemd)
  # The agent tarball's static build (x86_64-unknown-linux-musl): musl-gcc
  # compiles its C parts (zstd, ring).
  packages+=(musl-tools binutils)
  # Central's PostgreSQL backend: its tests start a private server
  # (initdb + postgres from /usr/lib/postgresql/*/bin, as the postgres user).
  packages+=(postgresql)
  # The side-by-side ingest script's peers (bench_smoke:: runs it briefly):
  # VictoriaMetrics and a Zabbix proxy with its SQLite database.
  packages+=(victoria-metrics zabbix-proxy-sqlite3 sqlite3)
fi

# The static agent's Rust target (rustup downloads its standard library).
if [ "${1:-}" = "--test" ] && command -v rustup >/dev/null &&
  ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  echo "adding the Rust target x86_64-unknown-linux-musl" >&2
  rustup target add x86_64-unknown-linux-musl
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
