//! Each account's per-user rows of a rolled day (`usage_day_users`), packed in one
//! value of `usage_day_user_blocks`: a report by user reads a value per day, not a
//! row per user and day.

use super::{GroupKey, GroupRow, TimeGrain, UsageSums};
use crate::error::{DomainError, Result};
use crate::store::stmt;
use chrono::NaiveDate;
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One user's usage of one day, as packed in `usage_day_user_blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct UserDay {
    user_id: i32,
    tokens: i64,
    opens: i64,
    charges: i64,
    denials: i64,
    cost_minor: i64,
}

impl UserDay {
    fn sums(&self) -> UsageSums {
        UsageSums {
            tokens: self.tokens,
            opens: self.opens,
            charges: self.charges,
            denials: self.denials,
            cost_minor: self.cost_minor,
        }
    }
}

/// Packs one account's per-user sums of `day`, in user order, into one block.
pub(super) fn pack(
    day: NaiveDate,
    users: impl IntoIterator<Item = (i32, UsageSums)>,
) -> Result<Vec<u8>> {
    let users: Vec<UserDay> = users
        .into_iter()
        .map(|(user_id, s)| UserDay {
            user_id,
            tokens: s.tokens,
            opens: s.opens,
            charges: s.charges,
            denials: s.denials,
            cost_minor: s.cost_minor,
        })
        .collect();
    postcard::to_allocvec(&users)
        .map_err(|e| DomainError::Internal(format!("packing usage of {day}: {e}")))
}

fn unpack(day: NaiveDate, packed: &[u8]) -> Result<Vec<UserDay>> {
    postcard::from_bytes(packed)
        .map_err(|e| DomainError::Internal(format!("usage block of {day}: {e}")))
}

/// The per-user rows of one account for `from..=to` from the packed daily blocks,
/// summed per `time` period, in key order.
pub(super) async fn user_block_groups(
    conn: &impl ConnectionTrait,
    account_id: i32,
    time: Option<TimeGrain>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<GroupRow>> {
    let rows = conn
        .query_all_raw(stmt(
            conn.get_database_backend(),
            "SELECT day, users FROM usage_day_user_blocks \
             WHERE account_id = ? AND day >= ? AND day <= ?",
            vec![account_id.into(), from.into(), to.into()],
        ))
        .await?;
    let mut groups: Vec<GroupRow> = Vec::new();
    // By day every (day, user) is its own group; longer periods sum theirs.
    let mut index: HashMap<GroupKey, usize> = HashMap::new();
    for r in rows {
        let day: NaiveDate = r.try_get_by_index(0)?;
        let packed: Vec<u8> = r.try_get_by_index(1)?;
        let users = unpack(day, &packed)?;
        let period = time.map(|t| t.start_of(day));
        for u in users {
            let key = (period, Some(u.user_id), None);
            let sums = u.sums();
            if time != Some(TimeGrain::Day) {
                if let Some(&i) = index.get(&key) {
                    groups[i].sums += sums;
                    continue;
                }
                index.insert(key, groups.len());
            }
            groups.push(GroupRow {
                key,
                sums,
                distinct_users: 0,
            });
        }
    }
    groups.sort_unstable_by_key(|g| g.key);
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_unpacks_to_the_sums_packed() {
        let day = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let sums = |n: i64| UsageSums {
            tokens: n,
            opens: n + 1,
            charges: n + 2,
            denials: n + 3,
            cost_minor: n + 4,
        };
        let packed = pack(day, [(3, sums(10)), (9, sums(-1))]).unwrap();
        let users: Vec<(i32, UsageSums)> = unpack(day, &packed)
            .unwrap()
            .iter()
            .map(|u| (u.user_id, u.sums()))
            .collect();
        assert_eq!(users, [(3, sums(10)), (9, sums(-1))]);
        assert!(unpack(day, &packed[..packed.len() - 1]).is_err());
    }
}
