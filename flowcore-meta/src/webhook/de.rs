//! Small deserialisation helpers that borrow from the input where they can.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use flowcore::Timestamp;
use serde::de::{self, Deserializer, Visitor};

struct CowVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for CowVisitor<'a> {
    type Value = Cow<'a, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A string, borrowed when it has no escapes.
pub(crate) fn cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Cow<'a, str>, D::Error> {
    d.deserialize_str(CowVisitor(PhantomData))
}

struct OptCowVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for OptCowVisitor<'a> {
    type Value = Option<Cow<'a, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        cow(d).map(Some)
    }
}

/// An optional string, borrowed when it has no escapes. Use with `#[serde(default)]`.
pub(crate) fn opt_cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    d.deserialize_option(OptCowVisitor(PhantomData))
}

struct TimestampVisitor;

impl<'de> Visitor<'de> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Unix seconds as a string or an integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v).map(Timestamp::from_unix_seconds).map_err(|_| E::custom("timestamp out of range"))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Timestamp::from_unix_seconds(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.trim()
            .parse::<i64>()
            .map(Timestamp::from_unix_seconds)
            .map_err(|_| E::custom("timestamp is not Unix seconds"))
    }
}

/// Meta's timestamps: strings of Unix seconds (integers accepted too).
pub(crate) fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    d.deserialize_any(TimestampVisitor)
}

struct OptTimestampVisitor;

impl<'de> Visitor<'de> for OptTimestampVisitor {
    type Value = Option<Timestamp>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Unix seconds or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        timestamp(d).map(Some)
    }
}

/// An optional timestamp. Use with `#[serde(default)]`.
pub(crate) fn opt_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    d.deserialize_option(OptTimestampVisitor)
}

struct CodeVisitor;

impl<'de> Visitor<'de> for CodeVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer error code")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v).map_err(|_| E::custom("error code out of range"))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.trim().parse().map_err(|_| E::custom("error code is not an integer"))
    }
}

/// An integer error code (a numeric string is accepted too).
pub(crate) fn code<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(CodeVisitor)
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a numeric string")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        // `f64::from_str` also reads "NaN" and "inf", which no quantity or price is.
        match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(n),
            _ => Err(E::custom(format_args!("{v:?} is not a number"))),
        }
    }
}

/// A number, or a string holding one (some senders quote quantities and prices, as they
/// quote timestamps).
pub(crate) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(NumberVisitor)
}

/// `null` read as the type's default (Meta sometimes sends `null` for empty arrays).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

use serde::Deserialize;

/// A string newtype whose `Deserialize` borrows; `Option<CowStr>` borrows too (unlike
/// `Option<Cow<str>>`).
pub(crate) struct CowStr<'a>(pub(crate) std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        cow(d).map(CowStr)
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Quantity {
        #[serde(deserialize_with = "super::number")]
        n: f64,
    }

    fn read(json: &str) -> Result<f64, String> {
        serde_json::from_str::<Quantity>(&format!(r#"{{"n":{json}}}"#)).map(|q| q.n).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_and_numeric_strings() {
        for (json, expected) in [("3", 3.0), ("-2", -2.0), ("10.5", 10.5), (r#""2""#, 2.0), (r#"" 10.50 ""#, 10.5)] {
            assert_eq!(read(json), Ok(expected), "{json}");
        }
    }

    #[test]
    fn anything_else_is_an_error_naming_the_value() {
        for json in [r#""number-of-item""#, r#""""#, r#""NaN""#, r#""inf""#, "true", "null", "[1]"] {
            let error = read(json).unwrap_err();
            assert!(!error.is_empty(), "{json}");
        }
        assert!(read(r#""number-of-item""#).unwrap_err().contains("\"number-of-item\" is not a number"));
    }
}
