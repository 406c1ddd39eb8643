//! The credentials a sidecar meets: an account key (Shared Key signing, which the SDK lacks, written
//! from Azure's "Authorize with Shared Key" reference as a per-try pipeline policy), a SAS token
//! (query parameters on every request), a connection string holding either, and Entra ID tokens
//! (managed identity, workload identity, Azure CLI) through azure_identity. Secrets come from the
//! standard variables or from files, and appear in no message.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, Url};
use azure_core::time::{to_rfc7231, OffsetDateTime};
use base64::Engine as _;
use hmac::{Hmac, Mac};

use crate::config::{AzureConfig, AzureCredential};

/// A credential, resolved: what signs the requests, where they go, and what to name in messages.
pub struct Credential {
    pub kind: AzureCredential,
    pub account: String,
    /// The account's blob endpoint (`https://<account>.blob.core.windows.net`, or Azurite's
    /// `http://127.0.0.1:10000/<account>`), without a query.
    pub endpoint: Url,
    pub signer: Signer,
    /// Where the secret came from ("AZURE_STORAGE_KEY", "key_file /run/secrets/key"), for messages.
    pub origin: String,
}

pub enum Signer {
    SharedKey(Arc<SharedKeyPolicy>),
    Sas(Arc<SasPolicy>),
    Token(Arc<dyn TokenCredential>),
}

/// What went wrong resolving a credential: always a sentence that says what to set.
pub type ResolveError = String;

pub fn resolve(config: &AzureConfig) -> Result<Credential, ResolveError> {
    let connection = secret(config.connection_string_file.as_deref(), "AZURE_STORAGE_CONNECTION_STRING", "connection_string_file")?;
    let key = secret(config.key_file.as_deref(), "AZURE_STORAGE_KEY", "key_file")?;
    let sas = secret(config.sas_file.as_deref(), "AZURE_STORAGE_SAS_TOKEN", "sas_file")?;
    let kind = match config.credential {
        Some(kind) => kind,
        None if connection.is_some() => AzureCredential::ConnectionString,
        None if key.is_some() => AzureCredential::SharedKey,
        None if sas.is_some() => AzureCredential::Sas,
        None => {
            return Err("no credential found: set AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_CONNECTION_STRING (or key_file, sas_file, connection_string_file), or set repository.azure.credential to managed_identity, workload_identity or azure_cli".into())
        }
    };
    let missing = |what: &str, variable: &str, file_key: &str| {
        format!("repository.azure.credential is {}: {what} is missing: set {variable} or repository.azure.{file_key}", kind_name(kind))
    };
    if kind == AzureCredential::ConnectionString {
        let (text, origin) = connection.ok_or_else(|| missing("the connection string", "AZURE_STORAGE_CONNECTION_STRING", "connection_string_file"))?;
        return from_connection_string(&text, config, origin);
    }
    let account = config
        .account
        .clone()
        .or_else(|| std::env::var("AZURE_STORAGE_ACCOUNT").ok())
        .filter(|a| !a.is_empty())
        .ok_or("repository.azure.account is not set: name the storage account there or in AZURE_STORAGE_ACCOUNT")?;
    let endpoint = endpoint(config.endpoint.as_deref(), &format!("https://{account}.blob.core.windows.net"))?;
    let (signer, origin) = match kind {
        AzureCredential::SharedKey => {
            let (key, origin) = key.ok_or_else(|| missing("the account key", "AZURE_STORAGE_KEY", "key_file"))?;
            (Signer::SharedKey(Arc::new(SharedKeyPolicy::new(&account, &key, &origin)?)), origin)
        }
        AzureCredential::Sas => {
            let (token, origin) = sas.ok_or_else(|| missing("the SAS token", "AZURE_STORAGE_SAS_TOKEN", "sas_file"))?;
            (Signer::Sas(Arc::new(SasPolicy::new(&token, &origin)?)), origin)
        }
        AzureCredential::ManagedIdentity => {
            let options = std::env::var("AZURE_CLIENT_ID").ok().map(|id| azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: Some(azure_identity::UserAssignedId::ClientId(id)),
                ..Default::default()
            });
            let credential = azure_identity::ManagedIdentityCredential::new(options).map_err(|e| format!("managed identity: {e}"))?;
            (Signer::Token(credential), "the managed identity".into())
        }
        AzureCredential::WorkloadIdentity => {
            let credential = azure_identity::WorkloadIdentityCredential::new(None)
                .map_err(|e| format!("workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE): {e}"))?;
            (Signer::Token(credential), "the workload identity".into())
        }
        AzureCredential::AzureCli => {
            let credential = azure_identity::AzureCliCredential::new(None).map_err(|e| format!("Azure CLI credential: {e}"))?;
            (Signer::Token(credential), "the Azure CLI login".into())
        }
        AzureCredential::ConnectionString => unreachable!("handled above"),
    };
    Ok(Credential { kind, account, endpoint, signer, origin })
}

