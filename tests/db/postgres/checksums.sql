-- stackvault DB fixture, PostgreSQL: count and checksum per table of the rows at or below the
-- watermark w (a calls id from watermark.sql taken before the backup), passed as a psql variable:
--   docker exec -i -e PGPASSWORD=pw X psql -X -q -A -t -U postgres -h /var/run/postgresql -d calls \
--     -v ON_ERROR_STOP=1 -v w=$w < tests/db/postgres/checksums.sql
-- (without -v w=... the query fails with a syntax error at ":").
-- Prints "table<TAB>rows<TAB>md5" for agents (all rows; the writer never touches them), calls
-- (id <= w), and audit, call_notes, recordings (call_id <= w): md5 of the rows' text forms
-- (row::text, NULLs and quoting included) joined in id order. The output settings are pinned so the
-- text forms do not depend on the session.
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET bytea_output = 'hex';
SET extra_float_digits = 1;
SELECT concat_ws(E'\t', tbl, n, h) FROM (
  SELECT 1 AS o, 'agents' AS tbl, count(*) AS n, md5(string_agg(t::text, E'\n' ORDER BY t.id)) AS h
  FROM agents t
  UNION ALL
  SELECT 2, 'calls', count(*), md5(string_agg(t::text, E'\n' ORDER BY t.id))
  FROM calls t WHERE t.id <= :'w'::bigint
  UNION ALL
  SELECT 3, 'audit', count(*), md5(string_agg(t::text, E'\n' ORDER BY t.id))
  FROM audit t WHERE t.call_id <= :'w'::bigint
  UNION ALL
  SELECT 4, 'call_notes', count(*), md5(string_agg(t::text, E'\n' ORDER BY t.id))
  FROM call_notes t WHERE t.call_id <= :'w'::bigint
  UNION ALL
  SELECT 5, 'recordings', count(*), md5(string_agg(t::text, E'\n' ORDER BY t.id))
  FROM recordings t WHERE t.call_id <= :'w'::bigint
) AS s
ORDER BY o;
