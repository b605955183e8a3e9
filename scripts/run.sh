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
echo
echo "API:        http://$HOST:$PORT/api/v1/      docs: http://$HOST:$PORT/api/v1/docs"
echo "Admin site: http://$HOST:$PORT/admin/       (admin / admin)"
echo "Dashboard:  http://$HOST:$PORT/dashboard/   (the same login)"
echo "Report:     var/simulation/report.txt and its PNG charts"
exec $PY manage.py runserver "$HOST:$PORT"
