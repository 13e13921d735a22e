#!/usr/bin/env bash
# Soak test: N minutes of mixed traffic against a real server; reports unexpected failures and the
# server's resident-memory drift, then stops the server with SIGTERM and checks it exits 0.
#
#   scripts/soak.sh [MINUTES]                 start a server on a free port, soak it, stop it
#   BASE_URL=http://host:8000 SERVER_PID=123 scripts/soak.sh 10     soak a running server
#
# Extra `atenea serve` flags: SERVE_ARGS="--max-num-seqs 32". Client count: CONCURRENCY (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-10}"
PY="${PYTHON:-.venv/bin/python}"
CONCURRENCY="${CONCURRENCY:-8}"
LOG="${SOAK_LOG:-/tmp/atenea-soak-server.log}"

started_here=0
if [[ -z "${BASE_URL:-}" ]]; then
  PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  BASE_URL="http://127.0.0.1:${PORT}"
  # shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
  "$PY" -m app.cli serve --port "$PORT" ${SERVE_ARGS:-} >"$LOG" 2>&1 &
  SERVER_PID=$!
  started_here=1
  trap '[[ $started_here == 1 ]] && kill -9 "$SERVER_PID" 2>/dev/null || true' EXIT
  echo "server pid $SERVER_PID on $BASE_URL (log $LOG)"
  for _ in $(seq 600); do
    curl -fsS "$BASE_URL/ready" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited early"; tail -50 "$LOG"; exit 1; }
    sleep 0.5
  done
fi

status=0
"$PY" scripts/soak.py --base-url "$BASE_URL" --minutes "$MINUTES" --concurrency "$CONCURRENCY" \
  ${SERVER_PID:+--pid "$SERVER_PID"} ${API_KEY:+--api-key "$API_KEY"} || status=$?

if [[ $started_here == 1 ]]; then
  kill -TERM "$SERVER_PID"
  code=0
  wait "$SERVER_PID" || code=$?
  started_here=0
  echo "server exit code after SIGTERM: $code"
  [[ $code == 0 ]] || status=1
fi
exit "$status"
