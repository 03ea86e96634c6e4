#!/usr/bin/env bash
# Ingest side by side (issue 18): Outpost, VictoriaMetrics and a Zabbix
# proxy on the same machine, in the same minutes, fed the same metric sample
# stream by the same generator (`outpost-bench`).
#
#   benches/ingest-side-by-side.sh [OUT_DIR]
#
# The stream: DEVICES simulated hosts, each sending a sample of 28 values
# (CPU, load, memory, swap, three disks, two NICs: the Linux agent's shape)
# RATE times a second, from a phase of its own.
#   * Outpost: `outpost-bench ingest --mix metrics --rate RATE` — one QUIC
#     connection and client certificate per device (the real agent's
#     protocol); accepted = stored with fsync, then acknowledged.
#   * VictoriaMetrics (Debian `victoria-metrics`): `outpost-bench peer
#     --target victoria-metrics` — Prometheus text to /api/v1/import/prometheus
#     over SENDERS keep-alive connections (what vmagent does); accepted =
#     HTTP 204, the rows in its in-memory buffers (flushed ~every second).
#   * Zabbix proxy (Debian `zabbix-proxy-sqlite3`), passive, configuration
#     (one host per device, one trapper item per value) seeded into its
#     SQLite database: `outpost-bench peer --target zabbix` — the sender
#     protocol over SENDERS connections at a time (one TCP connection per
#     request, as zabbix_sender); accepted = `processed: N`, the values in
#     its shared-memory history cache (written to SQLite by the history
#     syncers ~every second).
# Two phases: `fixed` (the offered load above: latency, CPU per million
# samples, memory, bytes on disk) and `max` (MAX_RATE per device — Outpost
# without a rate: as fast as acks allow — for the most each accepts).
# Bytes on disk per sample are taken after each system's own compaction:
# Outpost's samples sealed into chunks and RocksDB compacted
# (`outpost-bench outpost-disk`), VictoriaMetrics after force_flush and
# force_merge minus its empty data directory, Zabbix's SQLite after VACUUM
# minus the seeded configuration. Short runs give short series: a 60 s run
# stores 60 points per series, so per-sample bytes favour none of the
# compressing stores; DURATION=10m says more about steady state.
# Stored samples are counted back from each system (Outpost: the values in
# its sealed chunks and head, one per series and millisecond — every acked
# record is durable; VictoriaMetrics: /api/v1/export; Zabbix: proxy_history
# rows) and must equal what it accepted. Every generated sample carries its
# own timestamp (when it was due), so no store may fold two into one.
# A peer slower than the offered load is sent at most 10,000 samples per
# request, back to back; the rest waits as a count, not in memory.
#
# Environment: DEVICES (1000), RATE (1: samples per device per second),
# MAX_RATE (20), DURATION (60s), WARMUP (5s), SENDERS (8), PHASES ("fixed
# max"), BIN (target/release: outpost and outpost-bench, built with
# `cargo build --release -p outpost-appliance -p outpost-bench`),
# BASE_PORT (17200: VictoriaMetrics on it, the proxy's trapper on the next;
# VM_PORT / ZBX_PORT override), KEEP=1 keeps OUT_DIR's data.
# Installs victoria-metrics, zabbix-proxy-sqlite3, sqlite3 and curl with
# apt-get if absent (root or sudo); each peer runs in the foreground with
# its own data directory and ports, never as the system service.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
OUT=${1:-/tmp/outpost-side-by-side}
BIN=${BIN:-${CARGO_TARGET_DIR:-$root/target}/release}
DEVICES=${DEVICES:-1000}
RATE=${RATE:-1}
MAX_RATE=${MAX_RATE:-20}
DURATION=${DURATION:-60s}
WARMUP=${WARMUP:-5s}
SENDERS=${SENDERS:-8}
PHASES=${PHASES:-fixed max}
BASE_PORT=${BASE_PORT:-17200}
VM_PORT=${VM_PORT:-$BASE_PORT}
ZBX_PORT=${ZBX_PORT:-$((BASE_PORT + 1))}
BIN=$(cd "$BIN" 2>/dev/null && pwd || echo "$BIN")
bench=$BIN/outpost-bench

[ -x "$bench" ] && [ -x "$BIN/outpost" ] || {
  echo "no release binaries in $BIN: cargo build --release -p outpost-appliance -p outpost-bench" >&2
  exit 1
}

"$root/scripts/deps.sh" --packages victoria-metrics zabbix-proxy-sqlite3 sqlite3 curl python3

