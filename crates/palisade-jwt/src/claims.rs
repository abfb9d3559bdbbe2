//! Claims: the ready [`StandardClaims`] type, and the registered claims the layer checks itself.

use std::{borrow::Cow, fmt, sync::Arc};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, SeqAccess, Visitor},
};

/// What the server layer needs of a claims type: it is deserialized from the verified token and
/// cloned into the request extensions.
///
/// Implemented for every `DeserializeOwned + Clone + Send + Sync + 'static` type; keep `clone`
/// cheap (an `Arc` inside, as [`StandardClaims`] does), since a verified-token cache hit clones it.
pub trait Claims: serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T> Claims for T where T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}

/// The registered claims of a verified token — `sub`, `iss`, `aud`, `exp`, `nbf`, `iat`, `jti`
/// — and the OAuth 2.0 `scope`, as the server layer puts them into the request extensions.
///
/// Cloning is one reference-count increment. Custom claims need a claims type of your own
/// (any `DeserializeOwned + Clone + Send + Sync + 'static` type).
///
/// # Example
///
/// ```
/// use palisade_jwt::StandardClaims;
///
/// let claims: StandardClaims = serde_json::from_str(
///     r#"{"sub":"alice","aud":["api","web"],"exp":2000000000,"scope":"greeter.read greeter.stream"}"#,
/// ).unwrap();
/// assert_eq!(claims.subject(), Some("alice"));
/// assert_eq!(claims.audience().collect::<Vec<_>>(), ["api", "web"]);
/// assert_eq!(claims.expires_at(), Some(2_000_000_000));
/// assert!(claims.has_scope("greeter.stream"));
/// assert!(!claims.has_scope("greeter"));
/// ```
#[derive(Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct StandardClaims(Arc<StandardFields>);

#[derive(Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
struct StandardFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "OneOrMany::is_empty")]
    aud: OneOrMany,
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    exp: Option<u64>,
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    nbf: Option<u64>,
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "OneOrMany::is_empty")]
    scope: OneOrMany,
}

impl StandardClaims {
    /// The same claims as deserializing the payload would give, from the registered claims the
    /// layer parsed anyway: one JSON pass instead of two.
    pub(crate) fn from_registered(r: &Registered<'_>) -> Self {
        fn many(value: &Option<StrOrSeq<'_>>) -> OneOrMany {
            OneOrMany(
                value
                    .iter()
                    .flat_map(StrOrSeq::iter)
                    .map(Box::from)
                    .collect(),
            )
        }
        StandardClaims(Arc::new(StandardFields {
            sub: r.sub.as_deref().map(Box::from),
            iss: r.iss.as_deref().map(Box::from),
            aud: many(&r.aud),
            exp: r.exp,
            nbf: r.nbf,
            iat: r.iat,
            jti: r.jti.as_deref().map(Box::from),
            scope: many(&r.scope),
        }))
    }

    /// The subject, `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.0.sub.as_deref()
    }

    /// The issuer, `iss`.
    pub fn issuer(&self) -> Option<&str> {
        self.0.iss.as_deref()
    }

    /// The audiences, `aud` (a string or an array of strings in the token).
    pub fn audience(&self) -> impl Iterator<Item = &str> {
        self.0.aud.iter()
    }

    /// The expiry, `exp`, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> Option<u64> {
        self.0.exp
    }

    /// The start of validity, `nbf`, in seconds since the Unix epoch.
    pub fn not_before(&self) -> Option<u64> {
        self.0.nbf
    }

    /// The issue time, `iat`, in seconds since the Unix epoch.
    pub fn issued_at(&self) -> Option<u64> {
        self.0.iat
    }

    /// The token id, `jti`.
    pub fn token_id(&self) -> Option<&str> {
        self.0.jti.as_deref()
    }

    /// The scopes: the space-separated `scope` claim (an array of strings is accepted too).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.0.scope.iter().flat_map(str::split_ascii_whitespace)
    }

    /// Whether the token carries this scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

impl fmt::Debug for StandardClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardClaims")
            .field("sub", &self.0.sub)
            .field("iss", &self.0.iss)
            .field("aud", &self.0.aud.0)
            .field("exp", &self.0.exp)
            .field("nbf", &self.0.nbf)
            .field("iat", &self.0.iat)
            .field("jti", &self.0.jti)
            .field("scope", &self.0.scope.0)
            .finish()
    }
}

/// A claim that is one string or an array of strings (`aud`, and `scope` as some issuers write it).
#[derive(Clone, PartialEq, Eq, Default)]
struct OneOrMany(Box<[Box<str>]>);

impl OneOrMany {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }
}

impl Serialize for OneOrMany {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &*self.0 {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let strings = StrOrSeq::deserialize(deserializer)?;
        Ok(OneOrMany(match strings {
            StrOrSeq::One(one) => Box::new([one.into()]),
            StrOrSeq::Many(many) => many.into_iter().map(Into::into).collect(),
        }))
    }
}

