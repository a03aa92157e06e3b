//! Opening a product (rules 7–12): subscriptions first, then pay-as-you-go with its
//! assignment, restrictions, 24-hour windows and charges.

use crate::access::Actor;
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::kinds::{AccessSource, DenyReason, LedgerKind, LotStatus, PlanLevel, Role};
use crate::notifications;
use crate::rules::{self, SpendableLot};
use crate::store::balance_feed::announce_balance_changes;
use crate::store::group_commit::{BatchFuture, GroupCommit};
use crate::store::{Db, WriteTx};
use chrono::{DateTime, Utc};
use daypass_entity::{account, charge, ledger_entry, lot, open, product, user, window};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult, IdenStatic,
    Iterable, QueryFilter, Set, Statement,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct OpenRequest {
    pub product_code: String,
    pub version: Option<String>,
}

/// The answer to an open: granted or denied, never an error (rule 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOutcome {
    pub granted: bool,
    pub source: Option<AccessSource>,
    pub tokens_charged: i64,
    pub window_ends_at: Option<DateTime<Utc>>,
    pub deny_reason: Option<DenyReason>,
    pub balance: i64,
    pub plan_level: PlanLevel,
    /// The charge this open made, if it made one.
    pub charge_id: Option<i32>,
    /// Notifications this open created, handed to the deliveries after commit.
    pub(crate) notifications: Vec<i32>,
}

/// What the rules decided before any tokens move.
enum Decision {
    Deny(DenyReason),
    Subscription,
    InsideWindow(DateTime<Utc>),
    Charge,
}

/// Opens `product_code` for the calling user at `now`.
pub async fn open_product(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    req: OpenRequest,
) -> Result<OpenOutcome> {
    let me = match actor {
        Actor::Operator => {
            return Err(DomainError::forbidden(
                "openProduct opens a product for a user; operators are not users",
            ));
        }
        Actor::User(u) => u.clone(),
    };
    if me.role == Role::Analyst {
        return Err(DomainError::forbidden(
            "analysts read usage and change nothing",
        ));
    }
    let code = req.product_code.trim().to_owned();
    if code.is_empty() || code.len() > 64 {
        return Err(DomainError::bad_input(
            "productCode must be 1–64 characters",
        ));
    }
    let version = req
        .version
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    if version.as_ref().is_some_and(|v| v.len() > 100) {
        return Err(DomainError::bad_input(
            "version must be at most 100 characters",
        ));
    }
    let asked = Asked {
        user_id: me.user_id,
        code: code.clone(),
        now,
    };
    let (user, product, situation) = batches(db)
        .situations
        .submit(db, 0, asked)
        .await?
        .ok_or(DomainError::Unauthenticated)?;
    let decision = decide(&user, product.as_ref(), &situation, now);
    let record = OpenRecord {
        account_id: user.account_id,
        user_id: user.id,
        product_id: product.as_ref().map(|p| p.id),
        code,
        version,
        now,
    };
    let outcome = match (decision, product) {
        (Decision::Charge, Some(product)) => {
            let request = ChargeRequest { record, product };
            let answer = batches(db)
                .charges
                .submit(db, charge_queue(db, user.account_id), request)
                .await?;
            db.deliveries().committed(&answer.notifications).await;
            return Ok(answer);
        }
        (Decision::Charge, None) => {
            return Err(DomainError::Internal("a charge needs a product".into()));
        }
        (Decision::Deny(reason), _) => Outcome::Denied(reason),
        (Decision::Subscription, _) => Outcome::Subscription,
        (Decision::InsideWindow(ends_at), _) => Outcome::Reopen(ends_at),
    };
    // No lock and no transaction of its own: the record joins the next batch insert.
    batches(db).records.submit(db, 0, (record, outcome)).await?;
    Ok(OpenOutcome::of(
        outcome,
        situation.balance,
        situation.plan_level,
    ))
}

