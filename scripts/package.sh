#!/usr/bin/env bash
# Builds the Debian packages outpost, outpost-agent and outpost-central
# (README, "Install on a site" and "Install central") with cargo-deb, from
# binaries cargo has already built: packaging never compiles.
#
#   scripts/package.sh [--profile release|dev] [--out DIR] [--deb-version V]
#
# A release:
#   cargo build --release --bins -p outpost-appliance -p outpost-agent -p outpost-central
#   cargo build --release -p outpost-agent --bin outpost-agent --target x86_64-unknown-linux-musl
#   scripts/package.sh                       # -> target/debian/*.deb, and the agent's .tar.gz
# The tarball carries the musl build of the agent: statically linked, it
# runs on any x86-64 Linux whatever its C library (the .deb's binary needs
# the build host's glibc or newer). `rustup target add
# x86_64-unknown-linux-musl` and Debian's musl-tools (for the C parts:
# zstd, ring) are what that build needs; scripts/deps.sh --test installs both.
# CI and the packaging tests package the test build's debug binaries
# (--profile dev: stripped, fast compression), so they add no release
# compile. --deb-version overrides the version (default: the workspace
# version, revision 1); the tests use it to build an upgrade.
#
# Why cargo-deb: maintained (kornelski/cargo-deb), reads name, version,
# description, licence and dependencies ($auto: from the binaries' shared
# libraries) from Cargo metadata, and handles assets, conffiles and
# maintainer scripts; packaging/ holds the rest (units, scripts, defaults).
# Installs cargo-deb (pinned, --locked) if missing, like scripts/fuzz.sh
# installs cargo-fuzz. The outpost package ships the outpost-agent package
# it is built with (/usr/share/outpost/agent/), which the appliance serves
# to endpoints (`outpost agent-installer`).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
profile=release
out=""
version_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --deb-version) version_args=(--deb-version "$2"); shift 2 ;;
    *) echo "usage: scripts/package.sh [--profile release|dev] [--out DIR] [--deb-version V]" >&2; exit 2 ;;
  esac
done

if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  echo "installing cargo-deb $CARGO_DEB_VERSION" >&2
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

target_dir=${CARGO_TARGET_DIR:-target}
case "$profile" in
  release) profile_dir=release; extra=() ;;
  # Debug binaries: stripped (hundreds of MB otherwise) and compressed fast.
  dev) profile_dir=debug; extra=(--strip --fast) ;;
  *) profile_dir=$profile; extra=() ;;
esac
for b in outpost outpost-agent outpost-central; do
  if [ ! -x "$target_dir/$profile_dir/$b" ]; then
    echo "$target_dir/$profile_dir/$b is missing: build it first" \
      "(cargo build --bins -p outpost-appliance -p outpost-agent -p outpost-central$([ "$profile" = release ] && echo ' --release'))" >&2
    exit 1
  fi
done
static_agent="$target_dir/x86_64-unknown-linux-musl/$profile_dir/outpost-agent"
if [ ! -x "$static_agent" ]; then
  echo "$static_agent is missing: build the static agent first" \
    "(cargo build -p outpost-agent --bin outpost-agent --target x86_64-unknown-linux-musl$([ "$profile" = release ] && echo ' --release'))" >&2
  exit 1
fi
# A dynamically linked binary has a program interpreter (ld.so): refuse it.
if readelf -l "$static_agent" | grep -q 'program interpreter'; then
  echo "$static_agent is dynamically linked; the tarball needs the static musl build" >&2
  exit 1
fi
out=${out:-$target_dir/debian}
mkdir -p "$out"

deb() {
  # cargo-deb prints the path of the package it wrote, last.
  cargo deb --no-build --profile "$profile" --output "$out" --quiet \
    ${extra[@]+"${extra[@]}"} ${version_args[@]+"${version_args[@]}"} "$@" | tail -n 1
}

agent=$(deb -p outpost-agent)

# The agent for Linux hosts without dpkg: a tarball of the static (musl)
# binary with the .deb's own unit and defaults plus packaging/agent/install.sh.
tarball=${agent%.deb}.tar.gz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$agent" "$work/root"
mkdir "$work/outpost-agent"
strip -o "$work/outpost-agent/outpost-agent" "$static_agent"
cp "$work/root/etc/outpost/agent.toml" \
  "$work/root/usr/lib/systemd/system/outpost-agent.service" packaging/agent/install.sh \
  "$work/outpost-agent/"
tar -C "$work" --owner=0 --group=0 --numeric-owner -czf "$tarball" outpost-agent

# The outpost package picks the agent packages up from here (its assets)
# and the appliance serves them to endpoints.
stage="$target_dir/$profile_dir/outpost-agent-deb"
rm -rf "$stage"
mkdir -p "$stage"
cp "$agent" "$tarball" "$stage/"
appliance=$(deb -p outpost-appliance)
central=$(deb -p outpost-central)
printf '%s\n' "$appliance" "$agent" "$central" "$tarball"
