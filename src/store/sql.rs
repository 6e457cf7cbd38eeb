//! One SQL interface over PostgreSQL and SQLite, for code that must run on
//! both (the officer API, the CLI): a statement is written once, in the
//! subset both databases accept, and bound and decoded the same way.
//!
//! ```text
//! Q::new(sql).bind(..) ──▶ Db (pool) or Tx ──▶ PostgreSQL: sql as written
//!                                          └─▶ SQLite: sql translated (casts,
//!                                              FOR UPDATE, now()) or the
//!                                              statement's own SQLite text
//! rows ──▶ DbRow::get::<T>(column)   (T decodes from both)
//! ```
//!
//! Why not `sqlx::Any`: it decodes no timestamps and no JSON. Why not a
//! trait per query: the two dialects share almost all of their SQL, and one
//! text per statement keeps them from drifting. Where they differ for real
//! (LATERAL, DISTINCT ON, arrays, date_bin) a statement carries both texts
//! ([`Q::split`]), side by side, so a reader compares them in one place.
//!
//! SQLite has one writer ([`LitePools::write`], one connection): every
//! transaction and every writing statement goes through it, so writers
//! queue in the pool instead of failing with SQLITE_BUSY; plain reads use
//! [`LitePools::read`]. A transaction must therefore never issue a write
//! through the [`Db`] it came from (it would wait for its own connection):
//! inside a transaction, use the [`Tx`].

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Decode, PgPool, Postgres, Row, Sqlite, SqlitePool, Type};

/// Which SQL a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (and TimescaleDB).
    Postgres,
    /// SQLite (embedded mode).
    Sqlite,
}

/// SQLite's two pools: one writer, several readers (WAL lets readers run
/// beside the writer).
#[derive(Debug, Clone)]
pub struct LitePools {
    /// The only connection that writes.
    pub write: SqlitePool,
    /// Read-only connections.
    pub read: SqlitePool,
}

/// A database handle for backend-neutral code.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL.
    Pg(PgPool),
    /// SQLite.
    Lite(LitePools),
}

/// An open transaction on either backend.
pub enum Tx {
    /// PostgreSQL.
    Pg(sqlx::Transaction<'static, Postgres>),
    /// SQLite (on the writer connection).
    Lite(sqlx::Transaction<'static, Sqlite>),
}

impl Db {
    /// The dialect this database speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Pg(_) => Dialect::Postgres,
            Self::Lite(_) => Dialect::Sqlite,
        }
    }

    /// The PostgreSQL pool, for the few PostgreSQL-only features
    /// (LISTEN/NOTIFY).
    pub fn pg(&self) -> Option<&PgPool> {
        match self {
            Self::Pg(p) => Some(p),
            Self::Lite(_) => None,
        }
    }

    /// Begins a transaction (on SQLite, on the writer, taking the write
    /// lock at once: another process's writer then makes it wait in the
    /// busy handler instead of failing at its first write).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Self::Pg(p) => Tx::Pg(p.begin().await?),
            Self::Lite(l) => Tx::Lite(l.write.begin_with("BEGIN IMMEDIATE").await?),
        })
    }
}

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Pg(t) => t.commit().await,
            Self::Lite(t) => t.commit().await,
        }
    }

    /// The dialect of the transaction's database.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Pg(_) => Dialect::Postgres,
            Self::Lite(_) => Dialect::Sqlite,
        }
    }
}

/// Where a statement runs.
pub enum On<'e> {
    /// A pooled connection.
    Db(&'e Db),
    /// An open transaction.
    Tx(&'e mut Tx),
}

impl On<'_> {
    /// The same target for one more statement (a read helper that runs
    /// several statements, on the pool or inside the caller's transaction).
    pub fn reborrow(&mut self) -> On<'_> {
        match self {
            On::Db(d) => On::Db(d),
            On::Tx(t) => On::Tx(t),
        }
    }
}

impl<'e> From<&'e Db> for On<'e> {
    fn from(d: &'e Db) -> Self {
        Self::Db(d)
    }
}

impl<'e> From<&'e mut Tx> for On<'e> {
    fn from(t: &'e mut Tx) -> Self {
        Self::Tx(t)
    }
}

/// A value both databases can decode into.
pub trait Col:
    for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite>
{
}

impl<T> Col for T where
    T: for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite>
{
}

/// A row from either backend.
pub enum DbRow {
    /// PostgreSQL.
    Pg(PgRow),
    /// SQLite.
    Lite(SqliteRow),
}

