//! `application/x-www-form-urlencoded` decoding, for token request bodies and query strings
//! (axum's `form` feature is off, and this is all the simulator needs of it).

use percent_encoding::percent_decode_str;

/// The name/value pairs of `text`, with `+` as space and percent escapes decoded.
pub(super) fn pairs(text: &str) -> Vec<(String, String)> {
    let decode = |part: &str| percent_decode_str(&part.replace('+', " ")).decode_utf8_lossy().into_owned();
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_form_bodies() {
        let decoded = pairs("grant_type=client_credentials&scope=https%3A%2F%2Fx%2F.default&a+b=c+d&flag");
        assert_eq!(
            decoded,
            [
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "https://x/.default".into()),
                ("a b".into(), "c d".into()),
                ("flag".into(), String::new()),
            ]
        );
    }
}
