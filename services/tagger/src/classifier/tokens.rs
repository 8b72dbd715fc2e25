//! A text as the cues see it: lowercase words (punctuation splits, apostrophes dropped,
//! emoji one word each, mentions and links skipped), hashtag bodies and their words, and
//! the matching of one cue against them (see the `classifier` module docs).

use super::{Compiled, Cue};

/// A hashtag's body, lowercased, and where its words are in [`Tokens::words`].
pub(super) struct Hashtag {
    body: String,
    first_word: usize,
    word_count: usize,
}

/// A text as the cues see it.
pub(super) struct Tokens {
    /// Lowercase words in order (hashtag words included), and emoji one per word.
    pub(super) words: Vec<String>,
    hashtags: Vec<Hashtag>,
}

impl Tokens {
    pub(super) fn new(text: &str) -> Self {
        let mut tokens = Tokens {
            words: Vec::new(),
            hashtags: Vec::new(),
        };
        for chunk in text.split_whitespace() {
            if chunk.starts_with('@') || is_link(chunk) {
                continue;
            }
            let mut rest = chunk;
            while let Some(hash) = rest.find('#') {
                push_words(&rest[..hash], &mut tokens.words);
                let after = &rest[hash + 1..];
                let end = after
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if end > 0 {
                    tokens.push_hashtag(&after[..end]);
                }
                rest = &after[end..];
            }
            push_words(rest, &mut tokens.words);
        }
        tokens
    }

    fn push_hashtag(&mut self, body: &str) {
        let first_word = self.words.len();
        split_camel_case(body, &mut self.words);
        self.hashtags.push(Hashtag {
            body: body.to_lowercase(),
            first_word,
            word_count: self.words.len() - first_word,
        });
    }

    /// The topic's score. Every piece of text counts at most once per topic: `against`
    /// phrases mask their words first, then `#hashtag` and phrase cues take theirs, then single
    /// words; a cue scores (once) if it occurs somewhere not yet taken.
    pub(super) fn score(&self, topic: &Compiled, covered: &mut Vec<bool>) -> i32 {
        covered.clear();
        covered.resize(self.words.len(), false);
        for cue in &topic.against {
            self.find(cue, |start, len| covered[start..start + len].fill(true));
        }
        let mut score = 0;
        for cue in &topic.cues {
            let mut found = false;
            self.find(cue, |start, len| {
                let span = &mut covered[start..start + len];
                if !span.contains(&true) {
                    span.fill(true);
                    found = true;
                }
            });
            if found {
                score += cue.weight;
            }
        }
        score
    }

    /// Calls `found(first word, word count)` for every occurrence of the cue: a `#hashtag`
    /// body, a phrase, a word, a `prefix*` or an emoji. In a one-word hashtag (`#bookclub`)
    /// the cue may also occur inside the word.
    fn find(&self, cue: &Cue, mut found: impl FnMut(usize, usize)) {
        if let Some(body) = cue.text.strip_prefix('#') {
            for h in &self.hashtags {
                if word_matches(&h.body, body) {
                    found(h.first_word, h.word_count);
                }
            }
            return;
        }
        if let Some((first, rest, len)) = cue.phrase {
            for (start, word) in self.words.iter().enumerate() {
                if word_matches(word, first) && phrase_at(&self.words[start + 1..], rest) {
                    found(start, len);
                }
            }
        } else {
            for (at, word) in self.words.iter().enumerate() {
                if word_matches(word, cue.text) {
                    found(at, 1);
                }
            }
        }
        for h in &self.hashtags {
            if h.word_count == 1 && compound_contains(&h.body, cue.text) {
                found(h.first_word, 1);
            }
        }
    }
}

fn is_link(chunk: &str) -> bool {
    let lower = |prefix: &str| {
        chunk
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    lower("http://") || lower("https://") || lower("www.")
}

/// Appends the words of `s`: runs of letters and digits, lowercased. Apostrophes inside a
/// word are dropped, a possessive `'s` with them; every emoji is a word of its own.
fn push_words(s: &str, words: &mut Vec<String>) {
    let mut word = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if is_apostrophe(c) && !word.is_empty() {
            let mut ahead = chars.clone();
            let possessive = matches!(ahead.next(), Some('s' | 'S'))
                && !ahead.next().is_some_and(char::is_alphanumeric);
            if possessive {
                chars.next();
            }
        } else {
            flush(&mut word, words);
            if is_emoji(c) {
                words.push(c.to_string());
            }
        }
    }
    flush(&mut word, words);
}

