//! Output address templates: `telemetry.{2}` takes the 2nd level of the message's topic,
//! `command/{key}/req` the message's key (a Kafka record's key on the way back), and
//! `{header:mqtt.topic}` the value of a header (the MQTT topic a record was published to).

use std::fmt;

use crate::message::Header;

/// A parsed address template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Level(usize),
    Key,
    Header(String),
}

impl Template {
    /// Parses a template. `{N}` (N from 1) is the Nth topic level, `{key}` the message's key,
    /// `{header:NAME}` the value of its header NAME; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => inner.push(c),
                            None => return Err(format!("unclosed `{{` in {text:?}")),
                        }
                    }
                    let named = match inner.as_str() {
                        "key" => Some(Part::Key),
                        _ => match inner.strip_prefix("header:") {
                            Some("") => {
                                return Err(format!("`{{header:}}` in {text:?} names no header"));
                            }
                            Some(name) => Some(Part::Header(name.to_string())),
                            None => None,
                        },
                    };
                    if let Some(part) = named {
                        if !literal.is_empty() {
                            parts.push(Part::Literal(std::mem::take(&mut literal)));
                        }
                        parts.push(part);
                        continue;
                    }
                    let n: usize = inner.parse().map_err(|_| {
                        format!(
                            "`{{{inner}}}` in {text:?} is not a topic level or the key: use {{1}}, {{2}}, ..., {{key}} or {{header:NAME}}"
                        )
                    })?;
                    if n == 0 {
                        return Err(format!("topic levels count from 1: `{{0}}` in {text:?}"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Level(n));
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` in {text:?}; write `}}}}` for a brace"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if parts.is_empty() {
            return Err("an address cannot be empty".into());
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    /// The highest level the template refers to (0 when none).
    pub fn max_level(&self) -> usize {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Level(n) => Some(*n),
                Part::Literal(_) | Part::Key | Part::Header(_) => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Fills the template from `topic`, `key` and `headers` (the first header of a name counts).
    pub fn render(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        headers: &[Header],
    ) -> Result<String, String> {
        if let [Part::Literal(s)] = self.parts.as_slice() {
            return Ok(s.clone());
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = String::with_capacity(self.text.len() + topic.len());
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Level(n) => match levels.get(n - 1) {
                    Some(level) => out.push_str(level),
                    None => {
                        return Err(format!(
                            "address {:?} needs level {n} but topic {topic:?} has {}",
                            self.text,
                            levels.len()
                        ));
                    }
                },
                Part::Key => match key.map(std::str::from_utf8) {
                    Some(Ok(key)) if !key.is_empty() => out.push_str(key),
                    Some(_) => {
                        return Err(format!(
                            "address {:?} needs the key, which is empty or not UTF-8",
                            self.text
                        ));
                    }
                    None => {
                        return Err(format!(
                            "address {:?} needs the key, and the message has none",
                            self.text
                        ));
                    }
                },
                Part::Header(name) => {
                    let value = headers
                        .iter()
                        .find(|h| h.name == *name)
                        .map(|h| std::str::from_utf8(&h.value));
                    match value {
                        Some(Ok(v)) if !v.is_empty() => out.push_str(v),
                        _ => {
                            return Err(format!(
                                "address {:?} needs header {name:?}, which is missing, empty or not UTF-8",
                                self.text
                            ));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: &str, topic: &str) -> Result<String, String> {
        Template::parse(t).unwrap().render(topic, None, &[])
    }

    #[test]
    fn renders_a_header() {
        let t = Template::parse("{header:mqtt.topic}").unwrap();
        let headers = [Header::new(
            "mqtt.topic",
            bytes::Bytes::from_static(b"chat/room1"),
        )];
        assert_eq!(t.render("mqtt-log", None, &headers).unwrap(), "chat/room1");
        assert!(
            t.render("mqtt-log", None, &[])
                .unwrap_err()
                .contains("mqtt.topic")
        );
        assert!(Template::parse("{header:}").is_err());
    }

    #[test]
    fn renders_the_key() {
        let t = Template::parse("command/{key}/req").unwrap();
        assert_eq!(
            t.render("commands", Some(b"dev1"), &[]).unwrap(),
            "command/dev1/req"
        );
        assert!(
            t.render("commands", None, &[])
                .unwrap_err()
                .contains("has none")
        );
        assert!(t.render("commands", Some(b""), &[]).is_err());
    }

    #[test]
    fn renders_levels() {
        assert_eq!(
            r("telemetry.{2}", "telemetry/acme/dev1").unwrap(),
            "telemetry.acme"
        );
        assert_eq!(r("{1}-{3}", "a/b/c").unwrap(), "a-c");
        assert_eq!(r("alerts", "a/b/c").unwrap(), "alerts");
        assert_eq!(r("x.{{lit}}", "a").unwrap(), "x.{lit}");
    }

    #[test]
    fn missing_level_is_an_error() {
        let err = r("t.{4}", "a/b").unwrap_err();
        assert!(err.contains("needs level 4"), "{err}");
    }

    #[test]
    fn invalid_templates() {
        assert!(Template::parse("t.{0}").is_err());
        assert!(Template::parse("t.{x}").is_err());
        assert!(Template::parse("t.{2").is_err());
        assert!(Template::parse("t.}").is_err());
        assert!(Template::parse("").is_err());
        assert_eq!(Template::parse("a{2}b{5}").unwrap().max_level(), 5);
    }
}