/// What an open is decided on besides the user and the product (read with them in
/// one round trip: the reads of rules 7–10 and the answer's balance and plan level).
struct Situation {
    account_restricts_products: bool,
    /// Rule 8: the product is on the account-wide list, and on the user's own list
    /// (read in the same statement as the flags, so a list being replaced is seen
    /// whole or not at all).
    account_list_has_product: bool,
    user_list_has_product: bool,
    /// The end of the user's last window for the product, covering `now` or not.
    window_ends_at: Option<DateTime<Utc>>,
    /// Rule 9: the user holds a seat of a subscription to the product active at `now`.
    has_seat: bool,
    /// Rule 6 at `now`: tokens left in live lots.
    balance: i64,
    /// Rule 13 at `now`.
    plan_level: PlanLevel,
}

/// One open's question for [`situations`].
struct Asked {
    user_id: i32,
    code: String,
    now: DateTime<Utc>,
}

/// What an open is decided on, with its user and active product; `None`: no such user.
type Found = Option<(user::Model, Option<product::Model>, Situation)>;

fn run_situations(db: Db, _key: i32, asked: Vec<Asked>) -> BatchFuture<Found> {
    Box::pin(async move {
        Ok(situations(db.conn(), &asked)
            .await?
            .into_iter()
            .map(Ok)
            .collect())
    })
}

/// The text of [`situations`]' query for `n` opens in `backend`'s placeholders, built
/// once per backend and batch size (every charging batch reads it twice: before and
/// under the lock).
fn situations_sql(backend: DatabaseBackend, n: usize) -> Arc<str> {
    type Built = HashMap<(bool, usize), Arc<str>>;
    static BUILT: std::sync::OnceLock<std::sync::Mutex<Built>> = std::sync::OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    built
        .entry((backend == DatabaseBackend::Postgres, n))
        .or_insert_with(|| {
            crate::store::numbered(backend, &build_situations_sql(backend, n)).into()
        })
        .clone()
}

/// The query with `?` placeholders.
fn build_situations_sql(backend: DatabaseBackend, n: usize) -> String {
    use conditions::{active_subscription, column, live_lot, text};
    use sea_orm::sea_query::Alias;
    let at = || column("asked", "at");
    let seat_active = text(backend, active_subscription(Alias::new("sub"), at()));
    let plan_active = text(backend, active_subscription(Alias::new("held"), at()));
    let lot_live = text(backend, live_lot(Alias::new("l"), at()));
    // The user's and the active product's columns, prefixed to tell them apart.
    let columns = |table: &str, prefix: &str, names: Vec<&'static str>| -> String {
        names
            .into_iter()
            .map(|c| format!("{table}.{c} AS {prefix}{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Which plans the account holds, one bit each; rule 13 picks from them.
    let flags: String = PlanLevel::ALL
        .iter()
        .enumerate()
        .map(|(i, plan)| format!(" WHEN '{}' THEN {}", plan.as_str(), 1_i64 << i))
        .collect();
    format!(
        "WITH asked(i, user_id, code, at) AS (VALUES {}) \
         SELECT asked.i AS asked, {}, {}, \
         (SELECT restricts_products FROM accounts WHERE id = u.account_id) \
          AS account_restricts, \
         EXISTS (SELECT 1 FROM allowed_products a WHERE a.account_id = u.account_id \
          AND a.user_id IS NULL AND a.product_id = p.id) AS account_lists, \
         EXISTS (SELECT 1 FROM allowed_products a WHERE a.account_id = u.account_id \
          AND a.user_id = u.id AND a.product_id = p.id) AS user_lists, \
         (SELECT ends_at FROM windows w WHERE w.user_id = u.id AND w.product_id = p.id) \
          AS window_ends_at, \
         (SELECT COUNT(*) FROM subscription_seats s \
          JOIN subscriptions sub ON sub.id = s.subscription_id \
          WHERE s.user_id = u.id AND sub.product_id = p.id AND {seat_active}) AS seats, \
         (SELECT CAST(COALESCE(SUM(l.remaining), 0) AS BIGINT) FROM lots l \
          WHERE l.account_id = u.account_id AND {lot_live}) AS balance, \
         (SELECT CAST(COALESCE(SUM(DISTINCT CASE held.plan_level{flags} ELSE 0 END), 0) \
          AS BIGINT) FROM subscriptions held \
          WHERE held.account_id = u.account_id AND {plan_active}) AS plans \
         FROM asked JOIN users u ON u.id = asked.user_id \
         LEFT JOIN products p ON p.code = asked.code AND p.active = ?",
        vec!["(?, ?, ?, ?)"; n].join(", "),
        columns(
            "u",
            "u_",
            user::Column::iter().map(|c| c.as_str()).collect()
        ),
        columns(
            "p",
            "p_",
            product::Column::iter().map(|c| c.as_str()).collect()
        ),
    )
}

/// What each of several opens is decided on (the reads of rules 7–10 and the
/// answer's balance and plan level), with its user and product, in one round trip:
/// concurrent opens ask together.
async fn situations(conn: &impl ConnectionTrait, asked: &[Asked]) -> Result<Vec<Found>> {
    let backend = conn.get_database_backend();
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(asked.len() * 4 + 1);
    for (i, a) in asked.iter().enumerate() {
        values.extend([
            (i as i32).into(),
            a.user_id.into(),
            a.code.as_str().into(),
            a.now.into(),
        ]);
    }
    values.push(true.into());
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            situations_sql(backend, asked.len()).as_ref(),
            values,
        ))
        .await?;
    let mut found: Vec<Found> = (0..asked.len()).map(|_| None).collect();
    for row in rows {
        let i: i32 = row.try_get("", "asked")?;
        let user = user::Model::from_query_result(&row, "u_")?;
        let product = match row.try_get::<Option<i32>>("", "p_id")? {
            Some(_) => Some(product::Model::from_query_result(&row, "p_")?),
            None => None,
        };
        let plans: i64 = row.try_get("", "plans")?;
        let held = PlanLevel::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| plans & (1 << i) != 0)
            .map(|(_, plan)| *plan);
        let situation = Situation {
            account_restricts_products: row
                .try_get::<Option<bool>>("", "account_restricts")?
                .unwrap_or(false),
            account_list_has_product: row.try_get("", "account_lists")?,
            user_list_has_product: row.try_get("", "user_lists")?,
            window_ends_at: row.try_get("", "window_ends_at")?,
            has_seat: row.try_get::<i64>("", "seats")? > 0,
            balance: row.try_get("", "balance")?,
            plan_level: rules::plan_level_of(held),
        };
        let slot = usize::try_from(i)
            .ok()
            .and_then(|i| found.get_mut(i))
            .ok_or_else(|| DomainError::Internal("a situation nobody asked for".into()))?;
        *slot = Some((user, product, situation));
    }
    Ok(found)
}

