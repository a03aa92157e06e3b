use super::context::{Req, parse_id, parse_opt_id};
use super::error::GqlResult;
use super::sessions::OpenProductResult;
use super::types::{
    Account, CreateAccountPayload, CreateUserPayload, PlanLevel, PriceBand, Product,
    ProductSubscription, Role, TokenLot, User,
};
use async_graphql::{Context, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};
use daypass_domain::{accounts, catalog, charging, lots, rules, subscriptions, users};

#[derive(InputObject)]
pub struct CreateAccountInput {
    pub name: String,
    pub admin_email: String,
    pub admin_name: String,
}

#[derive(InputObject)]
pub struct CreateUserInput {
    pub email: String,
    pub name: String,
    pub role: Role,
    /// Operators only: the account to add the user to (admins add to their own).
    pub account_id: Option<ID>,
}

#[derive(InputObject)]
pub struct PurchaseTokensInput {
    pub quantity: i64,
    pub idempotency_key: String,
    /// Operators only: the account to sell to.
    pub account_id: Option<ID>,
    /// Operators only; required above the top band.
    pub unit_price_minor: Option<i64>,
    /// Operators only: record a purchase made earlier (not in the future).
    pub purchased_at: Option<DateTime<Utc>>,
}

#[derive(InputObject)]
pub struct UpsertProductInput {
    pub code: String,
    pub name: String,
    pub daily_rate: i64,
    pub annual_subscription_minor: Option<i64>,
    #[graphql(default_with = "Some(true)")]
    pub active: Option<bool>,
}

#[derive(InputObject)]
pub struct AddSubscriptionInput {
    pub product_id: ID,
    pub plan_level: PlanLevel,
    pub seats: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub account_id: Option<ID>,
}

#[derive(InputObject)]
pub struct OpenProductInput {
    pub product_code: String,
    pub version: Option<String>,
    /// The launcher's machine; defaults to "default".
    pub device_id: Option<String>,
    /// Ask for an offline lease (rule 23).
    #[graphql(default_with = "Some(false)")]
    pub offline: Option<bool>,
}

#[derive(InputObject)]
pub struct PriceBandInput {
    pub min_quantity: i64,
    pub max_quantity: i64,
    pub unit_price_minor: i64,
}

/// The contract's mutations. Served as the root `Mutation` through
/// [`super::PlainMutation`] or [`super::MutationWithClock`]; its own GraphQL name
/// never appears in the schema.
#[derive(Default)]
pub struct Mutation;

#[Object(name = "ContractMutation")]
impl Mutation {
    /// Operators only.
    async fn create_account(
        &self,
        ctx: &Context<'_>,
        input: CreateAccountInput,
    ) -> Result<CreateAccountPayload> {
        let r = Req::of(ctx)?;
        let input = accounts::NewAccount {
            name: input.name,
            admin_email: input.admin_email,
            admin_name: input.admin_name,
        };
        let created = accounts::create_account(r.db(), r.actor(), r.now, input)
            .await
            .gql()?;
        Ok(CreateAccountPayload {
            account: Account(created.account),
            admin: User(created.admin),
            admin_api_key: created.admin_api_key,
        })
    }

    /// Operators only: creates the product with this code, or updates it.
    async fn upsert_product(
        &self,
        ctx: &Context<'_>,
        input: UpsertProductInput,
    ) -> Result<Product> {
        let r = Req::of(ctx)?;
        let input = catalog::UpsertProduct {
            code: input.code,
            name: input.name,
            daily_rate: input.daily_rate,
            annual_subscription_minor: input.annual_subscription_minor,
            active: input.active.unwrap_or(true),
        };
        Ok(Product(
            catalog::upsert_product(r.db(), r.actor(), input)
                .await
                .gql()?,
        ))
    }

    /// Operators only: replaces the price list. Bands run contiguously from 1 to 50,000,
    /// and one ends at the self-service limit of 10,000.
    async fn set_price_list(
        &self,
        ctx: &Context<'_>,
        bands: Vec<PriceBandInput>,
        #[graphql(default = "USD")] currency: String,
    ) -> Result<Vec<PriceBand>> {
        let r = Req::of(ctx)?;
        let bands = bands
            .into_iter()
            .map(|b| rules::Band {
                min_quantity: b.min_quantity,
                max_quantity: b.max_quantity,
                unit_price_minor: b.unit_price_minor,
            })
            .collect();
        let list = catalog::set_price_list(r.db(), r.actor(), bands, &currency)
            .await
            .gql()?;
        Ok(list.bands.iter().map(PriceBand::from).collect())
    }

    async fn create_user(
        &self,
        ctx: &Context<'_>,
        input: CreateUserInput,
    ) -> Result<CreateUserPayload> {
        let r = Req::of(ctx)?;
        let account_id = parse_opt_id(input.account_id.as_ref(), "accountId")?;
        let new = users::NewUser {
            email: input.email,
            name: input.name,
            role: input.role.into(),
        };
        let created = users::create_user(r.db(), r.actor(), r.now, account_id, new)
            .await
            .gql()?;
        Ok(CreateUserPayload {
            user: User(created.user),
            api_key: created.api_key,
        })
    }

    async fn deactivate_user(&self, ctx: &Context<'_>, user_id: ID) -> Result<User> {
        let r = Req::of(ctx)?;
        let id = parse_id(&user_id, "userId")?;
        Ok(User(
            users::deactivate_user(r.db(), r.actor(), id).await.gql()?,
        ))
    }

    async fn assign_flex(
        &self,
        ctx: &Context<'_>,
        user_ids: Vec<ID>,
        assigned: bool,
    ) -> Result<Vec<User>> {
        let r = Req::of(ctx)?;
        let ids = user_ids
            .iter()
            .map(|id| parse_id(id, "userIds"))
            .collect::<Result<Vec<_>>>()?;
        Ok(users::assign_flex(r.db(), r.actor(), &ids, assigned)
            .await
            .gql()?
            .into_iter()
            .map(User)
            .collect())
    }

