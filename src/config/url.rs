//! The little URL handling configuration needs: a sanity check for upstream URLs and hiding
//! the password in connection URLs. A full URL parser is not a dependency; these checks only
//! have to catch typos early and never leak a password.

/// What replaces a secret wherever configuration is shown.
pub(crate) const REDACTED: &str = "[redacted]";

/// Checks that `value` is an absolute `http://` or `https://` URL with a host, so a typo
/// fails at startup rather than as a connection error on the first sync.
pub(crate) fn check_http_url(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{value:?} contains whitespace"));
    }
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| format!("{value:?} is not an absolute http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    Ok(())
}

/// Replaces the password of `scheme://user:password@host/...` and any `password=` query
/// parameter with [`REDACTED`]. Errs on the side of hiding: the userinfo is taken up to the
/// last `@`, because passwords may contain unescaped `/` or `@`, and a value that is not a
/// URL at all is hidden whole.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_owned();
    };
    let (userinfo, host_and_tail) = match rest.rsplit_once('@') {
        Some((userinfo, tail)) => (Some(userinfo), tail),
        None => (None, rest),
    };
    let userinfo = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@"),
            None => format!("{info}@"),
        },
        None => String::new(),
    };
    let host_and_tail = match host_and_tail.split_once('?') {
        Some((host, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{host}?{}", query.join("&"))
        }
        None => host_and_tail.to_owned(),
    };
    format!("{scheme}://{userinfo}{host_and_tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_need_scheme_and_host() {
        assert!(check_http_url("https://api.security.microsoft.com").is_ok());
        assert!(check_http_url("http://127.0.0.1:8080/base").is_ok());
        assert!(check_http_url("api.security.microsoft.com").is_err());
        assert!(check_http_url("ftp://host").is_err());
        assert!(check_http_url("https:///path").is_err());
        assert!(check_http_url("https://a b").is_err());
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact_url("postgres://u:pw@db:5432/x"), "postgres://u:[redacted]@db:5432/x");
        assert_eq!(redact_url("postgres://u:p/w@d@db/x"), "postgres://u:[redacted]@db/x");
        assert_eq!(
            redact_url("postgres://db/x?user=u&password=pw&sslmode=require"),
            "postgres://db/x?user=u&password=[redacted]&sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("host=db password=pw"), REDACTED);
    }
}
