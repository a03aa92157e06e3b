//! The notification outbox (rules 14, 15): written in the same transaction as the
//! event that causes it, then delivered by a job.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Notifications {
    Table,
    Id,
    AccountId,
    Kind,
    DedupeKey,
    Recipients,
    Payload,
    State,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    SentAt,
    LastError,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Accounts {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Notifications::Table)
                .col(pk_auto(Notifications::Id))
                .col(integer(Notifications::AccountId))
                .col(string_len(Notifications::Kind, 32))
                // One notification per event: a retried transaction or a second sweeper
                // cannot create it twice.
                .col(string_uniq(Notifications::DedupeKey))
                .col(text(Notifications::Recipients))
                .col(text(Notifications::Payload))
                .col(string_len(Notifications::State, 16))
                .col(integer(Notifications::Attempts).default(0))
                .col(timestamp_with_time_zone(Notifications::NextAttemptAt))
                .col(timestamp_with_time_zone_null(Notifications::LeaseUntil))
                .col(timestamp_with_time_zone_null(Notifications::SentAt))
                .col(text_null(Notifications::LastError))
                .col(timestamp_with_time_zone(Notifications::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Notifications::Table, Notifications::AccountId)
                        .to(Accounts::Table, Accounts::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_notifications_due")
                .table(Notifications::Table)
                .col(Notifications::State)
                .col(Notifications::NextAttemptAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_notifications_account")
                .table(Notifications::Table)
                .col(Notifications::AccountId)
                .col(Notifications::Id)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Notifications::Table).to_owned())
            .await
    }
}
