//! The names a policy grants: an exact name, or a `prefix*` matching every name that starts with
//! the prefix (`*` alone matches everything). No other wildcard: a `*` anywhere but at the end is
//! refused when the file is read, so that what a pattern grants can be told at a glance.

/// One allowed name or prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    /// # Errors
    /// Empty, or a `*` other than one at the end.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_suffix('*') {
            _ if text.is_empty() => Err("an empty pattern".into()),
            Some(prefix) if prefix.contains('*') => Err(format!("{text:?}: `*` may only end a pattern")),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.contains('*') => Err(format!("{text:?}: `*` may only end a pattern")),
            None => Ok(Self::Exact(text.to_owned())),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// A list of patterns; empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    /// # Errors
    /// Every pattern that does not parse, one message each.
    pub fn parse(texts: &[String]) -> Result<Self, Vec<String>> {
        let (ok, bad): (Vec<_>, Vec<_>) = texts.iter().map(|t| Pattern::parse(t)).partition(Result::is_ok);
        if bad.is_empty() {
            Ok(Self(ok.into_iter().filter_map(Result::ok).collect()))
        } else {
            Err(bad.into_iter().filter_map(Result::err).collect())
        }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(texts: &[&str]) -> Patterns {
        Patterns::parse(&texts.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_names_prefixes_and_the_star() {
        let p = patterns(&["api", "web-*"]);
        assert!(p.allows("api"));
        assert!(!p.allows("api2"), "exact means exact");
        assert!(p.allows("web-"));
        assert!(p.allows("web-shop"));
        assert!(!p.allows("web"));
        assert!(patterns(&["*"]).allows("anything"));
        assert!(!patterns(&[]).allows("api"), "an empty list allows nothing");
    }

    #[test]
    fn a_star_anywhere_but_the_end_and_empty_patterns_are_refused() {
        for bad in ["", "*-web", "a*b", "**"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
