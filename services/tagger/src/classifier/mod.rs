//! The deterministic tweet classifier behind `TagText`: topic tags for a text, only ever
//! from [`crate::tags::TAGS`].
//!
//! # Why a lexicon
//!
//! The tagger runs on every tweet, must answer the same way on every replica and after every
//! restart, and must be explainable when a tag looks wrong. A hand-written lexicon per topic
//! does that with `std` only: no model weights to ship, no randomness, and a wrong tag is
//! traced to the cue that fired. The price is recall on texts that only name things (a film
//! title, a city) without any topic word; the labelled set in `data/labelled.tsv` measures it.
//!
//! # How a text is scored
//!
//! The text is split into lowercase words: punctuation separates words, apostrophes are dropped
//! (`can't` is `cant`, a possessive `'s` goes), each emoji is a word of its own, `@mentions` and
//! links are skipped. A hashtag contributes its body as a whole (for `#`-cues) and its words:
//! `#TravelTuesday` gives `travel` and `tuesday`; a one-word body such as `#bookclub` is also
//! searched for cue words inside it (at its start for cues of 4+ letters, anywhere for 6+).
//!
//! Every topic has cues in three weight classes, each cue scoring at most once per text however
//! often it occurs: *strong* (4 points: specialist or fan-identity terms such as `vinyl`,
//! `setlist`, `#foodie`), *cue* (2 points: plain topic words such as `album`) and *weak* (1
//! point: words that only suggest the topic, such as `listening`). A cue is a word (which also
//! matches its plural: `movie` matches `movies`, `puppy` matches `puppies`), a prefix ending in
//! `*` (`photograph*` matches `photography`, `photographer`, `photographs`), a phrase of such
//! words, a `#hashtag` body, or an emoji. Each word of the text counts once per topic: phrases
//! take their words before single-word cues do (`comic book` is one piece of evidence, not
//! `comic` plus `comic book`), and a topic's *against* phrases take theirs first, so that the
//! words of `hot dog` never count for pets, nor `35mm film` for movies.
//!
//! # The synonym-pair convention
//!
//! Several tags are near-synonyms (`music_lovers` / `music_aficionados`, `movie_lovers` /
//! `movie_buffs`, ...). Emitting them independently would make them noise; instead each
//! *topic* owns an ordered list of tags. The first is the **base** tag, emitted when the topic
//! scores at least 2 points (one plain cue, or two weak ones). The rest are **devotee** tags,
//! emitted as well from 4 points: two distinct plain cues, or one strong cue. In words: *a
//! tweet that clearly mentions a topic gets the base tag; a tweet that is emphatically about it
//! (two separate pieces of evidence, or specialist / fan-identity vocabulary) gets the devotee
//! tag too*, so a devotee tag never comes without its base tag. The labelled set
//! (`data/labelled.tsv`) is labelled by that rule as a reader applies it, counting evidence the
//! lexicon cannot see too (a film title, a city), which is what its recall measures.
//!
//! | topic | base tag | devotee tag |
//! |---|---|---|
//! | movies | `movie_lovers` | `movie_buffs` |
//! | sports | `sports_fans` | `sports_enthusiasts` |
//! | music | `music_lovers` | `music_aficionados` |
//! | fashion | `fashion_lovers` | `fashion_followers` |
//! | food | `foodies` | `food_fanatics` |
//! | video games | `gamers` | `gamers_tribe` |
//! | travel | `travel_bugs` | `wanderlust` |
//! | technology | `tech_savvy` | `tech_geeks` |
//! | social media | `social_media_junkies` | `social_media_geeks` |
//! | arts and culture outings | `culture_vultures` | `culture_aficionados` |
//! | the outdoors | `outdoor_enthusiasts` | `outdoors_adventurers` |
//! | sustainability | `eco-friendly` | `green_living` |
//! | nature | `nature_lovers` | `nature_aficionados` |
//! | comics | `comic_lovers` | `comic_book_buffs` |
//! | home decor | `home_decor_lovers` | `interior_design_lovers` |
//!
//! (Home decor is not one of the article's obvious synonym pairs, but interior design is the
//! same interest taken further, so it follows the same rule.)
//!
//! Two tags of those families are *facets*, topics of their own rather than devotee tags,
//! because they describe something different rather than more of the same:
//! `adventure_seekers` (thrills: skydiving, rafting, summits, bucket lists) next to the outdoors,
//! and `eco_warriors` (activism: strikes, petitions, clean-ups) next to sustainability. Their
//! cues also count towards the neighbouring topic where that is true (a climate strike is also
//! about sustainability). Every other tag is a single-tag topic.
//!
//! The code is in three files: this one scores (cue weights, thresholds, ranking),
//! `lexicon.rs` holds the cues per topic (a lexicon change is a change of that file only),
//! and `tokens.rs` turns a text into the words the cues match.
//!
//! Tags are ranked by score, the devotee tag right after its base tag, then by their position
//! in [`TAGS`]; at most [`MAX_TAGS`] are returned.

