#!/usr/bin/env bash
# The whole shape of Outpost on one machine: builds the release binaries and
# starts a site appliance (`outpost`), a local agent enrolled against it, and
# a local MSP central (`outpost-central`) that the site has joined; creates a
# console login (generated password), one example alert rule, and prints
# what to try, including the apt proxy line. Ctrl-C stops everything.
#
#   scripts/demo.sh            run until Ctrl-C
#   scripts/demo.sh --check    start, verify every piece works, stop (exit 0 on success)
#
# Settings (environment), with their defaults:
#   DATA=./demo-data               state: the appliance's data directory, DATA/agent, DATA/central
#   QUIC=127.0.0.1:4433            appliance: agents (QUIC)
#   ADMIN=127.0.0.1:8080           appliance: admin API
#   CACHE=127.0.0.1:3142           appliance: LAN patch cache (apt proxy); 0.0.0.0:3142 serves the LAN
#   CENTRAL=127.0.0.1:4434         central: site uplinks (QUIC)
#   CENTRAL_HTTP=127.0.0.1:8090    central: web console and API
#   UPLINK_INTERVAL=10s            how often the site sends a batch to central
#   BIN=./target/release           where the binaries are
#   DEMO_NO_BUILD=1                use the binaries in BIN as they are (no deps, no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

DATA=${DATA:-./demo-data}
QUIC=${QUIC:-127.0.0.1:4433}
ADMIN=${ADMIN:-127.0.0.1:8080}
CACHE=${CACHE:-127.0.0.1:3142}
CENTRAL=${CENTRAL:-127.0.0.1:4434}
CENTRAL_HTTP=${CENTRAL_HTTP:-127.0.0.1:8090}
UPLINK_INTERVAL=${UPLINK_INTERVAL:-10s}
BIN=${BIN:-./target/release}
TENANT=demo-msp
CUSTOMER=demo-customer
SITE=demo-site
CONSOLE_USER=admin
RULE=demo-processes

if [ "${DEMO_NO_BUILD:-}" != 1 ]; then
  scripts/deps.sh
  cargo build --release --bin outpost --bin outpost-agent --bin outpost-central
fi
for b in outpost outpost-agent outpost-central; do
  [ -x "$BIN/$b" ] || { echo "error: $BIN/$b not found (build it, or set BIN)" >&2; exit 1; }
done
if [ "$CHECK" = 1 ]; then
  command -v curl >/dev/null || { echo "error: --check needs curl" >&2; exit 1; }
fi

mkdir -p "$DATA"
CENTRAL_DATA="$DATA/central"
outpost() { "$BIN/outpost" --data "$DATA" "$@"; }

