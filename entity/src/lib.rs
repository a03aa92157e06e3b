//! sea-orm entities of the Daypass storage schema. Storage only: no rules, no GraphQL.

pub mod account;
pub mod alert_rule;
pub mod allowed_product;
pub mod charge;
pub mod ledger_entry;
pub mod lot;
pub mod notification;
pub mod open;
pub mod price_band;
pub mod product;
pub mod report_subscription;
pub mod session;
pub mod signing_key;
pub mod subscription;
pub mod subscription_seat;
pub mod user;
pub mod webhook_attempt;
pub mod webhook_delivery;
pub mod webhook_endpoint;
pub mod webhook_event;
pub mod window;
