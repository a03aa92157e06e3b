//! Sessions in the reference model (rules 20–22), written again here: heartbeats
//! active and idle, renewals past the window, closes, lapses and the refund of a
//! short launch.

use super::*;

pub(super) const HEARTBEAT: &str = "mutation($s: ID!, $a: Boolean!) { heartbeat(input: {sessionId: $s, active: $a}) { granted denyReason tokensCharged windowEndsAt balance session { id state active lastHeartbeatAt endedAt } } }";
pub(super) const CLOSE: &str =
    "mutation($s: ID!) { closeProduct(sessionId: $s) { id state endedAt charges { refunded } } }";

/// Rule 20's lapses and rule 21's short launch, written again.
const HEARTBEAT_LAPSE: Duration = Duration::minutes(15);
const UNWATCHED_LAPSE: Duration = Duration::hours(24);
const SHORT_LAUNCH: Duration = Duration::minutes(5);
pub(super) const WINDOW: Duration = Duration::hours(24);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Open,
    Closed,
    Lapsed,
    Denied,
}

impl State {
    pub(super) fn name(self) -> &'static str {
        match self {
            State::Open => "OPEN",
            State::Closed => "CLOSED",
            State::Lapsed => "LAPSED",
            State::Denied => "DENIED",
        }
    }
}

/// The charge of a session's open: what a refund gives back.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ChargeM {
    pub(super) window_starts_at: DateTime<Utc>,
    pub(super) tokens: i64,
    pub(super) cost: i64,
    /// (lot, tokens) in the order they were drawn.
    pub(super) draws: Vec<(i32, i64)>,
    pub(super) refunded: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct SessM {
    pub(super) acct: usize,
    pub(super) user: usize,
    pub(super) product: usize,
    pub(super) subscription: bool,
    pub(super) state: State,
    pub(super) started_at: DateTime<Utc>,
    pub(super) last_heartbeat_at: Option<DateTime<Utc>>,
    /// The batch the last heartbeat came in: two heartbeats of one session in a
    /// batch leave either's instant stored.
    pub(super) heard_in: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub(super) ended_at: Option<DateTime<Utc>>,
    pub(super) charge: Option<ChargeM>,
}

impl SessM {
    fn lapses_at(&self) -> DateTime<Utc> {
        match self.last_heartbeat_at {
            Some(at) => at + HEARTBEAT_LAPSE,
            None => self.started_at + UNWATCHED_LAPSE,
        }
    }

    fn lapse_end(&self) -> DateTime<Utc> {
        self.last_heartbeat_at
            .unwrap_or(self.started_at + UNWATCHED_LAPSE)
    }

    /// The state as the API shows it during `span`: an open session past its lapse
    /// reads LAPSED before the worker ends it.
    pub(super) fn shown_state(&self, span: &Span) -> State {
        if self.state == State::Open && span.reached(self.lapses_at()) {
            State::Lapsed
        } else {
            self.state
        }
    }

    /// An instant the API shows for the last heartbeat (or a lapse's end) equals the
    /// model's, or falls in the batch that heard it when two heartbeats raced.
    fn same_heard(
        &self,
        what: &str,
        got: DateTime<Utc>,
        want: DateTime<Utc>,
    ) -> Result<(), String> {
        match self.heard_in {
            Some((lo, hi)) if Some(want) == self.last_heartbeat_at && lo <= got && got <= hi => {
                Ok(())
            }
            _ => same(what, got, want),
        }
    }
}

/// What the workload may name: a session the model knows, with its owner.
#[derive(Debug, Clone)]
pub(super) struct SessionRef {
    pub(super) id: String,
    pub(super) acct: usize,
    pub(super) user: usize,
    pub(super) product: usize,
    pub(super) open: bool,
}

