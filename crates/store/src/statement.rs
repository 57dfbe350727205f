//! SQL text with its bound values, built once and run by whichever driver the read goes
//! through: sqlx (PostgreSQL, and every other read) or rusqlite (the hot reads on SQLite,
//! `direct`). sqlx's `QueryBuilder` keeps its bound values encoded for its own driver only,
//! so the reads both drivers run are built as a `Statement`.

use sqlx::{Database, Encode, QueryBuilder, Type};

/// Appending SQL and bound values, whatever the query is built for. The scope conditions
/// (`scope`) are written once against it.
pub(crate) trait SqlBuilder {
    fn push_sql(&mut self, sql: &str) -> &mut Self;
    fn push_text(&mut self, value: &str) -> &mut Self;
    fn push_int(&mut self, value: i64) -> &mut Self;
}

impl<'a, DB: Database> SqlBuilder for QueryBuilder<'a, DB>
where
    String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    fn push_sql(&mut self, sql: &str) -> &mut Self {
        self.push(sql)
    }

    fn push_text(&mut self, value: &str) -> &mut Self {
        self.push_bind(value.to_owned())
    }

    fn push_int(&mut self, value: i64) -> &mut Self {
        self.push_bind(value)
    }
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Sql(String),
    Bound(Value),
}

/// SQL text and bound values, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Statement {
    parts: Vec<Part>,
}

impl Statement {
    pub(crate) fn new(sql: &str) -> Statement {
        let mut statement = Statement::default();
        statement.push_sql(sql);
        statement
    }

    /// The same statement as a sqlx query builder for `DB`.
    pub(crate) fn into_query_builder<'a, DB: Database>(self) -> QueryBuilder<'a, DB>
    where
        String: Encode<'a, DB> + Type<DB>,
        i64: Encode<'a, DB> + Type<DB>,
    {
        let mut query = QueryBuilder::new("");
        for part in self.parts {
            match part {
                Part::Sql(sql) => query.push(sql),
                Part::Bound(Value::Int(value)) => query.push_bind(value),
                Part::Bound(Value::Text(value)) => query.push_bind(value),
            };
        }
        query
    }

    /// SQLite's text, the values numbered in order (`?1`, `?2`, …), and the values.
    pub(crate) fn into_sqlite(self) -> (String, Vec<Value>) {
        let mut text = String::new();
        let mut values = Vec::new();
        for part in self.parts {
            match part {
                Part::Sql(sql) => text.push_str(&sql),
                Part::Bound(value) => {
                    values.push(value);
                    text.push_str(&format!("?{}", values.len()));
                }
            }
        }
        (text, values)
    }
}

impl SqlBuilder for Statement {
    fn push_sql(&mut self, sql: &str) -> &mut Self {
        match self.parts.last_mut() {
            Some(Part::Sql(text)) => text.push_str(sql),
            _ => self.parts.push(Part::Sql(sql.to_owned())),
        }
        self
    }

    fn push_text(&mut self, value: &str) -> &mut Self {
        self.parts.push(Part::Bound(Value::Text(value.to_owned())));
        self
    }

    fn push_int(&mut self, value: i64) -> &mut Self {
        self.parts.push(Part::Bound(Value::Int(value)));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_text_numbers_the_values_in_order() {
        let mut statement = Statement::new("SELECT a FROM t WHERE b = ");
        statement.push_text("x").push_sql(" AND c < ").push_int(7).push_sql(" AND d = ").push_text("y");
        let (text, values) = statement.into_sqlite();
        assert_eq!(text, "SELECT a FROM t WHERE b = ?1 AND c < ?2 AND d = ?3");
        assert_eq!(values, vec![Value::Text("x".into()), Value::Int(7), Value::Text("y".into())]);
    }

    #[test]
    fn the_query_builder_has_the_same_text_in_its_driver_s_placeholders() {
        let mut statement = Statement::new("SELECT a FROM t WHERE b = ");
        statement.push_text("x").push_sql(" LIMIT ").push_int(3);
        let query: QueryBuilder<'_, sqlx::Postgres> = statement.into_query_builder();
        assert_eq!(query.sql(), "SELECT a FROM t WHERE b = $1 LIMIT $2");
    }
}
