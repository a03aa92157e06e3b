//! Rule 19: who may see and change what. Every use-case asks the [`Actor`] first.

use crate::error::{DomainError, Result};
use crate::vocabulary::Role;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The vendor's staff: sees and manages every account.
    Operator,
    User(UserActor),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserActor {
    pub user_id: i32,
    pub account_id: i32,
    pub role: Role,
    pub active: bool,
}

impl Actor {
    pub fn role(&self) -> Role {
        match self {
            Actor::Operator => Role::Operator,
            Actor::User(u) => u.role,
        }
    }

    pub fn user(&self) -> Option<&UserActor> {
        match self {
            Actor::Operator => None,
            Actor::User(u) => Some(u),
        }
    }

    /// The account a user belongs to; `None` for the operator.
    pub fn own_account(&self) -> Option<i32> {
        self.user().map(|u| u.account_id)
    }

    /// A deactivated user may read `viewer` and nothing else.
    fn active_user_of(&self, account_id: i32) -> Result<Option<&UserActor>> {
        match self {
            Actor::Operator => Ok(None),
            Actor::User(u) if !u.active => Err(DomainError::forbidden("this user is deactivated")),
            Actor::User(u) if u.account_id != account_id => Err(DomainError::forbidden(
                "that account belongs to another tenant",
            )),
            Actor::User(u) => Ok(Some(u)),
        }
    }

    /// Any active user of the account, or the operator: the account's name, balance, plan.
    pub fn can_see_account(&self, account_id: i32) -> Result<()> {
        self.active_user_of(account_id).map(|_| ())
    }

    /// Admins, analysts and the operator: the account's lots, ledger, users, spending.
    pub fn can_read_books(&self, account_id: i32) -> Result<()> {
        match self.active_user_of(account_id)? {
            Some(u) if u.role == Role::Member => Err(DomainError::forbidden(
                "members see their own usage, not the account's books",
            )),
            _ => Ok(()),
        }
    }

    /// Admins of the account and the operator: every change to the account.
    pub fn can_manage(&self, account_id: i32) -> Result<()> {
        match self.active_user_of(account_id)? {
            Some(u) if u.role != Role::Admin => {
                Err(DomainError::forbidden("only an account admin may do this"))
            }
            _ => Ok(()),
        }
    }

    /// Usage of one user: the user themself, or whoever reads the account's books.
    pub fn can_see_usage_of(&self, account_id: i32, user_id: i32) -> Result<()> {
        match self.active_user_of(account_id)? {
            Some(u) if u.role == Role::Member && u.user_id != user_id => {
                Err(DomainError::forbidden("members see only their own usage"))
            }
            _ => Ok(()),
        }
    }

    pub fn require_operator(&self) -> Result<()> {
        match self {
            Actor::Operator => Ok(()),
            Actor::User(_) => Err(DomainError::forbidden("only an operator may do this")),
        }
    }

    /// Any active user, or the operator: the catalog and the price list.
    pub fn require_active(&self) -> Result<()> {
        match self {
            Actor::User(u) if !u.active => Err(DomainError::forbidden("this user is deactivated")),
            _ => Ok(()),
        }
    }

    /// The account a call is about: a user's own (naming another is forbidden), or the
    /// one an operator names (required).
    pub fn target_account(&self, named: Option<i32>) -> Result<i32> {
        match (self, named) {
            (Actor::Operator, Some(id)) => Ok(id),
            (Actor::Operator, None) => Err(DomainError::bad_input(
                "an operator must name the account (accountId)",
            )),
            (Actor::User(u), None) => Ok(u.account_id),
            (Actor::User(u), Some(id)) if id == u.account_id => Ok(id),
            (Actor::User(_), Some(_)) => Err(DomainError::forbidden(
                "that account belongs to another tenant",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, active: bool) -> Actor {
        Actor::User(UserActor {
            user_id: 7,
            account_id: 1,
            role,
            active,
        })
    }

    #[test]
    fn roles_against_the_matrix() {
        let admin = user(Role::Admin, true);
        let member = user(Role::Member, true);
        let analyst = user(Role::Analyst, true);
        assert!(admin.can_manage(1).is_ok());
        assert!(admin.can_manage(2).is_err());
        assert!(analyst.can_read_books(1).is_ok());
        assert!(analyst.can_manage(1).is_err());
        assert!(member.can_read_books(1).is_err());
        assert!(member.can_see_usage_of(1, 7).is_ok());
        assert!(member.can_see_usage_of(1, 8).is_err());
        assert!(Actor::Operator.can_manage(99).is_ok());
        let gone = user(Role::Admin, false);
        assert!(gone.can_see_account(1).is_err());
        assert!(gone.require_active().is_err());
    }
}
