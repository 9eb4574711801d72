//! `filter.types`: globs on the event type (`*` any run of characters, `?` one character).

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
            .any(|glob| glob_match(glob.as_bytes(), event_type.as_bytes()))
    }
}

/// Iterative glob matching with backtracking to the last `*`: linear for typical patterns,
/// never exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
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