    /// userId null: the account-wide list. productIds null: no restriction.
    async fn set_allowed_products(
        &self,
        ctx: &Context<'_>,
        user_id: Option<ID>,
        product_ids: Option<Vec<ID>>,
        #[graphql(
            desc = "Operators only, with userId null: the account whose list to set (admins set their own)."
        )]
        account_id: Option<ID>,
    ) -> Result<bool> {
        let r = Req::of(ctx)?;
        let user_id = parse_opt_id(user_id.as_ref(), "userId")?;
        let account_id = parse_opt_id(account_id.as_ref(), "accountId")?;
        let product_ids = product_ids
            .map(|ids| {
                ids.iter()
                    .map(|id| parse_id(id, "productIds"))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        users::set_allowed_products(r.db(), r.actor(), user_id, account_id, product_ids)
            .await
            .gql()?;
        Ok(true)
    }

    async fn purchase_tokens(
        &self,
        ctx: &Context<'_>,
        input: PurchaseTokensInput,
    ) -> Result<TokenLot> {
        let r = Req::of(ctx)?;
        let input = lots::PurchaseInput {
            quantity: input.quantity,
            idempotency_key: input.idempotency_key,
            account_id: parse_opt_id(input.account_id.as_ref(), "accountId")?,
            unit_price_minor: input.unit_price_minor,
            purchased_at: input.purchased_at,
        };
        Ok(TokenLot(
            lots::purchase(r.db(), r.actor(), r.now, input)
                .await
                .gql()?,
        ))
    }

    async fn add_subscription(
        &self,
        ctx: &Context<'_>,
        input: AddSubscriptionInput,
    ) -> Result<ProductSubscription> {
        let r = Req::of(ctx)?;
        let input = subscriptions::NewSubscription {
            product_id: parse_id(&input.product_id, "productId")?,
            plan_level: input.plan_level.into(),
            seats: input.seats,
            starts_at: input.starts_at,
            ends_at: input.ends_at,
            account_id: parse_opt_id(input.account_id.as_ref(), "accountId")?,
        };
        Ok(ProductSubscription(
            subscriptions::add_subscription(r.db(), r.actor(), input)
                .await
                .gql()?,
        ))
    }

    async fn assign_subscription(
        &self,
        ctx: &Context<'_>,
        subscription_id: ID,
        user_id: ID,
        assigned: bool,
    ) -> Result<ProductSubscription> {
        let r = Req::of(ctx)?;
        let sub = parse_id(&subscription_id, "subscriptionId")?;
        let user = parse_id(&user_id, "userId")?;
        Ok(ProductSubscription(
            subscriptions::assign_subscription(r.db(), r.actor(), sub, user, assigned)
                .await
                .gql()?,
        ))
    }

    async fn set_low_balance_threshold(
        &self,
        ctx: &Context<'_>,
        tokens: i64,
        #[graphql(desc = "Operators only: the account to set it for (admins set their own).")]
        account_id: Option<ID>,
    ) -> Result<Account> {
        let r = Req::of(ctx)?;
        let account_id = parse_opt_id(account_id.as_ref(), "accountId")?;
        Ok(Account(
            accounts::set_low_balance_threshold(r.db(), r.actor(), account_id, tokens)
                .await
                .gql()?,
        ))
    }

    /// The caller opens a product: granted or denied, never an error for a denial.
    async fn open_product(
        &self,
        ctx: &Context<'_>,
        input: OpenProductInput,
    ) -> Result<OpenProductResult> {
        let r = Req::of(ctx)?;
        let req = charging::OpenRequest {
            product_code: input.product_code,
            version: input.version,
            device_id: input.device_id,
            offline: input.offline.unwrap_or(false),
        };
        let outcome = charging::open_product(r.db(), r.actor(), r.now, req)
            .await
            .gql()?;
        crate::telemetry::record_open(&outcome);
        OpenProductResult::of(outcome, r.now)
    }
}

/// Only in a server started with DAYPASS_TEST_CLOCK=1.
#[derive(Default)]
pub struct TestClockMutation;

#[Object]
impl TestClockMutation {
    /// Operator only: moves the service's clock forward.
    async fn advance_clock(
        &self,
        ctx: &Context<'_>,
        hours: i32,
        #[graphql(default_with = "Some(0)")] minutes: Option<i32>,
    ) -> Result<DateTime<Utc>> {
        let minutes = minutes.unwrap_or(0);
        let r = Req::of(ctx)?;
        r.actor().require_operator().gql()?;
        if !(0..=24 * 365 * 10).contains(&hours) {
            return Err(super::error::bad_input(
                "hours must be between 0 and 87,600",
            ));
        }
        if !(0..=60 * 24 * 366).contains(&minutes) {
            return Err(super::error::bad_input(
                "minutes must be between 0 and 527,040",
            ));
        }
        let clock = r
            .state
            .test_clock
            .as_ref()
            .ok_or_else(|| super::error::bad_input("the test clock is off"))?;
        Ok(clock.advance(
            chrono::Duration::hours(i64::from(hours))
                + chrono::Duration::minutes(i64::from(minutes)),
        ))
    }

    /// Operator only: runs every background job that is due now (the expiry sweep,
    /// lapsed sessions, rollups, the outbox) and returns when each is done.
    async fn run_maintenance(&self, ctx: &Context<'_>) -> Result<bool> {
        let r = Req::of(ctx)?;
        r.actor().require_operator().gql()?;
        r.state.maintenance.run_now().await.gql()?;
        Ok(true)
    }
}
