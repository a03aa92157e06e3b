//! Distinct users of a week or month from any of its days to its end (rule 17), so a
//! report whose range starts mid-period reads a stored count instead of recounting
//! that period's users. Members of open periods now keep the last day they were seen.
//!
//! The rollups are derived data: they are emptied here and the rollup job rebuilds
//! them from the raw opens, with the new counts, on its next runs. Reports stay exact
//! meanwhile (they read the raw opens for every day not rolled up).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum UsagePeriodUsersSince {
    Table,
    AccountId,
    Grain,
    Period,
    FromDay,
    ProductId,
    DistinctUsers,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsagePeriodUsers {
    Table,
    Grain,
    Period,
    ThroughDay,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsagePeriodMembers {
    Table,
    LastDay,
}

/// Every rollup table of `m20261128_000003_usage_rollups`.
const ROLLUP_TABLES: [&str; 6] = [
    "usage_days",
    "usage_day_users",
    "usage_day_products",
    "usage_day_totals",
    "usage_period_users",
    "usage_period_members",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Users of `period` with a granted open between `from_day` and the period's
        // last rolled day; `product_id` 0 means every product together. No row: 0.
        m.create_table(
            Table::create()
                .table(UsagePeriodUsersSince::Table)
                .col(integer(UsagePeriodUsersSince::AccountId))
                .col(string_len(UsagePeriodUsersSince::Grain, 8))
                .col(date(UsagePeriodUsersSince::Period))
                .col(date(UsagePeriodUsersSince::FromDay))
                .col(integer(UsagePeriodUsersSince::ProductId))
                .col(big_integer(UsagePeriodUsersSince::DistinctUsers))
                .primary_key(
                    Index::create()
                        .col(UsagePeriodUsersSince::AccountId)
                        .col(UsagePeriodUsersSince::Grain)
                        .col(UsagePeriodUsersSince::Period)
                        .col(UsagePeriodUsersSince::FromDay)
                        .col(UsagePeriodUsersSince::ProductId),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(UsagePeriodMembers::Table)
                .add_column(date_null(UsagePeriodMembers::LastDay))
                .to_owned(),
        )
        .await?;
        // The rollup asks, for all accounts at once, whether a period was rolled past
        // a day before (a re-roll).
        m.create_index(
            Index::create()
                .name("ix_usage_period_users_rolled")
                .table(UsagePeriodUsers::Table)
                .col(UsagePeriodUsers::Grain)
                .col(UsagePeriodUsers::Period)
                .col(UsagePeriodUsers::ThroughDay)
                .to_owned(),
        )
        .await?;
        for table in ROLLUP_TABLES {
            m.exec_stmt(Query::delete().from_table(Alias::new(table)).to_owned())
                .await?;
        }
        m.get_connection()
            .execute_unprepared("UPDATE rollup_watermark SET rolled_through = NULL")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ix_usage_period_users_rolled")
                .table(UsagePeriodUsers::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(UsagePeriodMembers::Table)
                .drop_column(UsagePeriodMembers::LastDay)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(UsagePeriodUsersSince::Table).to_owned())
            .await?;
        Ok(())
    }
}
