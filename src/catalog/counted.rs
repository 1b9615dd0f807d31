//! Content-addressed rows shared by versions and counted by them: manifest segments and
//! extracted metadata documents. A row is written once per tenant, its count goes up in the
//! transaction committing a version that names it and down in the one purging it, and it is
//! deleted when the count reaches zero. Postgres locks such rows in id order on both paths,
//! so commits and purges sharing rows wait for each other instead of deadlocking.

use super::{BATCH_ROWS, Catalog, Dialect, db_error};
use crate::domain::Result;
use sqlx::{AnyConnection, AssertSqlSafe};
use std::collections::BTreeMap;

/// One table of counted rows: `(tenant, id_column, body_column, refs)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct CountedTable {
    pub table: &'static str,
    pub id: &'static str,
    pub body: &'static str,
    /// What its rows are, for errors.
    pub what: &'static str,
}

/// A row's body and how many references a commit adds to it.
pub(super) type Referenced = (Vec<u8>, i64);

/// A value bound before a statement's list of ids.
#[derive(Debug, Clone, Copy)]
enum Lead<'a> {
    Number(i64),
    Text(&'a str),
}

/// How many times each id is named.
pub(super) fn counted<I: Ord>(ids: impl IntoIterator<Item = I>) -> BTreeMap<I, i64> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

impl Catalog {
    /// Adds `count` references to each row of `rows` (id → body, count), writing the rows
    /// that are new.
    pub(super) async fn add_references(
        &self,
        connection: &mut AnyConnection,
        table: CountedTable,
        tenant: &str,
        rows: &BTreeMap<Vec<u8>, Referenced>,
    ) -> Result<()> {
        let CountedTable {
            table: name,
            id,
            body,
            what,
        } = table;
        // In id order (the map's), so commits sharing rows lock them in the same order.
        let rows: Vec<(&Vec<u8>, &Referenced)> = rows.iter().collect();
        for batch in rows.chunks(BATCH_ROWS / 4) {
            let sql = format!(
                "INSERT INTO {name} (tenant, {id}, {body}, refs) VALUES {} \
                 ON CONFLICT (tenant, {id}) DO UPDATE SET refs = {name}.refs + excluded.refs",
                self.dialect.value_rows(batch.len(), 4)
            );
            let mut query =
                sqlx::query(AssertSqlSafe(sql)).persistent(super::keep_prepared(batch.len(), BATCH_ROWS / 4));
            for (key, (content, count)) in batch {
                query = query
                    .bind(tenant)
                    .bind(key.to_vec())
                    .bind(content.clone())
                    .bind(*count);
            }
            query
                .execute(&mut *connection)
                .await
                .map_err(|e| db_error(&format!("writing {what}"), e))?;
        }
        Ok(())
    }

    /// Takes `count` references from each id of `counts`, deleting rows none are left to.
    pub(super) async fn drop_references(
        &self,
        connection: &mut AnyConnection,
        table: CountedTable,
        tenant: &str,
        counts: &BTreeMap<Vec<u8>, i64>,
    ) -> Result<()> {
        let CountedTable {
            table: name,
            id,
            what,
            ..
        } = table;
        if counts.is_empty() {
            return Ok(());
        }
        let ids: Vec<&Vec<u8>> = counts.keys().collect();
        let tenant = Lead::Text(tenant);
        if self.dialect == Dialect::Postgres {
            self.for_id_batches(connection, &ids, &[tenant], &format!("locking {what}"), |lead, list| {
                format!("SELECT {id} FROM {name} WHERE tenant = {} AND {id} IN ({list}) ORDER BY {id} FOR UPDATE", lead[0])
            })
            .await?;
        }
        // Grouped by how many references go: one statement a batch of each group.
        let mut by_count: BTreeMap<i64, Vec<&Vec<u8>>> = BTreeMap::new();
        for (key, count) in counts {
            by_count.entry(*count).or_default().push(key);
        }
        for (count, keys) in &by_count {
            let lead = [Lead::Number(*count), tenant];
            self.for_id_batches(
                connection,
                keys,
                &lead,
                &format!("releasing {what}"),
                |lead, list| {
                    format!(
                        "UPDATE {name} SET refs = refs - {} WHERE tenant = {} AND {id} IN ({list})",
                        lead[0], lead[1]
                    )
                },
            )
            .await?;
        }
        self.for_id_batches(
            connection,
            &ids,
            &[tenant],
            &format!("deleting unused {what}"),
            |lead, list| {
                format!(
                    "DELETE FROM {name} WHERE tenant = {} AND refs <= 0 AND {id} IN ({list})",
                    lead[0]
                )
            },
        )
        .await?;
        Ok(())
    }

    /// Runs `statement` for `ids` a batch at a time: it gets the placeholders of the `lead`
    /// values bound first, and the list of the batch's ids.
    async fn for_id_batches(
        &self,
        connection: &mut AnyConnection,
        ids: &[&Vec<u8>],
        lead: &[Lead<'_>],
        doing: &str,
        statement: impl Fn(&[String], &str) -> String,
    ) -> Result<()> {
        let lead_placeholders: Vec<String> = (1..=lead.len())
            .map(|n| self.dialect.placeholders(n, 1))
            .collect();
        for batch in ids.chunks(BATCH_ROWS) {
            let list = self
                .dialect
                .placeholders(lead.len() + 1, super::in_list_len(batch.len()));
            let sql = statement(&lead_placeholders, &list);
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for value in lead {
                query = match value {
                    Lead::Number(number) => query.bind(*number),
                    Lead::Text(text) => query.bind(text.to_string()),
                };
            }
            for key in super::padded(batch) {
                query = query.bind(key.to_vec());
            }
            query
                .execute(&mut *connection)
                .await
                .map_err(|e| db_error(doing, e))?;
        }
        Ok(())
    }

    /// Compares `table`'s counts with `expected` (tenant and id → how many versions name
    /// it), adding a problem for each difference; how many rows it has and their bytes.
    pub(super) async fn recount(
        &self,
        table: CountedTable,
        mut expected: BTreeMap<(String, Vec<u8>), i64>,
        problems: &mut Vec<String>,
    ) -> Result<(u64, u64)> {
        let CountedTable {
            table: name,
            id,
            body,
            what,
        } = table;
        let (mut rows_seen, mut bytes) = (0u64, 0u64);
        let mut after = (String::new(), Vec::new());
        loop {
            let sql = format!(
                "SELECT tenant, {id}, refs, CAST(length({body}) AS BIGINT) FROM {name} \
                 WHERE tenant > $1 OR (tenant = $1 AND {id} > $2) ORDER BY tenant, {id} LIMIT 1000"
            );
            let rows: Vec<(String, Vec<u8>, i64, i64)> = sqlx::query_as(AssertSqlSafe(sql))
                .bind(&after.0)
                .bind(after.1.clone())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(&format!("reading {what}"), e))?;
            let Some((tenant, key, ..)) = rows.last() else {
                break;
            };
            after = (tenant.clone(), key.clone());
            for (tenant, key, refs, length) in rows {
                rows_seen += 1;
                bytes += length.max(0) as u64;
                let named = expected.remove(&(tenant.clone(), key.clone())).unwrap_or(0);
                if refs != named {
                    problems.push(format!(
                        "tenant {tenant:?}: {what} {} counts {refs} references, versions name it {named} times",
                        hex(&key)
                    ));
                }
            }
        }
        for ((tenant, key), count) in expected {
            problems.push(format!(
                "tenant {tenant:?}: {what} {} is named {count} times but missing",
                hex(&key)
            ));
        }
        Ok((rows_seen, bytes))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
