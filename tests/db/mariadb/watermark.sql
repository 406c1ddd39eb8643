-- stackvault DB fixture, MariaDB: the watermark for checksums.sql, to be taken BEFORE the backup
-- starts (prints one number: the highest committed calls id).
--   w=$(docker exec -i -e MYSQL_PWD=pw X mariadb -uroot -N -B calls < tests/db/mariadb/watermark.sql)
SELECT COALESCE(MAX(id), 0) FROM calls;
