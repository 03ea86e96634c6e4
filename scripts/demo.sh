#!/usr/bin/env bash
# Builds Outpost and starts an appliance plus a local agent enrolled against
# it, so `outpost devices` shows a live device. Ctrl-C stops both.
#
#   DATA=./demo-data  QUIC=127.0.0.1:4433  ADMIN=127.0.0.1:8080  scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --bin outpost --bin outpost-agent

DATA=${DATA:-./demo-data}
QUIC=${QUIC:-127.0.0.1:4433}
ADMIN=${ADMIN:-127.0.0.1:8080}
BIN=./target/release
mkdir -p "$DATA"

cleanup() {
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
  [ -n "${APP_PID:-}" ] && kill "$APP_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

rm -f "$DATA/admin.addr"
"$BIN/outpost" serve --data "$DATA" --quic-listen "$QUIC" --admin-listen "$ADMIN" \
  >"$DATA/appliance.stdout" 2>"$DATA/appliance.log" &
APP_PID=$!
for _ in $(seq 1 100); do
  [ -f "$DATA/admin.addr" ] && break
  kill -0 "$APP_PID" 2>/dev/null || { cat "$DATA/appliance.log" >&2; exit 1; }
  sleep 0.1
done
FP=$("$BIN/outpost" ca-fingerprint --data "$DATA")

if [ ! -f "$DATA/agent/identity.toml" ]; then
  TOKEN=$("$BIN/outpost" --data "$DATA" token create --tenant demo-msp --customer demo-customer)
  "$BIN/outpost-agent" enroll --appliance "$QUIC" --token "$TOKEN" --ca-fingerprint "$FP" \
    --state "$DATA/agent" >/dev/null
fi
"$BIN/outpost-agent" run --state "$DATA/agent" --heartbeat-interval 5s --metrics-interval 10s \
  2>"$DATA/agent.log" &
AGENT_PID=$!
sleep 2

cat <<MSG

Outpost appliance is running (data in $DATA, logs in $DATA/*.log).
  CA fingerprint : $FP
  agents (QUIC)  : $QUIC
  admin API      : http://$ADMIN  (token in $DATA/admin.token)

In another terminal:
  $BIN/outpost --data $DATA devices
  $BIN/outpost --data $DATA device show <ID>
  curl -s http://$ADMIN/metrics | grep ^outpost_

Ctrl-C stops the appliance and the agent.
MSG
"$BIN/outpost" --data "$DATA" devices || true
wait "$APP_PID"
