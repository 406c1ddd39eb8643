-- stackvault DB fixture, MariaDB: count and checksum per table of the rows at or below the watermark
-- @w (a calls id from watermark.sql taken before the backup). Prepend `SET @w := N;`:
--   { echo "SET @w := $w;"; cat tests/db/mariadb/checksums.sql; } \
--     | docker exec -i -e MYSQL_PWD=pw X mariadb -uroot -N -B calls
-- Prints "table<TAB>rows<TAB>checksum" for agents (all rows; the writer never touches them), calls
-- (id <= @w), and audit, call_notes, recordings (call_id <= @w). The checksum is the BIT_XOR of the
-- rows' MD5s (as two 64-bit halves); each row's text has its id and every column, strings and blobs
-- in hex and NULL as N, so it is exact and independent of row order and of the client's charset.
SET NAMES utf8mb4;
DELIMITER //
BEGIN NOT ATOMIC
  IF @w IS NULL OR @w NOT REGEXP '^[0-9]+$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'checksums.sql: prepend SET @w := <watermark>;';
  END IF;
END //
DELIMITER ;

SELECT 'agents', COUNT(*),
       CONCAT(LPAD(HEX(BIT_XOR(CAST(CONV(LEFT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'),
              LPAD(HEX(BIT_XOR(CAST(CONV(RIGHT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'))
FROM (SELECT MD5(CONCAT_WS('|', id, HEX(name), IFNULL(HEX(email), 'N'), HEX(team), hired_on, active)) AS h
      FROM agents) AS t
UNION ALL
SELECT 'calls', COUNT(*),
       CONCAT(LPAD(HEX(BIT_XOR(CAST(CONV(LEFT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'),
              LPAD(HEX(BIT_XOR(CAST(CONV(RIGHT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'))
FROM (SELECT MD5(CONCAT_WS('|', id, agent_id, HEX(caller), started_at, duration_s, status,
                           IFNULL(cost, 'N'), IFNULL(HEX(subject), 'N'))) AS h
      FROM calls WHERE id <= @w) AS t
UNION ALL
SELECT 'audit', COUNT(*),
       CONCAT(LPAD(HEX(BIT_XOR(CAST(CONV(LEFT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'),
              LPAD(HEX(BIT_XOR(CAST(CONV(RIGHT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'))
FROM (SELECT MD5(CONCAT_WS('|', id, call_id, HEX(action), HEX(caller), duration_s, logged_at)) AS h
      FROM audit WHERE call_id <= @w) AS t
UNION ALL
SELECT 'call_notes', COUNT(*),
       CONCAT(LPAD(HEX(BIT_XOR(CAST(CONV(LEFT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'),
              LPAD(HEX(BIT_XOR(CAST(CONV(RIGHT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'))
FROM (SELECT MD5(CONCAT_WS('|', id, call_id, IFNULL(author_id, 'N'), IFNULL(HEX(body), 'N'), created_at)) AS h
      FROM call_notes WHERE call_id <= @w) AS t
UNION ALL
SELECT 'recordings', COUNT(*),
       CONCAT(LPAD(HEX(BIT_XOR(CAST(CONV(LEFT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'),
              LPAD(HEX(BIT_XOR(CAST(CONV(RIGHT(h, 16), 16, 10) AS UNSIGNED))), 16, '0'))
FROM (SELECT MD5(CONCAT_WS('|', id, call_id, HEX(codec), IFNULL(size, 'N'), IFNULL(HEX(data), 'N'))) AS h
      FROM recordings WHERE call_id <= @w) AS t;