/// Which queue a charging open of `account_id` joins. SQLite has one writer, so all
/// accounts share one queue (one commit for everyone waiting). On PostgreSQL the
/// accounts are spread over a few queues: a batch costs about the same dozen
/// statements whatever its size, so opens of many accounts batched together cost far
/// fewer round trips than one transaction per account, while batches of different
/// queues still commit in parallel.
fn charge_queue(db: &Db, account_id: i32) -> i32 {
    if db.is_postgres() {
        account_id.rem_euclid(POSTGRES_CHARGE_QUEUES)
    } else {
        0
    }
}

/// How many charging queues a process has on PostgreSQL.
const POSTGRES_CHARGE_QUEUES: i32 = 2;

/// The opens and charges that wait for the next batch, per kind.
pub struct Batches {
    /// Charging opens (see [`charge_queue`]): one transaction per batch, each account
    /// in it under its own lock.
    charges: Arc<GroupCommit<ChargeRequest, OpenOutcome>>,
    /// What opens are decided on, read for all that ask at once.
    situations: Arc<GroupCommit<Asked, Found>>,
    /// Records of opens that move no tokens (reopens, subscriptions, denials).
    records: Arc<GroupCommit<(OpenRecord, Outcome), ()>>,
}

/// The most opens one transaction takes.
const MAX_BATCH: usize = 128;

/// The batches of `db`'s process.
fn batches(db: &Db) -> Arc<Batches> {
    db.shared::<Batches>()
}

impl Default for Batches {
    fn default() -> Batches {
        Batches {
            charges: GroupCommit::new(run_charges, MAX_BATCH),
            situations: GroupCommit::new(run_situations, MAX_BATCH),
            records: GroupCommit::new(run_records, MAX_BATCH),
        }
    }
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batches")
    }
}

