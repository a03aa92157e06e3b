//! The charging ledger: accounts, users, catalog, price bands, lots, subscriptions,
//! charges with their windows, the ledger and the record of every open.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Accounts {
    Table,
    Id,
    Name,
    LowBalanceThreshold,
    RestrictsProducts,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
    AccountId,
    Email,
    Name,
    Role,
    FlexAssigned,
    Active,
    RestrictsProducts,
    ApiKeyHash,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Products {
    Table,
    Id,
    Code,
    Name,
    DailyRate,
    AnnualSubscriptionMinor,
    Active,
}

#[derive(DeriveIden, Clone, Copy)]
enum PriceBands {
    Table,
    Id,
    MinQuantity,
    MaxQuantity,
    UnitPriceMinor,
    Currency,
}

#[derive(DeriveIden, Clone, Copy)]
enum AllowedProducts {
    Table,
    Id,
    AccountId,
    UserId,
    ProductId,
}

#[derive(DeriveIden, Clone, Copy)]
enum Lots {
    Table,
    Id,
    AccountId,
    Quantity,
    Remaining,
    Used,
    Expired,
    UnitPriceMinor,
    Currency,
    PurchasedAt,
    ExpiresAt,
    Status,
    IdempotencyKey,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Subscriptions {
    Table,
    Id,
    AccountId,
    ProductId,
    PlanLevel,
    Seats,
    StartsAt,
    EndsAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum SubscriptionSeats {
    Table,
    SubscriptionId,
    UserId,
}

#[derive(DeriveIden, Clone, Copy)]
enum Charges {
    Table,
    Id,
    AccountId,
    UserId,
    ProductId,
    Version,
    Tokens,
    CostMinor,
    WindowStartsAt,
    WindowEndsAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Windows {
    Table,
    UserId,
    ProductId,
    ChargeId,
    StartsAt,
    EndsAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum LedgerEntries {
    Table,
    Id,
    AccountId,
    Kind,
    Tokens,
    LotId,
    ChargeId,
    At,
}

#[derive(DeriveIden, Clone, Copy)]
enum Opens {
    Table,
    Id,
    AccountId,
    UserId,
    ProductId,
    ProductCode,
    Version,
    At,
    Granted,
    Source,
    DenyReason,
    ChargeId,
    Tokens,
}

fn fk(
    from: impl IntoIden + Copy,
    col: impl IntoIden,
    to: impl IntoIden,
    to_col: impl IntoIden,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(from, col)
        .to(to, to_col)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Accounts::Table)
                .col(pk_auto(Accounts::Id))
                .col(string(Accounts::Name))
                .col(big_integer_null(Accounts::LowBalanceThreshold))
                .col(boolean(Accounts::RestrictsProducts).default(false))
                .col(timestamp_with_time_zone(Accounts::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(pk_auto(Users::Id))
                .col(integer(Users::AccountId))
                .col(string(Users::Email))
                .col(string(Users::Name))
                .col(string_len(Users::Role, 16))
                .col(boolean(Users::FlexAssigned).default(false))
                .col(boolean(Users::Active).default(true))
                .col(boolean(Users::RestrictsProducts).default(false))
                .col(string_len_uniq(Users::ApiKeyHash, 64))
                .col(timestamp_with_time_zone(Users::CreatedAt))
                .foreign_key(&mut fk(
                    Users::Table,
                    Users::AccountId,
                    Accounts::Table,
                    Accounts::Id,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_users_account_email")
                .table(Users::Table)
                .col(Users::AccountId)
                .col(Users::Email)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Products::Table)
                .col(pk_auto(Products::Id))
                .col(string_uniq(Products::Code))
                .col(string(Products::Name))
                .col(big_integer(Products::DailyRate).check(Expr::col(Products::DailyRate).gt(0)))
                .col(big_integer_null(Products::AnnualSubscriptionMinor))
                .col(boolean(Products::Active).default(true))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PriceBands::Table)
                .col(pk_auto(PriceBands::Id))
                .col(big_integer_uniq(PriceBands::MinQuantity))
                .col(big_integer(PriceBands::MaxQuantity))
                .col(big_integer(PriceBands::UnitPriceMinor))
                .col(string_len(PriceBands::Currency, 3))
                .check(Expr::col(PriceBands::MaxQuantity).gte(Expr::col(PriceBands::MinQuantity)))
                .to_owned(),
        )
        .await?;

        // One row per allowed product: user_id null is the account-wide list.
        m.create_table(
            Table::create()
                .table(AllowedProducts::Table)
                .col(pk_auto(AllowedProducts::Id))
                .col(integer(AllowedProducts::AccountId))
                .col(integer_null(AllowedProducts::UserId))
                .col(integer(AllowedProducts::ProductId))
                .foreign_key(&mut fk(
                    AllowedProducts::Table,
                    AllowedProducts::AccountId,
                    Accounts::Table,
                    Accounts::Id,
                ))
                .foreign_key(&mut fk(
                    AllowedProducts::Table,
                    AllowedProducts::UserId,
                    Users::Table,
                    Users::Id,
                ))
                .foreign_key(&mut fk(
                    AllowedProducts::Table,
                    AllowedProducts::ProductId,
                    Products::Table,
                    Products::Id,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_allowed_products_account_user")
                .table(AllowedProducts::Table)
                .col(AllowedProducts::AccountId)
                .col(AllowedProducts::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Lots::Table)
                .col(pk_auto(Lots::Id))
                .col(integer(Lots::AccountId))
                .col(big_integer(Lots::Quantity).check(Expr::col(Lots::Quantity).gt(0)))
                .col(big_integer(Lots::Remaining).check(Expr::col(Lots::Remaining).gte(0)))
                .col(big_integer(Lots::Used).check(Expr::col(Lots::Used).gte(0)))
                .col(big_integer(Lots::Expired).check(Expr::col(Lots::Expired).gte(0)))
                .col(
                    big_integer(Lots::UnitPriceMinor).check(Expr::col(Lots::UnitPriceMinor).gte(0)),
                )
                .col(string_len(Lots::Currency, 3))
                .col(timestamp_with_time_zone(Lots::PurchasedAt))
                .col(timestamp_with_time_zone(Lots::ExpiresAt))
                .col(string_len(Lots::Status, 16))
                .col(string(Lots::IdempotencyKey))
                .col(timestamp_with_time_zone(Lots::CreatedAt))
                // Rule 6: every token is accounted for, enforced by the database itself.
                .check(
                    Expr::col(Lots::Quantity).eq(Expr::col(Lots::Used)
                        .add(Expr::col(Lots::Expired))
                        .add(Expr::col(Lots::Remaining))),
                )
                .foreign_key(&mut fk(
                    Lots::Table,
                    Lots::AccountId,
                    Accounts::Table,
                    Accounts::Id,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_lots_account_idempotency_key")
                .table(Lots::Table)
                .col(Lots::AccountId)
                .col(Lots::IdempotencyKey)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_lots_account_expires")
                .table(Lots::Table)
                .col(Lots::AccountId)
                .col(Lots::ExpiresAt)
                .to_owned(),
        )
        .await?;

        // The expiry sweep looks across accounts by expiry.
        m.create_index(
            Index::create()
                .name("ix_lots_expires")
                .table(Lots::Table)
                .col(Lots::ExpiresAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Subscriptions::Table)
                .col(pk_auto(Subscriptions::Id))
                .col(integer(Subscriptions::AccountId))
                .col(integer(Subscriptions::ProductId))
                .col(string_len(Subscriptions::PlanLevel, 16))
                .col(integer(Subscriptions::Seats).check(Expr::col(Subscriptions::Seats).gt(0)))
                .col(timestamp_with_time_zone(Subscriptions::StartsAt))
                .col(timestamp_with_time_zone(Subscriptions::EndsAt))
                .foreign_key(&mut fk(
                    Subscriptions::Table,
                    Subscriptions::AccountId,
                    Accounts::Table,
                    Accounts::Id,
                ))
                .foreign_key(&mut fk(
                    Subscriptions::Table,
                    Subscriptions::ProductId,
                    Products::Table,
                    Products::Id,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_subscriptions_account")
                .table(Subscriptions::Table)
                .col(Subscriptions::AccountId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(SubscriptionSeats::Table)
                .col(integer(SubscriptionSeats::SubscriptionId))
                .col(integer(SubscriptionSeats::UserId))
                .primary_key(
                    Index::create()
                        .col(SubscriptionSeats::SubscriptionId)
                        .col(SubscriptionSeats::UserId),
                )
                .foreign_key(&mut fk(
                    SubscriptionSeats::Table,
                    SubscriptionSeats::SubscriptionId,
                    Subscriptions::Table,
                    Subscriptions::Id,
                ))
                .foreign_key(&mut fk(
                    SubscriptionSeats::Table,
                    SubscriptionSeats::UserId,
                    Users::Table,
                    Users::Id,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_subscription_seats_user")
                .table(SubscriptionSeats::Table)
                .col(SubscriptionSeats::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Charges::Table)
                .col(pk_auto(Charges::Id))
                .col(integer(Charges::AccountId))
                .col(integer(Charges::UserId))
                .col(integer(Charges::ProductId))
                .col(string_null(Charges::Version))
                .col(big_integer(Charges::Tokens).check(Expr::col(Charges::Tokens).gt(0)))
                .col(big_integer(Charges::CostMinor))
                .col(timestamp_with_time_zone(Charges::WindowStartsAt))
                .col(timestamp_with_time_zone(Charges::WindowEndsAt))
                .foreign_key(&mut fk(
                    Charges::Table,
                    Charges::AccountId,
                    Accounts::Table,
                    Accounts::Id,
                ))
                .foreign_key(&mut fk(
                    Charges::Table,
                    Charges::UserId,
                    Users::Table,
                    Users::Id,
                ))
                .foreign_key(&mut fk(
                    Charges::Table,
                    Charges::ProductId,
                    Products::Table,
                    Products::Id,
                ))
                .to_owned(),
        )
        .await?;
        // One charge per user, product and window start: a second charge for the same
        // window cannot be written even by a racing process.
        m.create_index(
            Index::create()
                .name("ux_charges_user_product_window")
                .table(Charges::Table)
                .col(Charges::UserId)
                .col(Charges::ProductId)
                .col(Charges::WindowStartsAt)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_charges_account_window")
                .table(Charges::Table)
                .col(Charges::AccountId)
                .col(Charges::WindowStartsAt)
                .to_owned(),
        )
        .await?;

        // The current window of each user and product: at most one row, moved forward
        // only by a charge, so reopening reads one row and writes nothing.
        m.create_table(
            Table::create()
                .table(Windows::Table)
                .col(integer(Windows::UserId))
                .col(integer(Windows::ProductId))
                .col(integer(Windows::ChargeId))
                .col(timestamp_with_time_zone(Windows::StartsAt))
                .col(timestamp_with_time_zone(Windows::EndsAt))
                .primary_key(Index::create().col(Windows::UserId).col(Windows::ProductId))
                .foreign_key(&mut fk(
                    Windows::Table,
                    Windows::UserId,
                    Users::Table,
                    Users::Id,
                ))
                .foreign_key(&mut fk(
                    Windows::Table,
                    Windows::ProductId,
                    Products::Table,
                    Products::Id,
                ))
                .foreign_key(&mut fk(
                    Windows::Table,
                    Windows::ChargeId,
                    Charges::Table,
                    Charges::Id,
                ))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(LedgerEntries::Table)
                .col(pk_auto(LedgerEntries::Id))
                .col(integer(LedgerEntries::AccountId))
                .col(string_len(LedgerEntries::Kind, 16))
                .col(big_integer(LedgerEntries::Tokens))
                .col(integer(LedgerEntries::LotId))
                .col(integer_null(LedgerEntries::ChargeId))
                .col(timestamp_with_time_zone(LedgerEntries::At))
                .foreign_key(&mut fk(
                    LedgerEntries::Table,
                    LedgerEntries::AccountId,
                    Accounts::Table,
                    Accounts::Id,
                ))
                .foreign_key(&mut fk(
                    LedgerEntries::Table,
                    LedgerEntries::LotId,
                    Lots::Table,
                    Lots::Id,
                ))
                .foreign_key(&mut fk(
                    LedgerEntries::Table,
                    LedgerEntries::ChargeId,
                    Charges::Table,
                    Charges::Id,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_ledger_account")
                .table(LedgerEntries::Table)
                .col(LedgerEntries::AccountId)
                .col(LedgerEntries::Id)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_ledger_charge")
                .table(LedgerEntries::Table)
                .col(LedgerEntries::ChargeId)
                .to_owned(),
        )
        .await?;
        // A lot expires once: at most one EXPIRY entry per lot, whatever sweeps race.
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX ux_ledger_one_expiry_per_lot ON ledger_entries (lot_id) WHERE kind = 'EXPIRY'",
            )
            .await?;

        m.create_table(
            Table::create()
                .table(Opens::Table)
                .col(pk_auto(Opens::Id))
                .col(integer(Opens::AccountId))
                .col(integer(Opens::UserId))
                .col(integer_null(Opens::ProductId))
                .col(string(Opens::ProductCode))
                .col(string_null(Opens::Version))
                .col(timestamp_with_time_zone(Opens::At))
                .col(boolean(Opens::Granted))
                .col(string_len_null(Opens::Source, 16))
                .col(string_len_null(Opens::DenyReason, 32))
                .col(integer_null(Opens::ChargeId))
                .col(big_integer(Opens::Tokens))
                .foreign_key(&mut fk(
                    Opens::Table,
                    Opens::AccountId,
                    Accounts::Table,
                    Accounts::Id,
                ))
                .foreign_key(&mut fk(
                    Opens::Table,
                    Opens::UserId,
                    Users::Table,
                    Users::Id,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_opens_account_at")
                .table(Opens::Table)
                .col(Opens::AccountId)
                .col(Opens::At)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Opens::Table.into_iden(),
            LedgerEntries::Table.into_iden(),
            Windows::Table.into_iden(),
            Charges::Table.into_iden(),
            SubscriptionSeats::Table.into_iden(),
            Subscriptions::Table.into_iden(),
            Lots::Table.into_iden(),
            AllowedProducts::Table.into_iden(),
            PriceBands::Table.into_iden(),
            Products::Table.into_iden(),
            Users::Table.into_iden(),
            Accounts::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
