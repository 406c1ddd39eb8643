-- stackvault DB fixture, PostgreSQL: the schema objects in schema public, one per line:
-- "kind<TAB>name<TAB>md5 of its definition" for tables (columns), indexes, constraints, views,
-- triggers, functions and sequences (with identity ownership), sorted. Identical before a backup
-- and after a restore.
--   docker exec -i -e PGPASSWORD=pw X psql -X -q -A -t -U postgres -h /var/run/postgresql -d calls \
--     -v ON_ERROR_STOP=1 < tests/db/postgres/objects.sql
SELECT concat_ws(E'\t', kind, name, def) FROM (
  SELECT 'table' AS kind, c.relname::text AS name,
         md5(string_agg(concat_ws('|', a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                                  a.attidentity, pg_get_expr(d.adbin, d.adrelid)), E'\n' ORDER BY a.attnum)) AS def
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
  WHERE n.nspname = 'public' AND c.relkind = 'r'
  GROUP BY c.relname
  UNION ALL
  SELECT 'index', c.relname, md5(pg_get_indexdef(c.oid))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind = 'i'
  UNION ALL
  SELECT 'constraint', r.relname || '.' || k.conname, md5(pg_get_constraintdef(k.oid))
  FROM pg_constraint k JOIN pg_class r ON r.oid = k.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
  WHERE n.nspname = 'public'
  UNION ALL
  SELECT 'view', c.relname, md5(pg_get_viewdef(c.oid))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind = 'v'
  UNION ALL
  SELECT 'trigger', r.relname || '.' || t.tgname, md5(pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text)
  FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid JOIN pg_namespace n ON n.oid = r.relnamespace
  WHERE n.nspname = 'public' AND NOT t.tgisinternal
  UNION ALL
  SELECT 'function', p.proname, md5(pg_get_functiondef(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname = 'public'
  UNION ALL
  SELECT 'sequence', c.relname, md5(coalesce(pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid), 'free'))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  WHERE n.nspname = 'public' AND c.relkind = 'S'
) AS o
ORDER BY kind, name;
