//! A fresh Postgres database per test, on the server the test command provides.

use sqlx::Connection;

pub struct TestDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

pub fn admin_url() -> String {
    std::env::var("ARTIFACTD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = admin_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "Postgres is not reachable at {admin_url}: {e}. Run `scripts/test`, which starts \
                 (or provisions) Postgres, or start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or point ARTIFACTD_TEST_POSTGRES_URL at a server"
            )
        });
        let name = format!("artifactd_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("creating a test database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Self {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        }
    }

    pub async fn drop_database(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}
