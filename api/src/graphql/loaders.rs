//! DataLoaders: references from a list of rows are fetched in one query per kind.

use super::context::Req;
use super::error::{GqlResult, gql};
use super::types::{Charge, Product, TokenLot, User};
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, Result};
use chrono::{DateTime, Utc};
use daypass_domain::{Db, DomainError, catalog, ledger, lots, users};
use std::collections::HashMap;

pub struct Loaders {
    pub users: DataLoader<UserKey>,
    pub products: DataLoader<ProductKey>,
    pub lots: DataLoader<LotKey>,
    pub charges: DataLoader<ChargeKey>,
}

impl Loaders {
    pub fn new(db: &Db, now: DateTime<Utc>) -> Self {
        Loaders {
            users: DataLoader::new(UserKey(db.clone()), tokio::spawn),
            products: DataLoader::new(ProductKey(db.clone()), tokio::spawn),
            lots: DataLoader::new(LotKey(db.clone(), now), tokio::spawn),
            charges: DataLoader::new(ChargeKey(db.clone()), tokio::spawn),
        }
    }
}

fn missing(what: &str, id: i32) -> async_graphql::Error {
    gql(DomainError::not_found(format!("{what} {id}")))
}

fn loaders<'a>(ctx: &'a Context<'_>) -> Result<&'a Loaders> {
    Req::of(ctx)?;
    ctx.data::<Loaders>()
        .map_err(|_| gql(DomainError::Internal("loaders missing".into())))
}

pub struct UserKey(Db);
pub struct ProductKey(Db);
pub struct LotKey(Db, DateTime<Utc>);
pub struct ChargeKey(Db);

impl Loader<i32> for UserKey {
    type Value = daypass_domain::entity::user::Model;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[i32]) -> Result<HashMap<i32, Self::Value>> {
        Ok(users::users_by_ids(&self.0, keys)
            .await
            .gql()?
            .into_iter()
            .map(|u| (u.id, u))
            .collect())
    }
}

impl Loader<i32> for ProductKey {
    type Value = daypass_domain::entity::product::Model;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[i32]) -> Result<HashMap<i32, Self::Value>> {
        Ok(catalog::products_by_ids(&self.0, keys)
            .await
            .gql()?
            .into_iter()
            .map(|p| (p.id, p))
            .collect())
    }
}

impl Loader<i32> for LotKey {
    type Value = lots::LotView;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[i32]) -> Result<HashMap<i32, Self::Value>> {
        Ok(lots::lots_by_ids(&self.0, keys, self.1)
            .await
            .gql()?
            .into_iter()
            .map(|l| (l.lot.id, l))
            .collect())
    }
}

impl Loader<i32> for ChargeKey {
    type Value = daypass_domain::entity::charge::Model;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[i32]) -> Result<HashMap<i32, Self::Value>> {
        Ok(ledger::charges_by_ids(&self.0, keys)
            .await
            .gql()?
            .into_iter()
            .map(|c| (c.id, c))
            .collect())
    }
}

impl UserKey {
    pub async fn load(ctx: &Context<'_>, id: i32) -> Result<User> {
        loaders(ctx)?
            .users
            .load_one(id)
            .await?
            .map(User)
            .ok_or_else(|| missing("user", id))
    }
}

impl ProductKey {
    pub async fn load(ctx: &Context<'_>, id: i32) -> Result<Product> {
        loaders(ctx)?
            .products
            .load_one(id)
            .await?
            .map(Product)
            .ok_or_else(|| missing("product", id))
    }
}

impl LotKey {
    pub async fn load(ctx: &Context<'_>, id: i32) -> Result<TokenLot> {
        loaders(ctx)?
            .lots
            .load_one(id)
            .await?
            .map(TokenLot)
            .ok_or_else(|| missing("lot", id))
    }
}

impl ChargeKey {
    pub async fn load(ctx: &Context<'_>, id: i32) -> Result<Charge> {
        loaders(ctx)?
            .charges
            .load_one(id)
            .await?
            .map(Charge)
            .ok_or_else(|| missing("charge", id))
    }
}
