//! What a tweet's text may be, and the form it is stored in.
//!
//! * **Normalised.** Stored as NFC, so the same words typed on two keyboards (a precomposed
//!   `é` or `e` plus a combining accent) are the same text, and compare and count alike.
//! * **Counted as people see it.** The limit is 280 user-perceived characters (extended
//!   grapheme clusters, UAX #29): a family emoji or a flag is one, as on screen. A cluster
//!   may hold at most [`MAX_CLUSTER_CHARS`] code points, so a letter buried under hundreds
//!   of combining marks (which draws over the lines around it) does not count as one.
//! * **No hidden instructions.** Control characters other than line breaks and tabs (NUL,
//!   the ESC of terminal colour codes) and the bidirectional overrides and isolates
//!   (U+202A to U+202E, U+2066 to U+2069), which make text read differently from how it is
//!   stored, are refused with the character named: the client should not send them.
//! * **Something to see.** A text of only spaces and invisible characters (zero-width
//!   spaces and joiners, the word joiner, byte-order marks) is refused.

use tonic::Status;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

pub const MAX_TEXT_CHARS: usize = 280;
/// Code points one user-perceived character may hold: the longest emoji sequences in use
/// (a family with skin tones) have about a dozen.
pub const MAX_CLUSTER_CHARS: usize = 16;

/// The text as stored (trimmed, NFC), or INVALID_ARGUMENT saying what to fix.
pub fn check_text(text: &str) -> Result<String, Status> {
    let text: String = text.trim().nfc().collect();
    if let Some(c) = text.chars().find(|&c| forbidden(c)) {
        return Err(Status::invalid_argument(format!(
            "text must not contain U+{:04X} (control and bidirectional-override characters are not allowed)",
            c as u32
        )));
    }
    if !text.chars().any(|c| !c.is_whitespace() && !invisible(c)) {
        return Err(Status::invalid_argument(
            "text must not be empty (or only spaces and invisible characters)",
        ));
    }
    let mut count = 0;
    for cluster in text.graphemes(true) {
        count += 1;
        if cluster.chars().count() > MAX_CLUSTER_CHARS {
            return Err(Status::invalid_argument(format!(
                "text has a character made of {} code points; at most {MAX_CLUSTER_CHARS} are allowed in one",
                cluster.chars().count()
            )));
        }
    }
    if count > MAX_TEXT_CHARS {
        return Err(Status::invalid_argument(format!(
            "text is {count} characters; at most {MAX_TEXT_CHARS} are allowed"
        )));
    }
    Ok(text)
}

/// Controls (but line breaks and tabs) and the bidirectional embeddings, overrides and
/// isolates.
fn forbidden(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that draw nothing on their own.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{034F}' | '\u{180E}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        check_text(text).unwrap_err().message().to_string()
    }

    #[test]
    fn stored_trimmed_and_normalised() {
        assert_eq!(check_text("  hi  ").unwrap(), "hi");
        // e + combining acute becomes the precomposed letter.
        assert_eq!(check_text("caf\u{0065}\u{0301}").unwrap(), "caf\u{00E9}");
        assert_eq!(check_text("two\nlines").unwrap(), "two\nlines");
    }

    #[test]
    fn counted_in_user_perceived_characters() {
        assert!(check_text(&"é".repeat(280)).is_ok());
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{200D}\u{1F466}";
        // 40 families are 280 code points but 40 characters on screen.
        assert!(check_text(&family.repeat(40)).is_ok());
        assert!(check_text(&family.repeat(280)).is_ok());
        assert!(refused(&family.repeat(281)).contains("281"));
        assert!(refused(&"a".repeat(281)).contains("281"));
        // A letter under 279 combining marks is not one character.
        let zalgo = format!("a{}", "\u{0301}".repeat(279));
        assert!(
            refused(&zalgo).contains("code points"),
            "{}",
            refused(&zalgo)
        );
    }

    #[test]
    fn controls_and_bidi_overrides_are_refused() {
        for (text, named) in [
            ("nul\u{0}here", "U+0000"),
            ("\u{1b}[31mred", "U+001B"),
            ("evil\u{202E}txt.exe", "U+202E"),
            ("iso\u{2066}late", "U+2066"),
        ] {
            assert!(refused(text).contains(named), "{text:?}: {}", refused(text));
        }
    }

    #[test]
    fn nothing_visible_is_refused() {
        for text in [" \n\t ", "\u{200B}\u{200B}", "\u{FEFF}", " \u{2060} "] {
            assert!(refused(text).contains("empty"), "{text:?}");
        }
        // A zero-width joiner inside visible text is fine.
        assert!(check_text("a\u{200D}b").is_ok());
    }

    proptest::proptest! {
        /// Any text: no panic, and what is accepted is stored in the documented form:
        /// NFC, trimmed, at most 280 clusters of at most 16 code points, nothing forbidden,
        /// something visible; checking it again changes nothing.
        #[test]
        fn fuzz_check_text(text in "(\\PC|[\u{0}-\u{1F}\u{202A}-\u{202E}\u{200B}\u{0301} ]){0,400}") {
            if let Ok(stored) = check_text(&text) {
                proptest::prop_assert_eq!(stored.nfc().collect::<String>(), stored.clone());
                proptest::prop_assert_eq!(stored.trim(), stored.as_str());
                proptest::prop_assert!(stored.graphemes(true).count() <= MAX_TEXT_CHARS);
                proptest::prop_assert!(stored
                    .graphemes(true)
                    .all(|g| g.chars().count() <= MAX_CLUSTER_CHARS));
                proptest::prop_assert!(!stored.chars().any(forbidden));
                proptest::prop_assert!(stored.chars().any(|c| !c.is_whitespace() && !invisible(c)));
                proptest::prop_assert_eq!(check_text(&stored).ok(), Some(stored.clone()));
            }
        }
    }
}
