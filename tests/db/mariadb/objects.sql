-- stackvault DB fixture, MariaDB: the schema objects of the current database, one per line:
-- "kind<TAB>name<TAB>md5 of its definition" for tables (columns), indexes, foreign keys, views,
-- triggers, routines and events, sorted. Identical before a backup and after a restore.
--   docker exec -i -e MYSQL_PWD=pw X mariadb -uroot -N -B calls < tests/db/mariadb/objects.sql
SET NAMES utf8mb4;
SELECT kind, name, def FROM (
  SELECT 'table' AS kind, t.TABLE_NAME AS name,
         MD5(GROUP_CONCAT(CONCAT_WS('|', c.COLUMN_NAME, c.COLUMN_TYPE, c.IS_NULLABLE,
                                    IFNULL(c.COLUMN_DEFAULT, 'N'), c.EXTRA, IFNULL(c.COLLATION_NAME, 'N'))
                          ORDER BY c.ORDINAL_POSITION SEPARATOR '\n')) AS def
  FROM information_schema.TABLES t
  JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME
  WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE'
  GROUP BY t.TABLE_NAME
  UNION ALL
  SELECT 'index', CONCAT(TABLE_NAME, '.', INDEX_NAME),
         MD5(GROUP_CONCAT(CONCAT_WS('|', SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, INDEX_TYPE)
                          ORDER BY SEQ_IN_INDEX SEPARATOR '\n'))
  FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
  GROUP BY TABLE_NAME, INDEX_NAME
  UNION ALL
  SELECT 'foreign_key', CONCAT(k.TABLE_NAME, '.', k.CONSTRAINT_NAME),
         MD5(GROUP_CONCAT(CONCAT_WS('|', k.COLUMN_NAME, k.REFERENCED_TABLE_NAME, k.REFERENCED_COLUMN_NAME,
                                    r.UPDATE_RULE, r.DELETE_RULE)
                          ORDER BY k.ORDINAL_POSITION SEPARATOR '\n'))
  FROM information_schema.KEY_COLUMN_USAGE k
  JOIN information_schema.REFERENTIAL_CONSTRAINTS r
    ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME
   AND r.TABLE_NAME = k.TABLE_NAME
  WHERE k.TABLE_SCHEMA = DATABASE() AND k.REFERENCED_TABLE_NAME IS NOT NULL
  GROUP BY k.TABLE_NAME, k.CONSTRAINT_NAME
  UNION ALL
  SELECT 'view', TABLE_NAME, MD5(VIEW_DEFINITION)
  FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()
  UNION ALL
  SELECT 'trigger', TRIGGER_NAME,
         MD5(CONCAT_WS('|', EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT))
  FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()
  UNION ALL
  SELECT LOWER(ROUTINE_TYPE), ROUTINE_NAME, MD5(ROUTINE_DEFINITION)
  FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()
  UNION ALL
  SELECT 'event', EVENT_NAME, MD5(CONCAT_WS('|', EVENT_DEFINITION, STATUS))
  FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()
) AS o
ORDER BY kind, name;
