//! Looking behind the API at what a test server stored, on either store: counts, revocation
//! reasons, a dump of every value, hand-made rows, and (PostgreSQL only) a pool of its own and
//! triggers that slow or fail spends. Starting the server is [`super::app`]'s.

use sqlx::postgres::PgPool;

use super::app::TestApp;

impl TestApp {
    /// Why `family_id` was revoked, as stored (`None`: it is not), read behind the API on either
    /// backend.
    pub async fn revoked_reason(&self, family_id: &str) -> Option<String> {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => sqlx::query_scalar("select revoked_reason from families where id = $1::uuid")
                .bind(family_id)
                .fetch_one(db)
                .await
                .unwrap(),
            (None, Some(file)) => sqlx::query_scalar("select revoked_reason from families where id = ?1")
                .bind(family_id)
                .fetch_one(&mut inspect_sqlite(file).await)
                .await
                .unwrap(),
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// How many refresh tokens are stored, spent ones included, in `family_id` or (`None`) in all.
    pub async fn stored_refresh_tokens(&self, family_id: Option<&str>) -> i64 {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => {
                sqlx::query_scalar("select count(*) from refresh_tokens where $1::uuid is null or family_id = $1::uuid")
                    .bind(family_id)
                    .fetch_one(db)
                    .await
                    .unwrap()
            }
            (None, Some(file)) => {
                sqlx::query_scalar("select count(*) from refresh_tokens where ?1 is null or family_id = ?1")
                    .bind(family_id)
                    .fetch_one(&mut inspect_sqlite(file).await)
                    .await
                    .unwrap()
            }
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// How many families are stored, revoked and expired ones included: "did this leave anything
    /// behind", on either backend.
    pub async fn stored_families(&self) -> i64 {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => sqlx::query_scalar("select count(*) from families")
                .fetch_one(db)
                .await
                .unwrap(),
            (None, Some(file)) => sqlx::query_scalar("select count(*) from families")
                .fetch_one(&mut inspect_sqlite(file).await)
                .await
                .unwrap(),
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// Inserts a refresh token behind the server's back into `family_id`, as the successor of the
    /// token hashed `parent` (`None`: as a first token), on either backend: what a future code
    /// path gone wrong might do, for tests that the schema itself refuses it. The token is
    /// inserted spent, so that only the index against branching can refuse it (SQLite also has
    /// one against a second unspent token, which would refuse an unspent one either way).
    pub async fn force_refresh_token(&self, family_id: &str, parent: Option<Vec<u8>>) -> Result<(), sqlx::Error> {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => sqlx::query(
                "insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash)
                 values (sha256(gen_random_uuid()::text::bytea), $1::uuid, $2, now(), now() + interval '1 day',
                         now(), sha256(gen_random_uuid()::text::bytea))",
            )
            .bind(family_id)
            .bind(parent)
            .execute(db)
            .await
            .map(drop),
            (None, Some(file)) => {
                use sqlx::Connection as _;
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file);
                let mut connection = sqlx::sqlite::SqliteConnection::connect_with(&options).await.unwrap();
                let result = sqlx::query(
                    "insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash)
                     values (randomblob(32), ?1, ?2, 0, 86400000000, 0, randomblob(32))",
                )
                .bind(family_id)
                .bind(parent)
                .execute(&mut connection)
                .await
                .map(drop);
                connection.close().await.unwrap();
                result
            }
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// Every value in every table, as an attacker's dump of the database (PostgreSQL's, or a copy
    /// of the SQLite file) has it: bytea/blob columns as their bytes, everything else as text.
    /// NULLs are left out. The tables are found, not listed, so a new one is dumped too.
    pub async fn dump(&self) -> Vec<Stored> {
        let mut stored = Vec::new();
        match (&self.db, &self.sqlite) {
            (Some(db), _) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "select table_name::text from information_schema.tables
                     where table_schema = current_schema() and table_type = 'BASE TABLE'",
                )
                .fetch_all(db)
                .await
                .unwrap();
                for table in tables {
                    let rows: Vec<serde_json::Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "select row_to_json(t)::jsonb from \"{table}\" t"
                    )))
                    .fetch_all(db)
                    .await
                    .unwrap();
                    for row in rows {
                        for (column, value) in row.as_object().unwrap() {
                            let bytes = match value {
                                serde_json::Value::Null => continue,
                                // bytea comes out as "\\x<hex>"
                                serde_json::Value::String(text) => match text.strip_prefix("\\x") {
                                    Some(hex) => (0..hex.len() / 2)
                                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                                        .collect(),
                                    None => text.clone().into_bytes(),
                                },
                                other => other.to_string().into_bytes(),
                            };
                            stored.push(Stored {
                                table: table.clone(),
                                column: column.clone(),
                                bytes,
                            });
                        }
                    }
                }
            }
            (None, Some(file)) => {
                use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};
                let mut connection = inspect_sqlite(file).await;
                let tables: Vec<String> = sqlx::query_scalar(
                    "select name from sqlite_schema where type = 'table' and name not like 'sqlite_%'",
                )
                .fetch_all(&mut connection)
                .await
                .unwrap();
                for table in tables {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("select * from \"{table}\"")))
                        .fetch_all(&mut connection)
                        .await
                        .unwrap();
                    for row in rows {
                        for (i, column) in row.columns().iter().enumerate() {
                            let raw = row.try_get_raw(i).unwrap();
                            // The type of the value itself: SQLite's is per value, not per column.
                            let bytes = match raw.type_info().name() {
                                "NULL" => continue,
                                "BLOB" => row.get::<Vec<u8>, _>(i),
                                "INTEGER" => row.get::<i64, _>(i).to_string().into_bytes(),
                                "REAL" => row.get::<f64, _>(i).to_string().into_bytes(),
                                _ => row.get::<String, _>(i).into_bytes(),
                            };
                            stored.push(Stored {
                                table: table.clone(),
                                column: column.name().to_owned(),
                                bytes,
                            });
                        }
                    }
                }
            }
            (None, None) => unreachable!("every server has a database"),
        }
        stored
    }

    /// The second pool on its PostgreSQL database, for tests that look at what is stored (or
    /// change the schema under the server). Every such test runs on PostgreSQL only.
    pub fn db(&self) -> &PgPool {
        self.db
            .as_ref()
            .expect("a server on PostgreSQL (this one is on SQLite)")
    }
    /// Runs `body` (PL/pgSQL, ending in `return new` or raising) before every update of a refresh
    /// token, i.e. in every spend, until [`Self::unhook_spends`]: a slow or failing database on
    /// demand.
    pub async fn hook_spends(&self, body: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "create function spend_hook() returns trigger language plpgsql as $$ begin {body} end $$;
             create trigger spend_hook before update on refresh_tokens
             for each row execute function spend_hook();"
        )))
        .execute(self.db())
        .await
        .unwrap();
    }

    pub async fn unhook_spends(&self) {
        sqlx::raw_sql("drop trigger spend_hook on refresh_tokens; drop function spend_hook();")
            .execute(self.db())
            .await
            .unwrap();
    }
}

/// One value of a [`TestApp::dump`].
#[derive(Debug)]
pub struct Stored {
    pub table: String,
    pub column: String,
    pub bytes: Vec<u8>,
}

/// A read-only connection to a test server's SQLite file, beside the server's own.
async fn inspect_sqlite(file: &std::path::Path) -> sqlx::sqlite::SqliteConnection {
    use sqlx::Connection as _;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file).read_only(true);
    sqlx::sqlite::SqliteConnection::connect_with(&options).await.unwrap()
}