pub fn kind_name(kind: AzureCredential) -> &'static str {
    match kind {
        AzureCredential::SharedKey => "shared_key",
        AzureCredential::Sas => "sas",
        AzureCredential::ConnectionString => "connection_string",
        AzureCredential::ManagedIdentity => "managed_identity",
        AzureCredential::WorkloadIdentity => "workload_identity",
        AzureCredential::AzureCli => "azure_cli",
    }
}

/// A secret from its file (when configured) or its variable, trimmed, with where it came from.
fn secret(file: Option<&Path>, variable: &str, file_key: &str) -> Result<Option<(String, String)>, ResolveError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("repository.azure.{file_key} {}: {e}", path.display()))?;
        return Ok(Some((text.trim().to_string(), format!("repository.azure.{file_key} ({})", path.display()))));
    }
    Ok(std::env::var(variable).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).map(|v| (v, variable.to_string())))
}

fn endpoint(configured: Option<&str>, default: &str) -> Result<Url, ResolveError> {
    let text = configured.unwrap_or(default).trim_end_matches('/');
    let url = Url::parse(text).map_err(|e| format!("repository.azure.endpoint {text:?}: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.query().is_some() || url.cannot_be_a_base() {
        return Err(format!("repository.azure.endpoint {text:?} must be an http(s) URL without a query (put a SAS in AZURE_STORAGE_SAS_TOKEN)"));
    }
    Ok(url)
}

/// The well-known development account (Azurite's), as `UseDevelopmentStorage=true` names it.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Parses an Azure Storage connection string (`Key=Value;…`): AccountName, AccountKey or
/// SharedAccessSignature, BlobEndpoint or DefaultEndpointsProtocol + EndpointSuffix, or
/// UseDevelopmentStorage=true. The config's account and endpoint, when set, must agree with it.
fn from_connection_string(text: &str, config: &AzureConfig, origin: String) -> Result<Credential, ResolveError> {
    let mut fields = std::collections::HashMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').ok_or_else(|| format!("{origin}: a part has no '=' (expected Key=Value;…)"))?;
        fields.insert(name.to_ascii_lowercase(), value.to_string());
    }
    let field = |name: &str| fields.get(name).cloned();
    let development = field("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let account = match (field("accountname"), development) {
        (Some(account), _) => account,
        (None, true) => DEV_ACCOUNT.into(),
        (None, false) => return Err(format!("{origin}: no AccountName")),
    };
    if let Some(configured) = config.account.as_deref().filter(|a| *a != account) {
        return Err(format!("repository.azure.account is {configured:?} but the connection string ({origin}) is for {account:?}"));
    }
    let default_endpoint = match (field("blobendpoint"), development) {
        (Some(url), _) => url,
        (None, true) => format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"),
        (None, false) => format!(
            "{}://{account}.blob.{}",
            field("defaultendpointsprotocol").unwrap_or_else(|| "https".into()),
            field("endpointsuffix").unwrap_or_else(|| "core.windows.net".into())
        ),
    };
    let endpoint = endpoint(config.endpoint.as_deref().or(Some(default_endpoint.as_str())), &default_endpoint)?;
    let signer = match (field("accountkey"), field("sharedaccesssignature"), development) {
        (Some(key), _, _) => Signer::SharedKey(Arc::new(SharedKeyPolicy::new(&account, &key, &origin)?)),
        (None, Some(sas), _) => Signer::Sas(Arc::new(SasPolicy::new(&sas, &origin)?)),
        (None, None, true) => Signer::SharedKey(Arc::new(SharedKeyPolicy::new(&account, DEV_KEY, &origin)?)),
        (None, None, false) => return Err(format!("{origin}: neither AccountKey nor SharedAccessSignature")),
    };
    Ok(Credential { kind: AzureCredential::ConnectionString, account, endpoint, signer, origin })
}

/// Signs each try of a request with the account key, as "Authorize with Shared Key" specifies for
/// the Blob service (version 2015-02-21 and later): HMAC-SHA256 over the verb, the standard headers,
/// the canonicalized `x-ms-` headers and the canonicalized resource. A per-try policy, because the
/// date is part of what is signed and a retry is signed anew.
pub struct SharedKeyPolicy {
    account: String,
    key: Vec<u8>,
}