impl DbRow {
    /// Decodes a column.
    pub fn try_get<T: Col>(&self, col: &str) -> Result<T, sqlx::Error> {
        match self {
            Self::Pg(r) => r.try_get(col),
            Self::Lite(r) => r.try_get(col),
        }
    }

    /// Decodes a column; a missing column or a type mismatch is a bug in
    /// the statement, not bad input, and panics like [`sqlx::Row::get`]
    /// (the API turns a panic into a 500 problem).
    pub fn get<T: Col>(&self, col: &str) -> T {
        self.try_get(col)
            .unwrap_or_else(|e| panic!("column {col:?} cannot be decoded: {e}"))
    }

    /// Decodes a JSON column (jsonb on PostgreSQL, text on SQLite).
    pub fn json(&self, col: &str) -> serde_json::Value {
        self.get::<Json<serde_json::Value>>(col).0
    }

    /// Decodes a nullable JSON column.
    pub fn json_opt(&self, col: &str) -> Option<serde_json::Value> {
        self.get::<Option<Json<serde_json::Value>>>(col)
            .map(|j| j.0)
    }
}

/// A bound parameter. Both drivers encode every variant; lists are arrays
/// on PostgreSQL (`= ANY($n)`) and JSON text on SQLite
/// (`IN (SELECT value FROM json_each($n))`), so statements using them are
/// [`Q::split`].
#[derive(Debug, Clone)]
pub enum Arg {
    /// bigint / INTEGER.
    I64(Option<i64>),
    /// integer / INTEGER.
    I32(Option<i32>),
    /// double precision / REAL.
    F64(Option<f64>),
    /// real / REAL.
    F32(Option<f32>),
    /// boolean / INTEGER 0-1.
    Bool(Option<bool>),
    /// text / TEXT.
    Text(Option<String>),
    /// timestamptz / TEXT (RFC 3339, sorts as time for UTC values).
    Time(Option<DateTime<Utc>>),
    /// bytea / BLOB.
    Bytes(Option<Vec<u8>>),
    /// jsonb / TEXT.
    Json(Option<serde_json::Value>),
    /// bigint[] / JSON array text.
    I64List(Vec<i64>),
    /// text[] / JSON array text.
    TextList(Vec<String>),
}

macro_rules! arg_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Self {
                Arg::$v(Some(v.into()))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Self {
                Arg::$v(v.map(Into::into))
            }
        }
    )*};
}

arg_from!(
    i64 => I64, i32 => I32, f64 => F64, f32 => F32, bool => Bool, String => Text,
    &str => Text, &String => Text, DateTime<Utc> => Time, Vec<u8> => Bytes,
    &[u8] => Bytes, serde_json::Value => Json,
);

impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::Text(v.clone())
    }
}

impl From<Vec<i64>> for Arg {
    fn from(v: Vec<i64>) -> Self {
        Arg::I64List(v)
    }
}

impl From<Vec<String>> for Arg {
    fn from(v: Vec<String>) -> Self {
        Arg::TextList(v)
    }
}

/// One statement with its parameters.
#[derive(Debug, Clone)]
pub struct Q {
    pg: Cow<'static, str>,
    lite: Option<Cow<'static, str>>,
    args: Vec<Arg>,
}

