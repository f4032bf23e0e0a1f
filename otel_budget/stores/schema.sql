-- otel_budget: the one migration for PostgreSQL and Supabase.
--
-- Apply with `otel-budget migrate --url postgresql://...`, or paste it into the
-- Supabase SQL editor. It is idempotent: running it again changes nothing.
--
-- Access: Row Level Security is on and no policy admits anon or authenticated,
-- so only the service role (Supabase) and direct connections as the table's
-- owner reach the rows. Supabase grants every new table and function in `public`
-- to anon and authenticated by default, hence the explicit revokes below; they
-- run only where those roles exist, so the script applies to plain PostgreSQL too.
--
-- Errors raised on purpose use two SQLSTATEs of their own (PostgREST answers both
-- with HTTP 400, so clients do not retry them):
--   OB001  an argument is malformed (the entry, the day metadata, a missing name)
--   OB002  a stored budget document or writer row is malformed; it is left as it was

-- Two migrations racing on one database would trip over each other's CREATEs.
select pg_catalog.pg_advisory_xact_lock(7429183501);

create table if not exists public.quilt_patches (
    id         bigint generated always as identity primary key,
    patch_type text        not null,
    name       text        not null,
    content    jsonb       not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint quilt_patches_type_name_key unique (patch_type, name)
);

-- A quilt_patches table may predate this library (the platform task that
-- started it wrote budget rows into one). Bring such a table up to what the
-- functions need, or stop with a clear message instead of failing later.
alter table public.quilt_patches add column if not exists created_at timestamptz not null default now();
alter table public.quilt_patches add column if not exists updated_at timestamptz not null default now();

do $migrate$
declare
    v_type text;
begin
    select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_type
      from pg_catalog.pg_attribute a
     where a.attrelid = 'public.quilt_patches'::regclass
       and a.attname = 'content' and not a.attisdropped;
    if v_type is distinct from 'jsonb' then
        raise exception 'public.quilt_patches.content is %, otel_budget needs jsonb',
            coalesce(v_type, 'missing')
            using hint = 'alter table public.quilt_patches alter column content type jsonb using content::jsonb';
    end if;

    -- ON CONFLICT (patch_type, name) needs a unique index on exactly these columns.
    if not exists (
        select 1
          from pg_catalog.pg_index i
         where i.indrelid = 'public.quilt_patches'::regclass
           and i.indisunique and i.indpred is null and i.indexprs is null
           and i.indnkeyatts = 2
           and (select pg_catalog.array_agg(a.attname::text order by a.attname)
                  from pg_catalog.pg_attribute a
                 where a.attrelid = i.indrelid and a.attnum = any (i.indkey)) = array['name', 'patch_type']
    ) then
        alter table public.quilt_patches
            add constraint quilt_patches_type_name_key unique (patch_type, name);
    end if;
end
$migrate$;

-- lz4 for the rows' JSON where the server has it: a writer row with per-key
-- budgets is ~300 KB, compressed at every merge and decompressed by each read;
-- pglz took a third of such a merge. Rows keep how they were compressed until
-- rewritten (every writer row is, at its next merge).
do $compression$
begin
    if exists (select 1 from pg_catalog.pg_settings
                where name = 'default_toast_compression' and 'lz4' = any (enumvals))
       and (select a.attcompression from pg_catalog.pg_attribute as a
             where a.attrelid = 'public.quilt_patches'::regclass
               and a.attname = 'content') is distinct from 'l' then
        alter table public.quilt_patches alter column content set compression lz4;
    end if;
end
$compression$;

alter table public.quilt_patches enable row level security;


-- NULL if `p_entry` is a well-formed instance entry, else what is wrong with it.
-- Mirrors otel_budget.ledger.validate_entry. PL/pgSQL rather than one SQL
-- expression: each check runs only after the previous passed, so a cast such as
-- ('"abc"')::numeric is never attempted (CASE cannot promise that once the
-- planner folds constants).
create or replace function public.otel_budget_entry_problem(p_entry jsonb)
returns text
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_item jsonb;
begin
    if p_entry is null or jsonb_typeof(p_entry) <> 'object' then
        return format('entry is %s, expected an object', coalesce(jsonb_typeof(p_entry), 'missing'));
    end if;
    if jsonb_typeof(p_entry -> 'spend_usd') is distinct from 'number' then
        return format('spend_usd must be a finite number >= 0, got %s',
                      coalesce((p_entry -> 'spend_usd')::text, 'nothing'));
    end if;
    if (p_entry ->> 'spend_usd')::numeric < 0 then
        return format('spend_usd must be a finite number >= 0, got %s', p_entry ->> 'spend_usd');
    end if;
    -- jsonb keeps the scale a number was written with, so 3.0 (a float to
    -- Python, rejected there) is told apart from 3 here too.
    if jsonb_typeof(p_entry -> 'seq') is distinct from 'number'
       or (p_entry ->> 'seq') !~ '^[0-9]+$' then
        return format('seq must be an integer >= 0, got %s',
                      coalesce((p_entry -> 'seq')::text, 'nothing'));
    end if;
    if p_entry ? 'by_attributes' then
        if jsonb_typeof(p_entry -> 'by_attributes') <> 'array' then
            return 'by_attributes must be a list';
        end if;
        for v_item in select e.value from jsonb_array_elements(p_entry -> 'by_attributes') as e loop
            if jsonb_typeof(v_item) <> 'object'
               or (v_item ? 'attributes' and jsonb_typeof(v_item -> 'attributes') <> 'object')
               or jsonb_typeof(v_item -> 'spend_usd') is distinct from 'number' then
                return format('malformed by_attributes item %s', left(v_item::text, 200));
            end if;
            if (v_item ->> 'spend_usd')::numeric < 0 then
                return format('malformed by_attributes item %s', left(v_item::text, 200));
            end if;
        end loop;
    end if;
    return null;
end
$fn$;


-- Returns `p_content` if it is a well-formed budget document, else raises OB002
-- naming the row. Mirrors otel_budget.ledger.validate_budget_document.
create or replace function public.otel_budget_checked(p_content jsonb, p_name text)
returns jsonb
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_key text;
    v_entry jsonb;
    v_problem text;
begin
    if p_content is null or jsonb_typeof(p_content) <> 'object' then
        raise exception using
            errcode = 'OB002',
            message = format('budget row %L: content is %s, expected an object',
                             p_name, coalesce(jsonb_typeof(p_content), 'missing'));
    end if;
    if p_content ? 'instances' then
        if jsonb_typeof(p_content -> 'instances') <> 'object' then
            raise exception using
                errcode = 'OB002',
                message = format('budget row %L: ''instances'' must be an object', p_name);
        end if;
        for v_key, v_entry in select e.key, e.value from jsonb_each(p_content -> 'instances') as e loop
            v_problem := public.otel_budget_entry_problem(v_entry);
            if v_problem is not null then
                raise exception using
                    errcode = 'OB002',
                    message = format('budget row %L, instance %L: %s', p_name, v_key, v_problem);
            end if;
        end loop;
    end if;
    return p_content;
end
$fn$;


