-- The least-privileged role `ratchet serve --no-migrate` runs as (issue 11).
--
-- Two roles: the owner (it owns ratchet's tables; `ratchet migrate` connects as it) and the
-- runtime role below, which may read and write the rows of ratchet's tables and nothing else:
-- no DDL, no other schema, not the migrations table. A stolen runtime password cannot drop or
-- alter anything. Run this as the owner role, in ratchet's database, after the first
-- `ratchet migrate`; replace the names and the password. tests/api/privileges.rs runs exactly
-- this file (with its own names) and then the whole API on the role it creates.

create role ratchet_runtime login password 'change-me';
grant connect on database ratchet to ratchet_runtime;
grant usage on schema public to ratchet_runtime;
grant select, insert, update, delete on all tables in schema public to ratchet_runtime;
revoke all on _sqlx_migrations from ratchet_runtime;
-- The audit trail is append-only: the runtime role inserts events and the cleanup deletes those
-- past their retention, but nobody rewrites one (a trigger refuses it too).
revoke update, truncate on audit_events from ratchet_runtime;
-- Tables that later migrations create (as the owner) get the same grants.
alter default privileges in schema public grant select, insert, update, delete on tables to ratchet_runtime;
