//! Key-pair authentication: the RS256 JSON Web Token Snowflake accepts as
//! `AUTHENTICATOR = SNOWFLAKE_JWT`.
//!
//! Claims: `iss = <ACCOUNT>.<USER>.SHA256:<fingerprint>`, `sub =
//! <ACCOUNT>.<USER>`, `iat`, `exp`, where the fingerprint is the base64
//! SHA-256 of the public key's DER `SubjectPublicKeyInfo` (what `openssl rsa
//! -pubout -outform DER | openssl dgst -sha256 -binary | base64` prints and
//! what Snowflake shows as `RSA_PUBLIC_KEY_FP`). The account is upper-case
//! and without a region or cloud suffix.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

use crate::SnowflakeError;

/// An RSA private key (unencrypted PKCS#8 or PKCS#1 PEM) with its public
/// key fingerprint.
pub struct KeyPair {
    key: RsaKeyPair,
    fingerprint: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Reads a PEM private key. Encrypted keys are refused with a message
    /// saying how to decrypt them.
    pub fn from_pem(pem: &str) -> Result<Self, SnowflakeError> {
        let bad = |reason: &str| SnowflakeError::config("private_key_path", reason);
        let (label, der) = pem_block(pem).ok_or_else(|| bad("not a PEM private key"))?;
        let key = match label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der).map_err(|e| bad(&format!("not an RSA PKCS#8 key: {e}")))?,
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der).map_err(|e| bad(&format!("not an RSA PKCS#1 key: {e}")))?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(bad(
                    "encrypted keys are not supported; store it decrypted (openssl pkcs8 -in k.p8 -out k.pem) with tight \
                     file permissions or in a secret mount",
                ));
            }
            other => return Err(bad(&format!("PEM block `{other}` is not a private key"))),
        };
        let spki = subject_public_key_info(key.public().as_ref());
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        Ok(KeyPair { key, fingerprint: format!("SHA256:{}", STANDARD.encode(digest.as_ref())) })
    }

    /// `SHA256:<base64>`, as Snowflake's `RSA_PUBLIC_KEY_FP`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A signed token for `account`/`user`, issued at `now` (seconds since
    /// the epoch), valid for `lifetime_secs` (Snowflake accepts at most 3600).
    pub fn token(&self, account: &str, user: &str, now: u64, lifetime_secs: u64) -> Result<String, SnowflakeError> {
        let qualified = format!("{}.{}", account_locator(account), user.to_ascii_uppercase());
        let header = r#"{"alg":"RS256","typ":"JWT"}"#;
        // Claims in the conventional order (a JSON map would sort them).
        let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let payload = format!(
            r#"{{"iss":{},"sub":{},"iat":{now},"exp":{}}}"#,
            quote(&format!("{qualified}.{}", self.fingerprint)),
            quote(&qualified),
            now + lifetime_secs.min(3600)
        );
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload.as_bytes()));
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut sig)
            .map_err(|_| SnowflakeError::config("private_key_path", "signing with the key failed"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The account part of the JWT claims: upper case, without the region and
/// cloud suffix (`xy12345.eu-central-1` → `XY12345`; `myorg-acct` stays).
pub fn account_locator(account: &str) -> String {
    account.split('.').next().unwrap_or(account).to_ascii_uppercase()
}

/// The first PEM block: its label and decoded body.
fn pem_block(pem: &str) -> Option<(String, Vec<u8>)> {
    let begin = pem.find("-----BEGIN ")?;
    let rest = &pem[begin + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_owned();
    let body_start = label_end + 5;
    let end = rest.find(&format!("-----END {label}-----"))?;
    let body: String = rest.get(body_start..end)?.chars().filter(|c| !c.is_whitespace()).collect();
    Some((label, STANDARD.decode(body).ok()?))
}

/// Wraps a PKCS#1 `RSAPublicKey` into a DER `SubjectPublicKeyInfo`.
fn subject_public_key_info(rsa_public_key: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }.
    const ALGORITHM: [u8; 15] =
        [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bits = vec![0x03];
    der_len(rsa_public_key.len() + 1, &mut bits);
    bits.push(0);
    bits.extend_from_slice(rsa_public_key);
    let mut out = vec![0x30];
    der_len(ALGORITHM.len() + bits.len(), &mut out);
    out.extend_from_slice(&ALGORITHM);
    out.extend_from_slice(&bits);
    out
}

fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // A throwaway 2048-bit key generated for these tests only; the expected
    // values were computed with openssl (see the crate README).
    const PKCS8: &str = include_str!("../tests/data/test_key_pkcs8.pem");
    const PKCS1: &str = include_str!("../tests/data/test_key_pkcs1.pem");
    const FINGERPRINT: &str = "SHA256:parjxOhIN1S/gptWJuekjmkMIwQ3+fAxwEHUvbk+KD4=";
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJNWUFDQ09VTlQuTEFCTEFLRS5TSEEyNTY6cGFyanhPaElOMVMvZ3B0V0p1ZWtqbWtNSXdRMytmQXh3RUhVdmJrK0tEND0iLCJzdWIiOiJNWUFDQ09VTlQuTEFCTEFLRSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzNjAwfQ.CGbhs7y4S3wgYdrc93_CPWGJ7mjazMv5_fy-ajf4ves7xxL_6FnofVzoD54QD6n0XXmAyhWbkcz5bUfnXD2IVusPVLh2uk85pSk_-jQlhBXF_x_8dzoxMEb_5GSEAijYzDsBkqWvXiYUDKL_LNcTWlzSjvsV5r1M7-9PKSR8BmEvRgAqGvEat4DCGP7rtGwBX2Zr07w6pEillq-g_QHi_Gh-qYlRuiU7DVTXXIjzAzJIkbWkJ2q0HVVNDtyJ6S4eK6h_5qywjr7cvqQ-_3lSovKwvXgi_A2Pae6wUY-zR1pI11tueN-5HMZtxusHGeYbRHx7kE85ijGYfqpkGCMu2A";

    #[test]
    fn fingerprint_matches_openssl_for_both_pem_forms() {
        assert_eq!(KeyPair::from_pem(PKCS8).unwrap().fingerprint(), FINGERPRINT);
        assert_eq!(KeyPair::from_pem(PKCS1).unwrap().fingerprint(), FINGERPRINT);
    }

    #[test]
    fn token_matches_the_openssl_signed_reference() {
        let k = KeyPair::from_pem(PKCS8).unwrap();
        // Account with a region suffix and lower-case names are normalized.
        assert_eq!(k.token("myaccount.eu-central-1", "lablake", 1_700_000_000, 3600).unwrap(), TOKEN);
        // The lifetime is capped at Snowflake's maximum of one hour.
        assert_eq!(k.token("MYACCOUNT", "LABLAKE", 1_700_000_000, 86_400).unwrap(), TOKEN);
    }

    #[test]
    fn bad_keys_are_config_errors_naming_the_key() {
        for pem in [
            "",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----",
        ] {
            match KeyPair::from_pem(pem) {
                Err(SnowflakeError::Config { key, .. }) => assert_eq!(key, "private_key_path"),
                other => panic!("{other:?}"),
            }
        }
        assert!(format!("{:?}", KeyPair::from_pem(PKCS8).unwrap()).contains("SHA256:"));
    }

    #[test]
    fn account_locators() {
        assert_eq!(account_locator("xy12345.eu-central-1.aws"), "XY12345");
        assert_eq!(account_locator("myorg-myaccount"), "MYORG-MYACCOUNT");
    }
}
