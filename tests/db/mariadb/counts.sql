-- stackvault DB fixture, MariaDB: exact row count per table, "table<TAB>rows", in one statement (one
-- consistent read).
--   docker exec -i -e MYSQL_PWD=pw X mariadb -uroot -N -B calls < tests/db/mariadb/counts.sql
SELECT 'agents', COUNT(*) FROM agents
UNION ALL SELECT 'audit', COUNT(*) FROM audit
UNION ALL SELECT 'call_notes', COUNT(*) FROM call_notes
UNION ALL SELECT 'calls', COUNT(*) FROM calls
UNION ALL SELECT 'recordings', COUNT(*) FROM recordings;
