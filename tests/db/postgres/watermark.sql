-- stackvault DB fixture, PostgreSQL: the watermark for checksums.sql, to be taken BEFORE the backup
-- starts (prints one number: the highest committed calls id).
--   w=$(docker exec -i -e PGPASSWORD=pw X psql -X -q -A -t -U postgres -h /var/run/postgresql \
--         -d calls -v ON_ERROR_STOP=1 < tests/db/postgres/watermark.sql)
SELECT coalesce(max(id), 0) FROM calls;