/// `"a"` or `["a", "b"]`, borrowed where the JSON has no escapes.
#[derive(Debug)]
pub(crate) enum StrOrSeq<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl StrOrSeq<'_> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            StrOrSeq::One(one) => (Some(&**one), &[][..]),
            StrOrSeq::Many(many) => (None, &many[..]),
        };
        one.into_iter().chain(many.iter().map(|s| &**s))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StrOrSeq<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StrOrSeq<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrSeq::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrSeq::One(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(StrOrSeq::One(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(s) = seq.next_element::<Cow<'a, str>>()? {
                    out.push(s);
                }
                Ok(StrOrSeq::Many(out))
            }
        }
        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON NumericDate: seconds since the epoch, an integer or a float (truncated), never negative.
pub(crate) fn numeric_date<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a NumericDate")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("negative NumericDate"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                Ok(Some(v as u64))
            } else {
                Err(E::custom("NumericDate out of range"))
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(V)
}

/// The registered claims the layer checks itself, borrowed from the decoded payload.
#[derive(Deserialize)]
pub(crate) struct Registered<'a> {
    #[serde(default, deserialize_with = "numeric_date")]
    pub(crate) exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub(crate) nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub(crate) iat: Option<u64>,
    #[serde(default, borrow)]
    pub(crate) iss: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) sub: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) aud: Option<StrOrSeq<'a>>,
    #[serde(default, borrow)]
    pub(crate) jti: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) scope: Option<StrOrSeq<'a>>,
}

/// The registered claims a configuration can require to be present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Required(u8);

impl Required {
    pub(crate) const EXP: u8 = 1;
    const NBF: u8 = 2;
    const IAT: u8 = 4;
    const ISS: u8 = 8;
    const SUB: u8 = 16;
    const AUD: u8 = 32;
    const JTI: u8 = 64;
    const SCOPE: u8 = 128;

    pub(crate) fn bit(name: &str) -> Option<u8> {
        Some(match name {
            "exp" => Self::EXP,
            "nbf" => Self::NBF,
            "iat" => Self::IAT,
            "iss" => Self::ISS,
            "sub" => Self::SUB,
            "aud" => Self::AUD,
            "jti" => Self::JTI,
            "scope" => Self::SCOPE,
            _ => return None,
        })
    }

    pub(crate) fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// Whether every required claim is present.
    pub(crate) fn satisfied_by(self, claims: &Registered<'_>) -> bool {
        let present = (claims.exp.is_some() as u8 * Self::EXP)
            | (claims.nbf.is_some() as u8 * Self::NBF)
            | (claims.iat.is_some() as u8 * Self::IAT)
            | (claims.iss.is_some() as u8 * Self::ISS)
            | (claims.sub.is_some() as u8 * Self::SUB)
            | (claims.aud.is_some() as u8 * Self::AUD)
            | (claims.jti.is_some() as u8 * Self::JTI)
            | (claims.scope.is_some() as u8 * Self::SCOPE);
        self.0 & !present == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_claims_accept_both_audience_forms_and_float_dates() {
        let one: StandardClaims =
            serde_json::from_str(r#"{"aud":"api","exp":1.9e9,"iat":5,"nbf":null}"#).unwrap();
        assert_eq!(one.audience().collect::<Vec<_>>(), ["api"]);
        assert_eq!(one.expires_at(), Some(1_900_000_000));
        assert_eq!(one.not_before(), None);
        let round_trip: StandardClaims =
            serde_json::from_str(&serde_json::to_string(&one).unwrap()).unwrap();
        assert_eq!(round_trip, one);
        let scopes: StandardClaims = serde_json::from_str(r#"{"scope":["a","b c"]}"#).unwrap();
        assert_eq!(scopes.scopes().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(serde_json::from_str::<StandardClaims>(r#"{"exp":-1}"#).is_err());
        assert!(serde_json::from_str::<StandardClaims>(r#"{"exp":"soon"}"#).is_err());
        assert!(serde_json::from_str::<StandardClaims>(r#"{"aud":5}"#).is_err());
    }

    #[test]
    fn from_registered_is_deserialize() {
        for json in [
            r#"{"sub":"a","iss":"i","aud":"x","exp":5,"nbf":4,"iat":3,"jti":"j","scope":"s t","other":[1]}"#,
            r#"{"aud":["x","y"],"scope":["s","t u"],"exp":1.5}"#,
            r#"{"sub":"esc\u00e9aped"}"#,
            "{}",
        ] {
            let registered: Registered<'_> = serde_json::from_str(json).unwrap();
            let direct: StandardClaims = serde_json::from_str(json).unwrap();
            assert_eq!(
                StandardClaims::from_registered(&registered),
                direct,
                "{json}"
            );
        }
    }

    #[test]
    fn required_claims() {
        let claims: Registered<'_> = serde_json::from_str(r#"{"exp":1,"sub":"x"}"#).unwrap();
        let mut required = Required::default();
        required.set(Required::EXP, true);
        required.set(Required::SUB, true);
        assert!(required.satisfied_by(&claims));
        required.set(Required::ISS, true);
        assert!(!required.satisfied_by(&claims));
        assert_eq!(Required::bit("email"), None);
    }
}
