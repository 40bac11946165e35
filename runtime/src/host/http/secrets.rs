//! Credentials the plugin never sees.
//!
//! A connection names its secrets and where the host reads them (an environment variable or a
//! file, never the config itself), and how they are used: header templates for the origins they
//! belong to (`Authorization: Bearer {token}`). The host renders the header into each matching
//! request as it leaves the sandbox, so the value is never in the plugin's config, memory, or a
//! response the plugin reads. [`Secret`] prints as `***` wherever it is formatted, so a value
//! cannot reach a log, an error or the state by accident.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::Origin;

/// A secret's value. Its `Debug` is `***`; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where the host reads a secret from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An environment variable of the Duplex process.
    Env(String),
    /// A file (its content, without a trailing newline), as container secrets are mounted.
    File(std::path::PathBuf),
}

impl Source {
    /// Reads the secret. The error names where it looked, never a value.
    pub fn read(&self) -> Result<Secret, String> {
        let value = match self {
            Source::Env(var) => std::env::var(var).map_err(|e| match e {
                std::env::VarError::NotPresent => {
                    format!("environment variable {var} is not set")
                }
                std::env::VarError::NotUnicode(_) => {
                    format!("environment variable {var} is not valid UTF-8")
                }
            })?,
            Source::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err(match self {
                Source::Env(var) => format!("environment variable {var} is empty"),
                Source::File(path) => format!("secret file {} is empty", path.display()),
            });
        }
        Ok(Secret::new(value))
    }
}

/// A connection's secrets by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, Secret>);

impl Secrets {
    pub fn insert(&mut self, name: impl Into<String>, secret: Secret) {
        self.0.insert(name.into(), secret);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    /// Every secret's value, for scrubbing text that might contain one.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(Secret::expose)
    }
}

/// Text with `{secret}` placeholders, filled in by the host as a request leaves the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// Checks that every `{name}` is a secret `known` has.
    pub fn new(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Template, String> {
        for placeholder in placeholders(text)? {
            if !known(placeholder) {
                return Err(format!(
                    "{{{placeholder}}} is not one of the connection's secrets"
                ));
            }
        }
        Ok(Template(text.to_owned()))
    }

    /// The text with the secrets' values in. Never log the result.
    pub fn render(&self, secrets: &Secrets) -> Result<String, String> {
        let mut out = String::with_capacity(self.0.len() + 64);
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').unwrap_or(after.len());
            let name = &after[..close];
            let secret = secrets
                .0
                .get(name)
                .ok_or_else(|| format!("secret {name} was not loaded"))?;
            out.push_str(secret.expose());
            rest = after.get(close + 1..).unwrap_or_default();
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A header the host adds to requests for `origin`: `name: template`, where `{secret}` in the
/// template is replaced by that secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub origin: Origin,
    pub name: HeaderName,
    template: Template,
}

impl HeaderRule {
    /// Checks the header name and that every `{name}` in the template is a secret in `known`.
    pub fn new(
        origin: Origin,
        name: &str,
        template: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<HeaderRule, String> {
        let name =
            HeaderName::try_from(name).map_err(|_| format!("{name:?} is not a header name"))?;
        let template = Template::new(template, known).map_err(|e| format!("header {name}: {e}"))?;
        Ok(HeaderRule {
            origin,
            name,
            template,
        })
    }

    /// The header's value with the secrets filled in, marked sensitive (hyper then keeps it out
    /// of its own debug output).
    pub fn render(&self, secrets: &Secrets) -> Result<HeaderValue, String> {
        let text = self
            .template
            .render(secrets)
            .map_err(|e| format!("header {}: {e}", self.name))?;
        sensitive(&text).map_err(|_| {
            format!(
                "header {} is not a valid header value once its secrets are filled in (a newline in a secret?)",
                self.name
            )
        })
    }
}

/// A header value marked sensitive.
pub fn sensitive(text: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = HeaderValue::try_from(text)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The `{name}`s of a template.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{template:?} opens a {{ it does not close"))?;
        names.push(&after[..close]);
        rest = &after[close + 1..];
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_header_from_secrets_and_never_prints_one() {
        let mut secrets = Secrets::default();
        secrets.insert("token", Secret::new("canary-6f1e"));
        let origin = Origin::parse("https://api.example.com").unwrap();
        let rule = HeaderRule::new(origin, "Authorization", "Bearer {token}", &|n| {
            secrets.contains(n)
        })
        .unwrap();
        let value = rule.render(&secrets).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer canary-6f1e");
        assert!(value.is_sensitive());
        assert!(!format!("{secrets:?} {rule:?}").contains("canary"));
    }

    #[test]
    fn refuses_templates_naming_unknown_secrets() {
        let origin = Origin::parse("https://api.example.com").unwrap();
        let err = HeaderRule::new(origin.clone(), "Authorization", "Bearer {tokn}", &|n| {
            n == "token"
        })
        .unwrap_err();
        assert!(err.contains("{tokn}"), "{err}");
        assert!(HeaderRule::new(origin, "Bad Header", "x", &|_| true).is_err());
    }

    #[test]
    fn reads_secrets_from_files_without_the_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = Source::File(path).read().unwrap();
        assert_eq!(secret.expose(), "s3cret");
        let err = Source::Env("DUPLEX_TEST_SURELY_UNSET".into())
            .read()
            .unwrap_err();
        assert!(err.contains("DUPLEX_TEST_SURELY_UNSET"), "{err}");
    }
}
