//! Errors on one line, for logs and for the people reading them.

/// An error and its causes on one line ("error sending request: connection refused"), each
/// cause once even when an error's own text already repeats it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_follow_once() {
        let e = E(
            "error sending request",
            Some(Box::new(E(
                "connect failed: connection refused",
                Some(Box::new(E("connection refused", None))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "error sending request: connect failed: connection refused"
        );
    }
}