fn run_records(db: Db, _key: i32, items: Vec<(OpenRecord, Outcome)>) -> BatchFuture<()> {
    Box::pin(async move {
        let n = items.len();
        // One statement commits alone: no BEGIN and COMMIT round trips.
        let _turn = db.write_turn().await;
        open::Entity::insert_many(items.iter().map(|(r, o)| r.model(*o)))
            .exec_without_returning(db.records_conn())
            .await?;
        Ok((0..n).map(|_| Ok(())).collect())
    })
}

fn run_charges(db: Db, _key: i32, items: Vec<ChargeRequest>) -> BatchFuture<OpenOutcome> {
    Box::pin(async move { charge_batch(&db, items).await })
}

/// Rules 7–10 on what one read saw, in the order an open is decided: the product and
/// the user, a subscription seat first (rule 9), then pay-as-you-go assignment (rule
/// 7), the product lists (rule 8) and the window (rule 10).
fn decide(
    user: &user::Model,
    product: Option<&product::Model>,
    situation: &Situation,
    now: DateTime<Utc>,
) -> Decision {
    if product.is_none() {
        return Decision::Deny(DenyReason::UnknownProduct);
    }
    if !user.active {
        return Decision::Deny(DenyReason::UserDeactivated);
    }
    if situation.has_seat {
        return Decision::Subscription;
    }
    if !user.flex_assigned {
        return Decision::Deny(DenyReason::NotAssigned);
    }
    // Rule 8: a user's own list overrides the account's; no list allows everything.
    let allowed = if user.restricts_products {
        situation.user_list_has_product
    } else if situation.account_restricts_products {
        situation.account_list_has_product
    } else {
        true
    };
    if !allowed {
        return Decision::Deny(DenyReason::ProductRestricted);
    }
    if let Some(ends_at) = situation
        .window_ends_at
        .filter(|&ends_at| rules::window_covers(ends_at, now))
    {
        return Decision::InsideWindow(ends_at);
    }
    Decision::Charge
}

/// A charging open waiting for its account's next batch.
struct ChargeRequest {
    record: OpenRecord,
    product: product::Model,
}

/// What one open of a batch comes to, decided in memory under the account's lock.
enum Planned {
    /// Rules 7–9 decided otherwise under the lock than before it.
    Refused(DenyReason),
    Subscription,
    Reopen(DateTime<Utc>),
    /// Rule 11: the live lots cannot cover the daily rate.
    ShortOfTokens {
        balance: i64,
    },
    Charge {
        tokens: i64,
        draws: Vec<rules::Draw>,
        window_ends_at: DateTime<Utc>,
        balance_before: i64,
        threshold: i64,
    },
}

/// Rules 3, 6, 10–12 for the charging opens that arrived together, of one account or
/// many: one transaction, each account under its lock. If it fails and spans several
/// accounts, each account's opens are tried again on their own, so one account's
/// failure fails only its own opens.
async fn charge_batch(db: &Db, items: Vec<ChargeRequest>) -> Result<Vec<Result<OpenOutcome>>> {
    let all: Vec<&ChargeRequest> = items.iter().collect();
    let first_error = match charge_together(db, &all).await {
        Ok(answers) => return Ok(answers.into_iter().map(Ok).collect()),
        Err(e) => e,
    };
    let mut by_account: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        by_account
            .entry(item.record.account_id)
            .or_default()
            .push(i);
    }
    if by_account.len() < 2 {
        return Err(first_error);
    }
    let mut answers: Vec<Option<Result<OpenOutcome>>> = (0..items.len()).map(|_| None).collect();
    for indices in by_account.into_values() {
        let group: Vec<&ChargeRequest> = indices.iter().map(|&i| &items[i]).collect();
        match charge_together(db, &group).await {
            Ok(outcomes) => {
                for (i, outcome) in indices.into_iter().zip(outcomes) {
                    answers[i] = Some(Ok(outcome));
                }
            }
            Err(e) => {
                for i in indices {
                    answers[i] = Some(Err(e.duplicate()));
                }
            }
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(DomainError::Internal(
                    "an open of the batch was not decided".into(),
                ))
            })
        })
        .collect())
}

