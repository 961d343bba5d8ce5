-- The audit trail (issue 17), as on PostgreSQL (its migration of the same name says what each
-- kind means and why): an append-only table, written in the same transaction as the change each
-- row records. Times are microseconds since the epoch, ids hyphenated UUID text (see the initial
-- migration). `id` is AUTOINCREMENT: larger than any id the table ever held, also after the cleanup
-- deleted the newest rows (a plain rowid would hand a deleted id out again).
create table audit_events (
    id         integer primary key autoincrement,
    at         integer not null,
    kind       text not null
               check (kind in ('issued', 'rotated', 'reuse_detected', 'revoked', 'evicted')),
    family_id  text not null check (length(family_id) = 36),
    subject    text not null,
    client_id  text not null,
    caller     text,
    request_id text,
    detail     text check ((kind = 'revoked') = (detail is not null)
                           and (detail is null or detail in ('family', 'token', 'subject')))
) strict;

create index audit_events_by_family on audit_events (family_id, at, id);
create index audit_events_by_subject on audit_events (subject, at, id);
create index audit_events_by_kind on audit_events (kind, at, id);
create index audit_events_by_time on audit_events (at, id);

-- Append-only: SQLite has no grants, so a trigger refuses every update.
create trigger audit_events_append_only before update on audit_events
begin
    select raise(abort, 'audit events are append-only');
end;
