-- The per-family Rotate limit (issue 19), as on PostgreSQL: when the family's bucket is full
-- again (GCRA), in microseconds since the epoch; null is full. Read and moved by the spend
-- (src/store/sqlite/spend.rs).
alter table families add column rotate_tat integer;
