//! Finds a key that a JSON object repeats. JSON leaves duplicates undefined: serde_json and
//! Python's `json` keep the last value, other readers the first or refuse. A pairs line with
//! `"chosen"` twice is a bug in whatever wrote it, and reading either value silently scores a
//! text the author may not have meant; readers of user data call [`first_duplicate_key`] and
//! refuse the line.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The path of the first repeated key in `json` (`chosen`, `meta.source`, `turns[2].role`), or
/// `None` when no object repeats a key or the text is not JSON (parse it first for that error).
pub fn first_duplicate_key(json: &str) -> Option<String> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(json);
    let walked = Walk { path: String::new(), found: &found }.deserialize(&mut de);
    walked.ok()?;
    found.into_inner()
}

/// Visits every value, recording the first key an object repeats.
struct Walk<'a> {
    path: String,
    found: &'a RefCell<Option<String>>,
}

impl Walk<'_> {
    fn child(&self, path: String) -> Self {
        Walk { path, found: self.found }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! scalars {
    ($($name:ident: $t:ty),* $(,)?) => {
        $(fn $name<E>(self, _: $t) -> Result<(), E> { Ok(()) })*
    };
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // Scalars hold no keys.
    scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128, visit_f64: f64,
        visit_str: &str);
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq.next_element_seed(self.child(format!("{}[{i}]", self.path)))?.is_some() {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            if !seen.insert(key) && self.found.borrow().is_none() {
                *self.found.borrow_mut() = Some(path.clone());
            }
            map.next_value_seed(self.child(path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::first_duplicate_key;

    #[test]
    fn finds_the_first_repeated_key_at_any_depth() {
        assert_eq!(first_duplicate_key(r#"{"prompt":"p","chosen":"a","chosen":"b"}"#).as_deref(), Some("chosen"));
        assert_eq!(first_duplicate_key(r#"{"a":{"x":1,"y":2,"x":3}}"#).as_deref(), Some("a.x"));
        assert_eq!(first_duplicate_key(r#"{"t":[{"r":1},{"r":1,"r":2}],"z":1,"z":2}"#).as_deref(), Some("t[1].r"));
        // The same key in sibling objects is not a repeat.
        assert_eq!(first_duplicate_key(r#"{"a":{"k":1},"b":{"k":1},"c":[{"k":1},{"k":2}]}"#), None);
        assert_eq!(first_duplicate_key(r#"{"n":1.5e300,"m":-3,"u":18446744073709551615,"s":null,"b":true}"#), None);
        // Escapes are compared decoded: "\u0061" is "a".
        assert_eq!(first_duplicate_key(r#"{"a":1,"\u0061":2}"#).as_deref(), Some("a"));
        assert_eq!(first_duplicate_key("not json"), None);
        assert_eq!(first_duplicate_key("[1,2]"), None);
    }
}