mkdir -p "$OUT"
cd "$OUT"
rm -rf outpost-* vm-* zbx-* state-* ./*.json ./*.log
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# RESULT field of a JSON report.
field() {
  python3 -c 'import json,sys; v = json.load(open(sys.argv[1])).get(sys.argv[2], ""); print(int(v) if isinstance(v, float) and v.is_integer() else v)' "$1" "$2"
}
wait_http() { for _ in $(seq 100); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
wait_tcp() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }

run_outpost() { # phase
  local phase=$1 rate_args=()
  [ "$phase" = fixed ] && rate_args=(--rate "$RATE")
  "$bench" ingest --spawn --outpost "$BIN/outpost" --appliance-data "outpost-$phase" \
    --state "state-$phase" --agents "$DEVICES" --mix metrics "${rate_args[@]}" \
    --duration "$DURATION" --warmup "$WARMUP" --scenario "outpost_$phase" --quiet \
    --json "outpost-$phase.json" >/dev/null
  local acked
  acked=$(field "outpost-$phase.json" samples_acked_total)
  "$bench" outpost-disk --db "outpost-$phase/db" --samples "$acked" \
    --json "outpost-$phase-disk.json" >/dev/null
  echo "outpost $phase: $(field "outpost-$phase.json" samples_per_sec) samples/s" >&2
}

run_vm() { # phase rate
  local phase=$1 rate=$2 dir="vm-$1"
  victoria-metrics -storageDataPath "$dir" -httpListenAddr "127.0.0.1:$VM_PORT" \
    -retentionPeriod 1d -loggerLevel ERROR -search.latencyOffset 0s >"$dir.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_http "http://127.0.0.1:$VM_PORT/health"
  local empty
  empty=$(du -sb "$dir" | cut -f1)
  "$bench" peer --target victoria-metrics --addr "127.0.0.1:$VM_PORT" --devices "$DEVICES" \
    --rate "$rate" --senders "$SENDERS" --duration "$DURATION" --warmup "$WARMUP" \
    --pid "$pid" --quiet --json "vm-$phase.json" >/dev/null
  curl -fs "http://127.0.0.1:$VM_PORT/internal/force_flush" >/dev/null
  local month
  month=$(date -u +%Y_%m)
  curl -fs "http://127.0.0.1:$VM_PORT/internal/force_merge?partition_prefix=$month" >/dev/null
  # force_merge runs in the background: wait until no merge is active.
  for _ in $(seq 600); do
    active=$(curl -fs "http://127.0.0.1:$VM_PORT/metrics" |
      awk '/^vm_active_merges\{/ {s += $2} END {print s + 0}')
    [ "$active" = 0 ] && break
    sleep 0.5
  done
  # Rows become searchable a few seconds after they are flushed (new
  # series are registered in the background): count until all are there.
  local stored=0 accepted
  accepted=$(field "vm-$phase.json" samples_accepted_total)
  for _ in $(seq 120); do
    stored=$(curl -fs "http://127.0.0.1:$VM_PORT/api/v1/export" -d 'match[]={__name__!=""}' |
      python3 -c 'import json,sys; print(sum(len(json.loads(l)["values"]) for l in sys.stdin))')
    [ "$stored" -ge "$accepted" ] && break
    curl -fs "http://127.0.0.1:$VM_PORT/internal/force_flush" >/dev/null
    sleep 0.5
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 - "vm-$phase.json" "$stored" "$(du -sb "$dir" | cut -f1)" "$empty" <<'EOF'
import json, sys
p, stored, size, empty = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
size -= empty
r = json.load(open(p)); r["stored"] = stored; r["bytes_on_disk"] = size
r["bytes_per_sample"] = size / max(stored, 1); json.dump(r, open(p, "w"), indent=1)
EOF
  echo "victoria-metrics $phase: $(field "vm-$phase.json" samples_per_sec) samples/s" >&2
}

run_zbx() { # phase rate
  local phase=$1 rate=$2 dir
  dir=$OUT/zbx-$1
  mkdir -p "$dir"
  zcat /usr/share/zabbix-proxy-sqlite3/schema.sql.gz | sqlite3 "$dir/proxy.db"
  "$bench" zabbix-seed --devices "$DEVICES" | sqlite3 "$dir/proxy.db"
  local seeded
  seeded=$(stat -c %s "$dir/proxy.db")
  cat >"$dir/proxy.conf" <<EOF
ProxyMode=1
Server=127.0.0.1
Hostname=outpost-bench
ListenIP=127.0.0.1
ListenPort=$ZBX_PORT
LogType=file
LogFile=$dir/proxy.log
PidFile=$dir/proxy.pid
SocketDir=$dir
DBName=$dir/proxy.db
AllowRoot=1
StartTrappers=8
ProxyOfflineBuffer=24
CacheSize=256M
HistoryCacheSize=512M
HistoryIndexCacheSize=64M
EOF
  /usr/sbin/zabbix_proxy -c "$dir/proxy.conf"
  wait_tcp "$ZBX_PORT"
  local pid
  pid=$(cat "$dir/proxy.pid")
  pids+=("$pid")
  "$bench" peer --target zabbix --addr "127.0.0.1:$ZBX_PORT" --devices "$DEVICES" \
    --rate "$rate" --senders "$SENDERS" --duration "$DURATION" --warmup "$WARMUP" \
    --pid "$pid" --quiet --json "zbx-$phase.json" >/dev/null
  # Let the history syncers write what the trappers accepted.
  local accepted stored=0
  accepted=$(field "zbx-$phase.json" samples_accepted_total)
  for _ in $(seq 300); do
    stored=$(sqlite3 "$dir/proxy.db" 'PRAGMA busy_timeout=5000; select count(*) from proxy_history' | tail -1)
    [ "$stored" -ge "$accepted" ] && break
    sleep 1
  done
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  sqlite3 "$dir/proxy.db" 'VACUUM'
  python3 - "zbx-$phase.json" "$stored" "$(stat -c %s "$dir/proxy.db")" "$seeded" <<'EOF'
import json, sys
p, stored, size, seeded = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(p)); r["stored"] = stored; r["bytes_on_disk"] = size - seeded
r["bytes_per_sample"] = (size - seeded) / max(stored, 1); json.dump(r, open(p, "w"), indent=1)
EOF
  echo "zabbix proxy $phase: $(field "zbx-$phase.json" samples_per_sec) samples/s" >&2
}

for phase in $PHASES; do
  case $phase in
    fixed) rate=$RATE ;;
    max) rate=$MAX_RATE ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
  run_outpost "$phase"
  run_vm "$phase" "$rate"
  run_zbx "$phase" "$rate"
done

python3 - "$DEVICES" "$RATE" "$MAX_RATE" "$DURATION" $PHASES <<'EOF'
import json, sys
devices, rate, max_rate, duration, phases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def load(p):
    try:
        return json.load(open(p))
    except OSError:
        return {}
for phase in phases:
    o, od = load(f"outpost-{phase}.json"), load(f"outpost-{phase}-disk.json")
    v, z = load(f"vm-{phase}.json"), load(f"zbx-{phase}.json")
    offered = f"{devices} devices × {rate}/s × 28 values" if phase == "fixed" else \
        f"{devices} devices, Outpost as fast as acks allow, peers {max_rate}/s per device"
    print(f"\n### {phase}: {offered}, {duration}\n")
    print("| | Outpost | VictoriaMetrics | Zabbix proxy |")
    print("|---|---|---|---|")
    n = lambda x: f"{x:,.0f}" if isinstance(x, (int, float)) else "—"
    def row(name, ov, vv, zv, fmt="{:,.0f}"):
        f = lambda x: fmt.format(x) if isinstance(x, (int, float)) else (x or "—")
        print(f"| {name} | {f(ov)} | {f(vv)} | {f(zv)} |")
    row("accepted samples/s", o.get("samples_per_sec"), v.get("samples_per_sec"), z.get("samples_per_sec"))
    row("accepted means", "fsync'd, then acked", "in memory (flushed ~1 s)", "in history cache (to SQLite ~1 s)", "{}")
    row("stored / accepted (whole run)", f"{n(od.get('stored'))} / {n(o.get('samples_acked_total'))}",
        f"{n(v.get('stored'))} / {n(v.get('samples_accepted_total'))}",
        f"{n(z.get('stored'))} / {n(z.get('samples_accepted_total'))}", "{}")
    row("p99 acceptance latency, ms", o.get("p99_ms"), v.get("p99_ms"), z.get("p99_ms"), "{:.2f}")
    row("CPU s per million samples", o.get("cpu_s_per_million_samples"), v.get("cpu_s_per_million_samples"),
        z.get("cpu_s_per_million_samples"), "{:.2f}")
    row("bytes on disk per sample after compaction", od.get("bytes_per_sample"), v.get("bytes_per_sample"),
        z.get("bytes_per_sample"), "{:.2f}")
    row("peak memory, MB (Outpost RSS; peers PSS of all processes)", o.get("appliance_rss_mb"),
        v.get("peak_pss_mb"), z.get("peak_pss_mb"), "{:.0f}")
    row("load generator CPU %", o.get("client_cpu_pct"), v.get("client_cpu_pct"), z.get("client_cpu_pct"), "{:.0f}")
    try:
        print(f"\nRatios (Outpost ÷ peer): samples/s {o['samples_per_sec']/v['samples_per_sec']:.2f} vs VictoriaMetrics, "
              f"{o['samples_per_sec']/z['samples_per_sec']:.2f} vs Zabbix; CPU per sample "
              f"{o['cpu_s_per_million_samples']/v['cpu_s_per_million_samples']:.2f} / "
              f"{o['cpu_s_per_million_samples']/z['cpu_s_per_million_samples']:.2f}; bytes per sample "
              f"{od['bytes_per_sample']/v['bytes_per_sample']:.2f} / {od['bytes_per_sample']/z['bytes_per_sample']:.2f}")
    except (KeyError, ZeroDivisionError, TypeError):
        pass
EOF
[ "${KEEP:-0}" = 1 ] || rm -rf outpost-*/ vm-*/ zbx-*/ state-*/
