//! A PostgreSQL URL that never shows its password. `Debug` and `Display` print
//! `postgres://user:***@host/db`, so a `{:?}` of the configuration, a log line or an error message
//! cannot leak it; the URL itself leaves only through [`DatabaseUrl::expose`], for the calls that
//! connect with it.
//!
//! Parsing never fails and checks nothing: clap quotes a value it refuses back in its error, which
//! would print the password. [`crate::config`] checks the URL and reports a problem without it.
//! Redaction leans towards hiding: a URL too odd to take apart with certainty is not shown at all.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use url::Url;

/// Stands in for a password.
const HIDDEN: &str = "***";
/// Stands in for a whole URL that cannot be redacted with certainty.
const UNSHOWABLE: &str = "<hidden: not a URL that can be shown without its secrets>";

/// A database URL as configured, possibly holding a password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL with its password, to connect with. Never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with every password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0).unwrap_or_else(|| UNSHOWABLE.to_owned())
    }
}

impl FromStr for DatabaseUrl {
    type Err = Infallible;

    fn from_str(url: &str) -> Result<Self, Infallible> {
        Ok(Self(url.to_owned()))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

/// libpq and sqlx also take the password as a query parameter (`?password=`, `?sslpassword=`).
fn is_secret_parameter(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

/// Stands in for a host list while the rest of a multi-host URL is redacted.
const HOST_LIST: &str = "ratchet-host-list.invalid";

/// `url` with its passwords hidden, or `None` when it cannot be shown safely.
fn redact(url: &str) -> Option<String> {
    // libpq's `user:pw@h1:5432,h2:5432/db` is no URL to the parser: redact it with one stand-in
    // host, then put the list back (host names and ports only, or it is not shown).
    if let Some((before, hosts, after)) = host_list(url) {
        let shown_hosts = hosts
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[],%".contains(c));
        if !shown_hosts {
            return None;
        }
        return redact(&format!("{before}{HOST_LIST}{after}")).map(|r| r.replacen(HOST_LIST, hosts, 1));
    }
    let mut parsed = Url::parse(url).ok()?;
    // An `@` past the authority is most likely a password whose unescaped `/`, `?` or `#` ended
    // the authority early: the parser could not know it for one, so we cannot hide it.
    let stray_at = parsed.path().contains('@')
        || parsed.query().is_some_and(|q| q.contains('@'))
        || parsed.fragment().is_some_and(|f| f.contains('@'));
    if stray_at || parsed.cannot_be_a_base() {
        return None;
    }
    if parsed.password().is_some() {
        parsed.set_password(Some(HIDDEN)).ok()?;
    }
    if parsed.query_pairs().any(|(key, _)| is_secret_parameter(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_secret_parameter(&key) {
                    HIDDEN.to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    Some(parsed.to_string())
}

/// A URL whose authority names several hosts, as (what comes before the list, the list, what
/// comes after it).
fn host_list(url: &str) -> Option<(&str, &str, &str)> {
    let scheme_end = url.find("://")? + 3;
    let authority_end = url[scheme_end..].find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let hosts_start = url[scheme_end..authority_end]
        .rfind('@')
        .map_or(scheme_end, |i| scheme_end + i + 1);
    let hosts = &url[hosts_start..authority_end];
    hosts
        .contains(',')
        .then(|| (&url[..hosts_start], hosts, &url[authority_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shown(url: &str) -> String {
        DatabaseUrl::from_str(url).unwrap().to_string()
    }

    #[test]
    fn the_password_is_replaced_and_the_rest_kept() {
        assert_eq!(
            shown("postgres://app:hunter2@db.internal:5432/ratchet?sslmode=require"),
            "postgres://app:***@db.internal:5432/ratchet?sslmode=require"
        );
        assert_eq!(
            shown("postgres://postgres@127.0.0.1:5432/ratchet"),
            "postgres://postgres@127.0.0.1:5432/ratchet"
        );
        let debug = format!("{:?}", DatabaseUrl::from_str("postgresql://a:b%40c@h/d").unwrap());
        assert_eq!(debug, r#"DatabaseUrl("postgresql://a:***@h/d")"#);
    }

    #[test]
    fn every_host_of_a_multi_host_url_is_shown_and_its_password_is_not() {
        assert_eq!(
            shown("postgres://app:hunter2@h1:5432,h2:5433,[::1]:5434/ratchet?target_session_attrs=read-write"),
            "postgres://app:***@h1:5432,h2:5433,[::1]:5434/ratchet?target_session_attrs=read-write"
        );
        assert_eq!(
            shown("postgres://app@h1,h2/ratchet?password=hunter2"),
            "postgres://app@h1,h2/ratchet?password=***"
        );
        // A comma where no host name has one: most likely the password's, so nothing is shown.
        assert_eq!(shown("postgres://app:a,b/c@h1,h2/db"), UNSHOWABLE);
    }

    #[test]
    fn passwords_given_as_query_parameters_are_hidden_too() {
        let shown = shown("postgres://app@h/db?password=hunter2&sslpassword=swordfish&application_name=x");
        assert!(!shown.contains("hunter2") && !shown.contains("swordfish"), "{shown}");
        assert!(shown.contains("application_name=x"), "{shown}");
    }

    #[test]
    fn odd_urls_are_hidden_whole_rather_than_half_redacted() {
        for odd in [
            "postgres://app:pa/ss@h/db", // `/` in the password ends the authority early
            "postgres://app:12?s@h/db",  // so does `?`, leaving `s@h/db` in the query
            "postgres:app:hunter2@h/db", // no `//`: all of it is a path
            "not a url hunter2",
            "",
        ] {
            assert_eq!(shown(odd), UNSHOWABLE, "{odd}");
        }
    }

    #[test]
    fn expose_gives_the_url_as_configured() {
        let url = "postgres://app:hunter2@h/db";
        assert_eq!(DatabaseUrl::from_str(url).unwrap().expose(), url);
    }

    proptest! {
        #[test]
        fn redaction_never_panics(s in "\\PC{0,60}") {
            let _ = shown(&s);
            let _ = shown(&format!("postgres://{s}"));
        }

        #[test]
        fn no_password_is_ever_shown(
            user in "[a-z]{1,8}",
            password in "SECRET[ -~]{0,12}",
            rest in "[ -~]{0,20}",
        ) {
            let url = format!("postgres://{user}:{password}@db.internal:5432/{rest}");
            let shown = shown(&url);
            prop_assert!(!shown.contains("SECRET"), "{}", shown);
        }
    }
}
