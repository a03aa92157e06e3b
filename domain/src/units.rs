//! Amounts and ids as types at module borders, so a count of tokens is never passed
//! where money or an id belongs. Storage keeps plain integers (the entities); the
//! rules and the use-cases speak in these.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

macro_rules! amount {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i64);

        impl $name {
            pub const ZERO: $name = $name(0);

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl Add for $name {
            type Output = $name;
            fn add(self, other: $name) -> $name {
                $name(self.0 + other.0)
            }
        }

        impl Sub for $name {
            type Output = $name;
            fn sub(self, other: $name) -> $name {
                $name(self.0 - other.0)
            }
        }

        impl Neg for $name {
            type Output = $name;
            fn neg(self) -> $name {
                $name(-self.0)
            }
        }

        impl AddAssign for $name {
            fn add_assign(&mut self, other: $name) {
                self.0 += other.0;
            }
        }

        impl SubAssign for $name {
            fn sub_assign(&mut self, other: $name) {
                self.0 -= other.0;
            }
        }

        impl Sum for $name {
            fn sum<I: Iterator<Item = $name>>(iter: I) -> $name {
                $name(iter.map(|a| a.0).sum())
            }
        }

        impl From<i64> for $name {
            fn from(n: i64) -> $name {
                $name(n)
            }
        }

        impl From<$name> for i64 {
            fn from(a: $name) -> i64 {
                a.0
            }
        }

        /// Compares with a plain number, as tests and GraphQL answers write them.
        impl PartialEq<i64> for $name {
            fn eq(&self, other: &i64) -> bool {
                self.0 == *other
            }
        }

        impl PartialOrd<i64> for $name {
            fn partial_cmp(&self, other: &i64) -> Option<std::cmp::Ordering> {
                self.0.partial_cmp(other)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

amount!(
    /// A number of tokens (a balance, a daily rate, a lot's remaining tokens).
    Tokens
);

amount!(
    /// Money in the currency's minor units (cents).
    MinorUnits
);

impl Tokens {
    /// What these tokens cost at `unit_price` each.
    pub fn cost_at(self, unit_price: MinorUnits) -> MinorUnits {
        MinorUnits(self.0 * unit_price.0)
    }
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i32);

        impl $name {
            pub fn get(self) -> i32 {
                self.0
            }
        }

        impl From<i32> for $name {
            fn from(n: i32) -> $name {
                $name(n)
            }
        }

        impl From<$name> for i32 {
            fn from(id: $name) -> i32 {
                id.0
            }
        }

        impl PartialEq<i32> for $name {
            fn eq(&self, other: &i32) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A lot of tokens bought together.
    LotId
);
id!(
    /// A charge: one 24-hour window paid for.
    ChargeId
);
id!(
    /// A notification of the outbox.
    NotificationId
);
