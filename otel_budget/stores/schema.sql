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
--   OB002  a stored budget document is malformed; it is left as it was

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
-- not. The semantics are those of otel_budget.ledger.merge_entry.
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


-- Privileges. PUBLIC has EXECUTE on new functions by default everywhere; on
-- Supabase, anon and authenticated also get everything by default privileges,
-- so revoking from PUBLIC alone would leave them in.
do $grants$
declare
    v_role text;
    v_object text;
    v_functions text[] := array[
        'public.otel_budget_entry_problem(jsonb)',
        'public.otel_budget_checked(jsonb, text)',
        'public.otel_budget_merge(text, text, jsonb, jsonb)',
        'public.otel_budget_claim(text, text, jsonb)'
    ];
begin
    revoke all on table public.quilt_patches from public;
    foreach v_object in array v_functions loop
        execute format('revoke all on function %s from public', v_object);
    end loop;

    foreach v_role in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
            execute format('revoke all on table public.quilt_patches from %I', v_role);
            foreach v_object in array v_functions loop
                execute format('revoke all on function %s from %I', v_object, v_role);
            end loop;
        end if;
    end loop;

    if exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
        execute 'grant select, insert, update, delete on table public.quilt_patches to service_role';
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
