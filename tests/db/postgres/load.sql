-- stackvault DB fixture, PostgreSQL 15: 1,000,000 deterministic rows, generated server-side with
-- generate_series. Run after schema.sql:
--   docker exec -i -e PGPASSWORD=pw X psql -X -q -U postgres -h /var/run/postgresql -d calls \
--     -v ON_ERROR_STOP=1 < tests/db/postgres/load.sql
-- agents 1,000 + calls 300,000 + audit 300,000 (by the trigger) + call_notes 250,000
-- + recordings 149,000 = 1,000,000 rows. Ids 1..N; the sequences are moved past them at the end.
SET client_encoding = 'UTF8';
BEGIN;

INSERT INTO agents (id, name, email, team, hired_on, active)
SELECT n,
       (ARRAY['Anna', 'José', 'Zoë', '李小龍', 'Søren', 'O''Neil', 'Nguyễn', 'Łukasz'])[1 + n % 8] || ' #' || n,
       CASE WHEN n % 10 = 0 THEN NULL ELSE 'agent' || n || '@example.test' END,
       (ARRAY['sales', 'support', 'billing', 'back\office', 'ops "night"'])[1 + n % 5],
       DATE '2015-01-01' + n * 3,
       n % 13 <> 0
FROM generate_series(1, 1000) AS n;

-- The trigger writes one audit row per calls row.
INSERT INTO calls (id, agent_id, caller, started_at, duration_s, status, cost, subject)
SELECT n,
       1 + (n * 7919) % 1000,
       '+' || (1 + n % 97) || ' ' || lpad(((n * 104729) % 1000000000)::text, 9, '0'),
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + n * INTERVAL '37 seconds' + (n % 1000000) * INTERVAL '1 microsecond',
       (n * 31) % 3600,
       (ARRAY['answered', 'missed', 'voicemail', 'transferred'])[1 + n % 4],
       CASE WHEN n % 9 = 0 THEN NULL ELSE ((n * 13) % 1000000) / 10000.0 END,
       CASE WHEN n % 6 = 0 THEN NULL
            ELSE (ARRAY['Rückruf', 'お問い合わせ', 'it''s urgent', 'C:\path\x', '☎️ callback 🙏', 'café'])[1 + n % 6]
                 || ' ' || n END
FROM generate_series(1, 300000::bigint) AS n;

INSERT INTO call_notes (id, call_id, author_id, body, created_at)
SELECT n,
       1 + (n * 7) % 300000,
       CASE WHEN n % 5 = 0 THEN NULL ELSE 1 + n % 1000 END,
       CASE
         WHEN n % 17 = 0 THEN NULL
         WHEN n % 1000 = 1 THEN repeat('长文本 long text 🐘 ', 700) || n
         ELSE (ARRAY[
           'plain ascii note',
           'it''s a "quoted" note; O''Brien said ''hi''',
           'back\slash C:\calls\2024 \n is not a newline, \\ is two',
           'emoji 📞😀🎧 👩🏽‍💻 family 👨‍👩‍👧 flag 🇩🇪',
           'CJK 電話の記録 / 통화 기록 / 通话记录 / 𠜎𠜱 (non-BMP)',
           'combining: é ñ ö Å (NFD), Z̤̈ͅ, अनुच्छेद',
           'RTL: مكالمة هاتفية / עברית',
           E'line one\nline two\ttab\r\ncrlf',
           'invisible: a​b (ZWSP) ﻿ (BOM) x y (NBSP) ‮rtl-override‬',
           'sql-ish: ''); DROP TABLE calls; -- %_ `tick` $$ $1'])[1 + n % 10] || ' #' || n
       END,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + n * INTERVAL '41 seconds'
FROM generate_series(1, 250000::bigint) AS n;

-- Every byte value 0x00..0xFF, four times; recordings take varying slices of it.
INSERT INTO recordings (id, call_id, codec, size, data)
SELECT n, call_id, codec, length(d), d
FROM (SELECT n,
             1 + (n * 3) % 300000 AS call_id,
             (ARRAY['opus', 'g711', 'flac'])[1 + n % 3] AS codec,
             CASE
               WHEN n % 11 = 0 THEN NULL
               WHEN n % 13 = 0 THEN ''::bytea
               ELSE substr(decode(md5(n::text), 'hex') || b.b || b.b || b.b || b.b,
                           (1 + n % 256)::int, ((n * 37) % 513)::int)
             END AS d
      FROM generate_series(1, 149000::bigint) AS n,
           (SELECT string_agg(set_byte('\x00'::bytea, 0, i), ''::bytea ORDER BY i) AS b
            FROM generate_series(0, 255) AS i) AS b) AS t;

-- Explicit ids do not advance identity sequences: move them past the loaded rows.
DO $$
BEGIN
  PERFORM setval(pg_get_serial_sequence('calls', 'id'), max(id)) FROM calls;
  PERFORM setval(pg_get_serial_sequence('call_notes', 'id'), max(id)) FROM call_notes;
  PERFORM setval(pg_get_serial_sequence('recordings', 'id'), max(id)) FROM recordings;
END
$$;

COMMIT;
ANALYZE;
