use super::context::{Req, parse_opt_id};
use super::error::GqlResult;
use super::types::{Account, AccountConnection, PriceBand, PriceQuote, Product, Viewer};
use async_graphql::{Context, ID, Object, Result};
use daypass_domain::{accounts, catalog, page::PageRequest};

#[derive(Default)]
pub struct Query;

#[Object]
impl Query {
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        Req::of(ctx)?;
        Ok(Viewer)
    }

    /// The caller's own account; operators may name any account.
    async fn account(&self, ctx: &Context<'_>, id: Option<ID>) -> Result<Option<Account>> {
        let r = Req::of(ctx)?;
        let id = parse_opt_id(id.as_ref(), "id")?;
        Ok(accounts::get_account(r.db(), r.actor(), id)
            .await
            .gql()?
            .map(Account))
    }

    /// Operators only.
    async fn accounts(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<AccountConnection> {
        let r = Req::of(ctx)?;
        let page = accounts::list_accounts(r.db(), r.actor(), PageRequest::new(first, after))
            .await
            .gql()?;
        Ok(AccountConnection::from_page(page, Account))
    }

    async fn products(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(false)")] include_inactive: Option<bool>,
    ) -> Result<Vec<Product>> {
        let r = Req::of(ctx)?;
        let list = catalog::list_products(r.db(), r.actor(), include_inactive.unwrap_or(false))
            .await
            .gql()?;
        Ok(list.into_iter().map(Product).collect())
    }

    async fn price_list(&self, ctx: &Context<'_>) -> Result<Vec<PriceBand>> {
        let r = Req::of(ctx)?;
        let list = catalog::price_list(r.db(), r.actor()).await.gql()?;
        Ok(list.bands.iter().map(PriceBand::from).collect())
    }

    /// What openProduct would answer now, with no effect at all.
    async fn access_check(
        &self,
        ctx: &Context<'_>,
        product_code: String,
    ) -> Result<super::sessions::AccessCheck> {
        super::sessions::access_check(ctx, product_code).await
    }

    async fn price_quote(&self, ctx: &Context<'_>, quantity: i64) -> Result<PriceQuote> {
        let r = Req::of(ctx)?;
        Ok(catalog::quote(r.db(), r.actor(), quantity)
            .await
            .gql()?
            .into())
    }
}