/// One account's lots as a batch draws on them.
struct AccountLots {
    /// Every lot not expired at the batch's first instant: the spendable ones, and
    /// the quantities the default low-balance threshold is a share of.
    lots: Vec<lot::Model>,
    spendable: Vec<SpendableLot>,
}

impl AccountLots {
    fn new(lots: Vec<lot::Model>) -> AccountLots {
        let spendable = lots
            .iter()
            .map(|l| SpendableLot {
                id: l.id,
                remaining: l.remaining,
                quantity: l.quantity,
                expires_at: l.expires_at,
                unit_price_minor: l.unit_price_minor,
            })
            .collect();
        AccountLots { lots, spendable }
    }

    fn balance_at(&self, now: DateTime<Utc>) -> i64 {
        self.spendable
            .iter()
            .filter(|l| rules::lot_is_live(l.remaining, l.expires_at, now))
            .map(|l| l.remaining)
            .sum()
    }

    fn threshold_at(&self, account: &account::Model, now: DateTime<Utc>) -> i64 {
        rules::low_balance_threshold(
            account.low_balance_threshold,
            self.lots
                .iter()
                .filter(|l| rules::lot_is_unexpired(l.expires_at, now))
                .map(|l| l.quantity)
                .sum(),
        )
    }

    /// The daily rate drawn in burn order, or `None` if the live lots hold too little.
    fn draw(&mut self, tokens: i64, now: DateTime<Utc>) -> Result<Option<Vec<rules::Draw>>> {
        let Some(draws) = rules::allocate_from_lots(&self.spendable, tokens, now) else {
            return Ok(None);
        };
        for draw in &draws {
            let lot = self
                .spendable
                .iter_mut()
                .find(|l| l.id == draw.lot_id)
                .ok_or_else(|| DomainError::Internal("a draw from an unknown lot".into()))?;
            lot.remaining -= draw.tokens;
        }
        Ok(Some(draws))
    }

    /// The lots this batch drew from: (id, remaining before, remaining after).
    fn drawn(&self) -> impl Iterator<Item = (i32, i64, i64)> + '_ {
        self.lots.iter().filter_map(|before| {
            let after = self.spendable.iter().find(|l| l.id == before.id)?;
            (after.remaining != before.remaining).then_some((
                before.id,
                before.remaining,
                after.remaining,
            ))
        })
    }
}

