//! Deserialization helpers for values that may come from environment variables, which can
//! only hold strings: lists arrive comma-separated and "unset" arrives as `""`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, Deserialize, DeserializeOwned, Deserializer, Error as _, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};

use crate::rate_window::RateWindow;

/// A list from either a TOML array or a comma-separated string such as
/// `SCAN_AGENT_SYNC__AGENTS__IDS=a,b`. Blank items are dropped, so `""` is the empty list.
pub(crate) fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list, or a comma-separated string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<T>, E> {
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| T::deserialize(item.into_deserializer()))
                .collect()
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_any(ListVisitor(PhantomData))
}

/// Rate windows as a list of `{ calls, per }` tables or of compact `CALLS/DURATION` strings,
/// so `SCAN_AGENT_SYNC__RATE_LIMIT__WINDOWS=100/1m,1500/1h` works.
pub(crate) fn rate_windows<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RateWindow>, D::Error> {
    /// One window in either form.
    struct Window(RateWindow);

    impl<'de> Deserialize<'de> for Window {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct WindowVisitor;

            impl<'de> Visitor<'de> for WindowVisitor {
                type Value = Window;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a table { calls = 100, per = \"1m\" } or a string \"100/1m\"")
                }

                fn visit_str<E: de::Error>(self, text: &str) -> Result<Window, E> {
                    RateWindow::parse_compact(text).map(Window).map_err(E::custom)
                }

                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Window, A::Error> {
                    RateWindow::deserialize(MapAccessDeserializer::new(map)).map(Window)
                }
            }

            deserializer.deserialize_any(WindowVisitor)
        }
    }

    Ok(list::<D, Window>(deserializer)?.into_iter().map(|Window(window)| window).collect())
}

/// A unit enum variant by name, through serde's own string deserializer because its error
/// lists the valid names ("unknown variant `xml`, expected `text` or `json`") and the
/// `config` crate's does not.
pub(crate) fn variant<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let name = String::deserialize(deserializer)?;
    T::deserialize(name.trim().into_deserializer()).map_err(|error: de::value::Error| D::Error::custom(error))
}

/// [`variant`] for a key that may be absent, such as a `[[tenants]]` entry's override.
pub(crate) fn some_variant<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    variant(deserializer).map(Some)
}

/// [`rate_windows`] for a key that may be absent, such as a `[[tenants]]` entry's override.
pub(crate) fn some_rate_windows<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<RateWindow>>, D::Error> {
    rate_windows(deserializer).map(Some)
}

/// An optional value where `""` means unset: an environment variable can be emptied to
/// switch a feature off (e.g. `SCAN_AGENT_SYNC__ALERTS__WEBHOOK_URL=`) but not set to "none".
pub(crate) fn non_empty<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    // Only called when the key is present (absent keys take the section's default), and
    // neither TOML nor the environment has a null, so the value is always a string.
    let text = String::deserialize(deserializer)?;
    Ok(Some(text).filter(|text| !text.trim().is_empty()).map(T::from))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::de::value::{Error, StrDeserializer};

    use super::*;

    fn from_str<T>(
        f: fn(StrDeserializer<'static, Error>) -> Result<T, Error>,
        text: &'static str,
    ) -> Result<T, Error> {
        f(text.into_deserializer())
    }

    #[test]
    fn comma_separated_lists_drop_blanks() {
        let ids: Vec<String> = from_str(list, " a, b ,,").unwrap();
        assert_eq!(ids, ["a", "b"]);
        let none: Vec<String> = from_str(list, "").unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn compact_windows_parse_and_zero_is_refused() {
        let windows = from_str(rate_windows, "100/1m,1500/1h").unwrap();
        assert_eq!(windows, RateWindow::defender_defaults());
        assert_eq!(from_str(rate_windows, "5/2s").unwrap()[0].per, Duration::from_secs(2));
        assert!(from_str(rate_windows, "0/1m").is_err());
    }

    #[test]
    fn unknown_variants_list_the_valid_ones() {
        let error = from_str::<crate::config::LogFormat>(variant, "xml").unwrap_err();
        assert_eq!(error.to_string(), "unknown variant `xml`, expected `text` or `json`");
    }

    #[test]
    fn empty_means_unset() {
        let unset: Option<String> = from_str(non_empty, " ").unwrap();
        assert_eq!(unset, None);
        let set: Option<String> = from_str(non_empty, "x").unwrap();
        assert_eq!(set.as_deref(), Some("x"));
    }
}
