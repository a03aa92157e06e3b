//! Each account's per-user usage of a day in one packed value (rule 17), so a report
//! by user reads one value per day instead of one row per user and day: returning
//! rows, not finding them, is what costs when a report has a hundred thousand.
//!
//! The rollups are derived data: the watermark is rewound and the rollup job rebuilds
//! every day, blocks included, on its next runs; reports stay exact meanwhile.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum UsageDayUserBlocks {
    Table,
    AccountId,
    Day,
    Users,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // `users`: the day's rows of `usage_day_users` for the account, in user order,
        // encoded by `daypass_domain::rollups::user_blocks::UserDay` (postcard).
        m.create_table(
            Table::create()
                .table(UsageDayUserBlocks::Table)
                .col(integer(UsageDayUserBlocks::AccountId))
                .col(date(UsageDayUserBlocks::Day))
                .col(blob(UsageDayUserBlocks::Users))
                .primary_key(
                    Index::create()
                        .col(UsageDayUserBlocks::AccountId)
                        .col(UsageDayUserBlocks::Day),
                )
                .to_owned(),
        )
        .await?;
        m.get_connection()
            .execute_unprepared("UPDATE rollup_watermark SET rolled_through = NULL")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(UsageDayUserBlocks::Table).to_owned())
            .await?;
        Ok(())
    }
}
