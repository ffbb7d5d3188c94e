//! Unnamed statements: with the statement cache off, a statement given as text runs as one
//! self-contained batch of the unnamed statement.

use tokio_postgres::types::{ToSql, Type};

use super::{PgConn, Sql};

/// Parameter types tried, in order, for unnamed statements (cache size 0): the natural
/// PostgreSQL type of each common Rust type comes first for it (`i32` → int4, `&str` → text …).
pub(crate) const UNNAMED_PARAM_TYPES: &[Type] = &[
    Type::INT4,
    Type::INT8,
    Type::INT2,
    Type::TEXT,
    Type::BOOL,
    Type::FLOAT8,
    Type::FLOAT4,
    Type::BYTEA,
    Type::CHAR,
    Type::OID,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::TIME,
    Type::UUID,
    Type::NUMERIC,
    Type::INET,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::BOOL_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::BYTEA_ARRAY,
];

impl PgConn {
    /// With the statement cache off (size 0, for PgBouncer in transaction mode), a statement
    /// given as text runs as one self-contained batch — Parse, Bind, Describe, Execute, Sync of
    /// the unnamed statement — so nothing named outlives it and it cannot straddle two server
    /// connections; it is also one round trip instead of two. That needs each parameter's type
    /// up front: each is the first of [`UNNAMED_PARAM_TYPES`] its Rust type encodes as. When a
    /// parameter fits none (a custom type), `None`: the call prepares a named statement instead.
    #[allow(clippy::type_complexity)]
    pub(super) fn unnamed<'a, 'p, T: Sql + ?Sized>(
        &self,
        sql: &'a T,
        params: &[&'p (dyn ToSql + Sync)],
    ) -> Option<(&'a str, Vec<(&'p (dyn ToSql + Sync), Type)>)> {
        let text = sql.text()?;
        if self.caching {
            return None;
        }
        let mut scratch = bytes::BytesMut::new();
        let mut typed = Vec::with_capacity(params.len());
        for &p in params {
            let ty = UNNAMED_PARAM_TYPES.iter().find(|ty| {
                scratch.clear();
                p.to_sql_checked(ty, &mut scratch).is_ok()
            })?;
            typed.push((p, ty.clone()));
        }
        self.mark_if_transaction_control(sql);
        // One batch: the execution is sent with the parse.
        self.mark_execution_sent();
        Some((text, typed))
    }
}