impl Q {
    /// A statement both dialects run: written for PostgreSQL, translated
    /// for SQLite by [`to_sqlite`].
    pub fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Self {
            pg: sql.into(),
            lite: None,
            args: Vec::new(),
        }
    }

    /// A statement with its own SQLite text (same parameters, same result
    /// columns), where the dialects differ for real.
    pub fn split(pg: impl Into<Cow<'static, str>>, lite: impl Into<Cow<'static, str>>) -> Self {
        Self {
            pg: pg.into(),
            lite: Some(lite.into()),
            args: Vec::new(),
        }
    }

    /// Binds the next parameter (`$1`, `$2`, ... in order).
    pub fn bind(mut self, v: impl Into<Arg>) -> Self {
        self.args.push(v.into());
        self
    }

    fn lite_sql(&self) -> Cow<'_, str> {
        match &self.lite {
            Some(s) => Cow::Borrowed(s),
            None => to_sqlite(&self.pg),
        }
    }

    /// Every row.
    pub async fn fetch_all<'e>(self, on: impl Into<On<'e>>) -> Result<Vec<DbRow>, sqlx::Error> {
        match on.into() {
            On::Db(Db::Pg(p)) => Ok(self
                .pg_query()
                .fetch_all(p)
                .await?
                .into_iter()
                .map(DbRow::Pg)
                .collect()),
            On::Tx(Tx::Pg(t)) => Ok(self
                .pg_query()
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(DbRow::Pg)
                .collect()),
            On::Db(Db::Lite(l)) => {
                let pool = lite_pool(l, &self.pg);
                let sql = self.lite_sql();
                Ok(lite_query(&sql, &self.args)
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(DbRow::Lite)
                    .collect())
            }
            On::Tx(Tx::Lite(t)) => {
                let sql = self.lite_sql();
                Ok(lite_query(&sql, &self.args)
                    .fetch_all(&mut **t)
                    .await?
                    .into_iter()
                    .map(DbRow::Lite)
                    .collect())
            }
        }
    }

    /// At most one row (more is a bug in the statement: the first is kept).
    pub async fn fetch_optional<'e>(
        self,
        on: impl Into<On<'e>>,
    ) -> Result<Option<DbRow>, sqlx::Error> {
        match on.into() {
            On::Db(Db::Pg(p)) => Ok(self.pg_query().fetch_optional(p).await?.map(DbRow::Pg)),
            On::Tx(Tx::Pg(t)) => Ok(self
                .pg_query()
                .fetch_optional(&mut **t)
                .await?
                .map(DbRow::Pg)),
            On::Db(Db::Lite(l)) => {
                let pool = lite_pool(l, &self.pg);
                let sql = self.lite_sql();
                Ok(lite_query(&sql, &self.args)
                    .fetch_optional(pool)
                    .await?
                    .map(DbRow::Lite))
            }
            On::Tx(Tx::Lite(t)) => {
                let sql = self.lite_sql();
                Ok(lite_query(&sql, &self.args)
                    .fetch_optional(&mut **t)
                    .await?
                    .map(DbRow::Lite))
            }
        }
    }

    /// Exactly one row ([`sqlx::Error::RowNotFound`] otherwise).
    pub async fn fetch_one<'e>(self, on: impl Into<On<'e>>) -> Result<DbRow, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs it; the number of rows it changed.
    pub async fn execute<'e>(self, on: impl Into<On<'e>>) -> Result<u64, sqlx::Error> {
        match on.into() {
            On::Db(Db::Pg(p)) => Ok(self.pg_query().execute(p).await?.rows_affected()),
            On::Tx(Tx::Pg(t)) => Ok(self.pg_query().execute(&mut **t).await?.rows_affected()),
            On::Db(Db::Lite(l)) => {
                let sql = self.lite_sql();
                Ok(lite_query(&sql, &self.args)
                    .execute(&l.write)
                    .await?
                    .rows_affected())
            }
            On::Tx(Tx::Lite(t)) => {
                let sql = self.lite_sql();
                Ok(lite_query(&sql, &self.args)
                    .execute(&mut **t)
                    .await?
                    .rows_affected())
            }
        }
    }

    /// The first column of the one row.
    pub async fn scalar<'e, T: Col>(self, on: impl Into<On<'e>>) -> Result<T, sqlx::Error> {
        let row = self.fetch_one(on).await?;
        first_column(&row)
    }

    /// The first column of the row, if there is one.
    pub async fn scalar_opt<'e, T: Col>(
        self,
        on: impl Into<On<'e>>,
    ) -> Result<Option<T>, sqlx::Error> {
        match self.fetch_optional(on).await? {
            Some(row) => first_column(&row).map(Some),
            None => Ok(None),
        }
    }

    fn pg_query(&self) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
        let mut q = sqlx::query(&self.pg);
        for a in &self.args {
            q = match a.clone() {
                Arg::I64(v) => q.bind(v),
                Arg::I32(v) => q.bind(v),
                Arg::F64(v) => q.bind(v),
                Arg::F32(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::Json(v) => q.bind(v.map(Json)),
                Arg::I64List(v) => q.bind(v),
                Arg::TextList(v) => q.bind(v),
            };
        }
        q
    }
}

fn first_column<T: Col>(row: &DbRow) -> Result<T, sqlx::Error> {
    match row {
        DbRow::Pg(r) => r.try_get(0),
        DbRow::Lite(r) => r.try_get(0),
    }
}

/// Reads go to the readers; anything else (INSERT ... RETURNING and the
/// like) to the writer.
fn lite_pool<'a>(l: &'a LitePools, pg_sql: &str) -> &'a SqlitePool {
    let head = pg_sql.trim_start();
    let is_read = head
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("select"));
    if is_read {
        &l.read
    } else {
        &l.write
    }
}

