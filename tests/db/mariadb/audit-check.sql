-- stackvault DB fixture, MariaDB: trigger consistency. Prints two numbers, "0<TAB>0" when consistent:
-- calls rows without a matching audit row (missing, or caller/duration_s differ), and audit rows
-- whose call is missing. One statement = one consistent read, so it also holds while the writer runs.
--   docker exec -i -e MYSQL_PWD=pw X mariadb -uroot -N -B calls < tests/db/mariadb/audit-check.sql
SET NAMES utf8mb4;
SELECT
  (SELECT COUNT(*) FROM calls c
     LEFT JOIN audit a ON a.call_id = c.id AND a.action = 'insert'
   WHERE a.id IS NULL
      OR CAST(a.caller AS BINARY) <> CAST(c.caller AS BINARY)
      OR a.duration_s <> c.duration_s) AS calls_without_matching_audit,
  (SELECT COUNT(*) FROM audit a
     LEFT JOIN calls c ON c.id = a.call_id
   WHERE c.id IS NULL) AS audit_without_call;
