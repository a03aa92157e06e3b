//! The closed vocabularies of PRODUCT.md, stored as their upper-case names.

use crate::error::DomainError;

/// A closed vocabulary stored as upper-case names.
macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::DomainError;
            fn from_str(s: &str) -> Result<Self, $crate::error::DomainError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::error::DomainError::Internal(format!(
                        concat!("unknown ", stringify!($name), " {:?} in storage"), other
                    ))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use vocabulary;

vocabulary!(
    /// What a caller may do (rule 19).
    Role { Admin => "ADMIN", Member => "MEMBER", Analyst => "ANALYST", Operator => "OPERATOR" }
);
vocabulary!(
    /// Declared in ascending order of benefit; EDUCATION is special (rule 13).
    PlanLevel { Standard => "STANDARD", Premium => "PREMIUM", Enterprise => "ENTERPRISE", Education => "EDUCATION" }
);
vocabulary!(LotStatus { Active => "ACTIVE", Depleted => "DEPLETED", Expired => "EXPIRED" });
vocabulary!(AccessSource { Subscription => "SUBSCRIPTION", Flex => "FLEX" });
vocabulary!(DenyReason {
    NotAssigned => "NOT_ASSIGNED",
    ProductRestricted => "PRODUCT_RESTRICTED",
    InsufficientTokens => "INSUFFICIENT_TOKENS",
    UnknownProduct => "UNKNOWN_PRODUCT",
    UserDeactivated => "USER_DEACTIVATED",
    SessionEnded => "SESSION_ENDED",
});
vocabulary!(LedgerKind { Purchase => "PURCHASE", Charge => "CHARGE", Expiry => "EXPIRY", Adjustment => "ADJUSTMENT", Refund => "REFUND" });
vocabulary!(
    /// Where a session stands (rule 20). A session stored as OPEN whose heartbeats
    /// stopped is reported LAPSED before the worker ends it.
    SessionState { Open => "OPEN", Closed => "CLOSED", Lapsed => "LAPSED", Denied => "DENIED" }
);

pub(crate) fn parse<T: std::str::FromStr<Err = DomainError>>(s: &str) -> Result<T, DomainError> {
    s.parse()
}
