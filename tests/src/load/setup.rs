//! The benchmark's data, written before the server starts: the catalog, one account
//! with thousands of flex users, many small accounts sharing as many users, and a
//! lot per account big enough that nobody runs out (or crosses the low-balance
//! threshold, which would add a notification to a charge).
//!
//! Accounts, products and purchases go through the domain's use-cases. Users are
//! written in bulk with explicit ids (as `generate-year` does), with API keys made
//! by `auth::generate_api_key` that the load generator holds, so one account's users
//! have contiguous ids (the pgbench script picks them by arithmetic).

use crate::generate::{follow_sequence, max_id};
use anyhow::{Context, Result, bail, ensure};
use chrono::Utc;
use daypass_domain::{
    Actor, Db, Role,
    accounts::{self, NewAccount},
    auth,
    catalog::{self, UpsertProduct},
    entity::user,
    lots::{self, PurchaseInput},
    rules,
};
use futures::{StreamExt, TryStreamExt, stream};
use sea_orm::{EntityTrait, Set};
use std::time::Instant;

/// What to create.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Flex users of the one account; as many again spread over `accounts`.
    pub users: usize,
    pub products: usize,
    /// Accounts of the spread phase.
    pub accounts: usize,
    /// Charging opens per phase (each a distinct user–product pair).
    pub requests: usize,
}

pub struct Product {
    pub id: i32,
    pub code: String,
    pub daily_rate: i64,
}

pub struct BenchUser {
    pub id: i32,
    pub account_id: i32,
    pub key: String,
}

/// The lot an account spends from (its only one).
#[derive(Debug, Clone, Copy)]
pub struct AccountLot {
    pub account_id: i32,
    pub lot_id: i32,
    pub unit_price_minor: i64,
}

/// Accounts with `per_account` users each; users ordered by account, ids contiguous.
pub struct Group {
    pub account_ids: Vec<i32>,
    pub per_account: usize,
    pub users: Vec<BenchUser>,
    pub lots: Vec<AccountLot>,
    /// The charging phase's (user index, product index) pairs, all distinct; the
    /// reopen phase sends them again.
    pub pairs: Vec<(usize, usize)>,
}

impl Group {
    pub fn lot_of(&self, account_id: i32) -> Option<AccountLot> {
        self.lots
            .iter()
            .copied()
            .find(|l| l.account_id == account_id)
    }
}

pub struct Fixture {
    pub products: Vec<Product>,
    /// One account, all the users.
    pub one: Group,
    /// `accounts` accounts sharing as many users.
    pub spread: Group,
}

/// The `n` distinct pairs of a phase over `accounts` accounts of `per_account` users
/// and `products` products. Consecutive requests go to different accounts (when
/// there are several) and, over the run, to every product.
pub fn pairs(
    accounts: usize,
    per_account: usize,
    products: usize,
    n: usize,
) -> Vec<(usize, usize)> {
    let users = accounts * per_account;
    (0..n)
        .map(|i| {
            let j = i % users;
            let round = i / users;
            let user = (j % accounts) * per_account + j / accounts;
            (user, (round + j) % products)
        })
        .collect()
}

impl Spec {
    /// Users per account in the spread phase.
    pub fn per_account(&self) -> usize {
        self.users / self.accounts
    }

    pub fn check(&self) -> Result<()> {
        ensure!(self.products >= 1, "--products must be at least 1");
        ensure!(self.accounts >= 1, "--accounts must be at least 1");
        ensure!(self.requests >= 1, "--requests must be at least 1");
        ensure!(
            self.users >= self.accounts,
            "--users ({}) must be at least --accounts ({}): the spread phase gives each account at least one user",
            self.users,
            self.accounts
        );
        let spread_pairs = self.per_account() * self.accounts * self.products;
        let one_pairs = self.users * self.products;
        ensure!(
            self.requests <= spread_pairs.min(one_pairs),
            "--requests ({}) exceeds the distinct user–product pairs ({}): add users or products",
            self.requests,
            spread_pairs.min(one_pairs)
        );
        Ok(())
    }
}

/// Migrates the empty database at `url` and writes the fixture.
pub async fn prepare(url: &str, spec: &Spec) -> Result<Fixture> {
    spec.check()?;
    let started = Instant::now();
    let db = Db::connect(url)
        .await
        .with_context(|| format!("connect to {url}"))?;
    db.migrate().await.context("migrate")?;
    let now = Utc::now();

    let mut products = Vec::with_capacity(spec.products);
    for k in 0..spec.products {
        let code = format!("lb{k}");
        let daily_rate = 1 + (k as i64) % 10;
        let p = catalog::upsert_product(
            &db,
            &Actor::Operator,
            UpsertProduct {
                code: code.clone(),
                name: format!("Load bench product {k}"),
                daily_rate,
                annual_subscription_minor: Some(daily_rate * 200 * 100),
                active: true,
            },
        )
        .await
        .context("create product")?;
        products.push(Product {
            id: p.id,
            code,
            daily_rate,
        });
    }
    contiguous(
        "product",
        &products.iter().map(|p| p.id).collect::<Vec<_>>(),
    )?;

    let one_account = create_accounts(&db, "one", 1).await?;
    let spread_accounts = create_accounts(&db, "spread", spec.accounts).await?;

    let first_user = max_id(&db, "users").await? + 1;
    let mut rows = Vec::new();
    let one_users = bench_users(&one_account, spec.users, first_user, now, &mut rows);
    let spread_users = bench_users(
        &spread_accounts,
        spec.per_account(),
        first_user + spec.users as i32,
        now,
        &mut rows,
    );
    for chunk in rows.chunks(1_000) {
        user::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(db.conn())
            .await
            .context("insert users")?;
    }
    follow_sequence(&db, "users").await?;

    let mut one = Group {
        pairs: pairs(1, spec.users, spec.products, spec.requests),
        account_ids: one_account,
        per_account: spec.users,
        users: one_users,
        lots: Vec::new(),
    };
    let mut spread = Group {
        pairs: pairs(
            spec.accounts,
            spec.per_account(),
            spec.products,
            spec.requests,
        ),
        account_ids: spread_accounts,
        per_account: spec.per_account(),
        users: spread_users,
        lots: Vec::new(),
    };
    for group in [&mut one, &mut spread] {
        group.lots = buy_lots(&db, group, &products, now).await?;
    }
    db.conn().clone().close().await.ok();
    println!(
        "  setup: {} products, {} + {} accounts, {} + {} flex users in {:.1} s",
        products.len(),
        one.account_ids.len(),
        spread.account_ids.len(),
        one.users.len(),
        spread.users.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Fixture {
        products,
        one,
        spread,
    })
}

