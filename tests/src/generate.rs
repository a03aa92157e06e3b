//! One realistic year of usage for the report benchmarks: a big
//! account ("Globex") with thousands of users and millions of charges, and a few
//! small accounts around it, written the way the domain writes them.
//!
//! The catalog, the accounts, their admins, lists and subscriptions go through the
//! domain's own use-cases. The volume (lots, charges, ledger entries, opens, windows)
//! is simulated in memory with the domain's rules (`rules::allocate_from_lots`'s burn
//! order, 24-hour windows, the decisions of `charging::open_product`, the sweep's
//! EXPIRY entries) and written in bulk with explicit ids. Run it on a database no one
//! else writes to meanwhile. Deterministic for a seed.

mod plan;
mod rows;
mod sim;
mod sink;

use anyhow::{Context, Result, anyhow};
use chrono::{Duration, NaiveDate, Utc};
use daypass_domain::{
    Actor, Db, Role,
    access::UserActor,
    accounts::{self, NewAccount},
    auth,
    catalog::{self, UpsertProduct},
    entity::{allowed_product, subscription_seat, user},
    rollups,
    subscriptions::{self, NewSubscription},
    users,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use sea_orm::{ConnectionTrait, EntityTrait, Set, Statement};
use std::time::{Duration as StdDuration, Instant};

pub use sim::AccountStats;

/// What to generate.
#[derive(Debug, Clone)]
pub struct YearSpec {
    /// Charges of the big account; the small accounts add about 1.5 % to them.
    pub charges: u64,
    /// Users of the big account.
    pub users: u32,
    /// Catalog products (daily rates 1–20 tokens).
    pub products: u32,
    /// Days of usage, ending with `end`.
    pub days: u32,
    pub end: NaiveDate,
    pub seed: u64,
    /// Run the rollup job over the year once it is written.
    pub roll_up: bool,
    /// Print progress and phase timings.
    pub progress: bool,
}

impl YearSpec {
    /// The benchmark year: 10 million charges, 5,000 users, 50 products, ending yesterday.
    pub fn year() -> YearSpec {
        YearSpec {
            charges: 10_000_000,
            users: 5_000,
            products: 50,
            days: 365,
            end: Utc::now().date_naive() - Duration::days(1),
            seed: 1,
            roll_up: true,
            progress: true,
        }
    }

    pub fn first_day(&self) -> NaiveDate {
        self.end - Duration::days(i64::from(self.days) - 1)
    }
}

/// One generated account.
#[derive(Debug, Clone)]
pub struct GeneratedAccount {
    pub id: i32,
    pub name: String,
    pub users: usize,
    pub stats: AccountStats,
}

/// What was written, and how long each phase took.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The big account's id (the first of `accounts`).
    pub big_account_id: i32,
    pub accounts: Vec<GeneratedAccount>,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub charges: u64,
    pub opens: u64,
    pub denials: u64,
    pub ledger_entries: u64,
    pub lots: u64,
    /// Days the rollup job rolled, when it ran.
    pub days_rolled: Option<u32>,
    pub phases: Vec<(&'static str, StdDuration)>,
}

/// Charges per batch written together.
const BATCH_CHARGES: usize = 100_000;

fn say(spec: &YearSpec, line: impl FnOnce() -> String) {
    if spec.progress {
        println!("{}", line());
    }
}

/// Generates `spec`'s year into `db` (migrated first), then rolls it up unless
/// `spec.roll_up` is false.
pub async fn generate_year(db: &Db, spec: &YearSpec) -> Result<Generated> {
    if spec.days == 0 || spec.users < 2 || spec.products < 2 {
        return Err(anyhow!(
            "a year needs days, at least 2 users and 2 products"
        ));
    }
    let mut phases = Vec::new();
    let t0 = Instant::now();
    db.migrate().await.context("migrating")?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let plan = plan::plan(spec, &mut rng);
    let prices = catalog::price_list(db, &Actor::Operator).await?;
    let ids = write_setup(db, &plan, &mut rng).await?;
    let next = next_ids(db).await?;
    phases.push(("setup (catalog, accounts, users)", t0.elapsed()));
    say(spec, || {
        format!(
            "setup: {} products, {} accounts, {} users in {:.1?}",
            plan.products.len(),
            plan.accounts.len(),
            plan.accounts.iter().map(|a| a.users.len()).sum::<usize>(),
            t0.elapsed()
        )
    });

    let t1 = Instant::now();
    let mut sink = sink::Sink::from_db(db).await?;
    let sim = sim::Sim::new(&plan, &ids, next, prices, spec.seed, rng);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<rows::Batch>(2);
    let simulation = tokio::task::spawn_blocking(move || {
        sim.run(BATCH_CHARGES, &mut |batch| {
            tx.blocking_send(batch)
                .map_err(|_| anyhow!("the writer stopped"))
        })
    });
    let target: u64 = plan.accounts.iter().map(|a| a.target).sum();
    let (mut written, mut opens, mut ledger) = (0u64, 0u64, 0u64);
    let mut next_report = 0u64;
    while let Some(batch) = rx.recv().await {
        sink.write(&batch).await?;
        written += batch.charges.len() as u64;
        opens += batch.opens.len() as u64;
        ledger += batch.ledger.len() as u64;
        if written >= next_report || spec.progress && batch.through == Some(spec.end) {
            next_report = written + target / 20;
            let secs = t1.elapsed().as_secs_f64();
            say(spec, || {
                format!(
                    "  through {}: {written} charges, {opens} opens, {ledger} ledger entries \
                     ({:.0}%), {:.0} charges/s, {secs:.0} s",
                    batch.through.map(|d| d.to_string()).unwrap_or_default(),
                    100.0 * written as f64 / target.max(1) as f64,
                    written as f64 / secs.max(1e-3)
                )
            });
        }
    }
    let fin = simulation.await.context("the simulation panicked")??;
    phases.push(("simulate and write", t1.elapsed()));

    let t = Instant::now();
    sink.finish(&fin.windows, &fin.lots).await?;
    phases.push(("windows and lot counts", t.elapsed()));
    let t = Instant::now();
    sink.check_references().await?;
    phases.push(("foreign keys checked", t.elapsed()));
    let t = Instant::now();
    sink.settle().await?;
    sink.close().await?;
    phases.push(("sequences, vacuum and analyze / checkpoint", t.elapsed()));

    let days_rolled = if spec.roll_up {
        let t3 = Instant::now();
        let n = rollups::roll_up(db, Utc::now()).await?;
        phases.push(("roll up", t3.elapsed()));
        say(spec, || {
            format!("rolled up {n} days in {:.1?}", t3.elapsed())
        });
        Some(n)
    } else {
        None
    };

    let accounts: Vec<GeneratedAccount> = plan
        .accounts
        .iter()
        .zip(&ids.account_ids)
        .zip(fin.stats)
        .map(|((a, &id), stats)| GeneratedAccount {
            id,
            name: a.name.to_owned(),
            users: a.users.len(),
            stats,
        })
        .collect();
    let generated = Generated {
        big_account_id: ids.account_ids[0],
        charges: accounts.iter().map(|a| a.stats.charges).sum(),
        opens: accounts
            .iter()
            .map(|a| a.stats.opens + a.stats.denials)
            .sum(),
        denials: accounts.iter().map(|a| a.stats.denials).sum(),
        lots: accounts.iter().map(|a| u64::from(a.stats.lots)).sum(),
        ledger_entries: ledger,
        accounts,
        first_day: spec.first_day(),
        last_day: spec.end,
        days_rolled,
        phases,
    };
    if spec.progress {
        for a in &generated.accounts {
            println!(
                "  {} (id {}): {} users, {} charges, {} granted opens, {} denials, {} lots, \
                 {} tokens expired, shortfall {}",
                a.name,
                a.id,
                a.users,
                a.stats.charges,
                a.stats.opens,
                a.stats.denials,
                a.stats.lots,
                a.stats.expired_tokens,
                a.stats.shortfall
            );
        }
        for (phase, d) in &generated.phases {
            println!("  {phase}: {:.1} s", d.as_secs_f64());
        }
    }
    Ok(generated)
}

/// The catalog, accounts, users, lists and subscriptions. Returns their ids.
async fn write_setup(db: &Db, plan: &plan::Plan, rng: &mut StdRng) -> Result<sim::SetupIds> {
    // Created in a shuffled order, so popularity does not follow the ids.
    let mut order: Vec<usize> = (0..plan.products.len()).collect();
    order.shuffle(rng);
    let mut product_ids = vec![0; plan.products.len()];
    for i in order {
        let p = &plan.products[i];
        product_ids[i] = catalog::upsert_product(
            db,
            &Actor::Operator,
            UpsertProduct {
                code: p.code.clone(),
                name: p.name.clone(),
                daily_rate: p.daily_rate,
                annual_subscription_minor: Some(p.annual_subscription_minor),
                active: true,
            },
        )
        .await?
        .id;
    }

    let mut account_ids = Vec::new();
    let mut user_ids = Vec::new();
    for a in &plan.accounts {
        let admin = &a.users[0];
        let created = accounts::create_account(
            db,
            &Actor::Operator,
            a.created_at,
            NewAccount {
                name: a.name.to_owned(),
                admin_email: admin.email.clone(),
                admin_name: admin.name.clone(),
            },
        )
        .await?;
        let account_id = created.account.id;
        let first = max_id(db, "users").await? + 1;
        let mut ids = vec![created.admin.id];
        let mut rows = Vec::new();
        let mut lists = Vec::new();
        for (i, u) in a.users.iter().enumerate().skip(1) {
            let id = first + i as i32 - 1;
            ids.push(id);
            // Keys nobody holds: 32 random bytes, as `auth::generate_api_key` makes.
            let key: [u8; 32] = rng.random();
            rows.push(user::ActiveModel {
                id: Set(id),
                account_id: Set(account_id),
                email: Set(u.email.clone()),
                name: Set(u.name.clone()),
                role: Set(u.role.as_str().to_owned()),
                flex_assigned: Set(u.flex),
                active: Set(u.deactivated_at.is_none()),
                restricts_products: Set(u.own_list.is_some()),
                api_key_hash: Set(auth::hash_api_key(&format!("dp_{}", hex(&key)))),
                created_at: Set(u.created_at),
            });
            for &p in u.own_list.iter().flatten() {
                lists.push(allowed_product::ActiveModel {
                    account_id: Set(account_id),
                    user_id: Set(Some(id)),
                    product_id: Set(product_ids[p]),
                    ..Default::default()
                });
            }
        }
        for chunk in rows.chunks(1_000) {
            user::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(db.conn())
                .await?;
        }
        follow_sequence(db, "users").await?;
        for chunk in lists.chunks(1_000) {
            allowed_product::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(db.conn())
                .await?;
        }
        let admin_actor = Actor::User(UserActor {
            user_id: created.admin.id,
            account_id,
            role: Role::Admin,
            active: true,
        });
        if let Some(list) = &a.account_list {
            users::set_allowed_products(
                db,
                &admin_actor,
                None,
                None,
                Some(list.iter().map(|&p| product_ids[p]).collect()),
            )
            .await?;
        }
        for s in &a.subscriptions {
            let sub = subscriptions::add_subscription(
                db,
                &Actor::Operator,
                NewSubscription {
                    product_id: product_ids[s.product],
                    plan_level: s.plan,
                    seats: s.seats,
                    starts_at: s.starts_at,
                    ends_at: s.ends_at,
                    account_id: Some(account_id),
                },
            )
            .await?;
            let seats: Vec<subscription_seat::ActiveModel> = s
                .holders
                .iter()
                .map(|&h| subscription_seat::ActiveModel {
                    subscription_id: Set(sub.id),
                    user_id: Set(ids[h]),
                })
                .collect();
            if !seats.is_empty() {
                subscription_seat::Entity::insert_many(seats)
                    .exec_without_returning(db.conn())
                    .await?;
            }
        }
        account_ids.push(account_id);
        user_ids.push(ids);
    }
    Ok(sim::SetupIds {
        product_ids,
        account_ids,
        user_ids,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn max_id(db: &Db, table: &str) -> Result<i32> {
    let row = db
        .conn()
        .query_one_raw(Statement::from_string(
            db.backend(),
            format!("SELECT CAST(COALESCE(MAX(id), 0) AS INTEGER) AS m FROM {table}"),
        ))
        .await?
        .ok_or_else(|| anyhow!("no row from MAX(id) of {table}"))?;
    Ok(row.try_get("", "m")?)
}

/// On PostgreSQL, moves `table`'s id sequence past rows written with explicit ids.
pub(crate) async fn follow_sequence(db: &Db, table: &str) -> Result<()> {
    if db.is_postgres() {
        db.conn()
            .execute_unprepared(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
            ))
            .await?;
    }
    Ok(())
}

async fn next_ids(db: &Db) -> Result<sim::NextIds> {
    Ok(sim::NextIds {
        lot: max_id(db, "lots").await? + 1,
        charge: max_id(db, "charges").await? + 1,
        ledger: max_id(db, "ledger_entries").await? + 1,
        open: max_id(db, "opens").await? + 1,
    })
}