/// Appends the words of a hashtag body: `TravelTuesday` and `travel_tuesday` give `travel`,
/// `tuesday`; `NYCMarathon` gives `nyc`, `marathon`; `foodie` and `PS5` stay one word.
fn split_camel_case(body: &str, words: &mut Vec<String>) {
    let mut word = String::new();
    let mut prev: Option<char> = None;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' {
            flush(&mut word, words);
            prev = None;
            continue;
        }
        if let Some(p) = prev {
            let next_lower = chars.peek().is_some_and(|n| n.is_lowercase());
            if (p.is_lowercase() && c.is_uppercase())
                || (p.is_uppercase() && c.is_uppercase() && next_lower)
            {
                flush(&mut word, words);
            }
        }
        word.extend(c.to_lowercase());
        prev = Some(c);
    }
    flush(&mut word, words);
}

fn flush(word: &mut String, words: &mut Vec<String>) {
    if !word.is_empty() {
        words.push(std::mem::take(word));
    }
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}' | '\u{02bc}')
}

/// Pictographs and symbols from the arrows block up; not variation selectors, joiners or
/// skin-tone modifiers, which only decorate the emoji before them.
fn is_emoji(c: char) -> bool {
    let code = u32::from(c);
    !c.is_alphanumeric()
        && code >= 0x2190
        && !(0xFE00..=0xFE0F).contains(&code)
        && !(0x1F3FB..=0x1F3FF).contains(&code)
        && !(0xE0000..=0xE007F).contains(&code)
        && code != 0x200D
        && code != 0x20E3
}

/// `word` or its plural (`-s`, `-es`, `-y` to `-ies`), or, for a cue ending in `*`, any word
/// starting with the rest.
pub(super) fn word_matches(token: &str, cue: &str) -> bool {
    if let Some(prefix) = cue.strip_suffix('*') {
        return token.starts_with(prefix);
    }
    if token == cue {
        return true;
    }
    let Some(singular) = token.strip_suffix('s') else {
        return false;
    };
    singular == cue
        || singular.strip_suffix('e') == Some(cue)
        || singular
            .strip_suffix("ie")
            .is_some_and(|stem| cue.strip_suffix('y') == Some(stem))
}

/// Whether the phrase `cue` (words separated by single spaces) starts at `words[0]`.
fn phrase_at(words: &[String], cue: &str) -> bool {
    let mut words = words.iter();
    cue.split(' ')
        .all(|part| words.next().is_some_and(|w| word_matches(w, part)))
}

/// Whether a one-word hashtag body holds the cue (a phrase with its spaces removed): at its
/// start for cues of 4+ letters, anywhere for 6+, so `#bookclub` holds `book` and
/// `#naturephotography` holds `photograph*`, but `#carbon` does not hold `car`.
fn compound_contains(body: &str, cue: &str) -> bool {
    let cue = cue.strip_suffix('*').unwrap_or(cue);
    let letters = cue.chars().filter(|c| *c != ' ').count();
    let plain = cue.chars().all(|c| c.is_alphanumeric() || c == ' ');
    if !plain || letters < 4 || body.chars().count() <= letters {
        return false;
    }
    body.char_indices()
        .filter(|(start, _)| *start == 0 || letters >= 6)
        .any(|(start, _)| joined_prefix(&body[start..], cue))
}

/// Whether `s` starts with the words of `cue` written without spaces.
fn joined_prefix(s: &str, cue: &str) -> bool {
    let mut rest = s;
    for part in cue.split(' ') {
        match rest.strip_prefix(part) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_skip_mentions_links_and_decorations() {
        let tokens = Tokens::new("Can’t stop 🏃\u{200d}\u{2640}\u{fe0f} #NYCMarathon Mahler's 5th");
        assert_eq!(
            tokens.words,
            ["cant", "stop", "🏃", "\u{2640}", "nyc", "marathon", "mahler", "5th"]
        );
        assert_eq!(tokens.hashtags.len(), 1);
        assert_eq!(tokens.hashtags[0].body, "nycmarathon");
        assert_eq!(
            (tokens.hashtags[0].first_word, tokens.hashtags[0].word_count),
            (4, 2)
        );
    }
}
