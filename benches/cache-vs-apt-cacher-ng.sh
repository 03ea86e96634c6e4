#!/usr/bin/env bash
# Side-by-side benchmark of the Outpost LAN patch cache and apt-cacher-ng
# (issue 6): same local upstream, same signed repository, same files, same
# client load.
#
#   benches/cache-vs-apt-cacher-ng.sh [OUTPOST_BINARY]
#
# 1. Concurrent misses: N clients (default 100) fetch the same uncached
#    50 MiB .deb at once through each proxy (proxy-style request lines,
#    curl -x); the upstream counts the requests and body bytes it sent;
#    every client's SHA-256 is checked.
# 2. Cache hits: wrk -t2 -c16 -d DURATION with a proxy-style request line
#    (absolute URL) for that file, against each proxy in turn, RUNS times
#    (outpost, apt-cacher-ng, outpost, apt-cacher-ng, ...); throughput,
#    latency percentiles and the proxy's CPU seconds.
#
# Installs apt-cacher-ng and wrk with apt-get if absent (root or sudo);
# apt-cacher-ng runs in the foreground with its own configuration, cache
# and port, never as the system service. Needs python3, curl, gpg, gpgv,
# dpkg-deb. Environment: CLIENTS (100), DURATION (15s), RUNS (2), SIZE_MB (50),
# UPLINK_MBPS (upstream pace per connection, MB/s, default 20: the 50 MiB
# file takes ~2.6 s, so every client joins while it downloads), BASE_PORT
# (17100: ports BASE..BASE+5 on 127.0.0.1), KEEP=1 keeps the work dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
outpost=${1:-${CARGO_TARGET_DIR:-$root/target}/release/outpost}
CLIENTS=${CLIENTS:-100}
DURATION=${DURATION:-15s}
RUNS=${RUNS:-2}
SIZE_MB=${SIZE_MB:-50}
UPLINK_MBPS=${UPLINK_MBPS:-20}
BASE_PORT=${BASE_PORT:-17100}
UP_PORT=$BASE_PORT
OUT_PORT=$((BASE_PORT + 1))
ACNG_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))
QUIC_PORT=$((BASE_PORT + 4))

[ -x "$outpost" ] || { echo "no outpost binary at $outpost: cargo build --release -p outpost-appliance" >&2; exit 1; }

# The packaged service is not what we measure: we start our own
# apt-cacher-ng below.
"$root/scripts/deps.sh" --packages apt-cacher-ng wrk curl gpg gpg-agent gpgv python3
ACNG=$(command -v apt-cacher-ng || echo /usr/sbin/apt-cacher-ng)