impl fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyPolicy").field("account", &self.account).finish_non_exhaustive()
    }
}

impl SharedKeyPolicy {
    pub fn new(account: &str, key: &str, origin: &str) -> Result<Self, ResolveError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| format!("{origin}: the account key is not base64 (copy key1 or key2 of the storage account's access keys)"))?;
        Ok(SharedKeyPolicy { account: account.to_string(), key })
    }

    fn string_to_sign(&self, request: &Request) -> String {
        let header = |name: &str| request.headers().iter().find(|(n, _)| n.as_str().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str().to_string());
        let standard = |name: &str| header(name).unwrap_or_default();
        // Since version 2015-02-21 a zero length is signed as the empty string.
        let length = header("content-length")
            .or_else(|| request.body().len().map(|n| n.to_string()))
            .filter(|n| n != "0")
            .unwrap_or_default();
        let mut x_ms: Vec<(String, String)> = request
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str().to_ascii_lowercase().starts_with("x-ms-"))
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.as_str().split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect();
        x_ms.sort();
        let mut text = format!(
            "{}\n{}\n{}\n{length}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            request.method().as_str(),
            standard("content-encoding"),
            standard("content-language"),
            standard("content-md5"),
            standard("content-type"),
            standard("date"),
            standard("if-modified-since"),
            standard("if-match"),
            standard("if-none-match"),
            standard("if-unmodified-since"),
            standard("range"),
        );
        for (name, value) in &x_ms {
            text.push_str(&format!("{name}:{value}\n"));
        }
        text.push_str(&canonicalized_resource(&self.account, request.url()));
        text
    }
}

/// `/<account><path>` and then each query parameter on a line of its own, names lower-cased and
/// sorted, values decoded and comma-joined in sorted order.
fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut resource = format!("/{account}{}", url.path());
    let mut parameters: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for (name, value) in url.query_pairs() {
        parameters.entry(name.to_ascii_lowercase()).or_default().push(value.into_owned());
    }
    for (name, mut values) in parameters {
        values.sort();
        resource.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    resource
}

#[async_trait::async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        request.insert_header("x-ms-date", to_rfc7231(&OffsetDateTime::now_utc()));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(self.string_to_sign(request).as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        request.insert_header("authorization", format!("SharedKey {}:{signature}", self.account));
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Appends a SAS token's parameters to every request; a token that has expired, or lacks a permission
/// a backup needs, is reported before any request (`check`).
pub struct SasPolicy {
    pairs: Vec<(String, String)>,
    pub expiry: Option<OffsetDateTime>,
    pub permissions: String,
}

impl fmt::Debug for SasPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasPolicy").field("expiry", &self.expiry).field("permissions", &self.permissions).finish_non_exhaustive()
    }
}

impl SasPolicy {
    pub fn new(token: &str, origin: &str) -> Result<Self, ResolveError> {
        let token = token.trim().trim_start_matches('?');
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(token.as_bytes()).into_owned().collect();
        let value = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        if value("sig").is_none() {
            return Err(format!("{origin}: this is not a SAS token (no sig= parameter); give the token's query string, e.g. sv=…&sp=…&se=…&sig=…"));
        }
        let expiry = match value("se") {
            Some(se) => Some(parse_sas_time(&se).ok_or_else(|| format!("{origin}: the SAS token's expiry se={se:?} is not a time"))?),
            None => None,
        };
        Ok(SasPolicy { expiry, permissions: value("sp").unwrap_or_default(), pairs })
    }

    /// Whether the token can still serve, and which of the permissions a writer needs it lacks.
    pub fn check(&self, origin: &str, writing: bool) -> Result<(), String> {
        if let Some(expiry) = self.expiry.filter(|e| *e <= OffsetDateTime::now_utc()) {
            return Err(format!("the SAS token ({origin}) expired at {}: issue a new one and put it there", to_rfc7231(&expiry)));
        }
        let needed: &[(char, &str)] = if writing {
            &[('r', "read"), ('l', "list"), ('c', "create"), ('w', "write")]
        } else {
            &[('r', "read"), ('l', "list")]
        };
        let lacking: Vec<&str> = needed.iter().filter(|(p, _)| !self.permissions.contains(*p)).map(|(_, name)| *name).collect();
        if !lacking.is_empty() {
            return Err(format!(
                "the SAS token ({origin}) lacks the {} permission{} (sp={}); a backup needs read, list, create and write (sp=rlcw; add for append is not used): issue a token with them",
                lacking.join(", "),
                if lacking.len() > 1 { "s" } else { "" },
                self.permissions
            ));
        }
        Ok(())
    }
}

