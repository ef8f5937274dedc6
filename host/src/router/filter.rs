//! MQTT topic filters (`+` one level, `#` every remaining level) used by routes' `from`.

use std::fmt;

/// A validated topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<Level>,
}

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Level {
    /// This exact text.
    Exact(String),
    /// `+`: any one level.
    One,
    /// `#`: this level and every one below it, or none.
    Rest,
}

impl TopicFilter {
    /// Parses a filter, checking the MQTT rules: `+` and `#` stand alone in their level and `#` is
    /// last.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a topic filter cannot be empty".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::One,
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(format!("`#` must be the last level of {text:?}")),
                p if p.contains(['+', '#']) => {
                    return Err(format!(
                        "`+` and `#` must fill a whole level, as in `a/+/c` or `a/#`, in {text:?}"
                    ));
                }
                p => Level::Exact(p.to_string()),
            };
            levels.push(level);
        }
        Ok(TopicFilter {
            text: text.to_string(),
            levels,
        })
    }

    /// Whether `topic` matches. Topics starting with `$` match only filters that name that first
    /// level exactly, as in MQTT.
    pub fn matches(&self, topic: &str) -> bool {
        let mut topic_levels = topic.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Rest => return !(i == 0 && topic.starts_with('$')),
                Level::One => match topic_levels.next() {
                    Some(t) if !(i == 0 && t.starts_with('$')) => {}
                    _ => return false,
                },
                Level::Exact(want) => match topic_levels.next() {
                    Some(t) if t == want => {}
                    _ => return false,
                },
            }
        }
        topic_levels.next().is_none()
    }

    /// The filter's levels, first to last.
    pub(super) fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The number of levels every matching topic has, when it is fixed (no `#`).
    pub fn fixed_depth(&self) -> Option<usize> {
        match self.levels.last() {
            Some(Level::Rest) => None,
            _ => Some(self.levels.len()),
        }
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::parse(filter).unwrap().matches(topic)
    }

    #[test]
    fn exact_and_single_level() {
        assert!(m("telemetry/+/+", "telemetry/acme/dev1"));
        assert!(!m("telemetry/+/+", "telemetry/acme"));
        assert!(!m("telemetry/+/+", "telemetry/acme/dev1/x"));
        assert!(!m("telemetry/+", "events/acme"));
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/"));
        assert!(m("a/+/", "a/x/"));
        assert!(m("+", ""));
    }

    #[test]
    fn multi_level() {
        assert!(m("a/#", "a"));
        assert!(m("a/#", "a/b/c"));
        assert!(m("#", "anything/at/all"));
        assert!(!m("a/#", "b/c"));
    }

    #[test]
    fn dollar_topics_need_an_explicit_first_level() {
        assert!(!m("#", "$SYS/x"));
        assert!(!m("+/x", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn invalid_filters() {
        assert!(TopicFilter::parse("a/#/b").is_err());
        assert!(TopicFilter::parse("a/b+").is_err());
        assert!(TopicFilter::parse("a#").is_err());
        assert!(TopicFilter::parse("").is_err());
    }

    #[test]
    fn depth() {
        assert_eq!(TopicFilter::parse("a/+/c").unwrap().fixed_depth(), Some(3));
        assert_eq!(TopicFilter::parse("a/#").unwrap().fixed_depth(), None);
    }
}