-- Atomically set instances[p_instance_id] = p_entry in the budget row `p_name`
-- if p_entry's seq is newer than the stored one; recompute total_usd; copy
-- p_day_meta's keys onto the document. Returns the day's document, applied or
-- not. (Version 1: kept for clients not yet upgraded; version 2 writes rows of its own.)
--
-- One INSERT ... ON CONFLICT DO UPDATE: at READ COMMITTED the conflicting row is
-- locked and the WHERE and SET see its latest committed version, so concurrent
-- replicas serialise on the row and none overwrites another's entry. The stored
-- document is validated inside the WHERE, on that same locked version; a
-- malformed one raises (OB002) and the statement changes nothing.
create or replace function public.otel_budget_merge(
    p_name text,
    p_instance_id text,
    p_entry jsonb,
    p_day_meta jsonb default '{}'::jsonb
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_meta jsonb := coalesce(p_day_meta, '{}'::jsonb);
    v_problem text;
    v_entry jsonb;
    v_seq numeric;
    v_doc jsonb;
begin
    if p_name is null or p_instance_id is null then
        raise exception using errcode = 'OB001',
            message = 'otel_budget_merge: p_name and p_instance_id are required';
    end if;
    v_problem := public.otel_budget_entry_problem(p_entry);
    if v_problem is not null then
        raise exception using errcode = 'OB001',
            message = format('entry for %L: %s', p_instance_id, v_problem);
    end if;
    if jsonb_typeof(v_meta) <> 'object' then
        raise exception using errcode = 'OB001',
            message = format('otel_budget_merge: p_day_meta must be an object, got %s', jsonb_typeof(v_meta));
    end if;

    v_seq := (p_entry ->> 'seq')::numeric;
    v_entry := p_entry || jsonb_build_object('spend_usd', round((p_entry ->> 'spend_usd')::numeric, 9));

    -- The row can only vanish between the two statements if someone deletes it;
    -- then the next round inserts it afresh.
    for attempt in 1..3 loop
        insert into public.quilt_patches as q (patch_type, name, content)
        values (
            'budget', p_name,
            v_meta || jsonb_build_object(
                'instances', jsonb_build_object(p_instance_id, v_entry),
                'total_usd', v_entry -> 'spend_usd')
        )
        on conflict (patch_type, name) do update
            set content = q.content || v_meta || jsonb_build_object(
                    'instances',
                    coalesce(q.content -> 'instances', '{}'::jsonb) || jsonb_build_object(p_instance_id, v_entry),
                    'total_usd',
                    (select round(coalesce(sum((e.value ->> 'spend_usd')::numeric), 0), 9)
                       from jsonb_each(coalesce(q.content -> 'instances', '{}'::jsonb)
                                       || jsonb_build_object(p_instance_id, v_entry)) as e)),
                updated_at = now()
            where coalesce(
                      (public.otel_budget_checked(q.content, p_name)
                         #>> array['instances', p_instance_id, 'seq'])::numeric,
                      -1) < v_seq
        returning q.content into v_doc;
        if found then
            return v_doc;
        end if;

        -- Not applied: this instance already stored this seq or a newer one.
        select q.content into v_doc
          from public.quilt_patches as q
         where q.patch_type = 'budget' and q.name = p_name;
        if found then
            return public.otel_budget_checked(v_doc, p_name);
        end if;
    end loop;
    raise exception using errcode = '40001',
        message = format('otel_budget_merge: budget row %L kept disappearing', p_name);
end
$fn$;


-- Insert the row unless (p_type, p_name) exists; true if this call inserted it.
-- The once-only claim behind the fleet-wide nudge.
create or replace function public.otel_budget_claim(p_type text, p_name text, p_content jsonb)
returns boolean
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
begin
    if p_type is null or p_name is null then
        raise exception using errcode = 'OB001',
            message = 'otel_budget_claim: p_type and p_name are required';
    end if;
    if p_content is null or jsonb_typeof(p_content) <> 'object' then
        raise exception using errcode = 'OB001',
            message = format('otel_budget_claim: p_content must be an object, got %s',
                             coalesce(jsonb_typeof(p_content), 'nothing'));
    end if;
    insert into public.quilt_patches (patch_type, name, content)
    values (p_type, p_name, p_content)
    on conflict (patch_type, name) do nothing;
    return found;
end
$fn$;


-- Replace a claimed row's content only if it still holds p_expected (compare and
-- set): true if this call replaced it. Records an alert's delivery, and lets one
-- writer (exactly one) take over a claim whose writer died before delivering it.
create or replace function public.otel_budget_claim_replace(
    p_type text, p_name text, p_expected jsonb, p_content jsonb
)
returns boolean
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
begin
    if p_type is null or p_name is null or p_expected is null then
        raise exception using errcode = 'OB001',
            message = 'otel_budget_claim_replace: p_type, p_name and p_expected are required';
    end if;
    if p_content is null or jsonb_typeof(p_content) <> 'object' then
        raise exception using errcode = 'OB001',
            message = format('otel_budget_claim_replace: p_content must be an object, got %s',
                             coalesce(jsonb_typeof(p_content), 'nothing'));
    end if;
    update public.quilt_patches as q
       set content = p_content, updated_at = now()
     where q.patch_type = p_type and q.name = p_name and q.content = p_expected;
    return found;
end
$fn$;


-- ---------------------------------------------------------------------------
-- Version 2: one row per (day, writer), patch_type 'budget_writer',
-- name 'budget_<date>/<writer_id>', content the writer's entry. A writer is one
-- recording process; it alone writes its row, so merges never contend on a
-- shared row. The day's writer rows are found by date through two partial
-- indexes, live rows and retired ones (the name's prefix is not usable: LIKE under
-- a non-C collation cannot use a btree). The first layout's index on every writer
-- row of a date is dropped: the planner preferred it to the live rows' index and
-- then filtered out the day's retired rows one by one.
drop index if exists public.quilt_patches_writer_day;
create index if not exists quilt_patches_writer_retired
    on public.quilt_patches ((content ->> 'date'))
    where patch_type = 'budget_writer' and (content ? 'retired');


-- NULL if `p_entry` is a well-formed writer entry, else what is wrong with it.
-- Mirrors otel_budget.stores.entries.writer_entry_problem (jsonb itself refuses
-- NUL characters and lone surrogates).
create or replace function public.otel_budget_writer_problem(p_entry jsonb)
returns text
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_key text;
    v_bad text;
begin
    -- The fast path (every merge checks its entry and the stored row): simple
    -- expressions and jsonpath scans in C, no query per check. It accepts only what
    -- the checks below accept (array items and budget values are typed with
    -- .type() first: lax mode would unwrap an array item); anything else takes
    -- the checks below for the message.
    if jsonb_typeof(p_entry) = 'object'
       and jsonb_typeof(p_entry -> 'date') = 'string'
       and (p_entry ->> 'date') ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'
       and jsonb_typeof(p_entry -> 'writer_id') = 'string'
       and length(p_entry ->> 'writer_id') between 1 and 200
       and jsonb_typeof(p_entry -> 'instance_id') = 'string'
       and length(p_entry ->> 'instance_id') between 1 and 200
       and jsonb_typeof(p_entry -> 'spend_usd') = 'number'
       and jsonb_typeof(p_entry -> 'seq') = 'number' and (p_entry ->> 'seq') ~ '^[0-9]+$'
       and jsonb_typeof(p_entry -> 'updated_at') = 'string'
       and coalesce(jsonb_typeof(p_entry -> 'timezone'), 'string') = 'string'
       and coalesce(jsonb_typeof(p_entry -> 'by_attributes'), 'array') = 'array'
       and coalesce(jsonb_typeof(p_entry -> 'by_budget'), 'object') = 'object'
       and not pg_catalog.jsonb_path_exists(p_entry, 'lax $.by_attributes[*].type() ? (@ != "object")')
       and not pg_catalog.jsonb_path_exists(p_entry, 'lax $.by_attributes[*] ? (!(@.attributes.type() == "object" && @.spend_usd.type() == "number" && @.spend_usd >= 0))')
       and not pg_catalog.jsonb_path_exists(p_entry, 'lax $.by_budget.*.type() ? (@ != "number")')
       and not pg_catalog.jsonb_path_exists(p_entry, 'lax $.by_budget.* ? (@ < 0)') then
        if (p_entry ->> 'spend_usd')::numeric >= 0 then  -- a number: tested above
            return null;
        end if;
    end if;
    if p_entry is null or jsonb_typeof(p_entry) <> 'object' then
        return format('entry is %s, expected an object', coalesce(jsonb_typeof(p_entry), 'missing'));
    end if;
    if jsonb_typeof(p_entry -> 'date') is distinct from 'string'
       or (p_entry ->> 'date') !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' then
        return format('date must be a ''YYYY-MM-DD'' string, got %s',
                      coalesce(left((p_entry -> 'date')::text, 60), 'nothing'));
    end if;
    foreach v_key in array array['writer_id', 'instance_id'] loop
        if jsonb_typeof(p_entry -> v_key) is distinct from 'string'
           or length(p_entry ->> v_key) not between 1 and 200 then
            return format('%s must be a non-empty string of at most 200 characters', v_key);
        end if;
    end loop;
    if jsonb_typeof(p_entry -> 'spend_usd') is distinct from 'number' then
        return format('spend_usd must be a finite number >= 0, got %s',
                      coalesce(left((p_entry -> 'spend_usd')::text, 60), 'nothing'));
    end if;
    if (p_entry ->> 'spend_usd')::numeric < 0 then
        return format('spend_usd must be a finite number >= 0, got %s', p_entry ->> 'spend_usd');
    end if;
    -- jsonb keeps the scale a number was written with: 3.0 (a float) is not 3.
    if jsonb_typeof(p_entry -> 'seq') is distinct from 'number'
       or (p_entry ->> 'seq') !~ '^[0-9]+$' then
        return format('seq must be an integer >= 0, got %s',
                      coalesce(left((p_entry -> 'seq')::text, 60), 'nothing'));
    end if;
    if jsonb_typeof(p_entry -> 'updated_at') is distinct from 'string' then
        return 'updated_at must be a string';
    end if;
    if p_entry ? 'timezone' and jsonb_typeof(p_entry -> 'timezone') <> 'string' then
        return 'timezone must be a string';
    end if;
    if p_entry ? 'by_attributes' then
        if jsonb_typeof(p_entry -> 'by_attributes') <> 'array' then
            return 'by_attributes must be a list';
        end if;
        select left(e.value::text, 200) into v_bad
          from jsonb_array_elements(p_entry -> 'by_attributes') as e
         where jsonb_typeof(e.value) <> 'object'
            or jsonb_typeof(e.value -> 'attributes') is distinct from 'object'
            or case when jsonb_typeof(e.value -> 'spend_usd') = 'number'
                    then (e.value ->> 'spend_usd')::numeric < 0 else true end
         limit 1;
        if found then
            return format('malformed by_attributes item %s', v_bad);
        end if;
    end if;
    if p_entry ? 'by_budget' then
        if jsonb_typeof(p_entry -> 'by_budget') <> 'object' then
            return 'by_budget must be an object';
        end if;
        select e.key into v_bad
          from jsonb_each(p_entry -> 'by_budget') as e
         where case when jsonb_typeof(e.value) = 'number'
                    then (e.value #>> '{}')::numeric < 0 else true end
         limit 1;
        if found then
            return format('by_budget[%L] must be a finite number >= 0', v_bad);
        end if;
    end if;
    return null;
end
$fn$;


-- The day's retired writers: one row per day, patch_type 'budget_summary', name
-- 'budget_<date>', content {"date", "spend_nanos", "writers", "updated_at",
-- "by_budget_nanos", "budget_writers"}: the sums of the writer rows that
-- otel_budget_retire_writer marked "retired", in nano-USD (exact numeric), each
-- added exactly once. The day's totals are this row plus the rows not retired, so
-- a merge never visits the day's finished writers. Mirrors
-- otel_budget.stores.entries.summary_problem / summary_add / plan_write.
--
-- The rows a merge sums: the day's writer rows not retired. Queries spell the
-- predicate `not (content ? 'retired')` exactly so, for the planner to use it.
create index if not exists quilt_patches_writer_live
    on public.quilt_patches ((content ->> 'date'))
    where patch_type = 'budget_writer' and not (content ? 'retired');


-- NULL if `p_content` is a well-formed summary row of p_day, else what is wrong.
create or replace function public.otel_budget_summary_problem(p_content jsonb, p_day text)
returns text
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_key text;
    v_bad text;
begin
    -- The fast path (every merge of a day with retired writers checks the day's
    -- summary row): expressions and jsonpath scans in C, no query. It accepts only
    -- what the checks below accept (budget_writers' values by their text, as below:
    -- jsonb keeps 3.0 apart from 3; the two objects' keys in jsonb's own order, the
    -- same for the same keys); anything else takes the checks below for the message.
    if jsonb_typeof(p_content) = 'object'
       and (p_content ->> 'date') = p_day
       and jsonb_typeof(p_content -> 'spend_nanos') = 'number'
       and (p_content ->> 'spend_nanos') ~ '^[0-9]+$'
       and jsonb_typeof(p_content -> 'writers') = 'number'
       and (p_content ->> 'writers') ~ '^[0-9]+$'
       and coalesce(jsonb_typeof(p_content -> 'updated_at'), 'null') in ('string', 'null')
       and jsonb_typeof(p_content -> 'by_budget_nanos') = 'object'
       and jsonb_typeof(p_content -> 'budget_writers') = 'object'
       -- Types by a path (a filter would look inside an array value: lax mode
       -- unwraps it), then the numbers' signs.
       and not pg_catalog.jsonb_path_exists(p_content, 'lax $.by_budget_nanos.*.type() ? (@ != "number")')
       and not pg_catalog.jsonb_path_exists(p_content, 'lax $.by_budget_nanos.* ? (@ < 0)')
       and pg_catalog.jsonb_path_query_array(p_content, 'lax $.budget_writers.*')::text
           ~ '^\[([0-9]+(, [0-9]+)*)?\]$'
       and pg_catalog.jsonb_path_query_array(p_content, 'lax $.by_budget_nanos.keyvalue().key')
           = pg_catalog.jsonb_path_query_array(p_content, 'lax $.budget_writers.keyvalue().key') then
        return null;
    end if;
    if p_content is null or jsonb_typeof(p_content) <> 'object' then
        return format('content is %s, expected an object', coalesce(jsonb_typeof(p_content), 'missing'));
    end if;
    if (p_content ->> 'date') is distinct from p_day then
        return format('date must be %L, got %s', p_day,
                      coalesce(left((p_content -> 'date')::text, 60), 'nothing'));
    end if;
    foreach v_key in array array['spend_nanos', 'writers'] loop
        if jsonb_typeof(p_content -> v_key) is distinct from 'number'
           or (p_content ->> v_key) !~ '^[0-9]+$' then
            return format('%s must be an integer >= 0, got %s', v_key,
                          coalesce(left((p_content -> v_key)::text, 60), 'nothing'));
        end if;
    end loop;
    if p_content ? 'updated_at' and jsonb_typeof(p_content -> 'updated_at') not in ('string', 'null') then
        return 'updated_at must be a string or null';
    end if;
    foreach v_key in array array['by_budget_nanos', 'budget_writers'] loop
        if jsonb_typeof(p_content -> v_key) is distinct from 'object' then
            return format('%s must be an object', v_key);
        end if;
    end loop;
    -- by_budget_nanos: numbers >= 0 (an entry written straight through SQL may carry
    -- more than 9 decimals); budget_writers: integers >= 0.
    select e.key into v_bad
      from pg_catalog.jsonb_each(p_content -> 'by_budget_nanos') as e
     where case when jsonb_typeof(e.value) = 'number'
                then (e.value #>> '{}')::numeric < 0 else true end
     limit 1;
    if found then
        return format('by_budget_nanos[%L] must be a number >= 0', v_bad);
    end if;
    select e.key into v_bad
      from pg_catalog.jsonb_each(p_content -> 'budget_writers') as e
     where jsonb_typeof(e.value) <> 'number' or (e.value #>> '{}') !~ '^[0-9]+$'
     limit 1;
    if found then
        return format('budget_writers[%L] must be an integer >= 0', v_bad);
    end if;
    if (select pg_catalog.array_agg(k order by k) from pg_catalog.jsonb_object_keys(p_content -> 'by_budget_nanos') as k)
       is distinct from
       (select pg_catalog.array_agg(k order by k) from pg_catalog.jsonb_object_keys(p_content -> 'budget_writers') as k) then
        return 'by_budget_nanos and budget_writers must name the same budgets';
    end if;
    return null;
end
$fn$;


-- `p_content` if it is a well-formed summary row of p_day, else OB002 naming it.
create or replace function public.otel_budget_summary_checked(p_content jsonb, p_day text)
returns jsonb
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_problem text := public.otel_budget_summary_problem(p_content, p_day);
begin
    if v_problem is not null then
        raise exception using
            errcode = 'OB002',
            message = format('row budget_summary/budget_%s: %s', p_day, v_problem);
    end if;
    return p_content;
end
$fn$;


-- The summary row p_summary of p_day (NULL: none yet) with the writer entry p_add
-- counted in and p_sub counted out (either may be NULL). OB002 if p_summary is
-- malformed, or if taking p_sub out would leave it below zero.
create or replace function public.otel_budget_summary_add(
    p_summary jsonb, p_day text, p_add jsonb, p_sub jsonb
)
returns jsonb
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_base jsonb := public.otel_budget_summary_checked(coalesce(p_summary, jsonb_build_object(
        'date', p_day, 'spend_nanos', 0, 'writers', 0, 'updated_at', null,
        'by_budget_nanos', '{}'::jsonb, 'budget_writers', '{}'::jsonb)), p_day);
    v_spend numeric;
    v_writers numeric;
    v_budgets jsonb;
    v_counts jsonb;
    v_negative boolean;
    v_updated text := v_base ->> 'updated_at';
begin
    v_spend := (v_base ->> 'spend_nanos')::numeric
        + coalesce((p_add ->> 'spend_usd')::numeric * 1000000000, 0)
        - coalesce((p_sub ->> 'spend_usd')::numeric * 1000000000, 0);
    v_writers := (v_base ->> 'writers')::numeric
        + (p_add is not null)::int - (p_sub is not null)::int;
    select coalesce(pg_catalog.jsonb_object_agg(b.key, pg_catalog.trim_scale(b.nanos))
                        filter (where b.n > 0), '{}'::jsonb),
           coalesce(pg_catalog.jsonb_object_agg(b.key, b.n) filter (where b.n > 0), '{}'::jsonb),
           coalesce(bool_or(b.n < 0 or b.nanos < 0), false)
      into v_budgets, v_counts, v_negative
      from (select x.key, sum(x.nanos) as nanos, sum(x.n) as n
              from (select e.key, (e.value #>> '{}')::numeric as nanos, 0 as n
                      from pg_catalog.jsonb_each(v_base -> 'by_budget_nanos') as e
                    union all
                    select e.key, 0, (e.value #>> '{}')::numeric
                      from pg_catalog.jsonb_each(v_base -> 'budget_writers') as e
                    union all
                    select e.key, (e.value #>> '{}')::numeric * 1000000000, 1
                      from pg_catalog.jsonb_each(coalesce(p_add -> 'by_budget', '{}'::jsonb)) as e
                    union all
                    select e.key, -(e.value #>> '{}')::numeric * 1000000000, -1
                      from pg_catalog.jsonb_each(coalesce(p_sub -> 'by_budget', '{}'::jsonb)) as e
                   ) as x
             group by x.key) as b;
    if v_spend < 0 or v_writers < 0 or v_negative then
        raise exception using
            errcode = 'OB002',
            message = format('row budget_summary/budget_%s does not hold the retired writer %L',
                             p_day, p_sub ->> 'writer_id');
    end if;
    if p_add is not null and (p_add ->> 'updated_at') is not null
       and (v_updated is null or (p_add ->> 'updated_at') > v_updated) then
        v_updated := p_add ->> 'updated_at';
    end if;
    return jsonb_build_object(
        'date', p_day, 'spend_nanos', pg_catalog.trim_scale(v_spend), 'writers', v_writers,
        'updated_at', v_updated, 'by_budget_nanos', v_budgets, 'budget_writers', v_counts);
end
$fn$;


-- The day's summary rebuilt from its retired writer rows, the row p_exclude left
-- out (NULL when no row is left): for a summary row that is absent (deleted by
-- hand to repair a malformed one). Rows are never deleted, so it is exact.
-- Mirrors otel_budget.stores.entries.rebuild_summary.
create or replace function public.otel_budget_summary_rebuilt(p_day text, p_exclude text)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $fn$
declare
    v_row jsonb;
    v_base jsonb;
begin
    for v_row in
        select q.content from public.quilt_patches as q
         where q.patch_type = 'budget_writer' and (q.content ->> 'date') = p_day
           and (q.content ? 'retired') and q.name is distinct from p_exclude
           and public.otel_budget_amounts_ok(q.content)
         order by q.name
    loop
        v_base := public.otel_budget_summary_add(v_base, p_day, v_row, null);
    end loop;
    return v_base;
end
$fn$;


-- Move the day's summary row by p_add in and p_sub out, for the writer row p_name
-- that this transaction has just written (and locked). A malformed summary row is
-- quarantined: left as it is (the totals come from the shards, and name it). An
-- absent one is rebuilt from the retired rows other than p_name, to which p_add is
-- added (p_sub, p_name's old content, is not in it). A concurrent first insert
-- wins the conflict and this one's move applies to it.
create or replace function public.otel_budget_summary_move(
    p_day text, p_name text, p_add jsonb, p_sub jsonb
)
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_summary jsonb;
begin
    select q.content into v_summary from public.quilt_patches as q
     where q.patch_type = 'budget_summary' and q.name = 'budget_' || p_day
       for update;
    if found then
        if public.otel_budget_summary_problem(v_summary, p_day) is null then
            update public.quilt_patches as q
               set content = public.otel_budget_summary_add(v_summary, p_day, p_add, p_sub),
                   updated_at = now()
             where q.patch_type = 'budget_summary' and q.name = 'budget_' || p_day;
        end if;
        return;
    end if;
    insert into public.quilt_patches as q (patch_type, name, content)
    values ('budget_summary', 'budget_' || p_day, public.otel_budget_summary_add(
                public.otel_budget_summary_rebuilt(p_day, p_name), p_day, p_add, null))
    on conflict (patch_type, name) do update
        set content = public.otel_budget_summary_add(q.content, p_day, p_add, p_sub),
            updated_at = now()
        where public.otel_budget_summary_problem(q.content, p_day) is null;
end
$fn$;


-- ---------------------------------------------------------------------------
-- Version 3: the day's aggregate, so a merge costs the same with 10 writers or
-- 10,000 (live or not). public.otel_budget_day_shards holds, per (day, shard),
-- the sums of the day's counted writer rows: live ones and retired ones apart,
-- per budget [amount, writers] (in otel_budget_day_budgets, per (day, shard,
-- budget)), and the two latest updated_at stamps with their
-- row names (enough to give "the others' latest" exactly: a writer's own stamp
-- only grows). A row is counted when its date is a string and its amounts are
-- amounts (otel_budget_amounts_ok); one that is not is quarantined: left out of
-- the sums, named by the quilt_patches_writer_bad index.
--
-- The trigger otel_budget_writer_rows_changed keeps the shards exact whatever
-- writes a writer row (the functions below, a hand edit, a DELETE, a TRUNCATE):
-- it applies the row's delta (new contribution minus old) to its shard in the
-- same transaction. Shards are chosen by a hash of the row's name, so writers
-- of one day rarely wait on each other's shard row; the others are the sum of
-- the day's shards minus the writer's own row. Retiring a row (shutdown, or the
-- reaper) only moves its sums from the live to the retired columns.
create table if not exists public.otel_budget_day_shards (
    day             text     not null,
    shard           smallint not null,
    live_usd        numeric  not null default 0,
    live_writers    bigint   not null default 0,
    retired_usd     numeric  not null default 0,
    retired_writers bigint   not null default 0,
    budgets         jsonb    not null default '{}'::jsonb,
    stamps          jsonb    not null default '[]'::jsonb,
    constraint otel_budget_day_shards_pkey primary key (day, shard)
);
alter table public.otel_budget_day_shards enable row level security;

-- The shards' sums per budget, one row per (day, shard, budget): [usd, writers]
-- as numeric columns. A merge sums the day's rows as they are; in one jsonb per
-- shard it had to unpack every shard's object and cast each amount through text,
-- half of the others' cost. A shard row's `budgets` column is no longer used
-- ('{}'; the migration moves what an older version kept there into this table).
-- Rows are locked after their shard's row, so writers wait on the shard as before;
-- every move updates the shard's row too (its xmin changes with its budgets).
create table if not exists public.otel_budget_day_budgets (
    day     text     not null,
    shard   smallint not null,
    budget  text     not null,
    usd     numeric  not null default 0,
    writers bigint   not null default 0,
    constraint otel_budget_day_budgets_pkey primary key (day, shard, budget)
);
alter table public.otel_budget_day_budgets enable row level security;


-- True if the amounts of a stored writer row are amounts: spend_usd a number in
-- [0, 1e12], by_budget absent, null or an object of such numbers. Mirrors
-- otel_budget.stores.entries.amounts_problem. One check after another, so no cast
-- of a non-number is ever attempted.
create or replace function public.otel_budget_amounts_ok(p_content jsonb)
returns boolean
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
begin
    if jsonb_typeof(p_content) is distinct from 'object' then
        return false;
    end if;
    if jsonb_typeof(p_content -> 'spend_usd') is distinct from 'number' then
        return false;
    end if;
    if (p_content ->> 'spend_usd')::numeric not between 0 and 1e12 then
        return false;
    end if;
    if coalesce(jsonb_typeof(p_content -> 'by_budget'), 'null') = 'null' then
        return true;
    end if;
    if jsonb_typeof(p_content -> 'by_budget') <> 'object' then
        return false;
    end if;
    -- One jsonpath scan in C, not a query per row (every merge calls this three
    -- times). Strict: a value that is an array is not unwrapped, its type() is
    -- "array"; a comparison that errs (a string) is unknown, and `true || unknown`
    -- is true.
    return not pg_catalog.jsonb_path_exists(
        p_content, 'strict $.by_budget.* ? (@.type() != "number" || @ < 0 || @ > 1e12)');
end
$fn$;


-- The day's quarantined writer rows (amounts that are not amounts), found without
-- visiting the others.
create index if not exists quilt_patches_writer_bad
    on public.quilt_patches ((content ->> 'date'))
    where patch_type = 'budget_writer' and not public.otel_budget_amounts_ok(content);

-- The reaper's way to the live rows that stopped checkpointing.
create index if not exists quilt_patches_writer_stale
    on public.quilt_patches (updated_at)
    where patch_type = 'budget_writer' and not (content ? 'retired');


-- The shard of a writer row: stable for the row's name. The helpers of the hot
-- path are PL/pgSQL, not SQL: PL/pgSQL keeps its plans for the session, while a
-- SQL function called from PL/pgSQL is planned again at every call.
create or replace function public.otel_budget_shard(p_name text)
returns smallint
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
begin
    return (('x' || pg_catalog.substr(pg_catalog.md5(p_name), 1, 8))::bit(32)::bigint % 32)::smallint;
end
$fn$;


-- Helpers of an earlier version of the shards' budgets.
drop function if exists public.otel_budget_budgets_of(jsonb, integer);
drop function if exists public.otel_budget_budgets_sum(jsonb, jsonb);


-- A shard's two latest [updated_at, row name] pairs, with p_name's stamp replaced
-- by p_stamp (NULL: p_name taken out).
create or replace function public.otel_budget_stamps_put(p_stamps jsonb, p_name text, p_stamp text)
returns jsonb
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
begin
    -- The common case: the row's own stamp is the shard's latest already, or joins it.
    if p_stamp is not null and (p_stamps is null or p_stamps = '[]'::jsonb) then
        return pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array(p_stamp, p_name));
    end if;
    return (select coalesce(pg_catalog.jsonb_agg(t.v order by t.v ->> 0 desc), '[]'::jsonb)
      from (select s.v
              from (select e.value as v
                      from pg_catalog.jsonb_array_elements(coalesce(p_stamps, '[]'::jsonb)) as e
                     where (e.value ->> 1) is distinct from p_name
                    union all
                    select pg_catalog.jsonb_build_array(p_stamp, p_name) where p_stamp is not null
                   ) as s
             order by s.v ->> 0 desc
             limit 2) as t);
end
$fn$;


-- Move the day's shard of row p_name by (p_add - p_sub): each a counted writer
-- row's content or NULL. The shard's row first, then its budgets' rows.
create or replace function public.otel_budget_shard_apply(
    p_day text, p_name text, p_sub jsonb, p_add jsonb
)
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_live numeric := 0;
    v_live_n bigint := 0;
    v_retired numeric := 0;
    v_retired_n bigint := 0;
    v_stamp text;
    -- otel_budget_shard(p_name)
    v_shard smallint := (('x' || pg_catalog.substr(pg_catalog.md5(p_name), 1, 8))::bit(32)::bigint % 32)::smallint;
    v_add jsonb := '{}'::jsonb;
    v_sub jsonb := '{}'::jsonb;
begin
    -- Amounts cast from jsonb straight to numeric (`->> ...::numeric` goes through text).
    if p_sub is not null then
        if p_sub ? 'retired' then
            v_retired := v_retired - (p_sub -> 'spend_usd')::numeric;
            v_retired_n := v_retired_n - 1;
        else
            v_live := v_live - (p_sub -> 'spend_usd')::numeric;
            v_live_n := v_live_n - 1;
        end if;
        if jsonb_typeof(p_sub -> 'by_budget') = 'object' then
            v_sub := p_sub -> 'by_budget';
        end if;
    end if;
    if p_add is not null then
        if p_add ? 'retired' then
            v_retired := v_retired + (p_add -> 'spend_usd')::numeric;
            v_retired_n := v_retired_n + 1;
        else
            v_live := v_live + (p_add -> 'spend_usd')::numeric;
            v_live_n := v_live_n + 1;
        end if;
        if jsonb_typeof(p_add -> 'updated_at') = 'string' then
            v_stamp := p_add ->> 'updated_at';
        end if;
        if jsonb_typeof(p_add -> 'by_budget') = 'object' then
            v_add := p_add -> 'by_budget';
        end if;
    end if;
    insert into public.otel_budget_day_shards as s
           (day, shard, live_usd, live_writers, retired_usd, retired_writers, stamps)
    values (p_day, v_shard, v_live, v_live_n, v_retired, v_retired_n,
            -- otel_budget_stamps_put(null, p_name, v_stamp)
            case when v_stamp is null then '[]'::jsonb
                 else pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array(v_stamp, p_name)) end)
    on conflict (day, shard) do update
        set live_usd = s.live_usd + excluded.live_usd,
            live_writers = s.live_writers + excluded.live_writers,
            retired_usd = s.retired_usd + excluded.retired_usd,
            retired_writers = s.retired_writers + excluded.retired_writers,
            -- The usual merge: its stamp is the shard's latest. Then the others'
            -- latest is the old first stamp, or the old second if the first was
            -- this row's own: no sort (a shard of many writers takes this path at
            -- nearly every merge, each the latest when it writes).
            stamps = case when v_stamp is not null and v_stamp >= (s.stamps -> 0 ->> 0)
                          then case when (s.stamps -> 0 ->> 1) = p_name
                                    then pg_catalog.jsonb_set(s.stamps, '{0}',
                                             pg_catalog.jsonb_build_array(v_stamp, p_name))
                                    else pg_catalog.jsonb_build_array(
                                             pg_catalog.jsonb_build_array(v_stamp, p_name),
                                             s.stamps -> 0) end
                          else public.otel_budget_stamps_put(s.stamps, p_name, v_stamp) end;
    if v_add = '{}'::jsonb and v_sub = '{}'::jsonb then
        return;
    end if;
    -- The usual merge: the same budgets as the row it replaces (jsonb lists an
    -- object's keys in one order), so no writer count moves and every budget has
    -- its row already: only the amounts that changed, in place.
    if array(select pg_catalog.jsonb_object_keys(v_add)) = array(select pg_catalog.jsonb_object_keys(v_sub)) then
        update public.otel_budget_day_budgets as b
           set usd = b.usd + ((v_add -> b.budget)::numeric - (v_sub -> b.budget)::numeric)
         where b.day = p_day and b.shard = v_shard and v_add ? b.budget
           and (v_add -> b.budget) <> (v_sub -> b.budget);
        return;
    end if;
    -- Only the budgets whose amount or writers move (a live writer's next merge
    -- moves the budgets it spent on since).
    insert into public.otel_budget_day_budgets as b (day, shard, budget, usd, writers)
    select p_day, v_shard, e.key, sum(e.usd), sum(e.n)
      from (select a.key, a.value::numeric as usd, 1 as n from pg_catalog.jsonb_each(v_add) as a
            union all
            select o.key, -o.value::numeric, -1 from pg_catalog.jsonb_each(v_sub) as o) as e
     group by e.key
    having sum(e.usd) <> 0 or sum(e.n) <> 0
    on conflict (day, shard, budget) do update
        set usd = b.usd + excluded.usd, writers = b.writers + excluded.writers;
    -- A budget that left the row may leave its shard's row with no writer: gone.
    if exists (select 1 from pg_catalog.jsonb_object_keys(v_sub) as k where not v_add ? k) then
        delete from public.otel_budget_day_budgets as b
         where b.day = p_day and b.shard = v_shard and b.writers = 0 and b.usd = 0;
    end if;
end
$fn$;


-- The trigger behind the shards: every change of a writer row applies its delta.
create or replace function public.otel_budget_writer_rows_changed()
returns trigger
language plpgsql
security invoker
set search_path = ''
as $fn$
declare
    v_old jsonb;
    v_new jsonb;
begin
    if tg_op = 'TRUNCATE' then
        delete from public.otel_budget_day_budgets;
        delete from public.otel_budget_day_shards;
        return null;
    end if;
    -- Each content detoasted once (see otel_budget_stored_seq): the checks and the
    -- shard's move below read it a dozen times.
    if tg_op in ('UPDATE', 'DELETE') and old.patch_type = 'budget_writer' then
        v_old := old.content || '{}'::jsonb;
        if jsonb_typeof(v_old -> 'date') is distinct from 'string'
           or not public.otel_budget_amounts_ok(v_old) then
            v_old := null;
        end if;
    end if;
    if tg_op in ('UPDATE', 'INSERT') and new.patch_type = 'budget_writer' then
        v_new := new.content || '{}'::jsonb;
        if jsonb_typeof(v_new -> 'date') is distinct from 'string'
           or not public.otel_budget_amounts_ok(v_new) then
            v_new := null;
        end if;
    end if;
    if v_old is not null and v_new is not null and old.name = new.name
       and (v_old ->> 'date') = (v_new ->> 'date') then
        perform public.otel_budget_shard_apply(v_new ->> 'date', new.name, v_old, v_new);
    else
        if v_old is not null then
            perform public.otel_budget_shard_apply(v_old ->> 'date', old.name, v_old, null);
        end if;
        if v_new is not null then
            perform public.otel_budget_shard_apply(v_new ->> 'date', new.name, null, v_new);
        end if;
    end if;
    return null;
end
$fn$;


-- A version 2 database: its writer rows (live and retired) summed into the
-- shards once, when the table is new, with writes to quilt_patches held off
-- (the lock lasts to the migration's commit, and the trigger exists by then).
do $backfill$
begin
    if exists (select 1 from public.otel_budget_day_shards) then
        return;
    end if;
    lock table public.quilt_patches in share row exclusive mode;
    with counted as materialized (
        select q.name, q.content ->> 'date' as day, public.otel_budget_shard(q.name) as shard,
               (q.content ? 'retired') as retired, (q.content ->> 'spend_usd')::numeric as usd,
               case when jsonb_typeof(q.content -> 'updated_at') = 'string'
                    then q.content ->> 'updated_at' end as stamp,
               q.content
          from public.quilt_patches as q
         where q.patch_type = 'budget_writer' and jsonb_typeof(q.content -> 'date') = 'string'
           and public.otel_budget_amounts_ok(q.content)
    ),
    sums as (
        select c.day, c.shard,
               coalesce(sum(c.usd) filter (where not c.retired), 0) as live_usd,
               count(*) filter (where not c.retired) as live_writers,
               coalesce(sum(c.usd) filter (where c.retired), 0) as retired_usd,
               count(*) filter (where c.retired) as retired_writers
          from counted as c group by c.day, c.shard
    ),
    budgets as (
        insert into public.otel_budget_day_budgets (day, shard, budget, usd, writers)
        select c.day, c.shard, e.key, sum(e.value::numeric), count(*)
          from counted as c
         cross join lateral pg_catalog.jsonb_each(
               case when jsonb_typeof(c.content -> 'by_budget') = 'object'
                    then c.content -> 'by_budget' else '{}'::jsonb end) as e
         group by c.day, c.shard, e.key
        returning 1
    ),
    stamps as (
        select r.day, r.shard,
               pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(r.stamp, r.name)
                                    order by r.stamp desc) as stamps
          from (select c.day, c.shard, c.stamp, c.name,
                       row_number() over (partition by c.day, c.shard order by c.stamp desc) as k
                  from counted as c where c.stamp is not null) as r
         where r.k <= 2
         group by r.day, r.shard
    )
    insert into public.otel_budget_day_shards
           (day, shard, live_usd, live_writers, retired_usd, retired_writers, stamps)
    select s.day, s.shard, s.live_usd, s.live_writers, s.retired_usd, s.retired_writers,
           coalesce(t.stamps, '[]'::jsonb)
      from sums as s
      left join stamps as t on t.day = s.day and t.shard = s.shard;
end
$backfill$;

-- A database whose shards kept their budgets as jsonb ({budget: [amount,
-- writers]} in `budgets`): moved into otel_budget_day_budgets once, writes held off.
do $budgets$
begin
    if not exists (select 1 from public.otel_budget_day_shards as s where s.budgets <> '{}'::jsonb) then
        return;
    end if;
    lock table public.quilt_patches in share row exclusive mode;
    insert into public.otel_budget_day_budgets as b (day, shard, budget, usd, writers)
    select s.day, s.shard, e.key, (e.value -> 0)::numeric, (e.value -> 1)::bigint
      from public.otel_budget_day_shards as s
     cross join lateral pg_catalog.jsonb_each(s.budgets) as e
     where s.budgets <> '{}'::jsonb
    on conflict (day, shard, budget) do update
        set usd = b.usd + excluded.usd, writers = b.writers + excluded.writers;
    update public.otel_budget_day_shards as s set budgets = '{}'::jsonb where s.budgets <> '{}'::jsonb;
end
$budgets$;

create or replace trigger otel_budget_writer_rows_inserted
    after insert on public.quilt_patches
    for each row when (new.patch_type = 'budget_writer')
    execute function public.otel_budget_writer_rows_changed();
create or replace trigger otel_budget_writer_rows_updated
    after update on public.quilt_patches
    for each row when ((old.patch_type = 'budget_writer' or new.patch_type = 'budget_writer')
                       and (old.content is distinct from new.content
                            or old.name is distinct from new.name
                            or old.patch_type is distinct from new.patch_type))
    execute function public.otel_budget_writer_rows_changed();
create or replace trigger otel_budget_writer_rows_deleted
    after delete on public.quilt_patches
    for each row when (old.patch_type = 'budget_writer')
    execute function public.otel_budget_writer_rows_changed();
create or replace trigger otel_budget_writer_rows_truncated
    after truncate on public.quilt_patches
    for each statement execute function public.otel_budget_writer_rows_changed();


-- The totals of the day p_day without the writer row p_name (NULL: none left
-- out), whose stored content is p_own (NULL if absent): {"date", "total_usd",
-- "writers", "updated_at", "by_budget", "budget_writers", "quarantined"}, equal to
-- otel_budget.stores.entries.summarize over the day's other counted rows. Reads
-- the day's shards (at most 32 small rows, and their budgets' rows), the summary
-- row (a malformed one is named in "quarantined") and the quarantined rows' index;
-- never the other writers' rows. A merge's path; otel_budget_day_totals_minus
-- computes the same for many days at once, in one query.
create or replace function public.otel_budget_others(p_day text, p_name text, p_own jsonb)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $fn$
declare
    v_own jsonb;
begin
    -- The writer's own row, where the day counts it: its by_budget ({} if none).
    if p_own is not null and jsonb_typeof(p_own -> 'date') = 'string'
       and (p_own ->> 'date') = p_day then
        if public.otel_budget_amounts_ok(p_own) then
            v_own := case when jsonb_typeof(p_own -> 'by_budget') = 'object'
                          then p_own -> 'by_budget' else '{}'::jsonb end;
        end if;
    end if;
    -- One statement: each one a PL/pgSQL function runs costs an executor start and end.
    return (
    select pg_catalog.jsonb_build_object(
               'date', p_day,
               'total_usd', pg_catalog.trim_scale(round(
                   t.usd - case when v_own is null then 0 else (p_own -> 'spend_usd')::numeric end, 9)),
               'writers', t.n - case when v_own is null then 0 else 1 end,
               'updated_at', t.stamp,
               'by_budget', coalesce(b.by_budget, '{}'::jsonb),
               'budget_writers', coalesce(b.budget_writers, '{}'::jsonb),
               -- A malformed summary row is named, never fatal: the shards hold every row.
               'quarantined', coalesce(
                   (select pg_catalog.jsonb_build_array('budget_summary/' || s.name)
                      from public.quilt_patches as s
                     where s.patch_type = 'budget_summary' and s.name = 'budget_' || p_day
                       and public.otel_budget_summary_problem(s.content, p_day) is not null),
                   '[]'::jsonb) || coalesce(
                   (select pg_catalog.jsonb_agg(q.name order by q.name)
                      from public.quilt_patches as q
                     where q.patch_type = 'budget_writer' and (q.content ->> 'date') = p_day
                       and not public.otel_budget_amounts_ok(q.content)
                       and q.name is distinct from p_name),
                   '[]'::jsonb))
      from (select coalesce(sum(s.live_usd + s.retired_usd), 0) as usd,
                   coalesce(sum(s.live_writers + s.retired_writers), 0) as n,
                   max(case when (s.stamps -> 0 ->> 1) is distinct from p_name
                            then s.stamps -> 0 ->> 0 else s.stamps -> 1 ->> 0 end) as stamp
              from public.otel_budget_day_shards as s
             where s.day = p_day) as t,
           (select pg_catalog.jsonb_object_agg(x.key, pg_catalog.trim_scale(round(x.usd, 9)))
                       filter (where x.n > 0) as by_budget,
                   pg_catalog.jsonb_object_agg(x.key, x.n) filter (where x.n > 0) as budget_writers
              from (select b.budget as key,
                           sum(b.usd) - coalesce((v_own -> b.budget)::numeric, 0) as usd,
                           sum(b.writers) - case when v_own ? b.budget then 1 else 0 end as n
                      from public.otel_budget_day_budgets as b
                     where b.day = p_day
                     group by b.budget) as x) as b);
end
$fn$;


-- otel_budget_day_totals leaving out the writer p_exclude_writer, whatever its
-- row's state (version 2 took a retired row p_minus out of the summary here; the
-- shards hold every row, so p_minus is no longer needed and is ignored). Equal to
-- otel_budget_others day by day, in one query over all the days' shards, budget
-- rows, summary rows and the quarantined rows' index (a month: one query, not
-- four per day).
create or replace function public.otel_budget_day_totals_minus(
    p_days text[],
    p_exclude_writer text,
    p_minus jsonb
)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $fn$
begin
    return (
    with d as materialized (
        select u.day,
               case when p_exclude_writer is not null then 'budget_' || u.day || '/' || p_exclude_writer end as name
          from (select distinct x.day from pg_catalog.unnest(p_days) as x(day) where x.day is not null) as u
    ),
    -- The left-out writer's row where its day counts it (its date that day, its
    -- amounts amounts): its sums come off the day's.
    own as materialized (
        select d.day, o.content
          from d
         -- One index probe per day (OFFSET 0 keeps the planner from joining the
         -- day's writer rows wholesale).
         cross join lateral (select q.content from public.quilt_patches as q
                              where q.patch_type = 'budget_writer' and q.name = d.name
                             offset 0) as o
         where jsonb_typeof(o.content -> 'date') = 'string'
           and (o.content ->> 'date') = d.day and public.otel_budget_amounts_ok(o.content)
    ),
    sums as (
        select s.day, sum(s.live_usd + s.retired_usd) as usd, sum(s.live_writers + s.retired_writers) as n,
               max(case when (s.stamps -> 0 ->> 1) is distinct from d.name
                        then s.stamps -> 0 ->> 0 else s.stamps -> 1 ->> 0 end) as stamp
          from d join public.otel_budget_day_shards as s on s.day = d.day
         group by s.day
    ),
    budgets as (
        select x.day,
               pg_catalog.jsonb_object_agg(x.budget, pg_catalog.trim_scale(round(x.usd, 9))) as by_budget,
               pg_catalog.jsonb_object_agg(x.budget, x.n) as budget_writers
          from (select e.day, e.budget, sum(e.usd) as usd, sum(e.n) as n
                  from (select b.day, b.budget, b.usd, b.writers as n
                          from d join public.otel_budget_day_budgets as b on b.day = d.day
                        union all
                        select own.day, e.key, -e.value::numeric, -1
                          from own
                         cross join lateral pg_catalog.jsonb_each(
                               case when jsonb_typeof(own.content -> 'by_budget') = 'object'
                                    then own.content -> 'by_budget' else '{}'::jsonb end) as e
                       ) as e
                 group by e.day, e.budget) as x
         where x.n > 0
         group by x.day
    ),
    bad as (
        select (q.content ->> 'date') as day, pg_catalog.jsonb_agg(q.name order by q.name) as names
          from public.quilt_patches as q
          join d on d.day = (q.content ->> 'date')
         where q.patch_type = 'budget_writer'
           and (q.content ->> 'date') = any (array(select d.day from d))
           and not public.otel_budget_amounts_ok(q.content)
           and q.name is distinct from d.name
         group by (q.content ->> 'date')
    ),
    summary_bad as (
        -- A malformed summary row is named, never fatal: the shards hold every row.
        select d.day, pg_catalog.jsonb_build_array('budget_summary/' || s.name) as names
          from d
         cross join lateral (select q.name, q.content from public.quilt_patches as q
                              where q.patch_type = 'budget_summary' and q.name = 'budget_' || d.day
                             offset 0) as s
         where public.otel_budget_summary_problem(s.content, d.day) is not null
    )
    select coalesce(pg_catalog.jsonb_object_agg(d.day, pg_catalog.jsonb_build_object(
               'date', d.day,
               'total_usd', pg_catalog.trim_scale(round(
                   coalesce(sums.usd, 0) - coalesce((own.content -> 'spend_usd')::numeric, 0), 9)),
               'writers', coalesce(sums.n, 0) - case when own.day is null then 0 else 1 end,
               'updated_at', sums.stamp,
               'by_budget', coalesce(budgets.by_budget, '{}'::jsonb),
               'budget_writers', coalesce(budgets.budget_writers, '{}'::jsonb),
               'quarantined', coalesce(summary_bad.names, '[]'::jsonb) || coalesce(bad.names, '[]'::jsonb))),
           '{}'::jsonb)
      from d
      left join own on own.day = d.day
      left join sums on sums.day = d.day
      left join budgets on budgets.day = d.day
      left join bad on bad.day = d.day
      left join summary_bad on summary_bad.day = d.day);
end
$fn$;


-- The totals of each day in p_days over all its writer rows (live and retired),
-- leaving out the writer p_exclude_writer if given: {"<day>": {"date",
-- "total_usd", "writers", "updated_at", "by_budget", "budget_writers",
-- "quarantined"}}. Every day in p_days is a key, zero when it has no rows. Equal
-- to otel_budget.stores.entries.summarize over the day's rows; a row whose
-- amounts are not amounts is left out and named in "quarantined" (never counted
-- as 0, never fatal), as is a malformed summary row. Cost: the days' shards, not
-- their writers (otel_budget_day_totals_minus).
create or replace function public.otel_budget_day_totals(
    p_days text[],
    p_exclude_writer text default null
)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $fn$
    select public.otel_budget_day_totals_minus(p_days, p_exclude_writer, null)
$fn$;


-- Every writer row's content for the days in p_days, ordered by date and name;
-- without p_breakdown, by_attributes is left out (it is most of the bytes).
create or replace function public.otel_budget_writer_entries(
    p_days text[],
    p_breakdown boolean default true
)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $fn$
    select coalesce(pg_catalog.jsonb_agg(
               case when p_breakdown then q.content else q.content - 'by_attributes' end
               order by q.content ->> 'date', q.name), '[]'::jsonb)
      from (select r.name, r.content from public.quilt_patches as r
             where r.patch_type = 'budget_writer' and (r.content ->> 'date') = any (p_days)
               and not (r.content ? 'retired')
            union all
            select r.name, r.content from public.quilt_patches as r
             where r.patch_type = 'budget_writer' and (r.content ->> 'date') = any (p_days)
               and (r.content ? 'retired')) as q
$fn$;


-- merge_writer (p_retire false) and retire_writer (p_retire true). Mirrors
-- otel_budget.stores.entries.plan_write. Lock order: the writer's row, then its
-- shard (the trigger), then the day's summary row, so concurrent writes cannot
-- deadlock. The others come from the day's shards minus the writer's own row
-- (otel_budget_others): the cost does not grow with the day's writers.
create or replace function public.otel_budget_write_writer(p_entry jsonb, p_retire boolean)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_problem text;
    v_day text;
    v_writer text;
    v_name text;
    v_seq numeric;
    v_entry jsonb;
    v_stored jsonb;
    v_stored_seq numeric;
    v_applied boolean;
    v_kept jsonb;
    v_final jsonb;
    v_found boolean := false;
    v_version text;
begin
    v_problem := public.otel_budget_writer_problem(p_entry);
    if v_problem is null and p_entry ? 'retired' then
        v_problem := 'retired is set by the store (retire_writer), not by a writer';
    end if;
    if v_problem is null and p_entry ? 'final' and jsonb_typeof(p_entry -> 'final') <> 'boolean' then
        v_problem := 'final must be true or false';
    end if;
    if v_problem is not null then
        raise exception using errcode = 'OB001',
            message = format('writer entry: %s', v_problem);
    end if;
    v_day := p_entry ->> 'date';
    v_writer := p_entry ->> 'writer_id';
    v_name := 'budget_' || v_day || '/' || v_writer;
    v_seq := (p_entry ->> 'seq')::numeric;
    v_entry := p_entry;
    -- Rounded only when it is not already (the stores send it rounded): `||` rebuilds
    -- the whole entry, a sixth of the server's work on a 10,000-key one.
    if (p_entry ->> 'spend_usd') is distinct from
       pg_catalog.trim_scale(round((p_entry ->> 'spend_usd')::numeric, 9))::text then
        v_entry := p_entry || jsonb_build_object(
            'spend_usd', pg_catalog.trim_scale(round((p_entry ->> 'spend_usd')::numeric, 9)));
    end if;

    if not p_retire then
        -- The hot path: a new row, or a live row with an older seq. The trigger
        -- moves the row's shard by the difference. The stored row is checked
        -- (otel_budget_stored_seq) unless it is the very version this session
        -- wrote last, from an entry checked above: the setting
        -- otel_budget.checked_row names that version (xmin:ctid/name), and any other
        -- write of the row (a hand edit, another writer's session) makes a new
        -- one. A tenth of a merge's server time.
        insert into public.quilt_patches as q (patch_type, name, content)
        values ('budget_writer', v_name, v_entry)
        on conflict (patch_type, name) do update
            set content = excluded.content, updated_at = now()
            where case when q.xmin::text || ':' || q.ctid::text || '/' || v_name
                            = pg_catalog.current_setting('otel_budget.checked_row', true)
                       then (q.content ->> 'seq')::numeric
                       else public.otel_budget_stored_seq(q.content, v_name) end < v_seq
              and not (q.content ? 'retired')
        returning q.xmin::text || ':' || q.ctid::text into v_version;
        if found then
            -- Session-wide, and undone with the transaction if it rolls back. The
            -- ctid tells apart a later version written by this same transaction.
            perform pg_catalog.set_config('otel_budget.checked_row', v_version || '/' || v_name, false);
            return jsonb_build_object(
                'applied', true,
                'stored_seq', v_seq,
                'others', public.otel_budget_others(v_day, v_name, v_entry));
        end if;
    end if;

    for attempt in 1..3 loop
        select q.content into v_stored
          from public.quilt_patches as q
         where q.patch_type = 'budget_writer' and q.name = v_name
           for update;
        if found then
            v_found := true;
            exit;
        end if;
        -- No row (or it vanished since the upsert): create it, retired if retiring.
        v_final := case when p_retire then v_entry || '{"retired": true}'::jsonb else v_entry end;
        insert into public.quilt_patches (patch_type, name, content)
        values ('budget_writer', v_name, v_final)
        on conflict (patch_type, name) do nothing;
        if found then
            if p_retire then
                perform public.otel_budget_summary_move(v_day, v_name, v_entry, null);
            end if;
            return jsonb_build_object('applied', true, 'stored_seq', v_seq,
                                      'others', public.otel_budget_others(v_day, v_name, v_final));
        end if;
    end loop;
    if not v_found then
        raise exception using errcode = '40001',
            message = format('otel_budget_write_writer: row %L kept disappearing', v_name);
    end if;

    v_stored_seq := public.otel_budget_stored_seq(v_stored, v_name);
    v_applied := v_stored_seq < v_seq;
    v_final := v_stored;
    if v_stored ? 'retired' then
        -- A newer seq on a retired row (a late merge of a writer the reaper retired,
        -- or a retry): it replaces the row, which stays retired, counted once; the
        -- summary moves by the difference.
        if v_applied then
            v_final := v_entry || '{"retired": true}'::jsonb;
            update public.quilt_patches as q
               set content = v_final, updated_at = now()
             where q.patch_type = 'budget_writer' and q.name = v_name;
            perform public.otel_budget_summary_move(v_day, v_name, v_entry, v_stored);
        end if;
    else
        v_kept := case when v_applied then v_entry else v_stored end;
        if p_retire then
            v_final := v_kept || '{"retired": true}'::jsonb;
            update public.quilt_patches as q
               set content = v_final, updated_at = now()
             where q.patch_type = 'budget_writer' and q.name = v_name;
            perform public.otel_budget_summary_move(v_day, v_name, v_kept, null);
        elsif v_applied then
            v_final := v_entry;
            update public.quilt_patches as q
               set content = v_entry, updated_at = now()
             where q.patch_type = 'budget_writer' and q.name = v_name;
        end if;
    end if;
    return jsonb_build_object(
        'applied', v_applied,
        'stored_seq', case when v_applied then v_seq else v_stored_seq end,
        'others', public.otel_budget_others(v_day, v_name, v_final));
end
$fn$;


-- The reaper: retire (as otel_budget_retire_writer does, with the row's own
-- stored entry) at most p_limit live writer rows not written for p_stale_after_s
-- seconds (this server's clock): a writer killed (SIGKILL, OOM, a frozen
-- instance) never retires itself. Safe against a writer that was only slow: its
-- row stays counted once, and its next merge applies against the stored row (a
-- newer seq on a retired row replaces it and moves the sums by the difference).
-- Rows another transaction holds are skipped (SKIP LOCKED), as are quarantined
-- ones (left where they are, named). Returns the names of the rows retired. The
-- stores call it with p_limit 1, one transaction per row: each then takes its locks
-- in retire_writer's order (the row, its shard, the day's summary row), while
-- several rows in one transaction could hold a summary row while waiting on a shard.
create or replace function public.otel_budget_reap(p_stale_after_s numeric, p_limit integer)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_row record;
    v_names jsonb := '[]'::jsonb;
begin
    if p_stale_after_s is null or p_stale_after_s < 0 or p_limit is null or p_limit < 1 then
        raise exception using errcode = 'OB001',
            message = 'otel_budget_reap: p_stale_after_s must be >= 0 and p_limit >= 1';
    end if;
    -- One reaper at a time, fleet-wide; the others find nothing to do this round.
    -- Every process's first merge reaps: after a mass kill, a restarting fleet of 64
    -- processes would each retire 100 rows, all queued on the day's one summary row,
    -- and behind a transaction pooler the waiting transactions hold its server
    -- connections while the merges queue for them.
    if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('otel_budget_reap', 0)) then
        return v_names;
    end if;
    for v_row in
        select q.name, q.content
          from public.quilt_patches as q
         where q.patch_type = 'budget_writer' and not (q.content ? 'retired')
           and q.updated_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_stale_after_s::double precision)
         order by q.updated_at
         limit p_limit
           for update skip locked
    loop
        if public.otel_budget_writer_problem(v_row.content) is null
           and public.otel_budget_amounts_ok(v_row.content)
           and coalesce(jsonb_typeof(v_row.content -> 'final'), 'boolean') = 'boolean'
           and v_row.name = 'budget_' || (v_row.content ->> 'date') || '/' || (v_row.content ->> 'writer_id') then
            perform public.otel_budget_write_writer(v_row.content, true);
            v_names := v_names || pg_catalog.to_jsonb(v_row.name);
        end if;
    end loop;
    return v_names;
end
$fn$;


-- Store p_entry as its writer's row for its day if its seq is newer than the
-- stored one (an equal or older seq changes nothing), and return
-- {"applied", "stored_seq", "others"}: others = otel_budget_day_totals of the
-- day without this writer. The hot path is one INSERT ... ON CONFLICT DO UPDATE on
-- the writer's own row (not retired); the stored row is validated inside the
-- WHERE, on the locked version, and a malformed one raises OB002 naming it,
-- changing nothing. A retired row takes the slow path of otel_budget_write_writer:
-- a newer seq replaces it, it stays retired, the summary moves by the difference.
create or replace function public.otel_budget_merge_writer(p_entry jsonb)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
begin
    -- PL/pgSQL, not SQL: a SQL function with its own search_path is never inlined,
    -- and its body was parsed and planned again at every call (a tenth of a merge).
    return public.otel_budget_write_writer(p_entry, false);
end
$fn$;


-- A writer's last entry for its day: stored by the seq rule (if the stored seq is
-- newer, the stored entry is the one retired), its row marked "retired": true and
-- added to the day's summary row, all in this one transaction, exactly once per
-- row: retiring a retired row again changes nothing unless the seq is newer (then
-- as a merge on a retired row). Returns what otel_budget_merge_writer returns.
create or replace function public.otel_budget_retire_writer(p_entry jsonb)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
begin
    -- PL/pgSQL, not SQL: a SQL function with its own search_path is never inlined,
    -- and its body was parsed and planned again at every call (a tenth of a merge).
    return public.otel_budget_write_writer(p_entry, true);
end
$fn$;


-- The seq of a stored writer row, or OB002 naming the row if it is malformed.
-- A stored row's content arrives as a TOAST pointer, and every operator on it
-- would fetch and decompress all of it again (a row of 10,000 per-key items is
-- ~300 KB): `|| '{}'` hands back the one detoasted copy (an object unchanged,
-- anything else not a writer row anyway).
create or replace function public.otel_budget_stored_seq(p_content jsonb, p_name text)
returns numeric
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_content jsonb := p_content || '{}'::jsonb;
    v_problem text := public.otel_budget_writer_problem(v_content);
begin
    if v_problem is not null then
        raise exception using
            errcode = 'OB002',
            message = format('row budget_writer/%s: %s', p_name, v_problem);
    end if;
    return (v_content ->> 'seq')::numeric;
end
$fn$;


-- One row per date: the day's writer rows (live and retired, from the shards)
-- and version 1 day documents together.
-- `select * from public.otel_budget_days where date = '2026-11-25'`.
create or replace view public.otel_budget_days
with (security_invoker = true) as
select d.day as "date",
       pg_catalog.trim_scale(round(sum(d.total), 9)) as total_usd,
       sum(d.writers)::bigint as writers,
       max(d.updated_at) as updated_at
  from (
      select s.day,
             s.live_usd + s.retired_usd as total,
             s.live_writers + s.retired_writers as writers,
             s.stamps -> 0 ->> 0 as updated_at
        from public.otel_budget_day_shards as s
       where s.live_writers + s.retired_writers <> 0
      union all
      select coalesce(q.content ->> 'date', substr(q.name, 8)),
             case when jsonb_typeof(q.content -> 'total_usd') = 'number'
                  then (q.content ->> 'total_usd')::numeric end,
             case when jsonb_typeof(q.content -> 'instances') = 'object'
                  then (select count(*) from pg_catalog.jsonb_object_keys(q.content -> 'instances'))
                  else 0 end,
             q.content ->> 'updated_at'
        from public.quilt_patches as q
       where q.patch_type = 'budget' and jsonb_typeof(q.content) = 'object'
  ) as d
 group by d.day;


-- The nudge documents claimed on p_day (any budget, window, ratio), ordered by row
-- name: what `read_day` and `otel-budget status` list.
create or replace function public.otel_budget_nudges_on(p_day text)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $fn$
    select coalesce(jsonb_agg(q.content order by q.name), '[]'::jsonb)
      from public.quilt_patches as q
     where q.patch_type = 'sibling_nudge' and q.content ->> 'date' = p_day
$fn$;


-- ---------------------------------------------------------------------------
-- A budget's share of a closed day, computed once and kept (version 3).
-- A budget some writers did not report (added mid-window, a rolling deploy) is
-- the sum of their breakdowns' matching items; otel_budget_budget_spend gives
-- it per day without sending the breakdowns, and keeps each closed day's figure
-- in a row patch_type 'budget_share', name 'share_<date>_<key>' (key: a hash of
-- the budget's name and match, made by otel_budget.stores.shares.budget_key),
-- content {"date", "budget", "key", "fingerprint", "spend_usd"}. The fingerprint
-- is the day's shards' versions: a late entry of a closed day changes it, and the
-- figure is computed again.

-- True if a breakdown item's attributes match a budget's rules
-- [[attribute, [exact JSON values], [LIKE patterns]], ...] (none: every call).
-- Mirrors otel_budget.budgets.Budget.matches for what budget_spec accepts.
create or replace function public.otel_budget_attrs_match(p_attrs jsonb, p_rules jsonb)
returns boolean
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_rule jsonb;
    v_value jsonb;
begin
    if p_rules is null or jsonb_array_length(p_rules) = 0 then
        return true;
    end if;
    if jsonb_typeof(p_attrs) is distinct from 'object' or p_attrs = '{}'::jsonb then
        return false;
    end if;
    for v_rule in select r.value from pg_catalog.jsonb_array_elements(p_rules) as r loop
        v_value := p_attrs -> (v_rule ->> 0);
        if v_value is null then
            return false;
        end if;
        if exists (select 1 from pg_catalog.jsonb_array_elements(v_rule -> 1) as x
                    where x.value = v_value) then
            continue;
        end if;
        if jsonb_typeof(v_value) = 'string' and exists (
               select 1 from pg_catalog.jsonb_array_elements_text(v_rule -> 2) as p
                where (v_value #>> '{}') like p.value) then
            continue;
        end if;
        return false;
    end loop;
    return true;
end
$fn$;


-- {"<day>": {"<budget>": spend}} for each day of p_days and each budget of
-- p_budgets ([{"name", "key", "match"}]): over the day's counted writer rows, a
-- row's own by_budget figure when it has one, else the sum of its breakdown's
-- items the budget matches (the overflow bucket left out). Days before
-- p_closed_before are closed: their figures are kept and reused while the day's
-- fingerprint holds. Bounded: once a call has computed for about a second, the
-- days it would still have to compute answer null (ask again for them: what was
-- computed is kept), so a long window never runs into the statement timeout.
create or replace function public.otel_budget_budget_spend(
    p_days text[], p_budgets jsonb, p_closed_before text
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_day text;
    v_budget jsonb;
    v_name text;
    v_row text;
    v_fingerprint text;
    v_kept jsonb;
    v_spend numeric;
    v_day_out jsonb;
    v_out jsonb := '{}'::jsonb;
    v_started timestamptz := pg_catalog.clock_timestamp();
    v_computed boolean := false;
    v_path jsonpath;
    v_fingerprints jsonb;
    v_kept_rows jsonb;
    v_keep boolean := true;
begin
    if jsonb_typeof(p_budgets) is distinct from 'array' or exists (
           select 1 from pg_catalog.jsonb_array_elements(p_budgets) as b
            where jsonb_typeof(b.value -> 'name') is distinct from 'string'
               or coalesce(b.value ->> 'key', '') !~ '^[0-9a-f]{1,64}$'
               or jsonb_typeof(b.value -> 'match') is distinct from 'array') then
        raise exception using errcode = 'OB001',
            message = 'otel_budget_budget_spend: p_budgets must be [{"name", "key", "match"}]';
    end if;
    -- Every day's fingerprint and every kept figure in two queries, not two per day
    -- and budget: a month of kept days is then read in about a millisecond. The
    -- fingerprint is the versions of the day's shard rows (each change of a shard
    -- writes a new version, with the writing transaction's id as its xmin), not
    -- their text: a month's ~1,000 shard rows as text took 5 ms.
    select pg_catalog.jsonb_object_agg(f.day, f.fingerprint) into v_fingerprints
      from (select s.day, pg_catalog.md5(pg_catalog.string_agg(
                       s.shard || ':' || s.xmin || ':' || (s.live_writers + s.retired_writers),
                       '|' order by s.shard)) as fingerprint
              from public.otel_budget_day_shards as s
             where s.day = any (p_days)
             group by s.day) as f;
    select pg_catalog.jsonb_object_agg(q.name, q.content) into v_kept_rows
      from public.quilt_patches as q
     where q.patch_type = 'budget_share'
       and q.name = any (select 'share_' || u.day || '_' || (b.value ->> 'key')
                           from pg_catalog.unnest(p_days) as u(day)
                          cross join pg_catalog.jsonb_array_elements(p_budgets) as b
                          where u.day < p_closed_before);
    -- Days and budgets in one order (by day, then key) whatever the caller's: the
    -- share rows' locks are then taken in one order by every caller, so two starts
    -- computing at once wait for each other instead of deadlocking.
    for v_day in select distinct u.day from pg_catalog.unnest(p_days) as u(day)
                  where u.day is not null order by u.day loop
        v_day_out := '{}'::jsonb;
        v_fingerprint := coalesce(v_fingerprints ->> v_day, pg_catalog.md5(''));
        for v_budget in select b.value from pg_catalog.jsonb_array_elements(p_budgets) as b
                         order by b.value ->> 'key', b.value ->> 'name' loop
            v_name := v_budget ->> 'name';
            v_row := 'share_' || v_day || '_' || (v_budget ->> 'key');
            v_kept := null;
            if v_day < p_closed_before then
                v_kept := v_kept_rows -> v_row;
            end if;
            if v_kept is not null and (v_kept ->> 'fingerprint') = v_fingerprint
               and jsonb_typeof(v_kept -> 'spend_usd') = 'number' then
                v_day_out := v_day_out || pg_catalog.jsonb_build_object(v_name, v_kept -> 'spend_usd');
                continue;
            end if;
            if v_computed and pg_catalog.clock_timestamp() - v_started > interval '1 second' then
                v_day_out := null;  -- left for the next call
                exit;
            end if;
            v_computed := true;
            v_path := public.otel_budget_match_path(v_budget -> 'match');
            select coalesce(sum(
                       case when jsonb_typeof(q.content -> 'by_budget' -> v_name) = 'number'
                            then (q.content -> 'by_budget' ->> v_name)::numeric
                            -- The matching items by jsonpath (in C), when the rules allow.
                            when v_path is not null and jsonb_typeof(q.content -> 'by_attributes') = 'array'
                            then (select coalesce(sum((v.value #>> '{}')::numeric), 0)
                                    from pg_catalog.jsonb_path_query(q.content, v_path) as v(value)
                                   where jsonb_typeof(v.value) = 'number')
                            when v_path is not null then 0
                            else (select coalesce(sum((i.value ->> 'spend_usd')::numeric), 0)
                                    from pg_catalog.jsonb_array_elements(
                                         case when jsonb_typeof(q.content -> 'by_attributes') = 'array'
                                              then q.content -> 'by_attributes'
                                              else '[]'::jsonb end) as i
                                   where jsonb_typeof(i.value -> 'spend_usd') = 'number'
                                     and (i.value -> 'attributes' -> 'otel.metric.overflow')
                                         is distinct from 'true'::jsonb
                                     and public.otel_budget_attrs_match(i.value -> 'attributes',
                                                                        v_budget -> 'match'))
                       end), 0)
              into v_spend
              from public.quilt_patches as q
             where q.patch_type = 'budget_writer' and (q.content ->> 'date') = v_day
               and public.otel_budget_amounts_ok(q.content);
            v_spend := pg_catalog.trim_scale(round(v_spend, 9));
            if v_day < p_closed_before and v_keep then
                -- A status page or report may read with a read-only role or on a
                -- replica: the figure is then computed, not kept.
                begin
                    insert into public.quilt_patches as q (patch_type, name, content)
                    values ('budget_share', v_row, pg_catalog.jsonb_build_object(
                                'date', v_day, 'budget', v_name, 'key', v_budget ->> 'key',
                                'fingerprint', v_fingerprint, 'spend_usd', v_spend))
                    on conflict (patch_type, name) do update
                        set content = excluded.content, updated_at = pg_catalog.now();
                exception when read_only_sql_transaction or insufficient_privilege then
                    v_keep := false;
                end;
            end if;
            v_day_out := v_day_out || pg_catalog.jsonb_build_object(v_name, v_spend);
        end loop;
        v_out := v_out || pg_catalog.jsonb_build_object(v_day, v_day_out);
    end loop;
    return v_out;
end
$fn$;


-- The jsonpath of a budget's rules (as otel_budget_attrs_match takes them) over a
-- writer row: the spend_usd of each breakdown item the budget matches, the
-- overflow bucket left out. Evaluated in C, so a row of 200 items costs
-- microseconds where calling otel_budget_attrs_match per item cost a millisecond.
-- NULL when a rule's exact value is an object or an array (no jsonpath literal):
-- the caller then matches with otel_budget_attrs_match. An attribute whose value
-- is an array never matches (lax jsonpath would compare its elements); a LIKE
-- pattern becomes an anchored regular expression (flag "s": % and _ match a
-- newline, as LIKE's do).
create or replace function public.otel_budget_match_path(p_rules jsonb)
returns jsonpath
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_rule jsonb;
    v_key text;
    v_value jsonb;
    v_like text;
    v_token text;
    v_regex text;
    v_alternatives text[];
    v_path text := '';
begin
    for v_rule in select r.value from pg_catalog.jsonb_array_elements(coalesce(p_rules, '[]'::jsonb)) as r loop
        v_key := '@.attributes.' || pg_catalog.to_jsonb(v_rule ->> 0)::text;
        v_alternatives := array[]::text[];
        for v_value in select x.value from pg_catalog.jsonb_array_elements(v_rule -> 1) as x loop
            if jsonb_typeof(v_value) in ('object', 'array') then
                return null;
            end if;
            v_alternatives := v_alternatives || (v_key || ' == ' || v_value::text);
        end loop;
        for v_like in select p.value from pg_catalog.jsonb_array_elements_text(v_rule -> 2) as p loop
            v_regex := '^';
            for v_token in select m[1] from pg_catalog.regexp_matches(v_like, '(\\.|%|_|[^\\%_]+)', 'g') as m loop
                if v_token = '%' then
                    v_regex := v_regex || '.*';
                elsif v_token = '_' then
                    v_regex := v_regex || '.';
                else
                    if left(v_token, 1) = '\' then
                        v_token := substr(v_token, 2);
                    end if;
                    -- ASCII punctuation escaped: a backslash before it is a literal.
                    v_regex := v_regex || pg_catalog.regexp_replace(v_token, '([!-/:-@\[-`{-~])', '\\\1', 'g');
                end if;
            end loop;
            v_alternatives := v_alternatives || ('(' || v_key || '.type() == "string" && ' || v_key
                || ' like_regex ' || pg_catalog.to_jsonb(v_regex || '$')::text || ' flag "s")');
        end loop;
        if cardinality(v_alternatives) = 0 then
            v_alternatives := array['@.type() == "no value matches"'];
        end if;
        -- The comparisons first: most items fail them, and && stops there.
        v_path := v_path || '(' || pg_catalog.array_to_string(v_alternatives, ' || ')
                  || ') && ' || v_key || '.type() != "array" && ';
    end loop;
    return ('lax $.by_attributes[*] ? (' || v_path
            || '!(@.attributes."otel.metric.overflow".type() == "boolean"'
            || ' && @.attributes."otel.metric.overflow" == true)).spend_usd')::jsonpath;
end
$fn$;


-- Today's writer entries for start(), each with every budget of p_budgets
-- ([{"name", "key", "match"}], as otel_budget_budget_spend takes them) it lacks
-- computed from its breakdown (the same rule: the items the budget matches, the
-- overflow bucket left out; otel.budget's fleet.entry_budget_spend), and without
-- the breakdown itself: start() with a budget added mid-window reads a few
-- hundred bytes per writer, not its whole breakdown. A row whose amounts or
-- breakdown are malformed (fleet.entry_problem) is returned whole, for the
-- client to name. Ordered by row name (date, then writer), as
-- otel_budget_writer_entries.
--
-- Each answer is kept per row version (the row's xmin and updated_at, the latter
-- as epoch seconds so that no session setting changes its text: a merge, a
-- retirement or a hand edit makes a new version) and per p_budgets, in a row
-- patch_type 'budget_figures', name 'figures_<date>/<writer_id>/<md5 of
-- p_budgets>', content {"date", "version", "entry"}: a finished or killed writer's
-- breakdown is read once, not at every start() of the rest of the day. Rows a
-- week older than the earliest day asked are deleted. Where this role cannot
-- write (a read-only transaction or replica, no INSERT), nothing is kept and
-- every answer is computed.
create or replace function public.otel_budget_writer_budget_entries(p_days text[], p_budgets jsonb)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_names text[];
    v_paths jsonpath[];
    v_rules jsonb[];
    v_key text;
    v_row record;
    v_content jsonb;
    v_own jsonb;
    v_add jsonb;
    v_sum numeric;
    v_keep boolean := true;
    v_kept_any boolean := false;
    v_oldest text;
    v_out jsonb[] := array[]::jsonb[];
begin
    if jsonb_typeof(p_budgets) is distinct from 'array' or exists (
           select 1 from pg_catalog.jsonb_array_elements(p_budgets) as b
            where jsonb_typeof(b.value -> 'name') is distinct from 'string'
               or jsonb_typeof(b.value -> 'match') is distinct from 'array') then
        raise exception using errcode = 'OB001',
            message = 'otel_budget_writer_budget_entries: p_budgets must be [{"name", "match"}]';
    end if;
    v_key := pg_catalog.md5(p_budgets::text);
    select coalesce(pg_catalog.array_agg(b.value ->> 'name' order by b.n), array[]::text[]),
           coalesce(pg_catalog.array_agg(public.otel_budget_match_path(b.value -> 'match') order by b.n),
                    array[]::jsonpath[]),
           coalesce(pg_catalog.array_agg(b.value -> 'match' order by b.n), array[]::jsonb[])
      into v_names, v_paths, v_rules
      from pg_catalog.jsonb_array_elements(p_budgets) with ordinality as b(value, n);
    -- A kept answer is taken without reading the writer row's content at all (its
    -- xmin and updated_at are in the row's header and columns; the content, most
    -- of a row's bytes, stays toasted).
    for v_row in
        select x.name, x.version, x.kept,
               case when x.kept is null then x.content end as content
          from (
        select q.name, q.version, q.content,
               case when k.content ->> 'version' = q.version
                         and jsonb_typeof(k.content -> 'entry') = 'object'
                    then k.content -> 'entry' end as kept
          from (select r.name, r.content,
                       r.xmin::text || ' ' || coalesce(extract(epoch from r.updated_at)::text, '') as version
                  from public.quilt_patches as r
                 where r.patch_type = 'budget_writer' and (r.content ->> 'date') = any (p_days)
                   and not (r.content ? 'retired')
                union all
                select r.name, r.content,
                       r.xmin::text || ' ' || coalesce(extract(epoch from r.updated_at)::text, '') as version
                  from public.quilt_patches as r
                 where r.patch_type = 'budget_writer' and (r.content ->> 'date') = any (p_days)
                   and (r.content ? 'retired')) as q
          left join public.quilt_patches as k
            on k.patch_type = 'budget_figures'
           and k.name = 'figures_' || pg_catalog.substr(q.name, 8) || '/' || v_key
             ) as x
         order by x.name
    loop
        if v_row.kept is not null then
            v_out := v_out || v_row.kept;
            continue;
        end if;
        v_content := v_row.content || '{}'::jsonb;  -- detoasted once (see otel_budget_stored_seq)
        if not public.otel_budget_amounts_ok(v_content)
           or coalesce(jsonb_typeof(v_content -> 'by_attributes'), 'null') not in ('null', 'array')
           or pg_catalog.jsonb_path_exists(v_content, 'lax $.by_attributes[*].type() ? (@ != "object")')
           or pg_catalog.jsonb_path_exists(v_content, 'lax $.by_attributes[*] ? (!((!exists(@.attributes) || @.attributes.type() == "object") && @.spend_usd.type() == "number" && @.spend_usd >= 0 && @.spend_usd <= 1e12))')
        then
            v_out := v_out || v_content;  -- not kept: named by the client at every start
            continue;
        end if;
        v_own := case when jsonb_typeof(v_content -> 'by_budget') = 'object'
                      then v_content -> 'by_budget' else '{}'::jsonb end;
        v_add := '{}'::jsonb;
        for i in 1 .. coalesce(pg_catalog.array_length(v_names, 1), 0) loop
            continue when v_own ? v_names[i];
            if v_paths[i] is not null then
                select coalesce(sum((v.value #>> '{}')::numeric), 0) into v_sum
                  from pg_catalog.jsonb_path_query(v_content, v_paths[i]) as v(value);
            else
                select coalesce(sum((e.value ->> 'spend_usd')::numeric), 0) into v_sum
                  from pg_catalog.jsonb_array_elements(coalesce(v_content -> 'by_attributes', '[]'::jsonb)) as e
                 where (e.value -> 'attributes' -> 'otel.metric.overflow') is distinct from 'true'::jsonb
                   and public.otel_budget_attrs_match(e.value -> 'attributes', v_rules[i]);
            end if;
            v_add := v_add || pg_catalog.jsonb_build_object(v_names[i], pg_catalog.trim_scale(round(v_sum, 9)));
        end loop;
        v_content := v_content - 'by_attributes';
        if v_add <> '{}'::jsonb then
            v_content := v_content || pg_catalog.jsonb_build_object('by_budget', v_own || v_add);
        end if;
        v_out := v_out || v_content;
        if v_keep then
            begin
                insert into public.quilt_patches as k (patch_type, name, content)
                values ('budget_figures',
                        'figures_' || pg_catalog.substr(v_row.name, 8) || '/' || v_key,
                        pg_catalog.jsonb_build_object('date', v_content -> 'date',
                                                      'version', v_row.version, 'entry', v_content))
                on conflict (patch_type, name) do update
                    set content = excluded.content, updated_at = pg_catalog.now();
                v_kept_any := true;
            exception when read_only_sql_transaction or insufficient_privilege then
                v_keep := false;
            end;
        end if;
    end loop;
    if v_kept_any then
        select min(u.day) into v_oldest from pg_catalog.unnest(p_days) as u(day)
         where u.day ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$';
        begin
            delete from public.quilt_patches as k
             where k.patch_type = 'budget_figures'
               and k.name < 'figures_' || (v_oldest::date - 7)::text;
        exception when datetime_field_overflow or invalid_datetime_format then
            null;  -- a day no calendar has: nothing is older than it
        end;
    end if;
    return pg_catalog.to_jsonb(v_out);
end
$fn$;


-- ---------------------------------------------------------------------------
-- Budget leases: a hard cap across the fleet (Budget(enforce="fleet")).
-- One row per (budget, window): patch_type 'budget_lease', name
-- 'lease_<budget>_<window>', content {budget, window, cap_usd, settled_usd,
-- external_usd, short_until, leases: {lease_id: {writer_id, granted_usd,
-- used_usd, expires_at}}}. Every grant keeps
--     settled + external + sum(max(granted, used)) <= cap.
-- Each function locks the row (SELECT ... FOR UPDATE) and does one step; the
-- arithmetic mirrors otel_budget.leases.apply_acquire / apply_release. Times are
-- this server's clock (epoch seconds).

-- NULL if p_req is a well-formed lease request, else what is wrong with it.
create or replace function public.otel_budget_lease_problem(p_req jsonb, p_release boolean)
returns text
language plpgsql
immutable
security invoker
set search_path = ''
as $fn$
declare
    v_key text;
begin
    if p_req is null or jsonb_typeof(p_req) <> 'object' then
        return 'request must be an object';
    end if;
    foreach v_key in array array['budget', 'window', 'writer_id', 'lease_id'] loop
        if jsonb_typeof(p_req -> v_key) is distinct from 'string'
           or length(p_req ->> v_key) not between 1 and 200 then
            return format('%s must be a non-empty string of at most 200 characters', v_key);
        end if;
    end loop;
    foreach v_key in array case when p_release then array['used_usd']
        else array['used_usd', 'cap_usd', 'want_usd', 'seen_usd', 'min_chunk_usd', 'share', 'ttl_s'] end loop
        if jsonb_typeof(p_req -> v_key) is distinct from 'number' then
            return format('%s must be a finite number >= 0', v_key);
        end if;
        if (p_req ->> v_key)::numeric < 0 then
            return format('%s must be a finite number >= 0', v_key);
        end if;
    end loop;
    if not p_release then
        if (p_req ->> 'cap_usd')::numeric <= 0 then
            return 'cap_usd must be > 0';
        end if;
        if (p_req ->> 'share')::numeric <= 0 or (p_req ->> 'share')::numeric > 1 then
            return 'share must be in (0, 1]';
        end if;
        if (p_req ->> 'ttl_s')::numeric not between 0.2 and 86400 then
            return 'ttl_s must be between 0.2 and 86400 seconds';
        end if;
        -- Optional (older clients omit it): the fleet's surplus bound, share of the cap.
        if p_req ? 'surplus_share' and (jsonb_typeof(p_req -> 'surplus_share') is distinct from 'number'
           or (p_req ->> 'surplus_share')::numeric <= 0 or (p_req ->> 'surplus_share')::numeric > 1) then
            return 'surplus_share must be in (0, 1]';
        end if;
        foreach v_key in array array['keep_usd', 'floor_usd'] loop
            if p_req ? v_key and (jsonb_typeof(p_req -> v_key) is distinct from 'number'
               or (p_req ->> v_key)::numeric < 0) then
                return format('%s must be a finite number >= 0', v_key);
            end if;
        end loop;
        if jsonb_typeof(p_req -> 'new') is distinct from 'boolean' then
            return 'new must be true or false';
        end if;
    end if;
    return null;
end
$fn$;


-- The locked lease row of a request, its expired leases settled (not yet
-- written back); NULL when the row does not exist. OB002 if it is malformed.
create or replace function public.otel_budget_lease_locked(p_name text, p_now numeric)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_doc jsonb;
    v_expired numeric;
    v_ended jsonb;
begin
    select q.content into v_doc
      from public.quilt_patches as q
     where q.patch_type = 'budget_lease' and q.name = p_name
       for update;
    if not found then
        return null;
    end if;
    if jsonb_typeof(v_doc) <> 'object'
       or jsonb_typeof(v_doc -> 'settled_usd') is distinct from 'number'
       or jsonb_typeof(v_doc -> 'external_usd') is distinct from 'number'
       or jsonb_typeof(v_doc -> 'leases') is distinct from 'object'
       or exists (select 1 from pg_catalog.jsonb_each(v_doc -> 'leases') as e
                   where jsonb_typeof(e.value) <> 'object'
                      or jsonb_typeof(e.value -> 'granted_usd') is distinct from 'number'
                      or jsonb_typeof(e.value -> 'used_usd') is distinct from 'number'
                      or jsonb_typeof(e.value -> 'expires_at') is distinct from 'number') then
        raise exception using errcode = 'OB002',
            message = format('row budget_lease/%s is malformed', p_name);
    end if;
    -- An expired lease is settled at all it may have drawn (its grant, or its
    -- reported use if more) and kept under "ended" for a late report
    -- (leaserows.expire_leases: ENDED_KEEP_S 3600, ENDED_MAX 64).
    with gone as materialized (
        select e.key, pg_catalog.trim_scale(round(greatest((e.value ->> 'granted_usd')::numeric,
                                                           (e.value ->> 'used_usd')::numeric), 9)) as held,
               e.value -> 'expires_at' as expired_at
          from pg_catalog.jsonb_each(v_doc -> 'leases') as e
         where (e.value ->> 'expires_at')::numeric <= p_now
    )
    select (select coalesce(sum(g.held), 0) from gone as g),
           (select coalesce(pg_catalog.jsonb_object_agg(k.key, k.value), '{}'::jsonb)
              from (select a.key, a.value
                      from (select e.key, e.value
                              from pg_catalog.jsonb_each(case when jsonb_typeof(v_doc -> 'ended') = 'object'
                                                              then v_doc -> 'ended' else '{}'::jsonb end) as e
                             where jsonb_typeof(e.value) = 'object'
                               and jsonb_typeof(e.value -> 'held_usd') = 'number'
                               and (e.value ->> 'held_usd')::numeric >= 0
                               and jsonb_typeof(e.value -> 'expired_at') = 'number'
                               and (e.value ->> 'expired_at')::numeric >= 0
                            union all
                            select g.key, jsonb_build_object('held_usd', g.held, 'expired_at', g.expired_at)
                              from gone as g) as a
                     where (a.value ->> 'expired_at')::numeric >= p_now - 3600
                     order by (a.value ->> 'expired_at')::numeric desc, a.key collate "C"
                     limit 64) as k)
      into v_expired, v_ended;
    if v_ended <> '{}'::jsonb or v_doc ? 'ended' then
        v_doc := v_doc || jsonb_build_object('ended', v_ended);
    end if;
    return v_doc || jsonb_build_object(
        'settled_usd', pg_catalog.trim_scale(round((v_doc ->> 'settled_usd')::numeric + v_expired, 9)),
        'leases', coalesce((select pg_catalog.jsonb_object_agg(e.key, e.value)
                              from pg_catalog.jsonb_each(v_doc -> 'leases') as e
                             where (e.value ->> 'expires_at')::numeric > p_now), '{}'::jsonb));
end
$fn$;


-- A writer reports lease p_lid after it expired, having used at most p_used of it:
-- what expiry settled beyond that comes back, once (leaserows.settle_late_report).
-- p_doc is a locked row's content (otel_budget_lease_locked).
create or replace function public.otel_budget_lease_late_report(p_doc jsonb, p_lid text,
                                                                p_used numeric)
returns jsonb
language sql
immutable
security invoker
set search_path = ''
as $fn$
    select case when p_doc -> 'ended' -> p_lid is null then p_doc
           else p_doc || jsonb_build_object(
               'settled_usd', pg_catalog.trim_scale(round(greatest(0,
                   (p_doc ->> 'settled_usd')::numeric
                   - greatest(0, (p_doc -> 'ended' -> p_lid ->> 'held_usd')::numeric
                                 - round(p_used, 9))), 9)),
               'ended', (p_doc -> 'ended') - p_lid) end
$fn$;


-- The answer both steps return (see otel_budget.leases._answer).
create or replace function public.otel_budget_lease_answer(
    p_doc jsonb, p_lease_id text, p_entry jsonb, p_ok boolean, p_expired boolean,
    p_now numeric, p_ttl numeric)
returns jsonb
language sql
immutable
security invoker
set search_path = ''
as $fn$
    select jsonb_build_object(
        'ok', p_ok, 'expired', p_expired, 'lease_id', p_lease_id,
        'granted_usd', coalesce(p_entry -> 'granted_usd', '0'::jsonb),
        'used_usd', coalesce(p_entry -> 'used_usd', '0'::jsonb),
        'expires_in_s', case when p_entry is null then 0 else p_ttl end,
        'free_usd', pg_catalog.trim_scale(round(greatest(0,
            (p_doc ->> 'cap_usd')::numeric - (p_doc ->> 'settled_usd')::numeric
            - (p_doc ->> 'external_usd')::numeric - l.held), 9)),
        'leased_usd', pg_catalog.trim_scale(round(l.leased, 9)),
        'active', l.n,
        'settled_usd', p_doc -> 'settled_usd', 'external_usd', p_doc -> 'external_usd',
        'contended', coalesce((p_doc ->> 'short_until')::numeric, 0) > p_now)
      from (select coalesce(sum(greatest((e.value ->> 'granted_usd')::numeric,
                                         (e.value ->> 'used_usd')::numeric)), 0) as held,
                   coalesce(sum((e.value ->> 'granted_usd')::numeric), 0) as leased,
                   count(*) as n
              from pg_catalog.jsonb_each(p_doc -> 'leases') as e) as l
$fn$;


-- Acquire, top up or renew one lease (report its use): p_request is
-- {budget, window, cap_usd, writer_id, lease_id, new, used_usd, want_usd,
--  seen_usd, ttl_s, min_chunk_usd, share}. Grants want_usd (plus, unless the
-- pool is contended, a chunk of share * available / active leases) only if it
-- fits under the cap; a refusal marks the pool contended for ttl_s, and while it
-- is, every holder that renews gives its unused lease back.
create or replace function public.otel_budget_lease_acquire(p_request jsonb)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_problem text := public.otel_budget_lease_problem(p_request, false);
    v_now numeric := extract(epoch from pg_catalog.clock_timestamp());
    v_name text;
    v_doc jsonb;
    v_lid text := p_request ->> 'lease_id';
    v_own jsonb;
    v_cap numeric;
    v_used numeric;
    v_want numeric;
    v_ttl numeric;
    v_settled numeric;
    v_external numeric;
    v_others numeric;
    v_live numeric;
    v_free numeric;
    v_avail numeric;
    v_contended boolean;
    v_active integer;
    v_granted numeric;
    v_extra numeric;
    v_room numeric;
    v_others_surplus numeric;
    v_ok boolean := true;
    v_entry jsonb;
begin
    if v_problem is not null then
        raise exception using errcode = 'OB001', message = format('lease request: %s', v_problem);
    end if;
    v_cap := round((p_request ->> 'cap_usd')::numeric, 9);
    v_used := round((p_request ->> 'used_usd')::numeric, 9);
    v_want := round((p_request ->> 'want_usd')::numeric, 9);
    v_ttl := (p_request ->> 'ttl_s')::numeric;
    v_name := 'lease_' || (p_request ->> 'budget') || '_' || (p_request ->> 'window');
    insert into public.quilt_patches (patch_type, name, content)
    values ('budget_lease', v_name, jsonb_build_object(
        'budget', p_request -> 'budget', 'window', p_request -> 'window',
        'cap_usd', v_cap, 'settled_usd', 0, 'external_usd', 0, 'short_until', 0,
        'leases', '{}'::jsonb))
    on conflict (patch_type, name) do nothing;
    v_doc := public.otel_budget_lease_locked(v_name, v_now)
             || jsonb_build_object('cap_usd', pg_catalog.trim_scale(v_cap));
    v_own := v_doc -> 'leases' -> v_lid;
    if v_own is null and not (p_request ->> 'new')::boolean then
        v_doc := public.otel_budget_lease_late_report(v_doc, v_lid, v_used);
        update public.quilt_patches as q set content = v_doc, updated_at = now()
         where q.patch_type = 'budget_lease' and q.name = v_name;
        return public.otel_budget_lease_answer(v_doc, v_lid, null, false, true, v_now, 0);
    end if;
    v_settled := (v_doc ->> 'settled_usd')::numeric;
    select coalesce(sum(greatest((e.value ->> 'granted_usd')::numeric,
                                 (e.value ->> 'used_usd')::numeric)), 0), count(*)
      into v_others, v_active
      from pg_catalog.jsonb_each(v_doc -> 'leases') as e
     where e.key <> v_lid;
    v_live := v_others + greatest(coalesce((v_own ->> 'granted_usd')::numeric, 0), v_used);
    v_external := greatest((v_doc ->> 'external_usd')::numeric,
                           round((p_request ->> 'seen_usd')::numeric - v_settled - v_live, 9));
    v_free := round(v_cap - v_settled - v_external - v_others, 9);
    v_avail := round(v_free - v_used, 9);
    v_contended := coalesce((v_doc ->> 'short_until')::numeric, 0) > v_now;
    v_active := v_active + 1;
    -- The surplus bound (leases.surplus_room): a fair part of surplus_share * cap
    -- (split among at least 4 leases, MIN_SHARERS), no more than the others'
    -- reported surplus leaves of it.
    if p_request ? 'surplus_share' then
        select coalesce(sum(greatest(0, (e.value ->> 'granted_usd')::numeric
                                        - (e.value ->> 'used_usd')::numeric)), 0)
          into v_others_surplus
          from pg_catalog.jsonb_each(v_doc -> 'leases') as e
         where e.key <> v_lid;
        v_room := greatest(0, least((p_request ->> 'surplus_share')::numeric * v_cap
                                    / greatest(4, v_active),
                                    (p_request ->> 'surplus_share')::numeric * v_cap
                                    - v_others_surplus));
    end if;
    if v_want > 0 then
        if v_want > v_avail + 0.000000001 then
            v_ok := false;
            v_granted := v_used;
            v_doc := v_doc || jsonb_build_object('short_until', v_now + v_ttl);
        else
            v_extra := case when v_contended then v_want
                            else greatest(v_want, (p_request ->> 'min_chunk_usd')::numeric,
                                          (p_request ->> 'share')::numeric * v_avail / v_active) end;
            if v_room is not null then
                v_extra := greatest(v_want, least(v_extra, v_room));
            end if;
            v_granted := round(v_used + greatest(0, least(v_avail, v_extra)), 9);
        end if;
    elsif v_contended then
        v_granted := v_used;
    else
        -- keep_usd: the writer trims its grant (it draws no further already).
        v_granted := round(greatest(v_used, least(coalesce((v_own ->> 'granted_usd')::numeric, 0),
                                                  v_free,
                                                  coalesce((p_request ->> 'keep_usd')::numeric,
                                                           (v_own ->> 'granted_usd')::numeric,
                                                           0))), 9);
    end if;
    -- floor_usd: what the writer may have drawn by the answer (leaserows.apply_acquire);
    -- the grant never falls below it, nor rises above what it was.
    if v_own is not null then
        v_granted := round(greatest(v_granted,
                                    least(coalesce((p_request ->> 'floor_usd')::numeric, 0),
                                          (v_own ->> 'granted_usd')::numeric)), 9);
    end if;
    v_doc := v_doc || jsonb_build_object('external_usd', pg_catalog.trim_scale(v_external));
    if v_own is null and v_granted <= 0 and v_used <= 0 then
        v_entry := null;
    else
        v_entry := jsonb_build_object(
            'writer_id', p_request -> 'writer_id',
            'granted_usd', pg_catalog.trim_scale(v_granted),
            'used_usd', pg_catalog.trim_scale(v_used),
            'expires_at', v_now + v_ttl);
        v_doc := jsonb_set(v_doc, array['leases', v_lid], v_entry);
    end if;
    update public.quilt_patches as q set content = v_doc, updated_at = now()
     where q.patch_type = 'budget_lease' and q.name = v_name;
    return public.otel_budget_lease_answer(v_doc, v_lid, v_entry, v_ok, false, v_now, v_ttl);
end
$fn$;


-- Give one lease back: settle its exact use (p_request: {budget, window,
-- writer_id, lease_id, used_usd}); the unused rest returns to the pool. A lease
-- that already expired (settled at its whole grant) answers expired = true, and
-- what it did not use comes back (otel_budget_lease_late_report).
create or replace function public.otel_budget_lease_release(p_request jsonb)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $fn$
declare
    v_problem text := public.otel_budget_lease_problem(p_request, true);
    v_now numeric := extract(epoch from pg_catalog.clock_timestamp());
    v_name text;
    v_doc jsonb;
    v_lid text := p_request ->> 'lease_id';
    v_found boolean;
begin
    if v_problem is not null then
        raise exception using errcode = 'OB001', message = format('lease request: %s', v_problem);
    end if;
    v_name := 'lease_' || (p_request ->> 'budget') || '_' || (p_request ->> 'window');
    v_doc := public.otel_budget_lease_locked(v_name, v_now);
    if v_doc is null then
        return jsonb_build_object('ok', true, 'expired', true, 'lease_id', v_lid,
                                  'granted_usd', 0, 'used_usd', 0, 'free_usd', null);
    end if;
    v_found := (v_doc -> 'leases') ? v_lid;
    if v_found then
        v_doc := v_doc || jsonb_build_object(
            'settled_usd', pg_catalog.trim_scale(round((v_doc ->> 'settled_usd')::numeric
                                                       + round((p_request ->> 'used_usd')::numeric, 9), 9)),
            'leases', (v_doc -> 'leases') - v_lid);
    else
        v_doc := public.otel_budget_lease_late_report(
            v_doc, v_lid, (p_request ->> 'used_usd')::numeric);
    end if;
    update public.quilt_patches as q set content = v_doc, updated_at = now()
     where q.patch_type = 'budget_lease' and q.name = v_name;
    return public.otel_budget_lease_answer(v_doc, v_lid, null, true, not v_found, v_now, 0);
end
$fn$;


-- Privileges of the lease functions (as for the others below): service_role only.
do $lease_grants$
declare
    v_role text;
    v_object text;
    v_functions text[] := array[
        'public.otel_budget_lease_problem(jsonb, boolean)',
        'public.otel_budget_lease_locked(text, numeric)',
        'public.otel_budget_lease_answer(jsonb, text, jsonb, boolean, boolean, numeric, numeric)',
        'public.otel_budget_lease_late_report(jsonb, text, numeric)',
        'public.otel_budget_lease_acquire(jsonb)',
        'public.otel_budget_lease_release(jsonb)'
    ];
begin
    foreach v_object in array v_functions loop
        execute format('revoke all on function %s from public', v_object);
    end loop;
    foreach v_role in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
            foreach v_object in array v_functions loop
                execute format('revoke all on function %s from %I', v_object, v_role);
            end loop;
        end if;
    end loop;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
        foreach v_object in array v_functions loop
            execute format('grant execute on function %s to service_role', v_object);
        end loop;
    end if;
end
$lease_grants$;


-- Privileges. PUBLIC has EXECUTE on new functions by default everywhere; on
-- Supabase, anon and authenticated also get everything by default privileges,
-- so revoking from PUBLIC alone would leave them in.
do $grants$
declare
    v_role text;
    v_object text;
    v_sequence text;
    v_functions text[] := array[
        'public.otel_budget_entry_problem(jsonb)',
        'public.otel_budget_checked(jsonb, text)',
        'public.otel_budget_merge(text, text, jsonb, jsonb)',
        'public.otel_budget_claim(text, text, jsonb)',
        'public.otel_budget_claim_replace(text, text, jsonb, jsonb)',
        'public.otel_budget_writer_problem(jsonb)',
        'public.otel_budget_stored_seq(jsonb, text)',
        'public.otel_budget_summary_problem(jsonb, text)',
        'public.otel_budget_summary_checked(jsonb, text)',
        'public.otel_budget_summary_add(jsonb, text, jsonb, jsonb)',
        'public.otel_budget_summary_rebuilt(text, text)',
        'public.otel_budget_summary_move(text, text, jsonb, jsonb)',
        'public.otel_budget_day_totals_minus(text[], text, jsonb)',
        'public.otel_budget_day_totals(text[], text)',
        'public.otel_budget_writer_entries(text[], boolean)',
        'public.otel_budget_write_writer(jsonb, boolean)',
        'public.otel_budget_merge_writer(jsonb)',
        'public.otel_budget_retire_writer(jsonb)',
        'public.otel_budget_nudges_on(text)',
        'public.otel_budget_amounts_ok(jsonb)',
        'public.otel_budget_shard(text)',
        'public.otel_budget_stamps_put(jsonb, text, text)',
        'public.otel_budget_shard_apply(text, text, jsonb, jsonb)',
        'public.otel_budget_writer_rows_changed()',
        'public.otel_budget_others(text, text, jsonb)',
        'public.otel_budget_reap(numeric, integer)',
        'public.otel_budget_attrs_match(jsonb, jsonb)',
        'public.otel_budget_budget_spend(text[], jsonb, text)',
        'public.otel_budget_match_path(jsonb)',
        'public.otel_budget_writer_budget_entries(text[], jsonb)'
    ];
begin
    revoke all on table public.quilt_patches from public;
    revoke all on table public.otel_budget_days from public;
    revoke all on table public.otel_budget_day_shards from public;
    revoke all on table public.otel_budget_day_budgets from public;
    foreach v_object in array v_functions loop
        execute format('revoke all on function %s from public', v_object);
    end loop;
    -- The identity column's sequence gets the default privileges too: with USAGE
    -- or UPDATE, anon could setval() it and make every later insert fail. Inserts
    -- through the identity column need no privilege on it.
    v_sequence := pg_catalog.pg_get_serial_sequence('public.quilt_patches', 'id');
    if v_sequence is not null then
        execute format('revoke all on sequence %s from public', v_sequence);
    end if;

    foreach v_role in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
            execute format('revoke all on table public.quilt_patches from %I', v_role);
            execute format('revoke all on table public.otel_budget_days from %I', v_role);
            execute format('revoke all on table public.otel_budget_day_shards from %I', v_role);
            execute format('revoke all on table public.otel_budget_day_budgets from %I', v_role);
            foreach v_object in array v_functions loop
                execute format('revoke all on function %s from %I', v_object, v_role);
            end loop;
            if v_sequence is not null then
                execute format('revoke all on sequence %s from %I', v_sequence, v_role);
            end if;
            -- Every otel_budget function, listed above or not (one added later and
            -- forgotten in the lists must not stay open to the API's roles).
            for v_object in
                select p.oid::regprocedure::text from pg_catalog.pg_proc as p
                 where p.pronamespace = 'public'::regnamespace
                   and p.proname like 'otel\_budget\_%'
            loop
                execute format('revoke all on function %s from %I', v_object, v_role);
                execute format('revoke all on function %s from public', v_object);
            end loop;
        end if;
    end loop;

    if exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
        execute 'grant select, insert, update, delete on table public.quilt_patches to service_role';
        execute 'grant select on table public.otel_budget_days to service_role';
        -- The day's aggregate tables: service_role writes them through the trigger.
        foreach v_object in array array['otel_budget_day_shards', 'otel_budget_day_budgets'] loop
            execute format('grant select, insert, update, delete on table public.%I to service_role',
                           v_object);
            if not exists (
                select 1 from pg_catalog.pg_policies
                 where schemaname = 'public' and tablename = v_object
                   and policyname = 'otel_budget_service_role'
            ) then
                execute format('create policy otel_budget_service_role on public.%I '
                               'for all to service_role using (true) with check (true)', v_object);
            end if;
        end loop;
        foreach v_object in array v_functions loop
            execute format('grant execute on function %s to service_role', v_object);
        end loop;
        -- Supabase's service_role bypasses RLS anyway; the policy states the
        -- intent and keeps it working where the role lacks BYPASSRLS.
        if not exists (
            select 1 from pg_catalog.pg_policies
             where schemaname = 'public' and tablename = 'quilt_patches'
               and policyname = 'otel_budget_service_role'
        ) then
            create policy otel_budget_service_role on public.quilt_patches
                for all to service_role using (true) with check (true);
        end if;
    end if;
end
$grants$;

-- Ask PostgREST (Supabase's Data API) to see the functions now; a no-op elsewhere.
notify pgrst, 'reload schema';