/// SAS times are ISO 8601 UTC: `2026-12-31T23:59:59Z`, `2026-12-31T23:59Z` or `2026-12-31`.
fn parse_sas_time(text: &str) -> Option<OffsetDateTime> {
    let full = match text.len() {
        10 => format!("{text}T00:00:00Z"),
        17 => format!("{}:00Z", text.trim_end_matches('Z')),
        _ => text.to_string(),
    };
    azure_core::time::parse_rfc3339(&full).ok()
}

#[async_trait::async_trait]
impl Policy for SasPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        if !request.url().query_pairs().any(|(n, _)| n == "sig") {
            let mut query = request.url_mut().query_pairs_mut();
            for (name, value) in &self.pairs {
                query.append_pair(name, value);
            }
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Removes SAS signatures (`sig=…`) from a text that may quote a URL (transport errors do).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        out.push_str("REDACTED");
        rest = &rest[at + 4..];
        let end = rest.find(|c: char| c == '&' || c == ' ' || c == ')' || c == '"' || c == '\'').unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::Method;

    /// The example of "Authorize with Shared Key" (Blob service, path-style as Azurite serves it): the
    /// resource repeats the account, the query parameters follow sorted, each on its own line.
    #[test]
    fn the_string_to_sign_follows_the_published_layout() {
        let policy = SharedKeyPolicy::new("devstoreaccount1", DEV_KEY, "test").unwrap();
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/backups/packs/ab/abc?comp=block&blockid=AAAA%3D").unwrap();
        let mut request = Request::new(url, Method::Put);
        request.insert_header("content-length", "5");
        request.insert_header("content-md5", "XUFAKrxLKna5cZ2REBfFkg==");
        request.insert_header("x-ms-version", "2026-02-06");
        request.insert_header("x-ms-date", "Wed, 02 Dec 2026 15:00:00 GMT");
        request.insert_header("x-ms-immutability-policy-mode", "  Locked ");
        let text = policy.string_to_sign(&request);
        assert_eq!(
            text,
            "PUT\n\n\n5\nXUFAKrxLKna5cZ2REBfFkg==\n\n\n\n\n\n\n\n\
             x-ms-date:Wed, 02 Dec 2026 15:00:00 GMT\nx-ms-immutability-policy-mode:Locked\nx-ms-version:2026-02-06\n\
             /devstoreaccount1/devstoreaccount1/backups/packs/ab/abc\nblockid:AAAA=\ncomp:block"
        );
    }

    #[test]
    fn a_sas_token_is_checked_for_expiry_and_permissions_and_its_signature_never_shown() {
        let expired = SasPolicy::new("?sv=2022-11-02&sp=rl&se=2020-01-01T00:00:00Z&sig=c2VjcmV0", "AZURE_STORAGE_SAS_TOKEN").unwrap();
        let err = expired.check("AZURE_STORAGE_SAS_TOKEN", false).unwrap_err();
        assert!(err.contains("expired") && !err.contains("c2VjcmV0"), "{err}");
        let read_only = SasPolicy::new("sv=2022-11-02&sp=rl&se=2099-01-01&sig=c2VjcmV0", "x").unwrap();
        assert!(read_only.check("x", false).is_ok());
        let err = read_only.check("x", true).unwrap_err();
        assert!(err.contains("create, write") && !err.contains("c2VjcmV0"), "{err}");
        assert_eq!(redact("error sending request for url (http://h/c/b?sv=1&sig=abc%2Bdef&sp=r)"), "error sending request for url (http://h/c/b?sv=1&sig=REDACTED&sp=r)");
    }

    #[test]
    fn a_connection_string_gives_account_endpoint_and_key() {
        let text = format!("DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:10000/{DEV_ACCOUNT};");
        let credential = from_connection_string(&text, &AzureConfig::default(), "AZURE_STORAGE_CONNECTION_STRING".into()).unwrap();
        assert_eq!(credential.account, DEV_ACCOUNT);
        assert_eq!(credential.endpoint.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert!(matches!(credential.signer, Signer::SharedKey(_)));
        let cloud = from_connection_string("AccountName=acme;SharedAccessSignature=sv=1&sp=rl&sig=x", &AzureConfig::default(), "c".into()).unwrap();
        assert_eq!(cloud.endpoint.as_str(), "https://acme.blob.core.windows.net/");
        assert!(matches!(cloud.signer, Signer::Sas(_)));
    }
}
