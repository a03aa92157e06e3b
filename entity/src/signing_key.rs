use sea_orm::entity::prelude::*;

/// A key that signs offline leases (rule 23). The current key is the one not retired.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_keys")]
pub struct Model {
    /// The JWK thumbprint (RFC 7638) of the public key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kid: String,
    /// PKCS#8, PEM. Never logged: this type has no `Debug` that shows it.
    pub private_key: String,
    /// The public key as the JWK's `x` (base64url, no padding).
    pub public_x: String,
    pub created_at: DateTimeUtc,
    pub retired_at: Option<DateTimeUtc>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("public_x", &self.public_x)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