/// The opens of one transaction: every account locked in id order and read with its
/// lots, plans and the users' windows in one query each; each open decided in arrival
/// order exactly as if alone — its window re-checked (a concurrent open, in this batch
/// or another process, may have charged), the daily rate drawn from its account's
/// lots in burn order or the open denied for lack of tokens — and the whole batch then
/// written with one multi-row statement per table. Each open keeps its own charge,
/// record and answer.
async fn charge_together(db: &Db, items: &[&ChargeRequest]) -> Result<Vec<OpenOutcome>> {
    let Some(earliest) = items.iter().map(|i| i.record.now).min() else {
        return Ok(Vec::new());
    };
    let mut account_ids: Vec<i32> = items.iter().map(|i| i.record.account_id).collect();
    account_ids.sort_unstable();
    account_ids.dedup();
    let tx = db.begin_write().await?;
    let accounts: HashMap<i32, account::Model> = db
        .lock_accounts(&tx, &account_ids)
        .await?
        .into_iter()
        .map(|a| (a.id, a))
        .collect();
    let mut lots: HashMap<i32, AccountLots> = HashMap::new();
    let mut rows: HashMap<i32, Vec<lot::Model>> = HashMap::new();
    for lot in lot::Entity::find()
        .filter(lot::Column::AccountId.is_in(account_ids.iter().copied()))
        .filter(conditions::unexpired_lot(lot::Entity, earliest))
        .all(&*tx)
        .await?
    {
        rows.entry(lot.account_id).or_default().push(lot);
    }
    for &account_id in &account_ids {
        let of_account = rows.remove(&account_id).unwrap_or_default();
        lots.insert(account_id, AccountLots::new(of_account));
    }
    // Rules 7–10 again under the accounts' locks, which every change to who may open
    // what also takes: between the first read and now an admin may have taken the
    // user off pay-as-you-go, restricted the product or given a seat, a concurrent
    // open may have charged. The answer is what holds at the charge, so the open is
    // linearizable with those changes.
    let asked: Vec<Asked> = items
        .iter()
        .map(|i| Asked {
            user_id: i.record.user_id,
            code: i.record.code.clone(),
            now: i.record.now,
        })
        .collect();
    // The users' windows as the database has them, then as this batch moves them.
    let mut windows: HashMap<(i32, i32), DateTime<Utc>> = HashMap::new();
    let mut decided = Vec::with_capacity(items.len());
    for (item, found) in items.iter().zip(situations(&*tx, &asked).await?) {
        let (user, product, situation) =
            found.ok_or_else(|| DomainError::Internal("the user of an open vanished".into()))?;
        let decision = decide(&user, product.as_ref(), &situation, item.record.now);
        if let (Some(product), Some(ends_at)) = (&product, situation.window_ends_at) {
            windows.entry((user.id, product.id)).or_insert(ends_at);
        }
        // The daily rate as the catalog has it now.
        let rate = product.map_or(item.product.daily_rate, |p| p.daily_rate);
        decided.push((decision, rate, situation.plan_level));
    }

    let mut planned = Vec::with_capacity(items.len());
    for (item, (decision, rate, _)) in items.iter().zip(&decided) {
        let ChargeRequest { record, product } = *item;
        let now = record.now;
        let key = (record.user_id, product.id);
        let account = accounts
            .get(&record.account_id)
            .ok_or_else(|| DomainError::Internal("an open of a missing account".into()))?;
        let lots = lots
            .get_mut(&record.account_id)
            .ok_or_else(|| DomainError::Internal("an account without its lots".into()))?;
        let balance_before = lots.balance_at(now);
        let covering = windows
            .get(&key)
            .copied()
            .filter(|&ends_at| rules::window_covers(ends_at, now));
        let plan = match (decision, covering) {
            (Decision::Deny(reason), _) => Planned::Refused(*reason),
            (Decision::Subscription, _) => Planned::Subscription,
            (Decision::InsideWindow(ends_at), _) => Planned::Reopen(*ends_at),
            (Decision::Charge, Some(ends_at)) => Planned::Reopen(ends_at),
            (Decision::Charge, None) => match lots.draw(*rate, now)? {
                None => Planned::ShortOfTokens {
                    balance: balance_before,
                },
                Some(draws) => {
                    let window_ends_at = now + rules::WINDOW;
                    windows.insert(key, window_ends_at);
                    Planned::Charge {
                        tokens: *rate,
                        draws,
                        window_ends_at,
                        balance_before,
                        threshold: lots.threshold_at(account, now),
                    }
                }
            },
        };
        planned.push((plan, lots.balance_at(now)));
    }

    // The charges, one row each; the batch has at most one per user and product.
    let charges =
        charge::Entity::insert_many(items.iter().zip(&planned).filter_map(|(item, (plan, _))| {
            match plan {
                Planned::Charge {
                    tokens,
                    draws,
                    window_ends_at,
                    ..
                } => Some(charge::ActiveModel {
                    account_id: Set(item.record.account_id),
                    user_id: Set(item.record.user_id),
                    product_id: Set(item.product.id),
                    version: Set(item.record.version.clone()),
                    tokens: Set(*tokens),
                    cost_minor: Set(draws.iter().map(|d| d.cost_minor).sum()),
                    window_starts_at: Set(item.record.now),
                    window_ends_at: Set(*window_ends_at),
                    ..Default::default()
                }),
                _ => None,
            }
        }))
        .exec_with_returning(&*tx)
        .await?;
    let charge_ids: HashMap<(i32, i32), i32> = charges
        .iter()
        .map(|c| ((c.user_id, c.product_id), c.id))
        .collect();
    let charge_of = |item: &ChargeRequest| -> Result<i32> {
        charge_ids
            .get(&(item.record.user_id, item.product.id))
            .copied()
            .ok_or_else(|| DomainError::Internal("a planned charge was not written".into()))
    };
    let drawn: Vec<(i32, i64, i64)> = account_ids
        .iter()
        .filter_map(|id| lots.get(id))
        .flat_map(AccountLots::drawn)
        .collect();
    draw_from_lots(&tx, &drawn).await?;
    let mut entries = Vec::new();
    let mut moved = Vec::new();
    for (item, (plan, _)) in items.iter().zip(&planned) {
        if let Planned::Charge {
            draws,
            window_ends_at,
            ..
        } = plan
        {
            let charge_id = charge_of(item)?;
            entries.extend(draws.iter().map(|draw| ledger_entry::ActiveModel {
                account_id: Set(item.record.account_id),
                kind: Set(LedgerKind::Charge.as_str().to_owned()),
                tokens: Set(-draw.tokens),
                lot_id: Set(draw.lot_id),
                charge_id: Set(Some(charge_id)),
                at: Set(item.record.now),
                ..Default::default()
            }));
            moved.push((*item, charge_id, *window_ends_at));
        }
    }
    ledger_entry::Entity::insert_many(entries)
        .exec_without_returning(&*tx)
        .await?;
    move_windows(&tx, &moved).await?;

    let mut answers = Vec::with_capacity(items.len());
    let mut records = Vec::with_capacity(items.len());
    let mut exhausted_told: Vec<i32> = Vec::new();
    for ((item, (plan, balance_after)), (_, _, plan_level)) in
        items.iter().zip(planned).zip(decided)
    {
        let now = item.record.now;
        let account = &accounts[&item.record.account_id];
        let mut notes = Vec::new();
        let outcome = match plan {
            Planned::Refused(reason) => Outcome::Denied(reason),
            Planned::Subscription => Outcome::Subscription,
            Planned::Reopen(ends_at) => Outcome::Reopen(ends_at),
            Planned::ShortOfTokens { balance } => {
                // At most one a day per account: the account's first denial asks.
                if !exhausted_told.contains(&account.id) {
                    exhausted_told.push(account.id);
                    notes.extend(notifications::on_exhausted(&*tx, account, balance, now).await?);
                }
                Outcome::Denied(DenyReason::InsufficientTokens)
            }
            Planned::Charge {
                tokens,
                window_ends_at,
                balance_before,
                threshold,
                ..
            } => {
                let charge_id = charge_of(item)?;
                notes.extend(
                    notifications::on_charge(
                        &*tx,
                        account,
                        balance_before,
                        balance_before - tokens,
                        threshold,
                        charge_id,
                        now,
                    )
                    .await?,
                );
                Outcome::Charged {
                    charge_id,
                    tokens,
                    window_ends_at,
                }
            }
        };
        records.push(item.record.model(outcome));
        let mut answer = OpenOutcome::of(outcome, balance_after, plan_level);
        answer.notifications = notes;
        answers.push(answer);
    }
    open::Entity::insert_many(records)
        .exec_without_returning(&*tx)
        .await?;
    let mut charged: Vec<i32> = charges.iter().map(|c| c.account_id).collect();
    charged.sort_unstable();
    charged.dedup();
    announce_balance_changes(&*tx, &charged).await?;
    tx.commit().await?;
    Ok(answers)
}

