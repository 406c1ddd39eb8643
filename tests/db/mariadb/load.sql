-- stackvault DB fixture, MariaDB 10.11: 1,000,000 deterministic rows, generated server-side from the
-- SEQUENCE engine (seq_1_to_N). Run after schema.sql:
--   docker exec -i -e MYSQL_PWD=pw X mariadb -uroot calls < tests/db/mariadb/load.sql
-- agents 1,000 + calls 300,000 + audit 300,000 (by the trigger) + call_notes 250,000
-- + recordings 149,000 = 1,000,000 rows. Ids 1..N; the writer continues after them.
SET NAMES utf8mb4;
SET SESSION foreign_key_checks = 0, unique_checks = 0;

-- Every byte value 0x00..0xFF; recordings take varying slices of it.
SET @b256 := X'000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F303132333435363738393A3B3C3D3E3F404142434445464748494A4B4C4D4E4F505152535455565758595A5B5C5D5E5F606162636465666768696A6B6C6D6E6F707172737475767778797A7B7C7D7E7F808182838485868788898A8B8C8D8E8F909192939495969798999A9B9C9D9E9FA0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3B4B5B6B7B8B9BABBBCBDBEBFC0C1C2C3C4C5C6C7C8C9CACBCCCDCECFD0D1D2D3D4D5D6D7D8D9DADBDCDDDEDFE0E1E2E3E4E5E6E7E8E9EAEBECEDEEEFF0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF';

START TRANSACTION;

INSERT INTO agents (id, name, email, team, hired_on, active)
SELECT seq,
       CONCAT(ELT(1 + seq % 8, 'Anna', 'José', 'Zoë', '李小龍', 'Søren', 'O''Neil', 'Nguyễn', 'Łukasz'),
              ' #', seq),
       IF(seq % 10 = 0, NULL, CONCAT('agent', seq, '@example.test')),
       ELT(1 + seq % 5, 'sales', 'support', 'billing', 'back\\office', 'ops "night"'),
       DATE '2015-01-01' + INTERVAL (seq * 3) DAY,
       seq % 13 <> 0
FROM seq_1_to_1000;

-- The trigger writes one audit row per calls row.
INSERT INTO calls (id, agent_id, caller, started_at, duration_s, status, cost, subject)
SELECT seq,
       1 + (seq * 7919) % 1000,
       CONCAT('+', 1 + seq % 97, ' ', LPAD((seq * 104729) % 1000000000, 9, '0')),
       TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (seq * 37) SECOND + INTERVAL (seq % 1000000) MICROSECOND,
       (seq * 31) % 3600,
       ELT(1 + seq % 4, 'answered', 'missed', 'voicemail', 'transferred'),
       IF(seq % 9 = 0, NULL, ((seq * 13) % 1000000) / 10000),
       IF(seq % 6 = 0, NULL,
          CONCAT(ELT(1 + seq % 6, 'Rückruf', 'お問い合わせ', 'it''s urgent', 'C:\\path\\x', '☎️ callback 🙏', 'café'),
                 ' ', seq))
FROM seq_1_to_300000;

INSERT INTO call_notes (id, call_id, author_id, body, created_at)
SELECT seq,
       1 + (seq * 7) % 300000,
       IF(seq % 5 = 0, NULL, 1 + seq % 1000),
       CASE
         WHEN seq % 17 = 0 THEN NULL
         WHEN seq % 1000 = 1 THEN CONCAT(REPEAT('长文本 long text 🐘 ', 700), seq)
         ELSE CONCAT(ELT(1 + seq % 10,
           'plain ascii note',
           'it''s a "quoted" note; O''Brien said ''hi''',
           'back\\slash C:\\calls\\2024 \\n is not a newline, \\\\ is two',
           'emoji 📞😀🎧 👩🏽‍💻 family 👨‍👩‍👧 flag 🇩🇪',
           'CJK 電話の記録 / 통화 기록 / 通话记录 / 𠜎𠜱 (non-BMP)',
           'combining: é ñ ö Å (NFD), Z̤̈ͅ, अनुच्छेद',
           'RTL: مكالمة هاتفية / עברית',
           CONCAT('line one', CHAR(10), 'line two', CHAR(9), 'tab', CHAR(13), CHAR(10), 'crlf'),
           'invisible: a​b (ZWSP) ﻿ (BOM) x y (NBSP) ‮rtl-override‬',
           'sql-ish: ''); DROP TABLE calls; -- %_ `tick` $$ $1'),
           ' #', seq)
       END,
       TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (seq * 41) SECOND
FROM seq_1_to_250000;

INSERT INTO recordings (id, call_id, codec, size, data)
SELECT seq, call_id, codec, LENGTH(d), d
FROM (SELECT seq,
             1 + (seq * 3) % 300000 AS call_id,
             ELT(1 + seq % 3, 'opus', 'g711', 'flac') AS codec,
             CASE
               WHEN seq % 11 = 0 THEN NULL
               WHEN seq % 13 = 0 THEN ''
               ELSE SUBSTRING(CONCAT(UNHEX(MD5(seq)), REPEAT(@b256, 4)), 1 + seq % 256, (seq * 37) % 513)
             END AS d
      FROM seq_1_to_149000) AS t;

COMMIT;

ANALYZE TABLE agents, calls, audit, call_notes, recordings;
