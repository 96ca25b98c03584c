//! The store: SQLite through sqlx (a file under the data dir). Plain data access, no policy.

use std::path::Path;
use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// Store failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened, migrated or queried.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Schema migration failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The deployment's identity and access keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Per-deployment UUID used in identity ids and tokens.
    pub resource_id: String,
    /// Base64 access key (connection string key).
    pub primary_key: String,
    /// Base64 access key, equally valid.
    pub secondary_key: String,
}

/// A stored token signing key.
#[derive(Debug, Clone)]
pub struct StoredSigningKey {
    /// Key id.
    pub kid: String,
    /// PKCS#8 DER private key.
    pub pkcs8_der: Vec<u8>,
    /// Uncompressed SEC1 public point.
    pub public_point: Vec<u8>,
}

/// A communication identity row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRow {
    /// `8:acs:{resourceId}_{uuid}`.
    pub id: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Last revocation, seconds since the epoch.
    pub revoked_at: Option<i64>,
}

/// Which access key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The key in the connection string.
    Primary,
    /// The standby key.
    Secondary,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) `dir/switchboard.db` and applies migrations.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be opened or migrated.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("switchboard.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The deployment row, if made.
    pub async fn deployment(&self) -> Result<Option<Deployment>, StoreError> {
        let row = sqlx::query(
            "SELECT resource_id, primary_key, secondary_key FROM deployment WHERE singleton = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Deployment {
            resource_id: r.get(0),
            primary_key: r.get(1),
            secondary_key: r.get(2),
        }))
    }

    /// Inserts the deployment row unless one exists; returns the row in force.
    pub async fn init_deployment(
        &self,
        fresh: &Deployment,
        now: i64,
    ) -> Result<Deployment, StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO deployment (singleton, resource_id, primary_key, secondary_key, created_at) \
             VALUES (1, ?, ?, ?, ?)",
        )
        .bind(&fresh.resource_id)
        .bind(&fresh.primary_key)
        .bind(&fresh.secondary_key)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // The row exists now: either ours or one made earlier.
        Ok(self.deployment().await?.unwrap_or_else(|| fresh.clone()))
    }

    /// Replaces one access key.
    pub async fn set_access_key(&self, which: KeyKind, key: &str) -> Result<(), StoreError> {
        let sql = match which {
            KeyKind::Primary => "UPDATE deployment SET primary_key = ? WHERE singleton = 1",
            KeyKind::Secondary => "UPDATE deployment SET secondary_key = ? WHERE singleton = 1",
        };
        sqlx::query(sql).bind(key).execute(&self.pool).await?;
        Ok(())
    }

    /// All signing keys, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, pkcs8_der, public_point FROM signing_keys ORDER BY created_at DESC, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredSigningKey {
                kid: r.get(0),
                pkcs8_der: r.get(1),
                public_point: r.get(2),
            })
            .collect())
    }

    /// Adds a signing key.
    pub async fn add_signing_key(
        &self,
        key: &StoredSigningKey,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO signing_keys (kid, pkcs8_der, public_point, created_at) VALUES (?, ?, ?, ?)")
            .bind(&key.kid)
            .bind(&key.pkcs8_der)
            .bind(&key.public_point)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Inserts a new identity.
    pub async fn insert_identity(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO identities (id, created_at) VALUES (?, ?)")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Looks an identity up.
    pub async fn identity(&self, id: &str) -> Result<Option<IdentityRow>, StoreError> {
        let row = sqlx::query("SELECT id, created_at, revoked_at FROM identities WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| IdentityRow {
            id: r.get(0),
            created_at: r.get(1),
            revoked_at: r.get(2),
        }))
    }

    /// Sets the revocation time; returns false when the identity does not exist.
    ///
    /// The revocation time only moves forward and always past the previous one: tokens issued after a revocation
    /// carry `iat = revoked_at + 1` at least, so a second revocation in the same second must cover them too.
    pub async fn revoke_identity(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE identities SET revoked_at = MAX(?1, COALESCE(revoked_at + 1, ?1)) WHERE id = ?2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes an identity (and any demo name mapped to it); returns false when it did not exist.
    pub async fn delete_identity(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM demo_users WHERE identity_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM identities WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// The identity a demo name maps to.
    pub async fn demo_user(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT identity_id FROM demo_users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Maps a demo name to `identity` unless it is mapped to a live identity already; returns the identity the
    /// name maps to afterwards (atomic, so concurrent sign-ins agree).
    pub async fn claim_demo_user(
        &self,
        name: &str,
        identity: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM demo_users WHERE name = ?1 AND identity_id NOT IN (SELECT id FROM identities)")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO demo_users (name, identity_id, created_at) VALUES (?, ?, ?)",
        )
        .bind(name)
        .bind(identity)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT identity_id FROM demo_users WHERE name = ?")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }

    /// All demo names with their identities, by name.
    pub async fn demo_users(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, identity_id FROM demo_users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
