//! The contract's `Subscription` root, and what keeps a long-lived WebSocket
//! connection honest: every push re-reads the caller and the clock.

use super::context::{Req, parse_opt_id};
use super::error::{GqlResult, gql};
use super::loaders::Loaders;
use super::types::Account;
use crate::state::AppState;
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use async_graphql::{Context, Data, ID, Response, Result, Subscription as SubscriptionRoot};
use daypass_domain::store::BalanceWatch;
use daypass_domain::{Actor, DomainError, accounts, auth, entity};
use futures::Stream;
use std::sync::Arc;

#[derive(Default)]
pub struct Subscription;

#[SubscriptionRoot]
impl Subscription {
    /// Pushed after every purchase, charge and expiry on the caller's account.
    async fn balance_changed(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Operators only: the account to watch (users watch their own).")]
        account_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<Account>> + use<>> {
        let r = Req::of(ctx)?;
        let named = parse_opt_id(account_id.as_ref(), "accountId")?;
        let account_id = match named {
            Some(id) => id,
            None => r.actor().own_account().ok_or_else(|| {
                gql(DomainError::bad_input(
                    "an operator must name the account (accountId)",
                ))
            })?,
        };
        // Listen before anything awaits, so nothing committed after the subscribe
        // message goes unheard while the caller is checked.
        let state = r.state.clone();
        let watch = state.balance_feed.watch(account_id);
        let caller = Caller {
            live: ctx.data_opt::<LiveCaller>().cloned(),
            at_start: r.actor().clone(),
        };
        let actor = caller.current(&state).await.gql()?;
        watched_account(&state, &actor, account_id).await.gql()?;
        let watching = Watching {
            state,
            caller,
            watch,
        };
        Ok(futures::stream::unfold(
            Some(watching),
            |watching| async move {
                let mut w = watching?;
                if !w.watch.changed().await {
                    return None;
                }
                match w.account().await {
                    Ok(account) => Some((Ok(Account(account)), Some(w))),
                    // The caller lost the right to see it (deactivated, key replaced) or
                    // the account is gone: say why once, then end the subscription.
                    Err(e) => Some((Err(gql(e)), None)),
                }
            },
        ))
    }
}

/// The account a caller may watch; NOT_FOUND when it does not exist.
async fn watched_account(
    state: &AppState,
    actor: &Actor,
    account_id: i32,
) -> Result<entity::account::Model, DomainError> {
    accounts::get_account(&state.db, actor, Some(account_id))
        .await?
        .ok_or_else(|| DomainError::not_found(format!("account {account_id}")))
}

struct Watching {
    state: AppState,
    caller: Caller,
    watch: BalanceWatch,
}

impl Watching {
    async fn account(&self) -> Result<entity::account::Model, DomainError> {
        let actor = self.caller.current(&self.state).await?;
        watched_account(&self.state, &actor, self.watch.account_id()).await
    }
}

/// Who subscribed: over a WebSocket the key, read again at each push; otherwise the
/// request's caller.
struct Caller {
    live: Option<LiveCaller>,
    at_start: Actor,
}

impl Caller {
    async fn current(&self, state: &AppState) -> Result<Actor, DomainError> {
        match &self.live {
            Some(live) => live.actor(state).await,
            None => Ok(self.at_start.clone()),
        }
    }
}

/// The API key a WebSocket connection authenticated with. A connection may live for
/// days: every operation and every push on it authenticates this key again, so a
/// deactivated user, or a replaced key, stops seeing the account at once.
#[derive(Clone)]
pub struct LiveCaller {
    key: String,
}

impl LiveCaller {
    pub fn new(key: impl Into<String>) -> LiveCaller {
        LiveCaller { key: key.into() }
    }

    pub async fn actor(&self, state: &AppState) -> Result<Actor, DomainError> {
        auth::authenticate(&state.db, &state.operator_key, &self.key).await
    }
}

/// Gives every execution on a WebSocket connection (each query, and each push of a
/// subscription) its own [`Req`]: the caller as of now and the clock's now, as a POST
/// request gets. Resolvers read `Req`, and execution data comes first.
pub struct FreshRequestPerExecution;

impl ExtensionFactory for FreshRequestPerExecution {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(FreshRequestPerExecution)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for FreshRequestPerExecution {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let (Some(live), Some(req)) = (ctx.data_opt::<LiveCaller>(), ctx.data_opt::<Req>()) else {
            return next.run(ctx, operation_name).await;
        };
        let state = req.state.clone();
        let now = state.clock.now();
        let caller = match live.actor(&state).await {
            Ok(actor) => Some(actor),
            Err(DomainError::Unauthenticated) => None,
            Err(e) => {
                return Response::from_errors(vec![gql(e).into_server_error(Default::default())]);
            }
        };
        let mut data = Data::default();
        data.insert(Loaders::new(&state.db, now));
        data.insert(Req { state, caller, now });
        next.run_with_data(ctx, operation_name, data).await
    }
}