mod lexicon;
mod tokens;

use std::sync::OnceLock;

use crate::tags::TAGS;
use lexicon::TOPICS;
use tokens::Tokens;

/// The most tags [`tag`] returns for one text.
pub const MAX_TAGS: usize = 5;

/// Points a topic needs for its base tag: one plain cue, or two weak ones.
const BASE_SCORE: i32 = 2;
/// Points a topic needs for its devotee tags too: two plain cues, or one strong cue.
const DEVOTEE_SCORE: i32 = 4;

const STRONG: i32 = 4;
const CUE: i32 = 2;
const WEAK: i32 = 1;

/// One topic: its tags (base first) and its cues, `|`-separated: three weight classes and
/// `against`, phrases whose words must not count for the topic (`hot dog` for pets).
pub(crate) struct Topic {
    pub(crate) tags: &'static [&'static str],
    pub(crate) strong: &'static str,
    pub(crate) cue: &'static str,
    pub(crate) weak: &'static str,
    pub(crate) against: &'static str,
}

impl Topic {
    /// The scoring cues with their weights, strongest first.
    fn cues(&self) -> impl Iterator<Item = (&'static str, i32)> {
        let class = |list: &'static str, weight: i32| {
            list.split('|')
                .filter(|cue| !cue.is_empty())
                .map(move |cue| (cue, weight))
        };
        class(self.strong, STRONG)
            .chain(class(self.cue, CUE))
            .chain(class(self.weak, WEAK))
    }

    fn compile(&self) -> Compiled {
        let multi = |cue: &str| cue.starts_with('#') || cue.contains(' ');
        let cues = self.cues().filter(|(cue, _)| multi(cue));
        let cues = cues.chain(self.cues().filter(|(cue, _)| !multi(cue)));
        Compiled {
            tags: self.tags,
            against: self
                .against
                .split('|')
                .filter(|cue| !cue.is_empty())
                .map(|cue| Cue::new(cue, 0))
                .collect(),
            cues: cues.map(|(cue, weight)| Cue::new(cue, weight)).collect(),
        }
    }
}

/// A [`Topic`] with its cues split once: `cues` holds the `#hashtag` and phrase cues first,
/// then the single words, each group strongest first.
struct Compiled {
    tags: &'static [&'static str],
    against: Vec<Cue>,
    cues: Vec<Cue>,
}

/// One cue, ready to match.
struct Cue {
    text: &'static str,
    weight: i32,
    /// For a phrase: its first word, the rest, and its length in words.
    phrase: Option<(&'static str, &'static str, usize)>,
}

impl Cue {
    fn new(text: &'static str, weight: i32) -> Self {
        let phrase = text
            .split_once(' ')
            .map(|(first, rest)| (first, rest, text.split(' ').count()));
        Cue {
            text,
            weight,
            phrase,
        }
    }
}

/// [`TOPICS`] compiled, once per process.
fn lexicon() -> &'static [Compiled] {
    static LEXICON: OnceLock<Vec<Compiled>> = OnceLock::new();
    LEXICON.get_or_init(|| TOPICS.iter().map(Topic::compile).collect())
}

