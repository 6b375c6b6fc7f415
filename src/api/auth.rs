//! Bearer-token authentication and tenant scoping.
//!
//! Tokens come from a YAML file; each maps to the tenants it may read and write (or all). A
//! presented token is hashed (SHA-256) and compared with every configured hash in constant time,
//! so neither timing nor length says which token, or how much of one, matched. The interceptor
//! puts the caller's `Principal` in the request extensions; handlers check each tenant against it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::telemetry::Metrics;

/// What a token may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The tenants this caller may act for; `None` means every tenant.
    pub tenants: Option<Arc<HashSet<String>>>,
}

impl Principal {
    /// A caller with access to every tenant (auth off, or an unrestricted token).
    pub fn any() -> Principal {
        Principal { tenants: None }
    }

    /// True if this caller may read and write `tenant`'s threads.
    pub fn allows(&self, tenant: &str) -> bool {
        self.tenants.as_ref().is_none_or(|t| t.contains(tenant))
    }
}

/// The token file: `tokens: [{token: "...", tenants: ["a", "b"]}]`; no `tenants` means all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    #[serde(default)]
    tenants: Option<Vec<String>>,
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The configured tokens, as hashes.
#[derive(Clone)]
pub struct Tokens {
    entries: Arc<Vec<([u8; 32], Principal)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.entries.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses a token file's text; `origin` names it in errors.
    pub fn parse(yaml: &str, origin: &str) -> Result<Tokens, AuthError> {
        let invalid = |message: String| AuthError::Invalid {
            path: origin.to_string(),
            message,
        };
        let file: TokenFile = serde_yaml::from_str(yaml).map_err(|e| invalid(e.to_string()))?;
        if file.tokens.is_empty() {
            return Err(invalid(
                "no tokens: remove --auth-token-file to disable auth".into(),
            ));
        }
        let mut entries = Vec::with_capacity(file.tokens.len());
        for (i, t) in file.tokens.into_iter().enumerate() {
            if t.token.len() < 16 {
                return Err(invalid(format!(
                    "tokens[{i}].token: shorter than 16 characters"
                )));
            }
            let tenants = t
                .tenants
                .map(|v| Arc::new(v.into_iter().collect::<HashSet<_>>()));
            entries.push((digest(&t.token), Principal { tenants }));
        }
        Ok(Tokens {
            entries: Arc::new(entries),
        })
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// The principal of a presented token, compared in constant time against every entry.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let d = digest(presented);
        let mut found = None;
        // No early exit: every entry is compared, whichever matches.
        for (hash, principal) in self.entries.iter() {
            if bool::from(hash.ct_eq(&d)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// The interceptor: no tokens configured lets every call through with `Principal::any()`.
#[derive(Clone)]
pub struct Auth {
    tokens: Option<Tokens>,
    metrics: Arc<Metrics>,
}

impl Auth {
    /// An interceptor over `tokens` (`None`: auth off).
    pub fn new(tokens: Option<Tokens>, metrics: Arc<Metrics>) -> Auth {
        Auth { tokens, metrics }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = match &self.tokens {
            None => Principal::any(),
            Some(tokens) => {
                let presented = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    });
                match presented.and_then(|t| tokens.authenticate(t.trim())) {
                    Some(p) => p,
                    None => {
                        self.metrics.error("UNAUTHENTICATED");
                        return Err(Status::unauthenticated(
                            "missing or invalid bearer token (authorization: Bearer <token>)",
                        ));
                    }
                }
            }
        };
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_tenants() {
        let t = Tokens::parse(
            "tokens:\n  - {token: aaaaaaaaaaaaaaaaaaaa, tenants: [a]}\n  - {token: bbbbbbbbbbbbbbbbbbbb}\n",
            "t.yaml",
        )
        .unwrap();
        let a = t.authenticate("aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert!(a.allows("a") && !a.allows("b"));
        let any = t.authenticate("bbbbbbbbbbbbbbbbbbbb").unwrap();
        assert!(any.allows("a") && any.allows("zzz"));
        assert!(
            t.authenticate("aaaaaaaaaaaaaaaaaaa").is_none(),
            "a prefix is not the token"
        );
        assert!(t.authenticate("").is_none());
    }

    #[test]
    fn bad_token_files_are_rejected_with_the_path() {
        let e = Tokens::parse("tokens: []\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.yaml: no tokens"), "{e}");
        let e = Tokens::parse("tokens:\n  - {token: short}\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokens[0].token: shorter than 16"), "{e}");
        let e = Tokens::parse("tokenz: []\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.yaml: ") && e.contains("tokenz"), "{e}");
    }
}
