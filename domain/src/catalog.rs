//! The product catalog and the price list (rule 4). Operators manage both.

use crate::access::Actor;
use crate::error::{DomainError, Result};
use crate::rules::{self, Band};
use crate::store::Db;
use daypass_entity::{price_band, product};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};

pub const DEFAULT_CURRENCY: &str = "USD";

#[derive(Debug, Clone)]
pub struct UpsertProduct {
    pub code: String,
    pub name: String,
    pub daily_rate: i64,
    pub annual_subscription_minor: Option<i64>,
    pub active: bool,
}

fn validate_product(input: &UpsertProduct) -> Result<(String, String)> {
    let code = input.code.trim().to_owned();
    let name = input.name.trim().to_owned();
    if code.is_empty()
        || code.len() > 64
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(DomainError::bad_input(
            "a product code is 1–64 letters, digits, '-', '_' or '.'",
        ));
    }
    if name.is_empty() || name.len() > 200 {
        return Err(DomainError::bad_input("a product name is 1–200 characters"));
    }
    if input.daily_rate < 1 || input.daily_rate > 1_000_000 {
        return Err(DomainError::bad_input(
            "dailyRate must be between 1 and 1,000,000 tokens",
        ));
    }
    if input.annual_subscription_minor.is_some_and(|m| m < 0) {
        return Err(DomainError::bad_input(
            "annualSubscriptionMinor cannot be negative",
        ));
    }
    Ok((code, name))
}

/// Creates the product with this code, or updates it.
pub async fn upsert_product(
    db: &Db,
    actor: &Actor,
    input: UpsertProduct,
) -> Result<product::Model> {
    actor.require_operator()?;
    let (code, name) = validate_product(&input)?;
    let tx = db.begin_write().await?;
    let existing = product::Entity::find()
        .filter(product::Column::Code.eq(&code))
        .one(&*tx)
        .await?;
    let saved = match existing {
        Some(p) => {
            let mut am: product::ActiveModel = p.into();
            am.name = Set(name);
            am.daily_rate = Set(input.daily_rate);
            am.annual_subscription_minor = Set(input.annual_subscription_minor);
            am.active = Set(input.active);
            am.update(&*tx).await?
        }
        None => {
            product::ActiveModel {
                code: Set(code),
                name: Set(name),
                daily_rate: Set(input.daily_rate),
                annual_subscription_minor: Set(input.annual_subscription_minor),
                active: Set(input.active),
                ..Default::default()
            }
            .insert(&*tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok(saved)
}

pub async fn list_products(
    db: &Db,
    actor: &Actor,
    include_inactive: bool,
) -> Result<Vec<product::Model>> {
    actor.require_active()?;
    let mut q = product::Entity::find().order_by_asc(product::Column::Code);
    if !include_inactive {
        q = q.filter(product::Column::Active.eq(true));
    }
    Ok(q.all(db.conn()).await?)
}

pub async fn products_by_ids(db: &Db, ids: &[i32]) -> Result<Vec<product::Model>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    Ok(product::Entity::find()
        .filter(product::Column::Id.is_in(ids.iter().copied()))
        .order_by_asc(product::Column::Code)
        .all(db.conn())
        .await?)
}

pub async fn product_by_id(db: &Db, id: i32) -> Result<product::Model> {
    product::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| DomainError::not_found(format!("product {id}")))
}

/// The price list as stored, in band order.
#[derive(Debug, Clone)]
pub struct PriceList {
    pub bands: Vec<Band>,
    pub currency: String,
}

pub(crate) async fn load_price_list(conn: &impl ConnectionTrait) -> Result<PriceList> {
    let rows = price_band::Entity::find()
        .order_by_asc(price_band::Column::MinQuantity)
        .all(conn)
        .await?;
    let currency = rows
        .first()
        .map(|b| b.currency.clone())
        .unwrap_or_else(|| DEFAULT_CURRENCY.to_owned());
    let bands = rows
        .into_iter()
        .map(|b| Band {
            min_quantity: b.min_quantity,
            max_quantity: b.max_quantity,
            unit_price_minor: b.unit_price_minor,
        })
        .collect();
    Ok(PriceList { bands, currency })
}

pub async fn price_list(db: &Db, actor: &Actor) -> Result<PriceList> {
    actor.require_active()?;
    load_price_list(db.conn()).await
}

/// What `quantity` tokens cost at list price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub total_minor: i64,
    pub currency: String,
    pub self_service: bool,
}

pub(crate) fn quote_from(list: &PriceList, quantity: i64) -> Result<Quote> {
    if quantity < 1 {
        return Err(DomainError::bad_input("quantity must be at least 1"));
    }
    let top = list.bands.last().map_or(0, |b| b.max_quantity);
    let band = rules::band_for(&list.bands, quantity).ok_or_else(|| {
        DomainError::bad_input(format!(
            "no list price above {top} tokens: an operator sells such quantities at a unit price they give"
        ))
    })?;
    Ok(Quote {
        quantity,
        unit_price_minor: band.unit_price_minor,
        total_minor: quantity * band.unit_price_minor,
        currency: list.currency.clone(),
        self_service: quantity <= rules::SELF_SERVICE_LIMIT,
    })
}

pub async fn quote(db: &Db, actor: &Actor, quantity: i64) -> Result<Quote> {
    actor.require_active()?;
    quote_from(&load_price_list(db.conn()).await?, quantity)
}

/// Replaces the price list (operators; prices are data, rule 4).
pub async fn set_price_list(
    db: &Db,
    actor: &Actor,
    bands: Vec<Band>,
    currency: &str,
) -> Result<PriceList> {
    actor.require_operator()?;
    rules::validate_bands(&bands).map_err(DomainError::BadInput)?;
    let currency = currency.trim().to_ascii_uppercase();
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(DomainError::bad_input(
            "currency must be a three-letter ISO 4217 code",
        ));
    }
    let tx = db.begin_write().await?;
    price_band::Entity::delete_many().exec(&*tx).await?;
    write_bands(&*tx, &bands, &currency).await?;
    tx.commit().await?;
    Ok(PriceList { bands, currency })
}

async fn write_bands(conn: &impl ConnectionTrait, bands: &[Band], currency: &str) -> Result<()> {
    for b in bands {
        price_band::ActiveModel {
            min_quantity: Set(b.min_quantity),
            max_quantity: Set(b.max_quantity),
            unit_price_minor: Set(b.unit_price_minor),
            currency: Set(currency.to_owned()),
            ..Default::default()
        }
        .insert(conn)
        .await?;
    }
    Ok(())
}

/// Writes the demo price list into an empty database (inside the migrations' write
/// transaction, so processes starting together seed it once).
pub(crate) async fn seed_price_list(conn: &impl ConnectionTrait) -> Result<()> {
    if price_band::Entity::find().count(conn).await? == 0 {
        write_bands(conn, &rules::demo_bands(), DEFAULT_CURRENCY).await?;
    }
    Ok(())
}
