-- The audit trail (issue 17): an append-only record of what happened to sessions, for the people
-- who answer for them ("everything that happened to family X", "who revoked this session").
--
-- Each row is written by the statement that makes the change it records (Issue's insert, Rotate's
-- spend, a revocation), in its transaction: no event without its change, no change without its
-- event, and a statement run again to resolve a lost answer finds its change done and writes no
-- second event. Kinds:
-- - issued          a family was created (Issue)
-- - rotated         a refresh token was spent into its successor (only with --audit-rotations)
-- - reuse_detected  a spent refresh token was presented again: the family was revoked
-- - revoked         Revoke ended the family; `detail` says what the call named: family, token or
--                   subject
-- - evicted         Issue beyond the sessions cap revoked the family, the oldest of its subject
--                   and client
--
-- No secret: ids, names and times only (never a token, a hash or a seal), so a dump of this table
-- tells who did what, not how to act as anyone. `family_id` is no foreign key: events outlive the
-- family (cleanup deletes an ended family after --gc-retention; its events stay for
-- --audit-retention), and the table is deleted from only by the cleanup, oldest first.
create table audit_events (
    -- monotonic: a later insert has a larger id (the tie-break between events of one instant)
    id         bigint generated always as identity primary key,
    at         timestamptz not null,
    kind       text not null
               check (kind in ('issued', 'rotated', 'reuse_detected', 'revoked', 'evicted')),
    family_id  uuid not null,
    subject    text not null,
    client_id  text not null,
    -- the caller policy's name of whoever made the call; null in open mode (no policy)
    caller     text,
    -- the call's request id (x-request-id, or the one the server made up)
    request_id text,
    -- for `revoked`: what the Revoke call named (family, token, subject); null for the others
    detail     text check ((kind = 'revoked') = (detail is not null)
                           and (detail is null or detail in ('family', 'token', 'subject')))
);

-- The queries `ratchet events` runs, newest first (`at desc, id desc`, read backwards): by
-- family, by subject, by kind and time, and everything by time (which the cleanup's retention
-- deletes also walk, oldest first). Only inserted into, never updated: Rotate's spend touches
-- none of them unless --audit-rotations is on, and then adds one row to the right-hand end of each.
create index audit_events_by_family on audit_events (family_id, at, id);
create index audit_events_by_subject on audit_events (subject, at, id);
create index audit_events_by_kind on audit_events (kind, at, id);
create index audit_events_by_time on audit_events (at, id);

-- Append-only: nobody updates an event. A trigger refuses it whoever tries (the runtime role
-- cannot drop a trigger: it has no DDL), and the runtime role has no UPDATE on the table (the
-- default privileges of docs/runtime-role.sql granted one on creation: taken back here, from
-- every role but the owner; the cleanup still needs DELETE).
create function audit_events_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit events are append-only' using errcode = 'insufficient_privilege';
end
$$;

create trigger audit_events_append_only
    before update on audit_events
    for each row
    execute function audit_events_append_only();

do $$
declare
    grantee text;
begin
    for grantee in
        select distinct g.grantee from information_schema.role_table_grants g
        where g.table_schema = current_schema() and g.table_name = 'audit_events'
          and g.privilege_type in ('UPDATE', 'TRUNCATE') and g.grantee <> current_user
    loop
        execute format('revoke update, truncate on audit_events from %I', grantee);
    end loop;
end
$$;
