//! Names shared by reference count, and interned so records of one server, tool and client
//! point at one string.

use crate::sync;

/// An immutable string shared by reference count: a call's id and names, which the broker
/// keeps in several places (the record, the queue's indexes, the call's event feed) while the
/// call waits. Serialised as a plain string.
pub type Name = std::sync::Arc<str>;

/// How many distinct names [`intern`] keeps. Names come from a small set (servers, tools,
/// clients, rules); past this many, a name is allocated on its own, so a peer sending
/// endless distinct tool names cannot grow the set without bound.
const INTERNED_MAX: usize = 4096;

/// The shared copy of `s`: records of the same server, tool and client point at one string
/// instead of each holding its own.
pub fn intern(s: &str) -> Name {
    // Read-locked on every call through the broker; written only for a name not seen before.
    static NAMES: std::sync::LazyLock<sync::RwLock<std::collections::HashSet<Name>>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(n) = NAMES.read().get(s) {
        return n.clone();
    }
    let mut names = NAMES.write();
    if let Some(n) = names.get(s) {
        return n.clone();
    }
    let n = Name::from(s);
    if names.len() < INTERNED_MAX {
        names.insert(n.clone());
    }
    n
}

/// Read a name as its shared copy (see [`intern`]): a console holding 100 000 calls of a few
/// servers and tools, or the broker reading back its pending calls, keeps one copy of each.
pub(crate) fn interned<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Name;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
            Ok(intern(v))
        }
    }
    d.deserialize_str(V)
}

/// [`interned`], for an optional name.
pub(crate) fn interned_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Name>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Name>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<Name>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<Name>, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Name>, D::Error> {
            interned(d).map(Some)
        }
    }
    d.deserialize_option(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_names_are_shared() {
        let a = intern("everything");
        let b = intern(&String::from("everything"));
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "everything");
        assert!(!std::sync::Arc::ptr_eq(&a, &intern("everything-else")));
    }
}