# --- stopping ---------------------------------------------------------------
PIDS=()   # started processes, in start order; stopped in reverse
NAMES=()
stop_one() { # pid name: SIGTERM, wait up to 15 s, then SIGKILL
  local pid=$1 name=$2
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "$name did not stop within 15s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_one "${PIDS[$i]}" "${NAMES[$i]}"
  done
  [ ${#PIDS[@]} -eq 0 ] || echo "stopped: ${NAMES[*]}" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "error: $*" >&2
  for log in "$DATA/central.log" "$DATA/appliance.log" "$DATA/agent.log"; do
    [ -s "$log" ] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
  done
  exit 1
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND (quiet itself) every 0.2 s.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local n=$((secs * 5))
  for _ in $(seq 1 "$n"); do
    "$@" && return 0
    sleep 0.2
  done
  fail "timed out after ${secs}s waiting for $what"
}

start() { # name logfile command...: starts in the background, remembered for cleanup
  local name=$1 log=$2
  shift 2
  "$@" >>"$log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}
alive() { kill -0 "${PIDS[$1]}" 2>/dev/null; }

# --- central ----------------------------------------------------------------
mkdir -p "$CENTRAL_DATA"
rm -f "$CENTRAL_DATA/http.addr"
start outpost-central "$DATA/central.log" \
  "$BIN/outpost-central" serve --data "$CENTRAL_DATA" --listen "$CENTRAL" --http-listen "$CENTRAL_HTTP"
CENTRAL_IDX=$((${#PIDS[@]} - 1))
central_up() { alive "$CENTRAL_IDX" || fail "outpost-central exited"; [ -f "$CENTRAL_DATA/http.addr" ]; }
wait_for 30 "outpost-central to listen" central_up

# --- appliance --------------------------------------------------------------
rm -f "$DATA/admin.addr"
start outpost "$DATA/appliance.log" \
  "$BIN/outpost" serve --data "$DATA" --quic-listen "$QUIC" --admin-listen "$ADMIN" --cache-listen "$CACHE"
APP_IDX=$((${#PIDS[@]} - 1))
appliance_up() {
  alive "$APP_IDX" || fail "the appliance exited"
  [ -f "$DATA/admin.addr" ] && outpost devices >/dev/null 2>&1
}
wait_for 60 "the appliance's admin API" appliance_up
FP=$("$BIN/outpost" ca-fingerprint --data "$DATA")

# --- agent ------------------------------------------------------------------
if [ ! -f "$DATA/agent/identity.toml" ]; then
  TOKEN=$(outpost token create --tenant "$TENANT" --customer "$CUSTOMER")
  "$BIN/outpost-agent" enroll --appliance "$QUIC" --token "$TOKEN" --ca-fingerprint "$FP" \
    --state "$DATA/agent" >/dev/null
fi
start outpost-agent "$DATA/agent.log" \
  "$BIN/outpost-agent" run --state "$DATA/agent" --heartbeat-interval 5s --metrics-interval 10s
DEVICE=$(sed -n 's/^device_id = "\(.*\)"$/\1/p' "$DATA/agent/identity.toml")

# --- the site joins central --------------------------------------------------
# Again when this central is another one (address or CA) than last time.
JOINED_TO="$CENTRAL $("$BIN/outpost-central" ca-fingerprint --data "$CENTRAL_DATA")"
if [ ! -f "$DATA/uplink/uplink.json" ] || [ "$(cat "$DATA/demo-joined" 2>/dev/null)" != "$JOINED_TO" ]; then
  mapfile -t SITE_ADD < <("$BIN/outpost-central" site add --data "$CENTRAL_DATA" \
    --tenant "$TENANT" --customer "$CUSTOMER" --site "$SITE")
  [ ${#SITE_ADD[@]} -eq 2 ] || fail "outpost-central site add printed: ${SITE_ADD[*]:-nothing}"
  outpost uplink join --central "$CENTRAL" --token "${SITE_ADD[0]}" \
    --ca-fingerprint "${SITE_ADD[1]}" --interval "$UPLINK_INTERVAL" >/dev/null
  echo "$JOINED_TO" >"$DATA/demo-joined"
fi

# --- a console login (new password each run) ---------------------------------
PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$PASSWORD" | "$BIN/outpost-central" user add --data "$CENTRAL_DATA" \
  --tenant "$TENANT" --name "$CONSOLE_USER" --role admin
(umask 077 && printf 'url      http://%s/\ntenant   %s\nuser     %s\npassword %s\n' \
  "$CENTRAL_HTTP" "$TENANT" "$CONSOLE_USER" "$PASSWORD" >"$DATA/console-login.txt")

# --- one example alert rule --------------------------------------------------
# Fires on any machine within a minute (more than 10 processes for 30 s), so
# the alert flow (appliance -> central) is visible at once. No channels:
# add a webhook channel to be notified (README, Alerting).
if ! outpost api GET "/api/v1/alert-rules/$RULE" >/dev/null 2>&1; then
  outpost api POST /api/v1/alert-rules --body "{\"id\":\"$RULE\",\"name\":\"demo: more than 10 processes\",
    \"severity\":\"info\",\"condition\":{\"type\":\"threshold\",\"metric\":\"processes\",
    \"comparison\":\">\",\"threshold\":10,\"for\":\"30s\"}}" >/dev/null
fi

# --- check mode: verify, then stop --------------------------------------------
if [ "$CHECK" = 1 ]; then
  device_online() { outpost devices --json 2>/dev/null | grep -q "\"id\":\"$DEVICE\"[^}]*\"status\":\"online\""; }
  wait_for 60 "device $DEVICE online at the appliance" device_online
  linked() { outpost uplink status --json 2>/dev/null | grep -q '"link":"connected"'; }
  wait_for 60 "the uplink to central" linked
  COOKIE=""
  login() {
    COOKIE=$(curl -s -o /dev/null -D - -H 'Content-Type: application/json' \
      -d "{\"tenant\":\"$TENANT\",\"username\":\"$CONSOLE_USER\",\"password\":\"$PASSWORD\"}" \
      "http://$CENTRAL_HTTP/api/v1/login" | tr -d '\r' |
      sed -n 's/^[Ss]et-[Cc]ookie: \(outpost_session=[^;]*\).*/\1/p')
    [ -n "$COOKIE" ]
  }
  wait_for 10 "a console login as $CONSOLE_USER" login
  at_central() {
    curl -sf -H "Cookie: $COOKIE" "http://$CENTRAL_HTTP/api/v1/devices" 2>/dev/null | grep -q "\"$DEVICE\""
  }
  wait_for 90 "device $DEVICE at central" at_central
  outpost api GET "/api/v1/alert-rules/$RULE" >/dev/null || fail "alert rule $RULE missing"
  cache_up() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$CACHE/")" != 000 ]; }
  wait_for 10 "the patch cache on $CACHE" cache_up
  echo "demo check passed: appliance, agent $DEVICE, central with site $SITE, console login, rule $RULE, cache on $CACHE"
  exit 0
fi

cat <<MSG

Outpost is running (state in $DATA, logs in $DATA/*.log):

  appliance      agents  $QUIC (QUIC, CA $FP)
                 admin   http://$ADMIN (token in $DATA/admin.token)
                 cache   http://$CACHE (apt proxy)
  agent          device  $DEVICE (state in $DATA/agent)
  central        console http://$CENTRAL_HTTP/
                 login   tenant $TENANT, user $CONSOLE_USER, password $PASSWORD
                         (also in $DATA/console-login.txt)
                 uplink  $CENTRAL (site $SITE sends a batch every $UPLINK_INTERVAL)

In another terminal:
  $BIN/outpost --data $DATA devices
  $BIN/outpost --data $DATA device show $DEVICE
  $BIN/outpost --data $DATA alerts --state all      # rule $RULE fires within a minute
  $BIN/outpost --data $DATA uplink status
  $BIN/outpost-agent status --state $DATA/agent
  curl -s http://$ADMIN/metrics | grep ^outpost_

Try the patch cache (apt through the appliance):
  sudo apt-get -o Acquire::http::Proxy=http://$CACHE update
  $BIN/outpost --data $DATA cache stats
  (for good: echo 'Acquire::http::Proxy "http://$CACHE";' | sudo tee /etc/apt/apt.conf.d/01outpost;
   other machines need CACHE=0.0.0.0:3142)

Ctrl-C stops the agent, the appliance and central.
MSG
outpost devices || true
# Until Ctrl-C or one of them exits. Ctrl-C in a terminal reaches every
# process: each stops itself (exit 0) and bash, seeing a child that handled
# the signal, may not run its own INT trap; a clean exit is that case.
set +e
wait -n "${PIDS[@]}"
rc=$?
set -e
[ "$rc" -eq 0 ] && exit 0
fail "a demo process exited with status $rc"
