-- The raw-SQL ceiling of one charging open on PostgreSQL. `load-bench`
-- runs it as
--   pgbench -n -M prepared -c 16 -j 2 -T <seconds> -f charge.sql -D aid_first=… …
-- against the database its server has just used (the lots topped up first).
--
-- It writes the rows `charging::open_product` writes for a charge, one statement
-- each, under the same lock (the account row, FOR UPDATE): the debit of the lot
-- that expires first, the charge, its CHARGE ledger entry, the user's window for
-- the product, and the open record. The balance is the sum of the lots' remaining
-- tokens, so the debit is the balance update. It does not re-check the window or
-- read the account, the threshold or the answer's balance and plan level, as the
-- server does: this is the least a charge can cost.
--
-- Variables (-D):
--   aid_first, accounts   the accounts' ids: aid_first … aid_first + accounts - 1
--                         (accounts = 1: everyone hits one account)
--   uid_first, per_account  each account's users, ids contiguous by account
--   pid_first, products   the products; product k has code lbk and daily rate 1 + k % 10
--   notify                1: also `pg_notify` as the server's live-balance feed
--                         does (informative); 0: the ceiling
\set k random(0, :accounts - 1)
\set aid :aid_first + :k
\set uid :uid_first + :k * :per_account + random(0, :per_account - 1)
\set p random(0, :products - 1)
\set pid :pid_first + :p
\set rate 1 + :p % 10
\set neg -1 * :rate
BEGIN;
SELECT id FROM accounts WHERE id = :aid FOR UPDATE;
UPDATE lots SET remaining = remaining - :rate, used = used + :rate, status = 'ACTIVE'
  WHERE id = (SELECT id FROM lots
              WHERE account_id = :aid AND remaining >= :rate AND expires_at > now()
              ORDER BY expires_at, quantity, id LIMIT 1)
  RETURNING id AS lot_id, unit_price_minor AS price \gset
\set cost :rate * :price
INSERT INTO charges (account_id, user_id, product_id, tokens, cost_minor, window_starts_at, window_ends_at)
  SELECT :aid, :uid, :pid, :rate, :cost, t, t + interval '24 hours'
  FROM (SELECT clock_timestamp() AS t) AS clock
  RETURNING id AS charge_id, window_starts_at AS starts_at, window_ends_at AS ends_at \gset
INSERT INTO ledger_entries (account_id, kind, tokens, lot_id, charge_id, at)
  VALUES (:aid, 'CHARGE', :neg, :lot_id, :charge_id, :starts_at);
INSERT INTO windows (user_id, product_id, charge_id, starts_at, ends_at)
  VALUES (:uid, :pid, :charge_id, :starts_at, :ends_at)
  ON CONFLICT (user_id, product_id) DO UPDATE
  SET charge_id = excluded.charge_id, starts_at = excluded.starts_at, ends_at = excluded.ends_at;
INSERT INTO opens (account_id, user_id, product_id, product_code, at, granted, source, charge_id, tokens)
  VALUES (:aid, :uid, :pid, 'lb' || :p::text, :starts_at, true, 'FLEX', :charge_id, :rate);
\if :notify
SELECT pg_notify('daypass_balance', :aid::text);
\endif
END;
