//! Compact JWS (RFC 7515) signed with EdDSA over Ed25519 (RFC 8037), and the JWK
//! of a public key. Pure: no storage, no clock.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// base64url without padding, as JOSE writes every binary value.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK `x` member of a public key: its 32 bytes, base64url.
pub(crate) fn public_x(key: &VerifyingKey) -> String {
    b64(key.as_bytes())
}

/// The key id of a public key: its JWK thumbprint (RFC 7638), so the same key has
/// the same kid in every process and after every restart, and installing a key
/// twice is recognised.
pub(crate) fn thumbprint(x: &str) -> String {
    // The required members in lexicographic order, without whitespace (RFC 7638 §3);
    // `x` is base64url, so it needs no escaping.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    b64(&Sha256::digest(canonical.as_bytes()))
}

/// The public JWK that verifies what the key `kid` signs.
pub(crate) fn public_jwk(kid: &str, x: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
}

/// `header.payload.signature`, each part base64url, the signature over the first two.
pub(crate) fn compact_jws(key: &SigningKey, header: &Value, payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature.to_bytes()))
}

/// A JWT with `claims`, signed by the key `kid`.
pub(crate) fn sign_jwt(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    compact_jws(key, &header, claims.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    /// The key of RFC 8037 appendix A.1.
    fn rfc8037_key() -> SigningKey {
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        SigningKey::from_bytes(&d.try_into().unwrap())
    }

    #[test]
    fn the_public_key_and_thumbprint_match_rfc_8037() {
        let key = rfc8037_key();
        let x = public_x(&key.verifying_key());
        assert_eq!(x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn a_signature_matches_rfc_8037() {
        // RFC 8037 appendix A.4: Ed25519 signatures are deterministic.
        let jws = compact_jws(
            &rfc8037_key(),
            &json!({"alg": "EdDSA"}),
            b"Example of Ed25519 signing",
        );
        assert_eq!(
            jws,
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.\
             hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn a_jwt_has_its_kid_and_verifies_with_the_published_x() {
        let key = rfc8037_key();
        let x = public_x(&key.verifying_key());
        let kid = thumbprint(&x);
        let token = sign_jwt(&key, &kid, &json!({"sub": "7", "exp": 2_000_000_000}));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims, json!({"sub": "7", "exp": 2_000_000_000}));

        // Verified as a relying party would: with the key rebuilt from the JWK's `x`.
        let jwk = public_jwk(&kid, &x);
        let x_bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(jwk["x"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let public = VerifyingKey::from_bytes(&x_bytes).unwrap();
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap()
            .try_into()
            .unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &Signature::from_bytes(&signature))
            .expect("the signature verifies");
        let mut tampered = signed.into_bytes();
        tampered[0] ^= 1;
        assert!(
            public
                .verify(&tampered, &Signature::from_bytes(&signature))
                .is_err()
        );
    }

    #[test]
    fn the_jwk_has_the_members_verifiers_look_for() {
        assert_eq!(
            public_jwk("k1", "abc"),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "k1", "alg": "EdDSA", "use": "sig"})
        );
    }
}