fn lite_query<'q>(
    sql: &'q str,
    args: &[Arg],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a.clone() {
            Arg::I64(v) => q.bind(v),
            Arg::I32(v) => q.bind(v),
            Arg::F64(v) => q.bind(v),
            Arg::F32(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Time(v) => q.bind(v),
            Arg::Bytes(v) => q.bind(v),
            Arg::Json(v) => q.bind(v.map(Json)),
            // Serialising numbers and strings cannot fail.
            Arg::I64List(v) => q.bind(serde_json::to_string(&v).unwrap_or_default()),
            Arg::TextList(v) => q.bind(serde_json::to_string(&v).unwrap_or_default()),
        };
    }
    q
}

/// SQLite's text of a statement written for PostgreSQL, for the shared
/// subset: `::type` casts are dropped (SQLite's parameters are untyped and
/// it has no `::`), `FOR UPDATE` is dropped (the single writer already
/// serialises transactions), `now()` becomes the current time in the text
/// format times are stored in, `ILIKE` becomes `LIKE` (which is
/// case-insensitive for ASCII in SQLite). String literals are left alone.
pub fn to_sqlite(pg: &str) -> Cow<'_, str> {
    if !(pg.contains("::")
        || pg.contains("FOR UPDATE")
        || pg.contains("now()")
        || pg.contains("ILIKE"))
    {
        return Cow::Borrowed(pg);
    }
    let mut out = String::with_capacity(pg.len() + 32);
    let mut rest = pg;
    let mut in_str = false;
    while let Some(ch) = rest.chars().next() {
        if in_str {
            in_str = ch != '\'';
        } else if ch == '\'' {
            in_str = true;
        } else if let Some(after) = rest.strip_prefix("::") {
            let ident = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let after = &after[ident..];
            rest = after.strip_prefix("[]").unwrap_or(after);
            continue;
        } else if let Some(after) = rest.strip_prefix(" FOR UPDATE") {
            rest = after;
            continue;
        } else if let Some(after) = rest.strip_prefix("now()") {
            out.push_str("strftime('%Y-%m-%dT%H:%M:%f+00:00','now')");
            rest = after;
            continue;
        } else if let Some(after) = rest.strip_prefix("ILIKE") {
            out.push_str("LIKE");
            rest = after;
            continue;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    Cow::Owned(out)
}

/// What a refused write collided with, on either backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A unique key (or PostgreSQL exclusion constraint).
    Unique,
    /// A foreign key.
    ForeignKey,
    /// A CHECK or NOT NULL constraint, or a value out of the column's range.
    Check,
}

/// Classifies a refused write; `None` for anything else.
pub fn violation(e: &sqlx::Error) -> Option<Violation> {
    use sqlx::error::ErrorKind;
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    match db.kind() {
        ErrorKind::UniqueViolation => Some(Violation::Unique),
        ErrorKind::ForeignKeyViolation => Some(Violation::ForeignKey),
        ErrorKind::NotNullViolation | ErrorKind::CheckViolation => Some(Violation::Check),
        _ => match db.code().as_deref() {
            // Exclusion constraint (overlapping ranges).
            Some("23P01") => Some(Violation::Unique),
            // PostgreSQL: value too long, out of range, bad text form, bad
            // datetime (overflow, format).
            Some("22001" | "22003" | "22P02" | "22008" | "22007") => Some(Violation::Check),
            // SQLite: a trigger's RAISE(ABORT) (SQLITE_CONSTRAINT_TRIGGER)
            // is how the schema expresses what PostgreSQL's exclusion
            // constraints say.
            Some("1811") => Some(Violation::Unique),
            _ => None,
        },
    }
}

/// Whether the database is busy or gone (retry later) rather than refusing
/// the statement: the same split as the stores' own classification.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| match c.parse::<u32>() {
            // SQLite result codes (the primary code is the low byte): busy,
            // locked, I/O error, cannot open.
            Ok(n) => matches!(n & 0xff, 5 | 6 | 10 | 14),
            // PostgreSQL SQLSTATE classes: 08 connection, 40 rollback
            // (deadlock, serialization), 53 resources, 57 operator
            // intervention (shutdown, statement timeout), 58 system error.
            Err(_) => ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| c.starts_with(class)),
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::to_sqlite;

    #[test]
    fn translation_keeps_literals_and_drops_casts() {
        assert_eq!(
            to_sqlite(
                "SELECT $1::text IS NULL, 'a::b', x FROM t WHERE y = $2::bigint[] FOR UPDATE"
            ),
            "SELECT $1 IS NULL, 'a::b', x FROM t WHERE y = $2"
        );
        assert_eq!(
            to_sqlite("SELECT 1 WHERE t < now() AND n ILIKE 'é%'"),
            "SELECT 1 WHERE t < strftime('%Y-%m-%dT%H:%M:%f+00:00','now') AND n LIKE 'é%'"
        );
        assert!(matches!(
            to_sqlite("SELECT 1"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
