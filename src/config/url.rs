//! The little URL handling configuration needs: a sanity check for upstream URLs and hiding
//! the password in connection URLs. A full URL parser is not a dependency; these checks only
//! have to catch typos early and never leak a password.

/// What replaces a secret wherever configuration is shown.
pub(crate) const REDACTED: &str = "[redacted]";

/// Whether a URL may use plain `http://`: the Defender URLs carry the client secret and bearer
/// tokens, so clear text is only for loopback (the simulator, a local proxy) unless the
/// operator explicitly allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlainHttp {
    /// `http://` only to a loopback host.
    LoopbackOnly,
    /// `http://` to any host (`defender.allow_insecure_http = true`).
    Allowed,
}

/// Checks that `value` is an absolute `http://` or `https://` URL with a host, so a typo
/// fails at startup rather than as a connection error on the first sync, and that it is
/// `https://` unless `plain_http` allows otherwise.
pub(crate) fn check_http_url(value: &str, plain_http: PlainHttp) -> Result<(), String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{value:?} contains whitespace"));
    }
    let (rest, encrypted) = match (value.strip_prefix("https://"), value.strip_prefix("http://")) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        (None, None) => return Err(format!("{value:?} is not an absolute http:// or https:// URL")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host_of(authority);
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    if !encrypted && plain_http == PlainHttp::LoopbackOnly && !is_loopback(host) {
        return Err(format!(
            "{value:?} is plain http:// to {host}, which would send the client secret and access tokens \
             unencrypted"
        ));
    }
    Ok(())
}

/// The host of a URL authority (`user@host:port`), without userinfo, port or IPv6 brackets.
fn host_of(authority: &str) -> &str {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
    match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    }
}

/// Loopback names and addresses: traffic to them never leaves the machine.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// Whether a connection URL carries a password, in its userinfo or a `password=` parameter.
pub(crate) fn has_password(url: &str) -> bool {
    redact_url(url) != url
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
        let check = |url| check_http_url(url, PlainHttp::LoopbackOnly);
        assert!(check("https://api.security.microsoft.com").is_ok());
        assert!(check("http://127.0.0.1:8080/base").is_ok());
        assert!(check("api.security.microsoft.com").is_err());
        assert!(check("ftp://host").is_err());
        assert!(check("https:///path").is_err());
        assert!(check("https://a b").is_err());
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let check = |url| check_http_url(url, PlainHttp::LoopbackOnly);
        for loopback in
            ["http://127.0.0.1:8080", "http://127.8.9.10/x", "http://[::1]:80/", "http://LOCALHOST"]
        {
            assert!(check(loopback).is_ok(), "{loopback}");
        }
        for remote in [
            "http://api.security.microsoft.com",
            "http://10.0.0.5:8080/api",
            "http://[::2]/",
            "http://127.0.0.1@evil.example/",
            "http://localhost.evil.example",
        ] {
            let message = check(remote).unwrap_err();
            assert!(message.contains("unencrypted"), "{remote}: {message}");
        }
        assert!(check_http_url("http://proxy.internal:3128", PlainHttp::Allowed).is_ok());
        assert!(check_http_url("ftp://proxy.internal", PlainHttp::Allowed).is_err());
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

    #[test]
    fn passwords_are_detected() {
        assert!(has_password("postgres://u:pw@db/x"));
        assert!(has_password("postgres://db/x?password=pw"));
        assert!(!has_password("postgres://u@db/x?sslmode=require"));
    }
}