/// Sets each drawn lot's remaining tokens from `before` to `after`, in one statement,
/// conditional on it still holding `before`.
async fn draw_from_lots(tx: &WriteTx, drawn: &[(i32, i64, i64)]) -> Result<()> {
    if drawn.is_empty() {
        return Ok(());
    }
    let rows = vec!["(?, ?, ?, ?)"; drawn.len()].join(", ");
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(drawn.len() * 4);
    for &(id, before, after) in drawn {
        let status = if after == 0 {
            LotStatus::Depleted
        } else {
            LotStatus::Active
        };
        values.extend([
            id.into(),
            before.into(),
            after.into(),
            status.as_str().into(),
        ]);
    }
    let sql = format!(
        "WITH drawn(id, before, after, status) AS (VALUES {rows}) \
         UPDATE lots SET remaining = drawn.after, used = lots.used + (drawn.before - drawn.after), \
         status = drawn.status FROM drawn \
         WHERE lots.id = drawn.id AND lots.remaining = drawn.before"
    );
    let updated = tx
        .execute_raw(crate::store::stmt(tx.get_database_backend(), &sql, values))
        .await?;
    if updated.rows_affected() != drawn.len() as u64 {
        // Only possible if something changed a lot outside its account's lock.
        return Err(DomainError::Internal(
            "a lot changed during a charge".into(),
        ));
    }
    Ok(())
}

