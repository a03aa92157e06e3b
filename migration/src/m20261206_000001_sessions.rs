//! Sessions (rules 20–22): every granted open starts one; heartbeats keep it alive,
//! a close or a lapse ends it. Charges remember the session that paid them and
//! whether a short launch was refunded (rule 21).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Sessions {
    Table,
    Id,
    AccountId,
    UserId,
    ProductId,
    DeviceId,
    Version,
    Source,
    State,
    Active,
    StartedAt,
    LastHeartbeatAt,
    EndedAt,
    DenyReason,
    OpenChargeId,
}

#[derive(DeriveIden, Clone, Copy)]
enum Charges {
    Table,
    SessionId,
    RefundedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum RollupCorrections {
    Table,
    AccountId,
    Day,
}

#[derive(DeriveIden, Clone, Copy)]
enum Accounts {
    Table,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum Products {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Sessions::Table)
                // Made by the process that starts the session (a random UUID), so a
                // batch of opens knows its sessions' ids without reading them back.
                .col(string_len(Sessions::Id, 36).primary_key())
                .col(integer(Sessions::AccountId))
                .col(integer(Sessions::UserId))
                .col(integer(Sessions::ProductId))
                .col(string_len(Sessions::DeviceId, 100))
                .col(string_null(Sessions::Version))
                .col(string_len(Sessions::Source, 16))
                .col(string_len(Sessions::State, 16))
                .col(boolean(Sessions::Active))
                .col(timestamp_with_time_zone(Sessions::StartedAt))
                // Null until the first heartbeat: such a session is not watched.
                .col(timestamp_with_time_zone_null(Sessions::LastHeartbeatAt))
                .col(timestamp_with_time_zone_null(Sessions::EndedAt))
                .col(string_len_null(Sessions::DenyReason, 32))
                .col(integer_null(Sessions::OpenChargeId))
                .foreign_key(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::AccountId)
                        .to(Accounts::Table, Accounts::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::ProductId)
                        .to(Products::Table, Products::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // The account's sessions, newest first.
        m.create_index(
            Index::create()
                .name("ix_sessions_account_started")
                .table(Sessions::Table)
                .col(Sessions::AccountId)
                .col(Sessions::StartedAt)
                .to_owned(),
        )
        .await?;
        // Other opens of the same user and product inside a window (rule 21).
        m.create_index(
            Index::create()
                .name("ix_sessions_user_product_started")
                .table(Sessions::Table)
                .col(Sessions::UserId)
                .col(Sessions::ProductId)
                .col(Sessions::StartedAt)
                .to_owned(),
        )
        .await?;
        // The lapse sweep reads open sessions only.
        m.create_index(
            Index::create()
                .name("ix_sessions_state_heartbeat")
                .table(Sessions::Table)
                .col(Sessions::State)
                .col(Sessions::LastHeartbeatAt)
                .to_owned(),
        )
        .await?;

        // SQLite alters one column per statement.
        m.alter_table(
            Table::alter()
                .table(Charges::Table)
                .add_column(string_len_null(Charges::SessionId, 36))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Charges::Table)
                .add_column(timestamp_with_time_zone_null(Charges::RefundedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_charges_session")
                .table(Charges::Table)
                .col(Charges::SessionId)
                .to_owned(),
        )
        .await?;
        // A refunded charge closed its window at once (rule 21): the next open may
        // charge again at the same instant, so only charges that stand are unique.
        let conn = m.get_connection();
        conn.execute_unprepared("DROP INDEX ux_charges_user_product_window")
            .await?;
        conn.execute_unprepared(
            "CREATE UNIQUE INDEX ux_charges_user_product_window \
             ON charges (user_id, product_id, window_starts_at) WHERE refunded_at IS NULL",
        )
        .await?;
        // Tokens refunded into a lot that has expired meanwhile expire at once, with
        // an EXPIRY entry of their own (naming the charge); the sweep's single EXPIRY
        // per lot stays unique.
        conn.execute_unprepared("DROP INDEX ux_ledger_one_expiry_per_lot")
            .await?;
        conn.execute_unprepared(
            "CREATE UNIQUE INDEX ux_ledger_one_expiry_per_lot ON ledger_entries (lot_id) \
             WHERE kind = 'EXPIRY' AND charge_id IS NULL",
        )
        .await?;
        // Accounts whose refunds changed a day the rollup job was rolling.
        m.create_table(
            Table::create()
                .table(RollupCorrections::Table)
                .col(integer(RollupCorrections::AccountId))
                .col(date(RollupCorrections::Day))
                .primary_key(
                    Index::create()
                        .col(RollupCorrections::AccountId)
                        .col(RollupCorrections::Day),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(RollupCorrections::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Sessions::Table).to_owned())
            .await?;
        Ok(())
    }
}
