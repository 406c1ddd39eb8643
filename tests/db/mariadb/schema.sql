-- stackvault DB fixture, MariaDB 10.11: tables, view, trigger, procedure, event.
-- Run in the (empty) database `calls`:
--   docker exec -i -e MYSQL_PWD=pw X mariadb -uroot calls < tests/db/mariadb/schema.sql
-- The image's client defaults to latin1: every fixture file starts with SET NAMES utf8mb4.
SET NAMES utf8mb4;

CREATE TABLE agents (
  id        INT UNSIGNED NOT NULL PRIMARY KEY,
  name      VARCHAR(100) NOT NULL,
  email     VARCHAR(190) NULL,
  team      VARCHAR(40)  NOT NULL,
  hired_on  DATE         NOT NULL,
  active    TINYINT(1)   NOT NULL DEFAULT 1
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE calls (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  agent_id    INT UNSIGNED    NOT NULL,
  caller      VARCHAR(40)     NOT NULL,
  started_at  DATETIME(6)     NOT NULL,
  duration_s  INT             NOT NULL,
  status      ENUM('answered','missed','voicemail','transferred') NOT NULL,
  cost        DECIMAL(10,4)   NULL,
  subject     VARCHAR(255)    NULL,
  KEY calls_agent_started (agent_id, started_at),
  CONSTRAINT calls_agent_fk FOREIGN KEY (agent_id) REFERENCES agents (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Written only by the trigger below, in the same transaction as the calls row. No foreign key on
-- purpose: audit-check.sql counts orphans (audit rows whose call is missing from a restore).
CREATE TABLE audit (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  call_id     BIGINT UNSIGNED NOT NULL,
  action      VARCHAR(16)     NOT NULL,
  caller      VARCHAR(40)     NOT NULL,   -- copy of calls.caller
  duration_s  INT             NOT NULL,   -- copy of calls.duration_s
  logged_at   DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  UNIQUE KEY audit_call_action (call_id, action)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE call_notes (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  call_id     BIGINT UNSIGNED NOT NULL,
  author_id   INT UNSIGNED    NULL,
  body        TEXT            NULL,       -- unicode, quotes, backslashes, newlines, NULLs
  created_at  DATETIME(6)     NOT NULL,
  KEY call_notes_call (call_id),
  CONSTRAINT call_notes_call_fk FOREIGN KEY (call_id) REFERENCES calls (id),
  CONSTRAINT call_notes_author_fk FOREIGN KEY (author_id) REFERENCES agents (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE recordings (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  call_id     BIGINT UNSIGNED NOT NULL,
  codec       VARCHAR(16)     NOT NULL,
  size        INT             NULL,       -- LENGTH(data), NULL when data is NULL
  data        BLOB            NULL,       -- 0..~780 bytes, every byte value incl. 0x00 0x27 0x5c 0x0a
  KEY recordings_call (call_id),
  CONSTRAINT recordings_call_fk FOREIGN KEY (call_id) REFERENCES calls (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE VIEW agent_call_stats AS
  SELECT a.id AS agent_id, a.name AS name, COUNT(c.id) AS calls,
         COALESCE(SUM(c.duration_s), 0) AS total_duration_s
  FROM agents a LEFT JOIN calls c ON c.agent_id = a.id
  GROUP BY a.id, a.name;

CREATE TRIGGER calls_audit_ai AFTER INSERT ON calls FOR EACH ROW
  INSERT INTO audit (call_id, action, caller, duration_s)
  VALUES (NEW.id, 'insert', NEW.caller, NEW.duration_s);

DELIMITER //
-- Used by writer.sh: one call = one transaction inserting a calls row (which fires the trigger),
-- a note and a recording. Values are derived from p_seed. Returns nothing.
CREATE PROCEDURE add_call(IN p_seed BIGINT UNSIGNED)
  MODIFIES SQL DATA
BEGIN
  DECLARE v_call BIGINT UNSIGNED;
  DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
  START TRANSACTION;
  INSERT INTO calls (agent_id, caller, started_at, duration_s, status, cost, subject)
  VALUES (1 + p_seed % 1000,
          CONCAT('+49 30 ', LPAD(p_seed % 10000000, 7, '0')),
          NOW(6),
          p_seed % 3600,
          ELT(1 + p_seed % 4, 'answered', 'missed', 'voicemail', 'transferred'),
          IF(p_seed % 9 = 0, NULL, (p_seed % 100000) / 100),
          CONCAT('live #', p_seed, ' — 実況 📞 ''q'' \\ e', _utf8mb4 X'CC81'));
  SET v_call = LAST_INSERT_ID();  -- the trigger's audit insert does not change it
  INSERT INTO call_notes (call_id, author_id, body, created_at)
  VALUES (v_call, IF(p_seed % 5 = 0, NULL, 1 + p_seed % 997),
          IF(p_seed % 7 = 0, NULL,
             CONCAT('writer note ', p_seed, ': O''Brien said "hi" \\o/ 🎧 電話 n', _utf8mb4 X'CC83',
                    CHAR(10), 'second line')),
          NOW(6));
  INSERT INTO recordings (call_id, codec, size, data)
  SELECT v_call, 'opus', LENGTH(d), d
  FROM (SELECT IF(p_seed % 11 = 0, NULL,
                  SUBSTRING(CONCAT(UNHEX(MD5(p_seed)), X'00275C0A0D1A22FF', UNHEX(SHA2(p_seed, 512))),
                            1, p_seed % 89)) AS d) AS t;
  COMMIT;
END //
DELIMITER ;

-- Disabled, never runs (the server's event scheduler is off anyway); present so that a dump without
-- --events is noticed by objects.sql.
CREATE EVENT purge_old_audit ON SCHEDULE EVERY 1 DAY DISABLE
  DO DELETE FROM audit WHERE logged_at < NOW() - INTERVAL 10 YEAR;