/// The sessions the next batch may name, oldest first (the same order in every
/// candidate state: by start, then id).
pub(super) fn known_sessions(model: &Model, now: DateTime<Utc>) -> Vec<SessionRef> {
    let mut all: Vec<(&String, &SessM)> = model.sessions.iter().collect();
    all.sort_by_key(|(id, s)| (s.started_at, (*id).clone()));
    all.into_iter()
        .map(|(id, s)| SessionRef {
            id: id.clone(),
            acct: s.acct,
            user: s.user,
            product: s.product,
            open: s.state == State::Open && s.lapses_at() > now,
        })
        .collect()
}

/// A heartbeat or a close of a known session, mostly of one still open and recent.
pub(super) fn session_op(
    rng: &mut StdRng,
    known: &[SessionRef],
    roll: u32,
    chasing: bool,
) -> Option<Op> {
    if known.is_empty() {
        return None;
    }
    let open: Vec<&SessionRef> = known.iter().rev().filter(|s| s.open).take(8).collect();
    // The oldest open session: one started inside a window and not heard from since
    // is what renews past the window (rule 22).
    let oldest = known.iter().find(|s| s.open);
    let s = if let (Some(oldest), true) = (oldest, rng.random_bool(if chasing { 0.6 } else { 0.3 }))
    {
        oldest
    } else if !open.is_empty() && rng.random_bool(0.75) {
        open[rng.random_range(0..open.len())]
    } else {
        let recent = &known[known.len().saturating_sub(30)..];
        recent.get(rng.random_range(0..recent.len().max(1)))?
    };
    Some(if roll < 112 || (chasing && roll < 140) {
        Op::Heartbeat {
            session: s.id.clone(),
            acct: s.acct,
            user: s.user,
            active: rng.random_bool(if chasing { 0.9 } else { 0.75 }),
        }
    } else {
        Op::Close {
            session: s.id.clone(),
            acct: s.acct,
            user: s.user,
            by_admin: rng.random_bool(0.2),
        }
    })
}

/// An open of the product a close names, by the same user, to race the close's
/// refund (rule 21's "no other open granted inside the window").
pub(super) fn reopen_racing(close: &Op, known: &[SessionRef]) -> Option<Op> {
    let Op::Close { session, .. } = close else {
        return None;
    };
    let s = known.iter().find(|s| &s.id == session)?;
    Some(Op::Open {
        acct: s.acct,
        user: s.user,
        product: s.product,
        version: None,
    })
}

impl Model {
    /// A granted open's session (rule 20), as its answer names it.
    pub(super) fn start_session(
        &mut self,
        (acct, user, product): (usize, usize, usize),
        d: &Value,
        span: &Span,
        subscription: bool,
        charge: Option<ChargeM>,
    ) -> Result<(), String> {
        let session = &d["session"];
        let id = session["id"]
            .as_str()
            .ok_or_else(|| format!("a granted open without a session: {d}"))?
            .to_owned();
        let started_at = at(&session["startedAt"]);
        if !span.contains(started_at) {
            return Err(format!(
                "session started at {started_at}, outside the batch"
            ));
        }
        if let Some(c) = &charge {
            same("a charged session's start", started_at, c.window_starts_at)?;
        }
        if self.sessions.contains_key(&id) {
            return Err(format!("a new open answered session {id}, which exists"));
        }
        self.sessions.insert(
            id,
            SessM {
                acct,
                user,
                product,
                subscription,
                state: State::Open,
                started_at,
                last_heartbeat_at: None,
                heard_in: None,
                ended_at: None,
                charge,
            },
        );
        Ok(())
    }