W=$(mktemp -d /tmp/outpost-cache-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  gpgconf --homedir "$W/gnupg" --kill gpg-agent 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "work dir kept: $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT

log() { echo "== $*" >&2; }

# ------------------------------------------------------------ repository
log "building a signed repository with one ${SIZE_MB} MiB package in $W"
arch=$(dpkg --print-architecture)
repo=$W/upstream/debian
mkdir -p "$repo/pool/main" "$repo/dists/stable/main/binary-$arch" "$W/pkg/DEBIAN" "$W/pkg/usr/share/bench"
printf 'Package: bench-big\nVersion: 1.0\nArchitecture: all\nMaintainer: Outpost Bench <b@outpost.invalid>\nDescription: cache benchmark payload\n' >"$W/pkg/DEBIAN/control"
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom >"$W/pkg/usr/share/bench/payload"
deb=pool/main/bench-big_1.0_all.deb
dpkg-deb --root-owner-group -Znone --build "$W/pkg" "$repo/$deb" >/dev/null
rm -rf "$W/pkg"
deb_size=$(stat -c %s "$repo/$deb")
deb_sha=$(sha256sum "$repo/$deb" | cut -d' ' -f1)
bin=$repo/dists/stable/main/binary-$arch
printf 'Package: bench-big\nVersion: 1.0\nArchitecture: all\nFilename: %s\nSize: %s\nSHA256: %s\nDescription: cache benchmark payload\n\n' \
  "$deb" "$deb_size" "$deb_sha" >"$bin/Packages"
gzip -9 -n -k "$bin/Packages"
entry() { printf ' %s %s %s\n' "$(sha256sum "$repo/dists/stable/$1" | cut -d' ' -f1)" "$(stat -c %s "$repo/dists/stable/$1")" "$1"; }
{
  printf 'Origin: Outpost Bench\nLabel: Outpost Bench\nSuite: stable\nCodename: stable\n'
  printf 'Date: %s\nValid-Until: %s\n' "$(date -u -d '-1 min' '+%a, %d %b %Y %H:%M:%S UTC')" "$(date -u -d '+7 days' '+%a, %d %b %Y %H:%M:%S UTC')"
  printf 'Architectures: %s all\nComponents: main\nSHA256:\n' "$arch"
  entry "main/binary-$arch/Packages"
  entry "main/binary-$arch/Packages.gz"
} >"$repo/dists/stable/Release"
mkdir -m 700 "$W/gnupg"
gpg --homedir "$W/gnupg" --batch --pinentry-mode loopback --passphrase '' \
  --quick-gen-key 'Outpost Bench <bench@outpost.invalid>' ed25519 sign 0 2>/dev/null
gpg --homedir "$W/gnupg" --batch --export >"$W/repo.gpg"
gpg --homedir "$W/gnupg" --batch --yes --digest-algo SHA256 --clearsign \
  -o "$repo/dists/stable/InRelease" "$repo/dists/stable/Release" 2>/dev/null

# ------------------------------------------------------------ servers
up=http://127.0.0.1:$UP_PORT
python3 "$here/cache_upstream.py" "$W/upstream" "$UP_PORT" $((UPLINK_MBPS * 1000 * 1000)) &
pids+=($!)

mkdir -p "$W/outpost"
cat >"$W/outpost.toml" <<EOF
[cache]
allow_hosts = ["127.0.0.1:$UP_PORT"]
allow_apt_sources = false
keyrings = ["$W/repo.gpg"]
EOF
"$outpost" serve --data "$W/outpost" --config "$W/outpost.toml" \
  --quic-listen "127.0.0.1:$QUIC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --cache-listen "127.0.0.1:$OUT_PORT" >"$W/outpost.log" 2>&1 &
outpost_pid=$!
pids+=($outpost_pid)

mkdir -p "$W/acng/conf" "$W/acng/cache" "$W/acng/log"
cat >"$W/acng/conf/acng.conf" <<EOF
CacheDir: $W/acng/cache
LogDir: $W/acng/log
SupportDir: /usr/lib/apt-cacher-ng
Port: $ACNG_PORT
BindAddress: 127.0.0.1
ForeGround: 1
ExThreshold: 4
# The local upstream is not on port 80.
AllowUserPorts: $UP_PORT
EOF
"$ACNG" -c "$W/acng/conf" >"$W/acng.log" 2>&1 &
acng_pid=$!
pids+=($acng_pid)

for port in $UP_PORT $OUT_PORT $ACNG_PORT; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
done
curl -s -o /dev/null "http://127.0.0.1:$OUT_PORT/" || { cat "$W/outpost.log" >&2; exit 1; }
curl -s -o /dev/null "http://127.0.0.1:$ACNG_PORT/" || { cat "$W/acng.log" >&2; exit 1; }

cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
upstream_stat() { # path field
  curl -s "$up/__stats" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', {}).get('$2', 0))"
}

# ------------------------------------------------------------ 1. misses
declare -A miss_reqs miss_bytes miss_secs miss_ok
concurrent_misses() { # name port
  local name=$1 port=$2
  # Learn the indexes first, as apt-get update would.
  for f in dists/stable/InRelease "dists/stable/main/binary-$arch/Packages.gz"; do
    curl -sf -o /dev/null -x "http://127.0.0.1:$port" "$up/debian/$f" || { echo "$name: $f failed" >&2; exit 1; }
  done
  curl -s -X POST "$up/__reset" >/dev/null
  log "$name: $CLIENTS concurrent clients, one uncached $(numfmt --to=iec "$deb_size") file"
  mkdir -p "$W/miss-$name"
  local t0 t1
  t0=$(date +%s.%N)
  for i in $(seq "$CLIENTS"); do
    (curl -s -x "http://127.0.0.1:$port" "$up/debian/$deb" | sha256sum | cut -d' ' -f1 >"$W/miss-$name/$i") &
  done
  wait_clients
  t1=$(date +%s.%N)
  miss_secs[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')
  miss_ok[$name]=$(grep -lx "$deb_sha" "$W/miss-$name"/* | wc -l)
  miss_reqs[$name]=$(upstream_stat "/debian/$deb" requests)
  miss_bytes[$name]=$(upstream_stat "/debian/$deb" bytes)
  log "$name: ${miss_ok[$name]}/$CLIENTS clients got the right bytes in ${miss_secs[$name]} s; upstream: ${miss_reqs[$name]} requests, ${miss_bytes[$name]} bytes"
}
wait_clients() { # waits for the client subshells only (not the servers)
  local j
  for j in $(jobs -p); do
    case " ${pids[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac
  done
}
concurrent_misses outpost $OUT_PORT
concurrent_misses apt-cacher-ng $ACNG_PORT

# ------------------------------------------------------------ 2. hits
cat >"$W/hit.lua" <<EOF
wrk.path = "$up/debian/$deb"
EOF
hits() { # name port pid run
  local name=$1 port=$2 pid=$3 run=$4 c0 c1
  # One request first: the file must be a hit for the proxy.
  curl -s -o /dev/null -x "http://127.0.0.1:$port" "$up/debian/$deb"
  c0=$(cpu_s "$pid")
  log "$name: wrk -t2 -c16 -d$DURATION --latency (proxy-style request line), run $run"
  wrk -t2 -c16 -d"$DURATION" --timeout 10s --latency -s "$W/hit.lua" "http://127.0.0.1:$port/" | tee "$W/wrk-$name-$run.txt" >&2
  c1=$(cpu_s "$pid")
  echo "$name proxy CPU: $(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b - a}') s" | tee -a "$W/wrk-$name-$run.txt" >&2
}
curl -s -X POST "$up/__reset" >/dev/null
for run in $(seq "$RUNS"); do
  hits outpost $OUT_PORT "$outpost_pid" $run
  hits apt-cacher-ng $ACNG_PORT "$acng_pid" $run
done
hit_upstream=$(upstream_stat "/debian/$deb" requests)

# ------------------------------------------------------------ summary
wrkfield() { # file -> "req/s transfer/s p50 p90 p99 errors"
  awk '
    /Requests\/sec/ {rps=$2}
    /Transfer\/sec/ {tps=$2}
    /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2}
    /Non-2xx|Socket errors/ {err=err $0}
    /proxy CPU/ {cpu=$4}
    END {printf "%s | %s | %s | %s | %s | %s s | %s", rps, tps, p50, p90, p99, cpu, (err=="" ? "none" : err)}' "$1"
}
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -sr); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "apt-cacher-ng $(dpkg-query -W -f='${Version}' apt-cacher-ng 2>/dev/null); wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null); file $deb_size bytes; upstream paced at $UPLINK_MBPS MB/s per connection"
echo
echo "| proxy | concurrent misses | upstream requests | upstream bytes | clients with the right SHA-256 | all done in |"
echo "|---|---|---|---|---|---|"
for n in outpost apt-cacher-ng; do
  echo "| $n | $CLIENTS | ${miss_reqs[$n]} | ${miss_bytes[$n]} | ${miss_ok[$n]}/$CLIENTS | ${miss_secs[$n]} s |"
done
echo
echo "| proxy, run | requests/s | transfer/s | p50 | p90 | p99 | proxy CPU | errors |"
echo "|---|---|---|---|---|---|---|---|"
for run in $(seq "$RUNS"); do
  for n in outpost apt-cacher-ng; do
    echo "| $n, $run | $(wrkfield "$W/wrk-$n-$run.txt") |"
  done
done
echo
echo "Upstream requests for the file during the hit runs: $hit_upstream"
