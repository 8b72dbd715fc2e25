//! The classifier against the labelled set in `data/labelled.tsv` (`text<TAB>tag1,tag2,...`,
//! labelled by the synonym-pair convention documented in the classifier module): the set's
//! own sanity, then micro-averaged precision and recall, printed with every miss.
//!
//! `cargo test -p starling-tagger --test labelled_set -- --nocapture` shows the numbers.

use std::collections::BTreeMap;

use starling_tagger::classifier::{tag, MAX_TAGS};
use starling_tagger::tags::TAGS;

const LABELLED: &str = include_str!("../data/labelled.tsv");

/// A little below what the classifier achieves on this set (0.917 and 0.923 when written), so
/// that a lexicon change that loses ground fails here. The set was labelled by the author of
/// the lexicon, so these are in-sample numbers: on tweets written afterwards the lexicon had
/// not seen, precision held (about 0.89) but recall fell (to about 0.65).
const MIN_PRECISION: f64 = 0.88;
const MIN_RECALL: f64 = 0.88;

struct Example {
    line: usize,
    text: &'static str,
    labels: Vec<&'static str>,
}

fn examples() -> Vec<Example> {
    let mut lines = LABELLED.lines().enumerate();
    assert_eq!(lines.next().map(|(_, l)| l), Some("text\ttags"), "header");
    lines
        .map(|(index, line)| {
            let (text, labels) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("line {}: no tab", index + 1));
            assert!(
                !labels.contains('\t'),
                "line {}: a tab in the text",
                index + 1
            );
            assert!(!text.trim().is_empty(), "line {}: empty text", index + 1);
            let labels = labels.split(',').filter(|l| !l.is_empty()).collect();
            Example {
                line: index + 1,
                text,
                labels,
            }
        })
        .collect()
}

#[test]
fn the_labelled_set_is_well_formed() {
    let examples = examples();
    assert!(examples.len() >= 170, "{} examples", examples.len());
    assert!(
        examples.iter().any(|e| e.labels.is_empty()),
        "some tweets have no topic"
    );
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &examples {
        assert!(
            e.labels.len() <= MAX_TAGS,
            "line {}: too many labels",
            e.line
        );
        for (i, label) in e.labels.iter().enumerate() {
            assert!(
                TAGS.contains(label),
                "line {}: {label} is not a tag",
                e.line
            );
            assert!(
                !e.labels[..i].contains(label),
                "line {}: {label} twice",
                e.line
            );
            *count.entry(label).or_default() += 1;
        }
    }
    for t in TAGS {
        let n = count.get(t).copied().unwrap_or(0);
        assert!(n >= 2, "{t} labels {n} tweets, fewer than 2");
    }
}

#[test]
fn precision_and_recall_on_the_labelled_set() {
    let examples = examples();
    let (mut true_positives, mut predicted, mut labelled) = (0usize, 0usize, 0usize);
    // Per tag: tweets where it was missed (false negatives) and wrongly given (false positives).
    let mut missed: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut wrong: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for e in &examples {
        let tags = tag(e.text);
        predicted += tags.len();
        labelled += e.labels.len();
        for t in &tags {
            if e.labels.contains(t) {
                true_positives += 1;
            } else {
                wrong.entry(t).or_default().push(e.line);
            }
        }
        for label in &e.labels {
            if !tags.contains(label) {
                missed.entry(label).or_default().push(e.line);
            }
        }
        if tags.iter().any(|t| !e.labels.contains(t)) || e.labels.iter().any(|l| !tags.contains(l))
        {
            eprintln!(
                "line {}: {}\n    labelled {:?}\n    tagged   {:?}",
                e.line, e.text, e.labels, tags
            );
        }
    }
    let precision = true_positives as f64 / predicted.max(1) as f64;
    let recall = true_positives as f64 / labelled.max(1) as f64;
    eprintln!("\nper-tag misses (tag: lines labelled but not tagged | tagged but not labelled)");
    for t in TAGS {
        let (m, w) = (missed.get(t), wrong.get(t));
        if m.is_some() || w.is_some() {
            eprintln!(
                "  {t}: {:?} | {:?}",
                m.cloned().unwrap_or_default(),
                w.cloned().unwrap_or_default()
            );
        }
    }
    eprintln!(
        "\n{} tweets, {labelled} labels, {predicted} tags given, {true_positives} right: \
         micro precision {precision:.3}, micro recall {recall:.3}",
        examples.len()
    );
    assert!(
        precision >= MIN_PRECISION,
        "precision {precision:.3} < {MIN_PRECISION}"
    );
    assert!(recall >= MIN_RECALL, "recall {recall:.3} < {MIN_RECALL}");
}