    /// Rules 20 and 22 on one heartbeat.
    pub(super) fn heartbeat(
        &mut self,
        id: &str,
        active: bool,
        answer: &Answer,
        span: &Span,
    ) -> Result<(), String> {
        let d = data(answer, "heartbeat")?;
        let s = self.sessions[id].clone();
        let (acct, user, product) = (s.acct, s.user, s.product);
        let balance = self.accounts[acct].balance(span);
        let ended = |reason: &str, state: State| -> Result<(), String> {
            same("granted", d["granted"].as_bool(), Some(false))?;
            same("denyReason", d["denyReason"].as_str(), Some(reason))?;
            same("tokensCharged", int(&d["tokensCharged"]), 0)?;
            same("windowEndsAt", &d["windowEndsAt"], &Value::Null)?;
            same(
                "session state",
                d["session"]["state"].as_str(),
                Some(state.name()),
            )
        };
        let shown = s.shown_state(span);
        if shown != State::Open {
            ended("SESSION_ENDED", shown)?;
            return same("balance", int(&d["balance"]), balance);
        }
        let u = &self.accounts[acct].users[user];
        if !u.active {
            ended("USER_DEACTIVATED", State::Denied)?;
            same("balance", int(&d["balance"]), balance)?;
            return self.end_denied(id, d, span);
        }
        let window = u.windows.get(&product).copied();
        if s.subscription {
            if !self.holds_seat(acct, user, product, span) {
                ended("SESSION_ENDED", State::Denied)?;
                same("balance", int(&d["balance"]), balance)?;
                return self.end_denied(id, d, span);
            }
            return self.touched(id, active, d, window, balance, span);
        }
        if !active || window.is_some_and(|ends| !span.reached(ends)) {
            return self.touched(id, active, d, window, balance, span);
        }
        self.renew(id, d, span)
    }

    /// Rule 22: an active heartbeat past the window charges as an open would.
    fn renew(&mut self, id: &str, d: &Value, span: &Span) -> Result<(), String> {
        let s = self.sessions[id].clone();
        let (acct, user, product) = (s.acct, s.user, s.product);
        let balance = self.accounts[acct].balance(span);
        if self.holds_seat(acct, user, product, span) {
            same("granted", d["granted"].as_bool(), Some(true))?;
            same("tokensCharged", int(&d["tokensCharged"]), 0)?;
            same("windowEndsAt", &d["windowEndsAt"], &Value::Null)?;
            same("balance", int(&d["balance"]), balance)?;
            return self.heard(id, true, d, span);
        }
        let denial = match self.flex_denial(acct, user, product) {
            Some(reason) => Some(reason),
            None if balance < PRODUCTS[product].1 => Some("INSUFFICIENT_TOKENS"),
            None => None,
        };
        if let Some(reason) = denial {
            same("granted", d["granted"].as_bool(), Some(false))?;
            same("denyReason", d["denyReason"].as_str(), Some(reason))?;
            same("tokensCharged", int(&d["tokensCharged"]), 0)?;
            same("windowEndsAt", &d["windowEndsAt"], &Value::Null)?;
            same("balance", int(&d["balance"]), balance)?;
            same(
                "session state",
                d["session"]["state"].as_str(),
                Some("DENIED"),
            )?;
            *self.outcomes.entry("RENEWAL_DENIED").or_default() += 1;
            return self.end_denied(id, d, span);
        }
        let rate = PRODUCTS[product].1;
        same("granted", d["granted"].as_bool(), Some(true))?;
        same("tokensCharged", int(&d["tokensCharged"]), rate)?;
        same("balance", int(&d["balance"]), balance - rate)?;
        let ends = at(&d["windowEndsAt"]);
        if !span.contains(ends - WINDOW) {
            return Err(format!(
                "renewed window ending {ends} does not start in the batch"
            ));
        }
        let (cost, _) = self.draw(acct, rate, span);
        let a = &mut self.accounts[acct];
        a.users[user].windows.insert(product, ends);
        let t = a.tally.entry((user, Some(product))).or_default();
        t.charges += 1;
        t.tokens += rate;
        t.cost += cost;
        *self.outcomes.entry("RENEWAL").or_default() += 1;
        self.heard(id, true, d, span)
    }