/// Points each user's window for the product at its new charge, in one statement. A
/// window is replaced only when it has ended, and the primary key allows one row,
/// so two racing charges cannot both open a window.
async fn move_windows(tx: &WriteTx, moved: &[(&ChargeRequest, i32, DateTime<Utc>)]) -> Result<()> {
    if moved.is_empty() {
        return Ok(());
    }
    let mut on_conflict = OnConflict::columns([window::Column::UserId, window::Column::ProductId]);
    on_conflict
        .update_columns([
            window::Column::ChargeId,
            window::Column::StartsAt,
            window::Column::EndsAt,
        ])
        .action_and_where(
            Expr::col((window::Entity, window::Column::EndsAt)).lte(Expr::col((
                Alias::new("excluded"),
                window::Column::StartsAt,
            ))),
        );
    let written = window::Entity::insert_many(moved.iter().map(|(item, charge_id, ends_at)| {
        window::ActiveModel {
            user_id: Set(item.record.user_id),
            product_id: Set(item.product.id),
            charge_id: Set(*charge_id),
            starts_at: Set(item.record.now),
            ends_at: Set(*ends_at),
        }
    }))
    .on_conflict(on_conflict)
    .exec_without_returning(&**tx)
    .await?;
    if written != moved.len() as u64 {
        return Err(DomainError::Internal(
            "a window still open was about to be replaced".into(),
        ));
    }
    Ok(())
}

impl OpenOutcome {
    fn of(outcome: Outcome, balance: i64, plan_level: PlanLevel) -> OpenOutcome {
        let (granted, source, deny_reason) = outcome.access();
        let (tokens_charged, window_ends_at, charge_id) = match outcome {
            Outcome::Charged {
                charge_id,
                tokens,
                window_ends_at,
            } => (tokens, Some(window_ends_at), Some(charge_id)),
            Outcome::Reopen(ends_at) => (0, Some(ends_at), None),
            Outcome::Denied(_) | Outcome::Subscription => (0, None, None),
        };
        OpenOutcome {
            granted,
            source,
            tokens_charged,
            window_ends_at,
            deny_reason,
            balance,
            plan_level,
            charge_id,
            notifications: Vec::new(),
        }
    }
}

/// What an open came to: both the record kept for reports and the caller's answer
/// are read from it.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Denied(DenyReason),
    Subscription,
    /// Inside the window ending then: granted, free.
    Reopen(DateTime<Utc>),
    Charged {
        charge_id: i32,
        tokens: i64,
        window_ends_at: DateTime<Utc>,
    },
}

impl Outcome {
    fn access(self) -> (bool, Option<AccessSource>, Option<DenyReason>) {
        match self {
            Outcome::Denied(r) => (false, None, Some(r)),
            Outcome::Subscription => (true, Some(AccessSource::Subscription), None),
            Outcome::Reopen(_) | Outcome::Charged { .. } => (true, Some(AccessSource::Flex), None),
        }
    }
}

/// Every open, granted or denied, is kept for reports (rule 11).
struct OpenRecord {
    account_id: i32,
    user_id: i32,
    /// `None`: the code named no catalog product.
    product_id: Option<i32>,
    code: String,
    version: Option<String>,
    now: DateTime<Utc>,
}

impl OpenRecord {
    fn model(&self, outcome: Outcome) -> open::ActiveModel {
        let (granted, source, deny_reason) = outcome.access();
        let (charge_id, tokens) = match outcome {
            Outcome::Charged {
                charge_id, tokens, ..
            } => (Some(charge_id), tokens),
            _ => (None, 0),
        };
        open::ActiveModel {
            account_id: Set(self.account_id),
            user_id: Set(self.user_id),
            product_id: Set(self.product_id),
            product_code: Set(self.code.clone()),
            version: Set(self.version.clone()),
            at: Set(self.now),
            granted: Set(granted),
            source: Set(source.map(|s| s.as_str().to_owned())),
            deny_reason: Set(deny_reason.map(|r| r.as_str().to_owned())),
            charge_id: Set(charge_id),
            tokens: Set(tokens),
            ..Default::default()
        }
    }
}
