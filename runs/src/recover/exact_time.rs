//! Times as decimal strings (`"1796217557.234254"`): serde_json's number parser may land one
//! unit in the last place off, and a recovered run must keep its times to the last digit.
//! Plain numbers are read too.

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Time {
    Text(String),
    Number(f64),
}

impl Time {
    fn seconds<E: serde::de::Error>(self) -> Result<f64, E> {
        match self {
            Time::Text(t) => t
                .parse()
                .map_err(|_| E::custom(format!("'{t}' is not a time"))),
            Time::Number(n) => Ok(n),
        }
    }
}

pub fn serialize<S: Serializer>(t: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_string())
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Time::deserialize(d)?.seconds()
}

pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<super::Time>::deserialize(d)?
            .map(super::Time::seconds)
            .transpose()
    }
}
