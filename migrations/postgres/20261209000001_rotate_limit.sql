-- The per-family Rotate limit, kept with the family so that every replica enforces one limit
-- (issue 19): GCRA's "theoretical arrival time", when the family's bucket is full again; null is
-- full. The spend statements read and move it (src/store/postgres/sql.rs, `rotation_writes!`).
-- No index covers it: a rotation's update of its family stays a HOT update. Adding a nullable
-- column with no default rewrites nothing.
alter table families add column rotate_tat timestamptz;
