//! Alert rules (rule 25), webhook endpoints with their events, deliveries and
//! attempts (rule 26), and scheduled report subscriptions (rule 27).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum AlertRules {
    Table,
    Id,
    AccountId,
    Threshold,
    Unit,
    IncludeAdmins,
    ExtraRecipients,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookEndpoints {
    Table,
    Id,
    AccountId,
    Url,
    Events,
    Secret,
    PreviousSecret,
    PreviousSecretUntil,
    Enabled,
    DisabledReason,
    FailingSince,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookEvents {
    Table,
    Id,
    AccountId,
    EventType,
    Body,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookDeliveries {
    Table,
    Id,
    EventId,
    EndpointId,
    AccountId,
    State,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    DeliveredAt,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookAttempts {
    Table,
    Id,
    DeliveryId,
    At,
    Status,
    Error,
}

#[derive(DeriveIden, Clone, Copy)]
enum ReportSubscriptions {
    Table,
    Id,
    AccountId,
    Schedule,
    Recipients,
    CreatedBy,
    CreatedAt,
    NextRunAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Accounts {
    Table,
    Id,
    AlertRules,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
}

fn to_account<T: IntoIden + Copy + 'static>(table: T, column: T) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, column)
        .to(Accounts::Table, Accounts::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // How many alert rules the account has, kept beside the row a charging batch
        // locks and reads anyway: a batch reads rules only for accounts that have some.
        m.alter_table(
            Table::alter()
                .table(Accounts::Table)
                .add_column(integer(Accounts::AlertRules).default(0))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AlertRules::Table)
                .col(pk_auto(AlertRules::Id))
                .col(integer(AlertRules::AccountId))
                .col(big_integer(AlertRules::Threshold))
                .col(string_len(AlertRules::Unit, 16))
                .col(boolean(AlertRules::IncludeAdmins))
                // JSON array of e-mail addresses.
                .col(text(AlertRules::ExtraRecipients))
                .col(timestamp_with_time_zone(AlertRules::CreatedAt))
                .foreign_key(&mut to_account(AlertRules::Table, AlertRules::AccountId))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_alert_rules_account")
                .table(AlertRules::Table)
                .col(AlertRules::AccountId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookEndpoints::Table)
                .col(pk_auto(WebhookEndpoints::Id))
                .col(integer(WebhookEndpoints::AccountId))
                .col(text(WebhookEndpoints::Url))
                // JSON array of event type names.
                .col(text(WebhookEndpoints::Events))
                // `whsec_` + base64: signing needs the secret itself, so it is kept.
                .col(text(WebhookEndpoints::Secret))
                .col(text_null(WebhookEndpoints::PreviousSecret))
                .col(timestamp_with_time_zone_null(
                    WebhookEndpoints::PreviousSecretUntil,
                ))
                .col(boolean(WebhookEndpoints::Enabled))
                .col(text_null(WebhookEndpoints::DisabledReason))
                // The first failed attempt since the last delivery.
                .col(timestamp_with_time_zone_null(
                    WebhookEndpoints::FailingSince,
                ))
                .col(timestamp_with_time_zone(WebhookEndpoints::CreatedAt))
                .foreign_key(&mut to_account(
                    WebhookEndpoints::Table,
                    WebhookEndpoints::AccountId,
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_webhook_endpoints_account")
                .table(WebhookEndpoints::Table)
                .col(WebhookEndpoints::AccountId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookEvents::Table)
                // The `webhook-id`: the same for every attempt and replay.
                .col(string_len(WebhookEvents::Id, 64).primary_key())
                .col(integer(WebhookEvents::AccountId))
                .col(string_len(WebhookEvents::EventType, 32))
                // The exact body POSTed.
                .col(text(WebhookEvents::Body))
                .col(timestamp_with_time_zone(WebhookEvents::CreatedAt))
                .foreign_key(&mut to_account(
                    WebhookEvents::Table,
                    WebhookEvents::AccountId,
                ))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookDeliveries::Table)
                .col(pk_auto(WebhookDeliveries::Id))
                .col(string_len(WebhookDeliveries::EventId, 64))
                .col(integer(WebhookDeliveries::EndpointId))
                .col(integer(WebhookDeliveries::AccountId))
                .col(string_len(WebhookDeliveries::State, 16))
                .col(integer(WebhookDeliveries::Attempts).default(0))
                .col(timestamp_with_time_zone(WebhookDeliveries::NextAttemptAt))
                .col(timestamp_with_time_zone_null(WebhookDeliveries::LeaseUntil))
                .col(timestamp_with_time_zone_null(
                    WebhookDeliveries::DeliveredAt,
                ))
                .col(timestamp_with_time_zone(WebhookDeliveries::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(WebhookDeliveries::Table, WebhookDeliveries::EventId)
                        .to(WebhookEvents::Table, WebhookEvents::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(WebhookDeliveries::Table, WebhookDeliveries::EndpointId)
                        .to(WebhookEndpoints::Table, WebhookEndpoints::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_webhook_deliveries_due")
                .table(WebhookDeliveries::Table)
                .col(WebhookDeliveries::State)
                .col(WebhookDeliveries::NextAttemptAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_webhook_deliveries_account")
                .table(WebhookDeliveries::Table)
                .col(WebhookDeliveries::AccountId)
                .col(WebhookDeliveries::Id)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_webhook_deliveries_endpoint")
                .table(WebhookDeliveries::Table)
                .col(WebhookDeliveries::EndpointId)
                .col(WebhookDeliveries::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookAttempts::Table)
                .col(pk_auto(WebhookAttempts::Id))
                .col(integer(WebhookAttempts::DeliveryId))
                .col(timestamp_with_time_zone(WebhookAttempts::At))
                .col(integer_null(WebhookAttempts::Status))
                .col(text_null(WebhookAttempts::Error))
                .foreign_key(
                    ForeignKey::create()
                        .from(WebhookAttempts::Table, WebhookAttempts::DeliveryId)
                        .to(WebhookDeliveries::Table, WebhookDeliveries::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_webhook_attempts_delivery")
                .table(WebhookAttempts::Table)
                .col(WebhookAttempts::DeliveryId)
                .col(WebhookAttempts::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ReportSubscriptions::Table)
                .col(pk_auto(ReportSubscriptions::Id))
                .col(integer(ReportSubscriptions::AccountId))
                .col(string_len(ReportSubscriptions::Schedule, 16))
                // JSON array of e-mail addresses.
                .col(text(ReportSubscriptions::Recipients))
                .col(integer(ReportSubscriptions::CreatedBy))
                .col(timestamp_with_time_zone(ReportSubscriptions::CreatedAt))
                // When the next period's e-mail is due.
                .col(timestamp_with_time_zone(ReportSubscriptions::NextRunAt))
                .foreign_key(&mut to_account(
                    ReportSubscriptions::Table,
                    ReportSubscriptions::AccountId,
                ))
                .foreign_key(
                    ForeignKey::create()
                        .from(ReportSubscriptions::Table, ReportSubscriptions::CreatedBy)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_report_subscriptions_due")
                .table(ReportSubscriptions::Table)
                .col(ReportSubscriptions::NextRunAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_report_subscriptions_account")
                .table(ReportSubscriptions::Table)
                .col(ReportSubscriptions::AccountId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ReportSubscriptions::Table.into_iden(),
            WebhookAttempts::Table.into_iden(),
            WebhookDeliveries::Table.into_iden(),
            WebhookEvents::Table.into_iden(),
            WebhookEndpoints::Table.into_iden(),
            AlertRules::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        m.alter_table(
            Table::alter()
                .table(Accounts::Table)
                .drop_column(Accounts::AlertRules)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