    /// Rules 7 and 8 for pay-as-you-go, as an open decides them.
    pub(super) fn flex_denial(
        &self,
        acct: usize,
        user: usize,
        product: usize,
    ) -> Option<&'static str> {
        let a = &self.accounts[acct];
        let u = &a.users[user];
        if !u.flex {
            Some("NOT_ASSIGNED")
        } else if u
            .allowed
            .as_ref()
            .or(a.allowed.as_ref())
            .is_some_and(|list| !list.contains(&product))
        {
            Some("PRODUCT_RESTRICTED")
        } else {
            None
        }
    }

    pub(super) fn holds_seat(&self, acct: usize, user: usize, product: usize, span: &Span) -> bool {
        self.subs.iter().flatten().any(|s| {
            s.acct == acct
                && s.product == product
                && s.holders.contains(&user)
                && span.reached(s.starts_at)
                && !span.reached(s.ends_at)
        })
    }

    /// Rule 3: `tokens` drawn from the account's live lots in burn order (earliest
    /// expiry, then the smaller lot, then the older); the cost and the draws.
    pub(super) fn draw(&mut self, acct: usize, tokens: i64, span: &Span) -> (i64, Vec<(i32, i64)>) {
        let a = &mut self.accounts[acct];
        let mut order: Vec<&LotM> = a
            .lots
            .values()
            .filter(|l| l.remaining > 0 && !span.reached(l.expires_at))
            .collect();
        order.sort_by_key(|l| (l.expires_at, l.quantity, l.id));
        let order: Vec<i32> = order.into_iter().map(|l| l.id).collect();
        let (mut left, mut cost, mut draws) = (tokens, 0, Vec::new());
        for i in order {
            let lot = a.lots.get_mut(&i).unwrap();
            let take = left.min(lot.remaining);
            lot.remaining -= take;
            lot.used += take;
            cost += take * lot.unit_price;
            draws.push((i, take));
            left -= take;
            if left == 0 {
                break;
            }
        }
        (cost, draws)
    }

    /// A heartbeat that only moves the last heartbeat and the activity.
    fn touched(
        &mut self,
        id: &str,
        active: bool,
        d: &Value,
        window: Option<DateTime<Utc>>,
        balance: i64,
        span: &Span,
    ) -> Result<(), String> {
        same("granted", d["granted"].as_bool(), Some(true))?;
        same("denyReason", &d["denyReason"], &Value::Null)?;
        same("tokensCharged", int(&d["tokensCharged"]), 0)?;
        same(
            "windowEndsAt",
            d["windowEndsAt"].as_str().map(|_| at(&d["windowEndsAt"])),
            window,
        )?;
        same("balance", int(&d["balance"]), balance)?;
        *self
            .outcomes
            .entry(if active {
                "HEARTBEAT_ACTIVE"
            } else {
                "HEARTBEAT_IDLE"
            })
            .or_default() += 1;
        self.heard(id, active, d, span)
    }

    fn heard(&mut self, id: &str, active: bool, d: &Value, span: &Span) -> Result<(), String> {
        let shown = &d["session"];
        same("session state", shown["state"].as_str(), Some("OPEN"))?;
        same("session active", shown["active"].as_bool(), Some(active))?;
        let heard = at(&shown["lastHeartbeatAt"]);
        if !span.contains(heard) {
            return Err(format!("lastHeartbeatAt {heard} outside the batch"));
        }
        let s = self.sessions.get_mut(id).unwrap();
        // Of two heartbeats in one batch either may be stored: keep the later, so the
        // orders that explain the answers leave one state, not two.
        let batch = Some((span.lo, span.hi));
        s.last_heartbeat_at = match (s.heard_in == batch, s.last_heartbeat_at) {
            (true, Some(earlier)) => Some(earlier.max(heard)),
            _ => Some(heard),
        };
        s.heard_in = batch;
        Ok(())
    }

    fn end_denied(&mut self, id: &str, d: &Value, span: &Span) -> Result<(), String> {
        let ended_at = at(&d["session"]["endedAt"]);
        if !span.contains(ended_at) {
            return Err(format!("endedAt {ended_at} outside the batch"));
        }
        let s = self.sessions.get_mut(id).unwrap();
        s.state = State::Denied;
        s.ended_at = Some(ended_at);
        Ok(())
    }

    /// Rule 20's close, by the session's user or an admin of its account.
    pub(super) fn close(
        &mut self,
        id: &str,
        closer_active: bool,
        answer: &Answer,
        span: &Span,
    ) -> Result<(), String> {
        if !closer_active {
            return expect_error(answer, "FORBIDDEN");
        }
        let d = data(answer, "closeProduct")?;
        let s = self.sessions[id].clone();
        let refunded_before = s.charge.as_ref().is_some_and(|c| c.refunded);
        let (state, ended_at) = match s.shown_state(span) {
            State::Open => {
                let ended_at = at(&d["endedAt"]);
                if !span.contains(ended_at) {
                    return Err(format!("closed at {ended_at}, outside the batch"));
                }
                (State::Closed, ended_at)
            }
            State::Lapsed if s.state == State::Open => (State::Lapsed, s.lapse_end()),
            stored => (stored, s.ended_at.expect("an ended session's end")),
        };
        same("state", d["state"].as_str(), Some(state.name()))?;
        s.same_heard("endedAt", at(&d["endedAt"]), ended_at)?;
        let refunded = if s.state == State::Open {
            let short = match state {
                State::Closed => !span.reached(
                    s.charge.as_ref().map_or(ended_at, |c| c.window_starts_at) + SHORT_LAUNCH,
                ),
                _ => s
                    .charge
                    .as_ref()
                    .is_some_and(|c| ended_at - c.window_starts_at < SHORT_LAUNCH),
            };
            let m = self.sessions.get_mut(id).unwrap();
            m.state = state;
            m.ended_at = Some(ended_at);
            *self.outcomes.entry("CLOSE").or_default() += 1;
            short && self.refund(id, span)
        } else {
            refunded_before
        };
        let shown_refunds = d["charges"].as_array().map_or(0, |c| {
            c.iter().filter(|c| c["refunded"] == json!(true)).count()
        });
        same("refunded charges", shown_refunds, usize::from(refunded))
    }

    /// The lapse sweep (rule 20): every session lapsed during `span` ends at its
    /// lapse end, short launches refunded.
    pub(super) fn end_lapsed(&mut self, span: &Span) {
        let lapsed: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.state == State::Open && span.reached(s.lapses_at()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            let s = self.sessions.get_mut(&id).unwrap();
            let ended_at = s.lapse_end();
            s.state = State::Lapsed;
            s.ended_at = Some(ended_at);
            *self.outcomes.entry("LAPSE").or_default() += 1;
            let short = s
                .charge
                .as_ref()
                .is_some_and(|c| ended_at - c.window_starts_at < SHORT_LAUNCH);
            if short {
                self.refund(&id, span);
            }
        }
    }

    /// Rule 21: the charge of session `id`'s open goes back to its lots, unless
    /// another open of its user and product was granted inside its window. True when
    /// refunded.
    fn refund(&mut self, id: &str, span: &Span) -> bool {
        let s = self.sessions[id].clone();
        let Some(charge) = s.charge.clone().filter(|c| !c.refunded) else {
            return false;
        };
        let inside = charge.window_starts_at..charge.window_starts_at + WINDOW;
        let others = self.sessions.iter().any(|(other, o)| {
            other != id
                && (o.acct, o.user, o.product) == (s.acct, s.user, s.product)
                && inside.contains(&o.started_at)
        });
        if others {
            return false;
        }
        let a = &mut self.accounts[s.acct];
        for (lot, tokens) in &charge.draws {
            let l = a.lots.get_mut(lot).unwrap();
            l.used -= tokens;
            if !span.reached(l.expires_at) {
                l.remaining += tokens;
            }
        }
        let t = a.tally.entry((s.user, Some(s.product))).or_default();
        t.charges -= 1;
        t.tokens -= charge.tokens;
        t.cost -= charge.cost;
        let windows = &mut a.users[s.user].windows;
        if windows.get(&s.product) == Some(&(charge.window_starts_at + WINDOW)) {
            windows.remove(&s.product);
        }
        self.sessions
            .get_mut(id)
            .unwrap()
            .charge
            .as_mut()
            .unwrap()
            .refunded = true;
        *self.outcomes.entry("REFUND").or_default() += 1;
        true
    }
}
