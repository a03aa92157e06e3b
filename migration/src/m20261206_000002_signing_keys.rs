//! The keys that sign offline leases (rule 23), shared by every process of a
//! deployment and kept across restarts. A retired key stays, so it can still be
//! published while leases it signed are unexpired.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum SigningKeys {
    Table,
    Kid,
    PrivateKey,
    PublicX,
    CreatedAt,
    RetiredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(SigningKeys::Table)
                // The key's JWK thumbprint (RFC 7638): the same key always has the same kid.
                .col(text(SigningKeys::Kid).primary_key())
                // PKCS#8, PEM.
                .col(text(SigningKeys::PrivateKey))
                // The public key as the JWK's `x` (base64url).
                .col(text(SigningKeys::PublicX))
                .col(timestamp_with_time_zone(SigningKeys::CreatedAt))
                .col(timestamp_with_time_zone_null(SigningKeys::RetiredAt))
                .to_owned(),
        )
        .await?;
        // At most one current (not retired) key, whatever the writers do: a partial
        // unique index on a constant, written alike for SQLite and PostgreSQL.
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX ux_signing_keys_one_current \
                 ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(SigningKeys::Table).to_owned())
            .await?;
        Ok(())
    }
}
