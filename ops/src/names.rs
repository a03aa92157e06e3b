//! Series names, in one place so producers and tests agree.

pub const GRAPHQL_REQUESTS: &str = "daypass_graphql_requests_total";
pub const GRAPHQL_DURATION: &str = "daypass_graphql_request_duration_seconds";
pub const CHARGES: &str = "daypass_charges_total";
pub const DENIALS: &str = "daypass_open_denials_total";
pub const TOKENS_CHARGED: &str = "daypass_tokens_charged_total";
pub const QUEUE_JOBS: &str = "daypass_queue_jobs";
pub const JOBS: &str = "daypass_jobs_total";
pub const EMAILS: &str = "daypass_emails_total";
pub const WEBHOOK_ATTEMPTS: &str = "daypass_webhook_attempts_total";
pub const DB_POOL_CONNECTIONS: &str = "daypass_db_pool_connections";
pub const DB_POOL_IDLE: &str = "daypass_db_pool_idle_connections";
pub const SESSIONS_OPEN: &str = "daypass_sessions_open";
pub const HEARTBEATS: &str = "daypass_heartbeats_total";
pub const SESSION_RENEWALS: &str = "daypass_session_renewals_total";
pub const SESSION_REFUNDS: &str = "daypass_session_refunds_total";
pub const SESSION_LAPSES: &str = "daypass_session_lapses_total";
pub const SESSIONS_ENDED: &str = "daypass_sessions_ended_total";
