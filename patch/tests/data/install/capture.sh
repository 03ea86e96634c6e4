#!/bin/sh
# Regenerates the captured apt/dpkg outputs of this directory with the
# real tools, in an isolated root under $WORK (default /tmp/outpost-capture):
# dpkg runs with --root (scripts chrootless), apt with Dir options pointing
# into that root. The host's package database is never written (checked
# at the end). Run as root or not: --force-not-root.
#
#   sh capture.sh [OUTDIR]
set -eu
OUT=${1:-$(cd "$(dirname "$0")" && pwd)}
WORK=${WORK:-/tmp/outpost-capture}
rm -rf "$WORK"; mkdir -p "$WORK/repo" "$WORK/keep"
R=$WORK/root
host_sum=$(md5sum /var/lib/dpkg/status)

mk() { # NAME VERSION [DEPENDS] [PREINST-EXIT] [POSTINST-EXIT]
  name=$1; ver=$2; dep=${3:-}; pre=${4:-}; post=${5:-}
  d=$(mktemp -d)
  mkdir -p "$d/DEBIAN" "$d/usr/share/$name" "$d/etc/$name"
  echo "$name $ver" > "$d/usr/share/$name/VERSION"
  echo "setting=$ver" > "$d/etc/$name/$name.conf"
  echo "/etc/$name/$name.conf" > "$d/DEBIAN/conffiles"
  { echo "Package: $name"; echo "Version: $ver"; echo "Architecture: all"
    echo "Maintainer: Outpost tests <tests@outpost.invalid>"
    [ -n "$dep" ] && echo "Depends: $dep"
    echo "Description: test package"; echo " for outpost deployment tests"; } > "$d/DEBIAN/control"
  [ -n "$pre" ] && printf '#!/bin/sh\necho "preinst of %s refuses"\nexit %s\n' "$name" "$pre" > "$d/DEBIAN/preinst" && chmod 755 "$d/DEBIAN/preinst"
  [ -n "$post" ] && printf '#!/bin/sh\necho "postinst of %s fails"\nexit %s\n' "$name" "$post" > "$d/DEBIAN/postinst" && chmod 755 "$d/DEBIAN/postinst"
  dpkg-deb --root-owner-group -Zgzip -b "$d" "$WORK/repo/${name}_${ver}_all.deb" >/dev/null
  rm -rf "$d"
}
mk hello-outpost 1.0-1
mk hello-outpost 1.1-1 "newdep-outpost (>= 1.0)"
mk newdep-outpost 1.0-1
mk broken-outpost 1.0-1
mk broken-outpost 1.1-1 "" 1
mk badpost-outpost 1.0-1 "" "" 1
index() { (cd "$WORK/repo" && dpkg-scanpackages . 2>/dev/null > Packages); }
index

mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/log/apt" \
  "$R/etc/apt/sources.list.d" "$R/etc/apt/preferences.d" "$R/etc/apt/apt.conf.d" \
  "$R/var/lib/apt/lists/partial" "$R/var/cache/apt/archives/partial"
touch "$R/var/lib/dpkg/status"
echo "deb [trusted=yes] file:$WORK/repo ./" > "$R/etc/apt/sources.list"
D() { dpkg --root="$R" --force-script-chrootless --force-not-root --log="$R/var/log/dpkg.log" "$@"; }
APT() { apt-get -o Dir="$R" -o Dir::State::status="$R/var/lib/dpkg/status" \
  -o Dir::Log="$R/var/log/apt" -o Dir::Cache="$R/var/cache/apt" -o Dir::Etc::Parts="$R/etc/apt/apt.conf.d" \
  -o DPkg::Options::=--root="$R" -o DPkg::Options::=--force-script-chrootless \
  -o DPkg::Options::=--force-not-root -o DPkg::Options::=--log="$R/var/log/dpkg.log" \
  -o APT::Sandbox::User=root -o DPkg::Use-Pty=0 "$@"; }
CONF="-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
Q() { dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${db:Status-Abbrev}\t${Package}\t${Architecture}\t${Version}\t${source:Package}\t${source:Version}\n'; }
cap() { f=$1; shift; set +e; "$@" > "$OUT/$f" 2>&1; echo "rc=$?" >> "$OUT/$f"; set -e; }

cap cap-install.txt D -i "$WORK/repo/hello-outpost_1.0-1_all.deb" "$WORK/repo/broken-outpost_1.0-1_all.deb"
APT update >/dev/null 2>&1
Q > "$OUT/query-before.txt"
cap cap-apt-sim.txt APT -s install hello-outpost=1.1-1
echo "setting=local-edit" > "$R/etc/hello-outpost/hello-outpost.conf"
cap cap-apt-install.txt APT install -y --no-install-recommends $CONF hello-outpost=1.1-1
Q > "$OUT/query-after.txt"
cap cap-apt-fail.txt APT install -y --no-install-recommends $CONF broken-outpost=1.1-1
cap cap-apt-postinst-fail.txt APT install -y --no-install-recommends $CONF badpost-outpost=1.0-1
cap cap-audit-unclean.txt D --audit
D --purge badpost-outpost >/dev/null 2>&1
cap cap-audit-clean.txt D --audit
# The old version leaves the repository index; its kept .deb rolls back.
cp "$WORK/repo/hello-outpost_1.0-1_all.deb" "$WORK/keep/"
rm "$WORK/repo/hello-outpost_1.0-1_all.deb"; index; APT update >/dev/null 2>&1
cap cap-apt-rollback.txt APT install -y --allow-downgrades --no-install-recommends $CONF "$WORK/keep/hello-outpost_1.0-1_all.deb" newdep-outpost-
Q > "$OUT/query-rolled-back.txt"
echo "hello-outpost hold" | D --set-selections
cap cap-apt-held.txt APT install -y --no-install-recommends $CONF hello-outpost=1.1-1
python3 - "$R" "$OUT" <<'EOF'
import fcntl, subprocess, sys
root, out = sys.argv[1], sys.argv[2]
with open(root + "/var/lib/dpkg/lock-frontend", "a+") as f:
    fcntl.lockf(f, fcntl.LOCK_EX)
    r = subprocess.run(["dpkg", "--root=" + root, "--force-not-root", "--configure", "-a"],
                       capture_output=True, text=True)
    open(out + "/cap-dpkg-lock.txt", "w").write(r.stdout + r.stderr + "rc=%d\n" % r.returncode)
    r = subprocess.run(["apt-get", "-o", "Dir=" + root, "-o", "Dir::State::status=" + root + "/var/lib/dpkg/status",
                        "-o", "Dir::Cache=" + root + "/var/cache/apt", "-o", "Dir::Etc::Parts=" + root + "/etc/apt/apt.conf.d",
                        "-o", "DPkg::Options::=--root=" + root, "install", "-y", "newdep-outpost=1.0-1"],
                       capture_output=True, text=True)
    open(out + "/cap-apt-lock.txt", "w").write(r.stdout + r.stderr + "rc=%d\n" % r.returncode)
EOF
[ "$host_sum" = "$(md5sum /var/lib/dpkg/status)" ] || { echo "host dpkg status changed!" >&2; exit 1; }
echo "captured into $OUT"
