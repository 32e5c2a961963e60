-- The fatigue map functions of 0001, written so the planner inlines them.
--
-- 0001's bodies called to_jsonb(), which is STABLE; a function declared
-- IMMUTABLE whose body is less strict is never inlined, so every call went
-- through the SQL-function executor (fmgr_sql): about 2 us a call, four calls
-- per reserved recipient, a third of PostgreSQL's CPU in the caps benchmark.
-- An integer cast through text to jsonb is IMMUTABLE (jsonb_in), the result
-- is the same jsonb number. tests/test_migrations.py checks the inlining.
CREATE OR REPLACE FUNCTION fatigue_increment(counts jsonb, key text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN key = '' THEN counts
                ELSE jsonb_set(counts, ARRAY[key], ((coalesce((counts ->> key)::int, 0) + 1)::text)::jsonb) END
$$;

CREATE OR REPLACE FUNCTION fatigue_decrement(counts jsonb, key text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN key = '' THEN counts
                WHEN coalesce((counts ->> key)::int, 0) <= 1 THEN counts - key
                ELSE jsonb_set(counts, ARRAY[key], ((((counts ->> key)::int - 1))::text)::jsonb) END
$$;
