#!/usr/bin/env bash
# Self-check of the DB fixtures (no stackvault involved): tests/db/roundtrip.sh mariadb|postgres
# Loads 1,000,000 rows into a throw-away container (--network none), runs the writer, takes the
# watermark and the "before" checks, dumps with the engine's own tool while the writer runs, stops
# the writer, drops the database, restores the dump into the same container and into a fresh one,
# and compares checksums (ids <= watermark), audit-check and objects. It then runs the writer on
# the restored database (sequences / AUTO_INCREMENT must continue past the restored ids).
# Prints timings; exits non-zero on any difference. Keeps the dump in $OUT (default: a temp dir).
set -euo pipefail
engine=${1:?usage: roundtrip.sh mariadb|postgres}
here=$(cd "$(dirname "$0")" && pwd)
dir=$here/$engine
image=${IMAGE:-stackvault-test/db:1}
out=${OUT:-$(mktemp -d)}
c1=svfix-rt-$engine-$$
c2=svfix-rt-$engine-$$-fresh
trap 'docker rm -f "$c1" "$c2" >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
since() { printf '%.1f' "$(echo "$(now) - $1" | bc)"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

case $engine in
mariadb)
  start() { docker run -d --network none --name "$1" -e MARIADB_ROOT_PASSWORD=pw ${2:+-e MARIADB_DATABASE=$2} "$image" mariadb >/dev/null; }
  sql() { local c=$1; shift; docker exec -i -e MYSQL_PWD=pw "$c" mariadb -uroot -N -B "$@"; }
  ready() { sql "$1" -e 'SELECT 1' >/dev/null 2>&1; }
  checksums() { { echo "SET @w := $2;"; cat "$dir/checksums.sql"; } | sql "$1" calls; }
  dump() { docker exec -e MYSQL_PWD=pw "$1" mariadb-dump -uroot --single-transaction --routines --events --triggers --databases calls; }
  drop() { sql "$1" -e 'DROP DATABASE calls'; }
  restore() { sql "$1" < "$2"; }
  dumpfile=$out/calls.sql
  ;;
postgres)
  start() { docker run -d --network none --name "$1" -e POSTGRES_PASSWORD=pw ${2:+-e POSTGRES_DB=$2} "$image" postgres >/dev/null; }
  sql() { local c=$1 db=$2; shift 2; docker exec -i -e PGPASSWORD=pw "$c" psql -X -q -A -t -U postgres -h /var/run/postgresql -d "$db" -v ON_ERROR_STOP=1 "$@"; }
  ready() { sql "$1" postgres -c 'SELECT 1' >/dev/null 2>&1; }
  checksums() { sql "$1" calls -v w="$2" < "$dir/checksums.sql"; }
  dump() { docker exec -e PGPASSWORD=pw "$1" pg_dump -U postgres -h /var/run/postgresql -Fc -Z0 calls; }
  drop() { docker exec -e PGPASSWORD=pw "$1" dropdb -U postgres -h /var/run/postgresql calls; }
  restore() { docker exec -i -e PGPASSWORD=pw "$1" pg_restore -U postgres -h /var/run/postgresql --exit-on-error --create -d postgres < "$2"; }
  dumpfile=$out/calls.pgc
  ;;
*) fail "engine must be mariadb or postgres" ;;
esac
q() { # q CONTAINER FILE [ARGS...]: run a fixture file against database calls
  local c=$1 f=$2; shift 2
  sql "$c" calls "$@" < "$dir/$f"
}
wait_ready() { for _ in $(seq 1 120); do ready "$1" && return 0; sleep 0.5; done; fail "$1 did not come up"; }
writer_start() { docker exec -d -e MYSQL_PWD=pw -e PGPASSWORD=pw "$1" sh -c "$(cat "$dir/writer.sh")" writer /tmp/w.stop "$2"; }
writer_stop() {
  docker exec "$1" touch /tmp/w.stop
  for _ in $(seq 1 600); do docker exec "$1" test -e /tmp/w.stop.done && break; sleep 0.1; done
  local rc; rc=$(docker exec "$1" cat /tmp/w.stop.done) || fail "writer did not stop"
  [ "$rc" = 0 ] || fail "writer exited with $rc"
}
same() { # same WHAT EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "  $1: identical"; else diff <(echo "$2") <(echo "$3") >&2 || true; fail "$1 differs"; fi
}

echo "== $engine: $c1, dump in $dumpfile"
start "$c1" calls; wait_ready "$c1"
t=$(now); q "$c1" schema.sql >/dev/null; q "$c1" load.sql >/dev/null; echo "load (schema + 1,000,000 rows): $(since "$t") s"
echo "counts after load: $(q "$c1" counts.sql | tr '\t\n' '= ')"

writer_start "$c1" 1; sleep 3
w=$(q "$c1" watermark.sql); echo "watermark: $w"
before_sums=$(checksums "$c1" "$w")
before_objects=$(q "$c1" objects.sql)
before_audit=$(q "$c1" audit-check.sql)
[ "$before_audit" = "$(printf '0\t0')" ] || fail "audit-check on the live source: $before_audit"
t=$(now); dump "$c1" > "$dumpfile"; echo "dump (writer running): $(since "$t") s, $(stat -c %s "$dumpfile") bytes"
writer_stop "$c1"
echo "source after the writer: $(q "$c1" counts.sql | tr '\t\n' '= ')"
[ "$(checksums "$c1" "$w")" = "$before_sums" ] || fail "source checksums changed while the writer ran"

drop "$c1"
t=$(now); restore "$c1" "$dumpfile"; echo "restore into the same container after drop: $(since "$t") s"
echo "restored: $(q "$c1" counts.sql | tr '\t\n' '= ')"
same "checksums (ids <= $w)" "$before_sums" "$(checksums "$c1" "$w")"
same "objects" "$before_objects" "$(q "$c1" objects.sql)"
same "audit-check" "$before_audit" "$(q "$c1" audit-check.sql)"
writer_start "$c1" 5000000; sleep 2; writer_stop "$c1"
same "audit-check after writing to the restored db" "$before_audit" "$(q "$c1" audit-check.sql)"
echo "after writing to it: $(q "$c1" counts.sql | tr '\t\n' '= ')"

start "$c2"; wait_ready "$c2"
t=$(now); restore "$c2" "$dumpfile"; echo "restore into a fresh container (no database yet): $(since "$t") s"
same "checksums (ids <= $w)" "$before_sums" "$(checksums "$c2" "$w")"
same "objects" "$before_objects" "$(q "$c2" objects.sql)"
same "audit-check" "$before_audit" "$(q "$c2" audit-check.sql)"
echo "checksums:"; echo "$before_sums" | sed 's/^/  /'
echo "OK $engine"
