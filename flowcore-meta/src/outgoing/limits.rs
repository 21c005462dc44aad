//! Meta's limits on outgoing messages, and the error that names a broken one.

/// Text body (`text.body`).
pub const TEXT_BODY_MAX: usize = 4096;
/// Media caption.
pub const CAPTION_MAX: usize = 1024;
/// Interactive message body.
pub const INTERACTIVE_BODY_MAX: usize = 1024;
/// Interactive header text.
pub const HEADER_TEXT_MAX: usize = 60;
/// Interactive footer.
pub const FOOTER_MAX: usize = 60;
/// Reply buttons per message.
pub const BUTTONS_MAX: usize = 3;
/// Reply button title.
pub const BUTTON_TITLE_MAX: usize = 20;
/// Reply button id.
pub const BUTTON_ID_MAX: usize = 256;
/// Sections of a list.
pub const LIST_SECTIONS_MAX: usize = 10;
/// Rows of a list, all sections together.
pub const LIST_ROWS_MAX: usize = 10;
/// List row id.
pub const ROW_ID_MAX: usize = 200;
/// List row title.
pub const ROW_TITLE_MAX: usize = 24;
/// List row description.
pub const ROW_DESCRIPTION_MAX: usize = 72;
/// The label of the button that opens a list.
pub const LIST_BUTTON_MAX: usize = 20;
/// List section title.
pub const SECTION_TITLE_MAX: usize = 24;
/// CTA URL button text.
pub const CTA_DISPLAY_TEXT_MAX: usize = 20;
/// The text of the button that opens a WhatsApp Flow (emoji are refused too).
pub const FLOW_CTA_MAX: usize = 20;
/// The `flow_message_version` flowcore sends.
pub const FLOW_MESSAGE_VERSION: &str = "3";
/// Contact cards per message.
pub const CONTACTS_MAX: usize = 257;
/// `biz_opaque_callback_data`.
pub const CALLBACK_DATA_MAX: usize = 512;
/// Template name.
pub const TEMPLATE_NAME_MAX: usize = 512;

/// Why an outgoing message could not be built. Each variant names the field (as a path
/// such as `buttons[1].title`) and, where there is one, the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A text is longer than Meta allows (counted in Unicode scalar values).
    #[error("{field} is {actual} characters, the limit is {max}")]
    TooLong {
        /// The field.
        field: String,
        /// Meta's limit.
        max: usize,
        /// The length given.
        actual: usize,
    },
    /// A required text is empty (or only whitespace).
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: String,
    },
    /// Too many items.
    #[error("{field} has {actual} items, the limit is {max}")]
    TooMany {
        /// The field.
        field: String,
        /// Meta's limit.
        max: usize,
        /// The number given.
        actual: usize,
    },
    /// Too few items.
    #[error("{field} needs at least {min} item(s)")]
    TooFew {
        /// The field.
        field: String,
        /// The minimum.
        min: usize,
    },
    /// A value that must be unique within the message repeats.
    #[error("{field} {value:?} appears more than once")]
    Duplicate {
        /// The field.
        field: String,
        /// The repeated value.
        value: String,
    },
    /// An id starts or ends with whitespace.
    #[error("{field} must not start or end with whitespace")]
    Whitespace {
        /// The field.
        field: String,
    },
    /// A value is malformed (a recipient that is not a number, a link that is not
    /// http(s), a latitude out of range, …).
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl BuildError {
    /// The field the error is about.
    pub fn field(&self) -> &str {
        match self {
            BuildError::TooLong { field, .. }
            | BuildError::Empty { field }
            | BuildError::TooMany { field, .. }
            | BuildError::TooFew { field, .. }
            | BuildError::Duplicate { field, .. }
            | BuildError::Whitespace { field }
            | BuildError::Invalid { field, .. } => field,
        }
    }
}

/// `value` must have at most `max` chars.
pub(crate) fn max_len(field: impl Into<String> + AsRef<str>, value: &str, max: usize) -> Result<(), BuildError> {
    // Count at most max + 1 chars: enough to decide, bounded work on huge inputs.
    if value.len() <= max {
        return Ok(());
    }
    let actual = value.chars().count();
    if actual > max {
        return Err(BuildError::TooLong { field: field.into(), max, actual });
    }
    Ok(())
}

/// `value` must be non-blank and have at most `max` chars.
pub(crate) fn required(field: impl Into<String> + AsRef<str>, value: &str, max: usize) -> Result<(), BuildError> {
    if value.trim().is_empty() {
        return Err(BuildError::Empty { field: field.into() });
    }
    max_len(field, value, max)
}

/// An id: non-empty, at most `max` chars, no surrounding whitespace.
pub(crate) fn id(field: impl Into<String> + AsRef<str>, value: &str, max: usize) -> Result<(), BuildError> {
    required(field.as_ref(), value, max)?;
    if value.trim() != value {
        return Err(BuildError::Whitespace { field: field.into() });
    }
    Ok(())
}

/// `value` must hold no emoji (Meta refuses them in a flow's button).
pub(crate) fn no_emoji(field: &str, value: &str) -> Result<(), BuildError> {
    let is_emoji = |c: char| matches!(u32::from(c), 0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x2300..=0x23FF | 0xFE0F | 0x200D);
    if value.chars().any(is_emoji) {
        return Err(BuildError::Invalid { field: field.to_owned(), reason: "must not contain emoji" });
    }
    Ok(())
}

/// A link Meta can fetch: `http(s)://` followed by something.
pub(crate) fn link(field: &str, value: &str) -> Result<(), BuildError> {
    let rest = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !value.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(BuildError::Invalid { field: field.to_owned(), reason: "must be an http(s) URL" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chars_not_bytes() {
        assert!(max_len("f", &"é".repeat(20), 20).is_ok());
        assert_eq!(
            max_len("f", &"é".repeat(21), 20),
            Err(BuildError::TooLong { field: "f".into(), max: 20, actual: 21 })
        );
        assert!(max_len("f", &"👍".repeat(4096), 4096).is_ok());
    }

    #[test]
    fn ids_refuse_blank_and_padding() {
        assert_eq!(id("id", " ", 5), Err(BuildError::Empty { field: "id".into() }));
        assert_eq!(id("id", " a", 5), Err(BuildError::Whitespace { field: "id".into() }));
        assert!(id("id", "a b", 5).is_ok());
    }

    #[test]
    fn links_must_be_http() {
        assert!(link("l", "https://x.test/a.png").is_ok());
        assert!(link("l", "http://x").is_ok());
        assert!(link("l", "ftp://x").is_err());
        assert!(link("l", "https://").is_err());
        assert!(link("l", "https://x y").is_err());
    }
}
