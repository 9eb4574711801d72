//! Which events a subscription wants (`filter`): globs on the event type (`types`: `*` any
//! run of characters, `?` one character) and a CEL expression over the event
//! (`expression`, see [`crate::expression`]); an event must pass both. Applied before an
//! event enters its key's lane, so one filtered out is done at once and never waits
//! behind its key.

use super::event::Event;
use crate::config::FilterConfig;
use crate::expression::{Expression, ExpressionError};

#[derive(Debug)]
pub struct Filter {
    types: Option<TypeFilter>,
    expression: Option<Expression>,
}

impl Filter {
    pub fn new(config: &FilterConfig) -> Filter {
        Filter {
            types: (!config.types.is_empty()).then(|| TypeFilter::new(&config.types)),
            expression: config
                .expression
                .as_deref()
                .map(|e| Expression::compile(e).expect("validated expression")),
        }
    }

    /// Whether the expression reads the original request's headers (a whole envelope).
    pub fn reads_headers(&self) -> bool {
        self.expression
            .as_ref()
            .is_some_and(Expression::reads_headers)
    }

    /// Whether the event passes; an error when the expression fails on it.
    pub fn wants(&self, event: &Event) -> Result<bool, ExpressionError> {
        if let Some(types) = &self.types
            && !types.matches(&event.event_type)
        {
            return Ok(false);
        }
        match &self.expression {
            Some(expression) => expression.matches(&event.variables()),
            None => Ok(true),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TypeFilter {
    globs: Vec<String>,
}

impl TypeFilter {
    pub fn new(globs: &[String]) -> TypeFilter {
        TypeFilter {
            globs: globs.to_vec(),
        }
    }

    pub fn matches(&self, event_type: &str) -> bool {
        self.globs
            .iter()
            .any(|glob| crate::glob::matches(glob, event_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let f = TypeFilter::new(&["push".into(), "pull_request.*".into(), "issue?".into()]);
        assert!(f.matches("push"));
        assert!(f.matches("pull_request.opened"));
        assert!(f.matches("pull_request."));
        assert!(f.matches("issues"));
        assert!(!f.matches("pushed"));
        assert!(!f.matches("pull_request"));
        assert!(!f.matches("issue"));
        assert!(TypeFilter::new(&["*".into()]).matches(""));
        assert!(TypeFilter::new(&["a*b*c".into()]).matches("axxbyyc"));
        assert!(!TypeFilter::new(&["a*b*c".into()]).matches("axxbyy"));
    }
}
