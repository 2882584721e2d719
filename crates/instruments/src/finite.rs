//! The last line of defence against silent nonsense: before an instrument hands back a report,
//! every number in it must be finite. A NaN or an infinity means the model's arithmetic broke
//! down (a degenerate config, an overflowing dtype) and anything computed from it — a mean, a
//! correlation, a "finding" — would be meaningless, so it is an error that names where it sits
//! (`pairs[3].chosen.normed[2]`): the pair, the side, the statistic and the layer.
//!
//! serde_json writes NaN as `null`, so the check walks the report with its own serializer
//! before it is ever turned into JSON.

use serde::ser::{self, Serialize};

use crate::{InstrumentError, Result};

/// Where the first non-finite number of a report sits, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// A path into the report: `field.sub[index]`.
    pub path: String,
    pub value: f64,
    /// The pair index, when the path runs through a `pairs[k]` (or `per_pair[k]`) list.
    pub pair: Option<usize>,
}

/// The first non-finite number in `value`, preferring one inside a per-pair list (which names
/// the pair that caused it) over an aggregate computed from it.
pub fn first_non_finite<T: Serialize + ?Sized>(value: &T) -> Option<NonFinite> {
    let mut w = Walker { path: Vec::new(), found: Vec::new() };
    let _ = value.serialize(&mut w);
    let pick = w.found.iter().position(|f| f.pair.is_some()).unwrap_or(0);
    w.found.into_iter().nth(pick)
}

/// An error unless every number in `report` is finite; `instrument` names the report.
pub fn ensure_finite<T: Serialize + ?Sized>(instrument: &str, report: &T) -> Result<()> {
    match first_non_finite(report) {
        None => Ok(()),
        Some(f) => Err(InstrumentError::NonFinite {
            instrument: instrument.to_string(),
            path: f.path,
            value: f.value,
            pair: f.pair,
            dtype: None,
        }),
    }
}

/// How many non-finite numbers to note before stopping (one with a pair is enough).
const ENOUGH: usize = 64;

struct Walker {
    path: Vec<String>,
    found: Vec<NonFinite>,
}

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stop")
    }
}
impl std::error::Error for Stop {}
impl ser::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl Walker {
    fn float(&mut self, v: f64) -> Result<(), Stop> {
        if v.is_finite() {
            return Ok(());
        }
        let mut path = String::new();
        let mut pair = None;
        for (i, seg) in self.path.iter().enumerate() {
            if seg.starts_with('[') {
                if i > 0 && matches!(self.path[i - 1].as_str(), "pairs" | "per_pair") && pair.is_none() {
                    pair = seg.trim_matches(|c| c == '[' || c == ']').parse().ok();
                }
            } else if !path.is_empty() {
                path.push('.');
            }
            path.push_str(seg);
        }
        self.found.push(NonFinite { path, value: v, pair });
        if pair.is_some() || self.found.len() >= ENOUGH {
            return Err(Stop);
        }
        Ok(())
    }
}

/// A sequence or map being walked: the index of the next element.
struct Compound<'a> {
    w: &'a mut Walker,
    index: usize,
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
        self.w.path.push(format!("[{}]", self.index));
        self.index += 1;
        let r = v.serialize(&mut *self.w);
        self.w.path.pop();
        r
    }
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, v: &T) -> Result<(), Stop> {
        self.w.path.push(key.to_string());
        let r = v.serialize(&mut *self.w);
        self.w.path.pop();
        r
    }
}

macro_rules! ignore {
    ($($name:ident: $t:ty),*) => {
        $(fn $name(self, _: $t) -> Result<(), Stop> { Ok(()) })*
    };
}

impl<'a> ser::Serializer for &'a mut Walker {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    ignore!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64, serialize_char: char,
        serialize_str: &str, serialize_bytes: &[u8], serialize_unit_struct: &'static str);

    fn serialize_f32(self, v: f32) -> Result<(), Stop> {
        self.float(v as f64)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Stop> {
        self.float(v)
    }
    fn serialize_none(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Stop> {
        Compound { w: self, index: 0 }.field(variant, v)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0 })
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0 })
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0 })
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0 })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0 })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0 })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0 })
    }
}

macro_rules! seq_like {
    ($($tr:ident :: $m:ident),*) => {$(
        impl ser::$tr for Compound<'_> {
            type Ok = ();
            type Error = Stop;
            fn $m<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
                self.element(v)
            }
            fn end(self) -> Result<(), Stop> {
                Ok(())
            }
        }
    )*};
}
seq_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), Stop> {
        self.field(key, v)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), Stop> {
        self.field(key, v)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
        // Map keys name the entry (component names, subsets): keep strings, number the rest.
        let name = serde_json::to_value(key).ok().and_then(|v| v.as_str().map(str::to_string));
        self.w.path.push(name.unwrap_or_else(|| format!("[{}]", self.index)));
        self.index += 1;
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
        let r = v.serialize(&mut *self.w);
        self.w.path.pop();
        r
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize)]
    struct Pair {
        pair: usize,
        reward: f64,
        curve: Vec<f32>,
        maybe: Option<f64>,
    }

    #[derive(serde::Serialize)]
    struct Report {
        mean: Option<f64>,
        pairs: Vec<Pair>,
        named: BTreeMap<String, f64>,
    }

    fn report() -> Report {
        let p = |i| Pair { pair: i, reward: 1.0, curve: vec![0.5, 1.5], maybe: None };
        Report { mean: Some(0.0), pairs: vec![p(0), p(1), p(2)], named: BTreeMap::from([("mlp.0".into(), 2.0)]) }
    }

    #[test]
    fn finite_reports_pass() {
        assert_eq!(first_non_finite(&report()), None);
        assert!(ensure_finite("lens", &report()).is_ok());
    }

    #[test]
    fn the_path_names_the_pair_side_and_index() {
        let mut r = report();
        r.mean = Some(f64::NAN);
        r.pairs[2].curve[1] = f32::INFINITY;
        let f = first_non_finite(&r).unwrap();
        // The per-pair value wins over the aggregate computed from it.
        assert_eq!(f.path, "pairs[2].curve[1]");
        assert_eq!(f.pair, Some(2));
        assert_eq!(f.value, f64::INFINITY);
        let e = ensure_finite("lens", &r).unwrap_err().to_string();
        assert!(e.contains("lens") && e.contains("pairs[2].curve[1]") && e.contains("inf"), "{e}");

        let mut r = report();
        r.named.insert("attn.3".into(), f64::NAN);
        let f = first_non_finite(&r).unwrap();
        assert_eq!((f.path.as_str(), f.pair), ("named.attn.3", None));
        assert!(f.value.is_nan());
    }
}