/// The topic tags of `text`, best first: at most [`MAX_TAGS`], only ever from
/// [`TAGS`], and the same for the same text. Empty when no topic has enough evidence.
#[must_use]
pub fn tag(text: &str) -> Vec<&'static str> {
    let tokens = Tokens::new(text);
    if tokens.words.is_empty() {
        return Vec::new();
    }
    let mut covered = Vec::with_capacity(tokens.words.len());
    // (rank, index in TAGS): the base tag ranks at twice the topic score, a devotee tag one
    // below it, so it follows its base tag and precedes every topic with a lower score.
    let mut ranked: Vec<(i32, usize)> = Vec::new();
    for topic in lexicon() {
        let score = tokens.score(topic, &mut covered);
        if score < BASE_SCORE {
            continue;
        }
        for (position, name) in topic.tags.iter().enumerate() {
            let devotee = position > 0;
            if devotee && score < DEVOTEE_SCORE {
                break;
            }
            if let Some(index) = TAGS.iter().position(|t| t == name) {
                ranked.push((2 * score - i32::from(devotee), index));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .take(MAX_TAGS)
        .map(|(_, index)| TAGS[index])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::tokens::word_matches;
    use super::*;
    use std::collections::HashSet;

    const SAMPLES: &[&str] = &[
        "Just finished a new novel. Can't wait to talk about it with my book club #nerdalert",
        "Just had an epic chill session with my squad listening to some of our favorite tunes #goodvibesonly",
        "Vinyl, setlists, guitar solos, movie nights, #foodie brunch, #TravelTuesday, gym, PS5, \
         bitcoin, my dog, my kids, museum, hiking, skydiving, sourdough, sunsets 🌅🎸📸",
        "Ugh, Monday again",
        "",
        "#",
        "@someone https://example.com/music/movies",
        "🍕🍕🍕 #PizzaNight",
        "It's the director's cut — can’t wait!!!",
    ];

    #[test]
    fn every_tag_belongs_to_exactly_one_topic() {
        let mut seen = HashSet::new();
        for topic in TOPICS {
            assert!(!topic.tags.is_empty());
            for tag in topic.tags {
                assert!(TAGS.contains(tag), "{tag} is not in TAGS");
                assert!(seen.insert(*tag), "{tag} is in two topics");
            }
        }
        assert_eq!(seen.len(), TAGS.len(), "some tag of TAGS has no topic");
    }

    #[test]
    fn cues_are_normalised() {
        for topic in TOPICS {
            for (cue, _) in topic.cues() {
                assert!(!cue.is_empty(), "empty cue in {:?}", topic.tags);
                assert_eq!(cue, cue.to_lowercase(), "cues are lowercase");
                assert_eq!(cue, cue.trim(), "cue {cue:?} has outer spaces");
                assert!(!cue.contains("  "), "cue {cue:?} has a double space");
                assert!(
                    !cue.contains('\u{fe0f}') && !cue.contains('\u{200d}'),
                    "{cue:?}"
                );
                assert!(
                    !cue.contains(['-', '\'', '\u{2019}']),
                    "cue {cue:?} is not split"
                );
                // A cue must read as the tokenizer writes words, or it could never match.
                let bare = cue.trim_start_matches('#').trim_end_matches('*');
                let words = Tokens::new(bare).words;
                if cue.starts_with('#') {
                    assert_eq!(words, [bare], "hashtag cue {cue:?}");
                } else {
                    assert_eq!(words.join(" "), bare, "cue {cue:?}");
                }
            }
            for cue in topic.against.split('|').filter(|c| !c.is_empty()) {
                assert!(cue.contains(' '), "against cue {cue:?} must be a phrase");
                assert_eq!(Tokens::new(cue).words.join(" "), cue, "against cue {cue:?}");
            }
        }
    }

    #[test]
    fn no_phrase_is_lighter_than_a_word_it_contains() {
        // Phrases take their words first, so a lighter phrase would hide a heavier word.
        for topic in TOPICS {
            for (phrase, phrase_weight) in topic.cues().filter(|(c, _)| c.contains(' ')) {
                let words = Tokens::new(phrase);
                for (word, weight) in topic.cues().filter(|(c, _)| !c.contains(' ')) {
                    if words.words.iter().any(|w| word_matches(w, word)) {
                        assert!(phrase_weight >= weight, "{phrase:?} hides {word:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn only_tags_from_the_list_at_most_five_no_duplicates() {
        for text in SAMPLES {
            let tags = tag(text);
            assert!(tags.len() <= MAX_TAGS, "{text}: {tags:?}");
            assert!(tags.iter().all(|t| TAGS.contains(t)), "{text}: {tags:?}");
            let distinct: HashSet<_> = tags.iter().collect();
            assert_eq!(distinct.len(), tags.len(), "{text}: {tags:?}");
        }
        assert_eq!(tag(SAMPLES[2]).len(), MAX_TAGS);
    }

    #[test]
    fn deterministic() {
        for text in SAMPLES {
            let first = tag(text);
            for _ in 0..3 {
                assert_eq!(tag(text), first);
            }
        }
    }

    #[test]
    fn empty_and_topicless_texts_have_no_tags() {
        for text in [
            "",
            "   ",
            "!!! ... ???",
            "#",
            "Ugh, Monday again",
            "Running late, traffic is insane",
            "Lost my keys again. Third time this week",
        ] {
            assert!(tag(text).is_empty(), "{text:?}: {:?}", tag(text));
        }
    }

    #[test]
    fn weak_evidence_alone_gives_no_tag() {
        assert!(tag("listening").is_empty());
        assert!(tag("What a game").is_empty());
        assert!(tag("My mom called").is_empty());
    }

    #[test]
    fn seed_examples() {
        let book = tag(
            "Just finished a new novel. Can't wait to talk about it with my book club #nerdalert",
        );
        assert!(book.contains(&"bookworms"), "{book:?}");
        let music = tag("Just had an epic chill session with my squad listening to some of our favorite tunes #goodvibesonly");
        assert!(music.contains(&"music_lovers"), "{music:?}");
    }

    #[test]
    fn hashtags_count_whole_and_as_words() {
        assert_eq!(tag("#foodie"), ["foodies", "food_fanatics"]);
        assert!(tag("Lunch #foodporn").contains(&"foodies"));
        assert!(tag("#TravelTuesday").contains(&"travel_bugs"));
        assert!(tag("#travel_tuesday").contains(&"travel_bugs"));
        assert!(tag("#bookclub tonight").contains(&"bookworms"));
        let camel = tag("#NaturePhotography");
        assert!(camel.contains(&"nature_lovers") && camel.contains(&"photography_fanatics"));
        let compound = tag("#naturephotography");
        assert!(compound.contains(&"photography_fanatics"), "{compound:?}");
        // Short cues are not looked for inside hashtags: no car in #carbon, no pet in #petite.
        assert!(tag("#carbon #petite #artichoke").is_empty());
    }

    #[test]
    fn stems_and_plurals() {
        for text in [
            "photographs",
            "a photographer",
            "photography",
            "photographing birds",
        ] {
            assert!(tag(text).contains(&"photography_fanatics"), "{text}");
        }
        assert_eq!(tag("movies"), ["movie_lovers"]);
        assert_eq!(tag("puppies"), ["pet_lovers"]);
        assert_eq!(tag("Hiking"), ["outdoor_enthusiasts"]);
        assert_eq!(tag("My dog's bed"), ["pet_lovers"]);
        // Not every word that starts like a cue is one.
        assert!(tag("I booked it").is_empty());
    }

    #[test]
    fn pairs_follow_the_convention() {
        // One plain cue: the base tag only.
        assert_eq!(tag("Going to a concert"), ["music_lovers"]);
        // Two distinct cues, or one strong cue: the devotee tag too, right after its base tag.
        assert_eq!(
            tag("Concert tonight, then a new album"),
            ["music_lovers", "music_aficionados"]
        );
        assert_eq!(
            tag("Found it on vinyl"),
            ["music_lovers", "music_aficionados"]
        );
        // The same cue twice is still one piece of evidence, and so is a phrase.
        assert_eq!(tag("movie movie movie"), ["movie_lovers"]);
        assert_eq!(tag("comic book"), ["comic_lovers"]);
    }

    #[test]
    fn against_phrases_mask_their_words() {
        assert!(tag("Grabbed a hot dog").is_empty());
        assert!(!tag("Shot this on 35mm film").contains(&"movie_lovers"));
        assert!(!tag("PS5 back in stock").contains(&"finance_fanatics"));
    }

    #[test]
    fn mentions_and_links_are_not_evidence() {
        assert!(tag("@musiclover https://music.example/movies").is_empty());
    }

    #[test]
    fn ranked_by_score_then_by_tag_order() {
        // Music has two cues (rank 8), pets one (rank 4); the devotee tag comes in between.
        assert_eq!(
            tag("My dog hates my new album and my guitar"),
            ["music_lovers", "music_aficionados", "pet_lovers"]
        );
        // Equal scores: the order of TAGS (movie_lovers before sports_fans).
        assert_eq!(
            tag("football then a movie"),
            ["movie_lovers", "sports_fans"]
        );
    }
}
