-- The raw-SQL ceiling of one charging open on SQLite: one transaction
-- that `load-bench` repeats, once per charge of its charging phase (the same users,
-- products and accounts), filling the {placeholders}, and feeds to
--   sqlite3 -bail <copy of the server's database>
-- after the server's pragmas (WAL, synchronous = FULL, busy_timeout, foreign_keys).
-- Lines starting with "--" are left out of the generated script.
--
-- It writes the rows `charging::open_product` writes for a charge, one statement
-- each, under the same lock (BEGIN IMMEDIATE, the database's write lock): the
-- debit of the lot that expires first, the charge, its CHARGE ledger entry, the
-- user's window for the product, and the open record. The balance is the sum of
-- the lots' remaining tokens, so the debit is the balance update. {lot} and {cost}
-- are what the debit's lookup finds (each account has one lot), {charge} the next
-- charge id, as RETURNING would give them.
BEGIN IMMEDIATE;
UPDATE lots SET remaining = remaining - {rate}, used = used + {rate}, status = 'ACTIVE'
  WHERE id = (SELECT id FROM lots
              WHERE account_id = {aid} AND remaining >= {rate} AND expires_at > '{now}'
              ORDER BY expires_at, quantity, id LIMIT 1);
INSERT INTO charges (id, account_id, user_id, product_id, version, tokens, cost_minor, window_starts_at, window_ends_at)
  VALUES ({charge}, {aid}, {uid}, {pid}, NULL, {rate}, {cost}, '{now}', '{ends}');
INSERT INTO ledger_entries (account_id, kind, tokens, lot_id, charge_id, at)
  VALUES ({aid}, 'CHARGE', -{rate}, {lot}, {charge}, '{now}');
INSERT INTO windows (user_id, product_id, charge_id, starts_at, ends_at)
  VALUES ({uid}, {pid}, {charge}, '{now}', '{ends}')
  ON CONFLICT (user_id, product_id) DO UPDATE
  SET charge_id = excluded.charge_id, starts_at = excluded.starts_at, ends_at = excluded.ends_at;
INSERT INTO opens (account_id, user_id, product_id, product_code, version, at, granted, source, deny_reason, charge_id, tokens)
  VALUES ({aid}, {uid}, {pid}, '{code}', NULL, '{now}', 1, 'FLEX', NULL, {charge}, {rate});
COMMIT;
