-- stackvault DB fixture, PostgreSQL: exact row count per table, "table<TAB>rows", in one statement
-- (one snapshot).
--   docker exec -i -e PGPASSWORD=pw X psql -X -q -A -t -U postgres -h /var/run/postgresql -d calls \
--     -v ON_ERROR_STOP=1 < tests/db/postgres/counts.sql
SELECT concat_ws(E'\t', tbl, n) FROM (
  SELECT 'agents' AS tbl, count(*) AS n FROM agents
  UNION ALL SELECT 'audit', count(*) FROM audit
  UNION ALL SELECT 'call_notes', count(*) FROM call_notes
  UNION ALL SELECT 'calls', count(*) FROM calls
  UNION ALL SELECT 'recordings', count(*) FROM recordings
) AS s
ORDER BY tbl;
