#!/usr/bin/env bash
# `make run`: the exchange with a simulated market, on this machine's PostgreSQL when one answers
# (matching rounds need it); otherwise the embedded defaults (SQLite, filesystem broker) with the
# demo organisations only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
DEMO_DB=${DEMO_DB:-sanduisan_demo}

if [ -z "${DATABASE_URL:-}" ] && pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if ! psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$DEMO_DB'" | grep -q 1; then
    createdb -h 127.0.0.1 -U postgres "$DEMO_DB"
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DEMO_DB"
fi

$PY manage.py migrate --noinput -v0
$PY manage.py seed_demo
if [[ "${DATABASE_URL:-}" == postgres* ]]; then
  echo "Simulating 72 hours of a 1,000-node market through the real pipeline (a few minutes, once per database) ..."
  $PY manage.py simulate --unless-present
else
  echo "No PostgreSQL on 127.0.0.1:5432: serving the demo organisations only (the simulated market needs it)."
fi
GATEWAY_PORT=${GATEWAY_PORT:-8001}
UPSTREAM_PORT=${UPSTREAM_PORT:-8002}
GATEWAY_UP=""
# The token gateway needs Redis (budgets, limits, the usage buffer) and PostgreSQL (matching).
if [[ "${DATABASE_URL:-}" == postgres* ]] && (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
  # A fake OpenAI-compatible server plays the demo supplier's endpoint (DeepSeek's usage dialect).
  $PY -m uvicorn gateway.fake_upstream:app --host 127.0.0.1 --port "$UPSTREAM_PORT" --loop uvloop \
    --http httptools --no-access-log --log-level warning & UPSTREAM_PID=$!
  $PY manage.py seed_gateway_demo --upstream "http://127.0.0.1:$UPSTREAM_PORT/deepseek/v1"
  $PY -m gateway.flusher & FLUSHER_PID=$!
  $PY -m uvicorn gateway.asgi:application --host "$HOST" --port "$GATEWAY_PORT" --loop uvloop --http httptools \
    --no-access-log --log-level warning & GATEWAY_PID=$!
  trap 'kill $GATEWAY_PID $FLUSHER_PID $UPSTREAM_PID 2>/dev/null' EXIT
  for _ in $(seq 60); do (exec 3<>"/dev/tcp/$HOST/$GATEWAY_PORT") 2>/dev/null && break; sleep 0.5; done
  GATEWAY_UP=1
fi
echo
echo "API:        http://$HOST:$PORT/api/v1/      docs: http://$HOST:$PORT/api/v1/docs"
echo "Admin site: http://$HOST:$PORT/admin/       (admin / admin)"
echo "Dashboard:  http://$HOST:$PORT/dashboard/   (the same login)"
echo "Report:     var/simulation/report.txt and its PNG charts"
if [ -n "$GATEWAY_UP" ]; then
  echo "Gateway:    http://$HOST:$GATEWAY_PORT/v1  (OpenAI-compatible; the demo buyer holds a DeepSeek-V3 allocation)"
  echo "  curl -s http://$HOST:$GATEWAY_PORT/v1/chat/completions -H \"Authorization: Bearer \$BUYER_KEY\" \\"
  echo "    -H 'Content-Type: application/json' -d '{\"model\": \"DeepSeek-V3\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}'"
  echo "  python: openai.OpenAI(base_url=\"http://$HOST:$GATEWAY_PORT/v1\", api_key=BUYER_KEY).chat.completions.create(...)"
else
  echo "Gateway:    not started (it needs PostgreSQL and Redis on 127.0.0.1)"
fi
$PY manage.py runserver "$HOST:$PORT"