/// `n` accounts through the operator's use-case, several at a time; their ids in
/// ascending order, which must be contiguous.
async fn create_accounts(db: &Db, label: &str, n: usize) -> Result<Vec<i32>> {
    let now = Utc::now();
    let mut ids: Vec<i32> = stream::iter(0..n)
        .map(|i| async move {
            accounts::create_account(
                db,
                &Actor::Operator,
                now,
                NewAccount {
                    name: format!("Load {label} {i}"),
                    admin_email: format!("admin@{label}-{i}.load.test"),
                    admin_name: "Admin".into(),
                },
            )
            .await
            .map(|c| c.account.id)
        })
        .buffer_unordered(8)
        .try_collect()
        .await
        .context("create account")?;
    ids.sort_unstable();
    contiguous("account", &ids)?;
    Ok(ids)
}

fn contiguous(what: &str, ids: &[i32]) -> Result<()> {
    if ids.windows(2).any(|w| w[1] != w[0] + 1) {
        bail!("the benchmark's {what} ids are not contiguous (is the database fresh?)");
    }
    Ok(())
}

/// `per_account` MEMBER users, flex-assigned, for each account, with keys.
fn bench_users(
    account_ids: &[i32],
    per_account: usize,
    first_id: i32,
    now: chrono::DateTime<Utc>,
    rows: &mut Vec<user::ActiveModel>,
) -> Vec<BenchUser> {
    let mut users = Vec::with_capacity(account_ids.len() * per_account);
    for &account_id in account_ids {
        for _ in 0..per_account {
            let id = first_id + users.len() as i32;
            let key = auth::generate_api_key();
            rows.push(user::ActiveModel {
                id: Set(id),
                account_id: Set(account_id),
                email: Set(format!("u{id}@load.test")),
                name: Set(format!("Load user {id}")),
                role: Set(Role::Member.as_str().to_owned()),
                flex_assigned: Set(true),
                active: Set(true),
                restricts_products: Set(false),
                api_key_hash: Set(auth::hash_api_key(&key)),
                created_at: Set(now),
            });
            users.push(BenchUser {
                id,
                account_id,
                key,
            });
        }
    }
    users
}

/// One lot per account: three times what the charging phase takes from it, so the
/// balance stays above the default threshold (20 % of the lot).
async fn buy_lots(
    db: &Db,
    group: &Group,
    products: &[Product],
    now: chrono::DateTime<Utc>,
) -> Result<Vec<AccountLot>> {
    let mut need = vec![0i64; group.account_ids.len()];
    for &(u, p) in &group.pairs {
        need[u / group.per_account] += products[p].daily_rate;
    }
    stream::iter(group.account_ids.iter().zip(need))
        .map(|(&account_id, need)| async move {
            let quantity = 3 * need + 100;
            if quantity > rules::MAX_PURCHASE_QUANTITY {
                bail!("account {account_id} would need {quantity} tokens: fewer --requests");
            }
            let lot = lots::purchase(
                db,
                &Actor::Operator,
                now,
                PurchaseInput {
                    quantity,
                    idempotency_key: "load-bench".into(),
                    account_id: Some(account_id),
                    // Above the price list an operator names the price.
                    unit_price_minor: (quantity > rules::LIST_PRICE_TOP).then_some(100),
                    purchased_at: None,
                },
            )
            .await
            .context("purchase")?;
            Ok(AccountLot {
                account_id,
                lot_id: lot.lot.id,
                unit_price_minor: lot.lot.unit_price_minor,
            })
        })
        .buffer_unordered(8)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::pairs;
    use std::collections::HashSet;

    #[test]
    fn pairs_are_distinct_and_spread_over_accounts() {
        let p = pairs(4, 3, 5, 60);
        assert_eq!(p.iter().collect::<HashSet<_>>().len(), 60);
        // The first four requests go to four different accounts.
        let accounts: HashSet<usize> = p[..4].iter().map(|&(u, _)| u / 3).collect();
        assert_eq!(accounts.len(), 4);
        assert!(p.iter().all(|&(u, pr)| u < 12 && pr < 5));
    }
}
