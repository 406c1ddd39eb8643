-- stackvault DB fixture, PostgreSQL: trigger consistency. Prints two numbers, "0<TAB>0" when
-- consistent: calls rows without a matching audit row (missing, or caller/duration_s differ), and
-- audit rows whose call is missing. One statement = one snapshot, so it also holds while the writer
-- runs.
--   docker exec -i -e PGPASSWORD=pw X psql -X -q -A -t -U postgres -h /var/run/postgresql -d calls \
--     -v ON_ERROR_STOP=1 < tests/db/postgres/audit-check.sql
SELECT concat_ws(E'\t',
  (SELECT count(*) FROM calls c
     LEFT JOIN audit a ON a.call_id = c.id AND a.action = 'insert'
   WHERE a.id IS NULL OR a.caller <> c.caller OR a.duration_s <> c.duration_s),
  (SELECT count(*) FROM audit a
     LEFT JOIN calls c ON c.id = a.call_id
   WHERE c.id IS NULL));
