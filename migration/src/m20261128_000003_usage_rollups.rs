//! Daily usage rollups (rule 17): derived from `opens` and `charges`, rebuilt per UTC
//! day by the rollup job, so they carry no foreign keys. `product_id` 0 stands for an
//! open of a code that named no catalog product (always a denial).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum RollupWatermark {
    Table,
    Id,
    RolledThrough,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsageDays {
    Table,
    AccountId,
    Day,
    UserId,
    ProductId,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsageDayUsers {
    Table,
    AccountId,
    Day,
    UserId,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsageDayProducts {
    Table,
    AccountId,
    Day,
    ProductId,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsageDayTotals {
    Table,
    AccountId,
    Day,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsagePeriodUsers {
    Table,
    AccountId,
    Grain,
    Period,
    ThroughDay,
    ProductId,
    DistinctUsers,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsagePeriodMembers {
    Table,
    AccountId,
    Grain,
    Period,
    ProductId,
    UserId,
    FirstDay,
}

#[derive(DeriveIden, Clone, Copy)]
enum Sums {
    Tokens,
    Opens,
    Charges,
    Denials,
    CostMinor,
    DistinctUsers,
}

#[derive(DeriveIden, Clone, Copy)]
enum Opens {
    Table,
    At,
}

/// The summed measures every rollup row carries.
fn with_sums(t: &mut TableCreateStatement, distinct_users: bool) -> &mut TableCreateStatement {
    t.col(big_integer(Sums::Tokens))
        .col(big_integer(Sums::Opens))
        .col(big_integer(Sums::Charges))
        .col(big_integer(Sums::Denials))
        .col(big_integer(Sums::CostMinor));
    if distinct_users {
        t.col(big_integer(Sums::DistinctUsers));
    }
    t
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One row: every UTC day up to `rolled_through` is in the rollups; later days
        // are read from the raw opens.
        m.create_table(
            Table::create()
                .table(RollupWatermark::Table)
                .col(integer(RollupWatermark::Id).primary_key())
                .col(date_null(RollupWatermark::RolledThrough))
                .to_owned(),
        )
        .await?;

        m.create_table(
            with_sums(
                Table::create()
                    .table(UsageDays::Table)
                    .col(integer(UsageDays::AccountId))
                    .col(date(UsageDays::Day))
                    .col(integer(UsageDays::UserId))
                    .col(integer(UsageDays::ProductId))
                    .primary_key(
                        Index::create()
                            .col(UsageDays::AccountId)
                            .col(UsageDays::Day)
                            .col(UsageDays::UserId)
                            .col(UsageDays::ProductId),
                    ),
                false,
            )
            .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_usage_days_user")
                .table(UsageDays::Table)
                .col(UsageDays::AccountId)
                .col(UsageDays::UserId)
                .col(UsageDays::Day)
                .to_owned(),
        )
        .await?;

        m.create_table(
            with_sums(
                Table::create()
                    .table(UsageDayUsers::Table)
                    .col(integer(UsageDayUsers::AccountId))
                    .col(date(UsageDayUsers::Day))
                    .col(integer(UsageDayUsers::UserId))
                    .primary_key(
                        Index::create()
                            .col(UsageDayUsers::AccountId)
                            .col(UsageDayUsers::Day)
                            .col(UsageDayUsers::UserId),
                    ),
                false,
            )
            .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_usage_day_users_user")
                .table(UsageDayUsers::Table)
                .col(UsageDayUsers::AccountId)
                .col(UsageDayUsers::UserId)
                .col(UsageDayUsers::Day)
                .to_owned(),
        )
        .await?;

        m.create_table(
            with_sums(
                Table::create()
                    .table(UsageDayProducts::Table)
                    .col(integer(UsageDayProducts::AccountId))
                    .col(date(UsageDayProducts::Day))
                    .col(integer(UsageDayProducts::ProductId))
                    .primary_key(
                        Index::create()
                            .col(UsageDayProducts::AccountId)
                            .col(UsageDayProducts::Day)
                            .col(UsageDayProducts::ProductId),
                    ),
                true,
            )
            .to_owned(),
        )
        .await?;

        m.create_table(
            with_sums(
                Table::create()
                    .table(UsageDayTotals::Table)
                    .col(integer(UsageDayTotals::AccountId))
                    .col(date(UsageDayTotals::Day))
                    .primary_key(
                        Index::create()
                            .col(UsageDayTotals::AccountId)
                            .col(UsageDayTotals::Day),
                    ),
                true,
            )
            .to_owned(),
        )
        .await?;

        // Distinct users of ISO weeks and calendar months from their first day through
        // `through_day`, which no sum of daily counts can give. `product_id` 0 here
        // means every product together.
        m.create_table(
            Table::create()
                .table(UsagePeriodUsers::Table)
                .col(integer(UsagePeriodUsers::AccountId))
                .col(string_len(UsagePeriodUsers::Grain, 8))
                .col(date(UsagePeriodUsers::Period))
                .col(date(UsagePeriodUsers::ThroughDay))
                .col(integer(UsagePeriodUsers::ProductId))
                .col(big_integer(UsagePeriodUsers::DistinctUsers))
                .primary_key(
                    Index::create()
                        .col(UsagePeriodUsers::AccountId)
                        .col(UsagePeriodUsers::Grain)
                        .col(UsagePeriodUsers::Period)
                        .col(UsagePeriodUsers::ThroughDay)
                        .col(UsagePeriodUsers::ProductId),
                )
                .to_owned(),
        )
        .await?;

        // Who used what so far in the weeks and months not yet over, so a report can
        // add the raw tail's users to the stored counts without counting anyone twice.
        // Rows of a period go when its last day is rolled.
        m.create_table(
            Table::create()
                .table(UsagePeriodMembers::Table)
                .col(integer(UsagePeriodMembers::AccountId))
                .col(string_len(UsagePeriodMembers::Grain, 8))
                .col(date(UsagePeriodMembers::Period))
                .col(integer(UsagePeriodMembers::ProductId))
                .col(integer(UsagePeriodMembers::UserId))
                .col(date(UsagePeriodMembers::FirstDay))
                .primary_key(
                    Index::create()
                        .col(UsagePeriodMembers::AccountId)
                        .col(UsagePeriodMembers::Grain)
                        .col(UsagePeriodMembers::Period)
                        .col(UsagePeriodMembers::UserId)
                        .col(UsagePeriodMembers::ProductId),
                )
                .to_owned(),
        )
        .await?;

        // The rollup reads one UTC day of opens across all accounts.
        m.create_index(
            Index::create()
                .name("ix_opens_at")
                .table(Opens::Table)
                .col(Opens::At)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ix_opens_at")
                .table(Opens::Table)
                .to_owned(),
        )
        .await?;
        for t in [
            UsagePeriodMembers::Table.into_iden(),
            UsagePeriodUsers::Table.into_iden(),
            UsageDayTotals::Table.into_iden(),
            UsageDayProducts::Table.into_iden(),
            UsageDayUsers::Table.into_iden(),
            UsageDays::Table.into_iden(),
            RollupWatermark::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
