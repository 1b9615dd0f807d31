//! What people type, turned into queries. The default, natural mode reads the text as words
//! and phrases and never fails: punctuation is text, quoted phrases are kept together when
//! their quotes balance. The operator mode offers the query language (field:value, AND, OR,
//! +/-, quotes) and says what is wrong, and where, when a query does not parse.

use crate::domain::{Error, Result};
use std::collections::HashSet;
use tantivy::Term;
use tantivy::query::{
    BooleanQuery, BoostQuery, DisjunctionMaxQuery, EmptyQuery, Occur, PhraseQuery, Query, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer, Token, TokenFilter,
    TokenStream, Tokenizer,
};

/// Prose (titles, headings, bodies): words lowercased and stemmed, versions without a `v`.
pub const PROSE: &str = "artifactd_prose";
/// Names and paths: words lowercased, versions without a `v`; not stemmed.
pub const PLAIN: &str = "artifactd_plain";

/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Words of a query that take part in ranking; the rest of a long paste adds nothing.
const MAX_QUERY_WORDS: usize = 48;
/// Adjacent word pairs rewarded for appearing near each other.
const MAX_PAIRS: usize = 16;

pub fn prose_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(48))
        .filter(LowerCaser)
        .filter(VersionWithoutV)
        .filter(Stemmer::new(Language::English))
        .build()
}

pub fn plain_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(48))
        .filter(LowerCaser)
        .filter(VersionWithoutV)
        .build()
}

pub fn register_analyzers(index: &tantivy::Index) {
    index.tokenizers().register(PROSE, prose_analyzer());
    index.tokenizers().register(PLAIN, plain_analyzer());
}

/// Words that say how a question is asked rather than what it is about, and the commonest
/// function words. They count inside phrases and never on their own, so that "of" matching a
/// two-word title cannot outrank the document a sentence was copied from.
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "but", "by", "can", "could", "d", "did", "do", "does", "doing", "done", "during", "each",
    "else", "for", "from", "get", "got", "had", "has", "have", "having", "he", "her", "here", "him", "his",
    "how", "i", "if", "in", "into", "is", "it", "its", "just", "ll", "m", "may", "me", "might", "must", "my",
    "need", "needs", "of", "on", "once", "only", "or", "our", "ours", "re", "s", "shall", "she", "should",
    "so", "some", "such", "t", "than", "that", "the", "their", "theirs", "them", "then", "there", "these",
    "they", "this", "those", "through", "to", "too", "us", "ve", "very", "was", "way", "we", "were", "what",
    "whats", "when", "where", "whether", "which", "while", "who", "whom", "whose", "why", "will", "with",
    "would", "you", "your", "yours",
];

fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

/// Drops the `v` of version-like words ("v6" → "6"), so that `v6.3.0` and `6.3.0` match.
#[derive(Clone)]
pub struct VersionWithoutV;

impl TokenFilter for VersionWithoutV {
    type Tokenizer<T: Tokenizer> = VersionWithoutVTokenizer<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> VersionWithoutVTokenizer<T> {
        VersionWithoutVTokenizer(tokenizer)
    }
}

#[derive(Clone)]
pub struct VersionWithoutVTokenizer<T>(T);

impl<T: Tokenizer> Tokenizer for VersionWithoutVTokenizer<T> {
    type TokenStream<'a> = VersionWithoutVStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        VersionWithoutVStream(self.0.token_stream(text))
    }
}

pub struct VersionWithoutVStream<T>(T);

impl<T: TokenStream> TokenStream for VersionWithoutVStream<T> {
    fn advance(&mut self) -> bool {
        if !self.0.advance() {
            return false;
        }
        let token = self.0.token_mut();
        let text = &token.text;
        if text.len() > 1
            && (text.starts_with('v') || text.starts_with('V'))
            && text[1..].bytes().all(|b| b.is_ascii_digit())
        {
            token.text.remove(0);
        }
        true
    }

    fn token(&self) -> &Token {
        self.0.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.0.token_mut()
    }
}

/// The fields a natural query reads, with their weights.
#[derive(Clone, Copy)]
pub struct TextFields {
    pub title: Field,
    pub name: Field,
    pub headings: Field,
    pub body: Field,
    pub front_matter: Field,
}

const TITLE_BOOST: f32 = 2.5;
const NAME_BOOST: f32 = 1.5;
const HEADINGS_BOOST: f32 = 1.2;
/// A phrase of the whole query, found as typed: the strongest evidence there is.
const PHRASE_BOOST: f32 = 4.0;
/// A pair of the query's words near each other.
const PAIR_BOOST: f32 = 0.8;

/// One word of a query: where it stands, and its indexed forms.
#[derive(Debug, Clone)]
struct Word {
    position: usize,
    plain: String,
    stemmed: String,
    stop: bool,
}

fn words(text: &str) -> Vec<Word> {
    let mut plain = plain_analyzer();
    let mut prose = prose_analyzer();
    let mut stream = plain.token_stream(text);
    let mut found = Vec::new();
    while stream.advance() {
        let token = stream.token();
        let mut stemmed_stream = prose.token_stream(&token.text);
        let stemmed = if stemmed_stream.advance() {
            stemmed_stream.token().text.clone()
        } else {
            token.text.clone()
        };
        found.push(Word {
            position: token.position,
            stop: is_stop_word(&token.text.replace('\'', "")),
            plain: token.text.clone(),
            stemmed,
        });
    }
    found
}

/// Splits text into its quoted phrases (where the quotes balance) and the rest.
fn quoted_parts(text: &str) -> (Vec<String>, String) {
    let quotes = text.matches('"').count();
    if quotes < 2 {
        return (Vec::new(), text.to_owned());
    }
    let mut phrases = Vec::new();
    let mut rest = String::new();
    let usable = quotes - quotes % 2;
    let mut seen = 0;
    let mut inside = false;
    let mut current = String::new();
    for c in text.chars() {
        if c == '"' && seen < usable {
            seen += 1;
            if inside {
                phrases.push(std::mem::take(&mut current));
            }
            inside = !inside;
            rest.push(' ');
            continue;
        }
        if inside {
            current.push(c);
        }
        rest.push(c);
    }
    (phrases, rest)
}

fn term(field: Field, text: &str) -> Term {
    Term::from_field_text(field, text)
}

fn boosted(query: Box<dyn Query>, boost: f32) -> Box<dyn Query> {
    if (boost - 1.0).abs() < f32::EPSILON {
        query
    } else {
        Box::new(BoostQuery::new(query, boost))
    }
}

/// A phrase of `words` (at their positions) in a prose field, or `None` when it has one word.
fn phrase(field: Field, words: &[&Word], slop: u32) -> Option<Box<dyn Query>> {
    if words.len() < 2 {
        return None;
    }
    let first = words[0].position;
    let terms = words
        .iter()
        .map(|word| (word.position - first, term(field, &word.stemmed)))
        .collect();
    Some(Box::new(PhraseQuery::new_with_offset_and_slop(terms, slop)))
}

/// A natural-text query in two parts, so that the costly part runs only where it can change
/// the order people see.
pub struct Natural {
    /// What selects the documents and ranks them first: every quoted phrase, and enough of the
    /// meaningful words in any field (a field's best match counts, the title's and the name's
    /// for more).
    pub matching: Box<dyn Query>,
    /// Evidence of the words standing together: the whole text as a phrase, the words in
    /// order in the title or the name, each pair of neighbouring words near each other. Each
    /// clause adds its score to a matching document it matches.
    pub proximity: Vec<Box<dyn Query>>,
}

/// The query for natural text. Quoted phrases must appear; a third of the meaningful words
/// must (at least one); text with no words matches nothing.
pub fn natural(fields: TextFields, text: &str) -> Natural {
    let (quoted, rest) = quoted_parts(text);
    let mut all = words(&rest);
    all.truncate(MAX_QUERY_WORDS);
    let mut required: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    /// Quoted phrases that count; a paste of many is read as text beyond these.
    const MAX_PHRASES: usize = 8;
    for phrase_text in quoted.iter().take(MAX_PHRASES) {
        let mut phrase_words = words(phrase_text);
        phrase_words.truncate(MAX_QUERY_WORDS);
        let refs: Vec<&Word> = phrase_words.iter().collect();
        let phrase_query: Option<Box<dyn Query>> = match refs.as_slice() {
            [] => None,
            [only] => Some(any_field(fields, only)),
            _ => Some(Box::new(BooleanQuery::new(
                [fields.title, fields.headings, fields.body, fields.front_matter]
                    .into_iter()
                    .filter_map(|field| phrase(field, &refs, 0))
                    .map(|q| (Occur::Should, q))
                    .collect(),
            ))),
        };
        if let Some(phrase_query) = phrase_query {
            required.push((Occur::Must, phrase_query));
        }
        all.extend(phrase_words);
    }
    let meaningful: Vec<&Word> = {
        let content: Vec<&Word> = all.iter().filter(|w| !w.stop).collect();
        if content.is_empty() {
            all.iter().collect()
        } else {
            content
        }
    };
    if meaningful.is_empty() {
        return Natural {
            matching: Box::new(EmptyQuery),
            proximity: Vec::new(),
        };
    }
    let mut seen = HashSet::new();
    let each_word: Vec<Box<dyn Query>> = meaningful
        .iter()
        .filter(|word| seen.insert(word.stemmed.clone()))
        .map(|word| any_field(fields, word))
        .collect();
    // A document must hold a third of the meaningful words (at least one): a long sentence
    // or question then matches what it is about, not every document sharing one word. Where
    // phrases are quoted, they choose the documents and the words only rank them.
    let enough = 1 + (each_word.len() - 1) / 3;
    let words_occur = if required.is_empty() {
        Occur::Must
    } else {
        Occur::Should
    };
    required.push((
        words_occur,
        Box::new(BooleanQuery::union_with_minimum_required_clauses(
            each_word, enough,
        )),
    ));
    let mut proximity = Vec::new();
    let unquoted = words(&rest);
    let unquoted: Vec<&Word> = unquoted.iter().take(MAX_QUERY_WORDS).collect();
    for (field, boost) in [
        (fields.body, PHRASE_BOOST),
        (fields.title, PHRASE_BOOST * TITLE_BOOST),
        (fields.headings, PHRASE_BOOST * HEADINGS_BOOST),
    ] {
        if let Some(whole) = phrase(field, &unquoted, 0) {
            proximity.push(boosted(whole, boost));
        }
    }
    let content: Vec<&Word> = unquoted.iter().copied().filter(|w| !w.stop).collect();
    // The meaningful words together, in order, in the title or the name: a title or a file
    // name typed from memory, with words left out or added.
    if content.len() >= 2 {
        let slop = 2 * content.len() as u32;
        if let Some(title) = phrase(fields.title, &content, slop) {
            proximity.push(boosted(title, TITLE_BOOST * PAIR_BOOST * 2.0));
        }
        let first = content[0].position;
        let name_terms = content
            .iter()
            .map(|word| (word.position - first, term(fields.name, &word.plain)))
            .collect();
        proximity.push(boosted(
            Box::new(PhraseQuery::new_with_offset_and_slop(name_terms, slop)),
            NAME_BOOST * PAIR_BOOST * 2.0,
        ));
    }
    for pair in content.windows(2).take(MAX_PAIRS) {
        let gap = pair[1].position - pair[0].position;
        if let Some(near) = phrase(fields.body, pair, 2 + gap as u32) {
            proximity.push(boosted(near, PAIR_BOOST));
        }
    }
    let matching: Box<dyn Query> = match required.len() {
        1 => required.pop().expect("one clause").1,
        _ => Box::new(BooleanQuery::new(required)),
    };
    Natural { matching, proximity }
}

/// One word in any text field: the best field's score, the title's and the name's weighted up.
fn any_field(fields: TextFields, word: &Word) -> Box<dyn Query> {
    let scored = |field: Field, text: &str, boost: f32| {
        boosted(
            Box::new(TermQuery::new(term(field, text), IndexRecordOption::WithFreqs)),
            boost,
        )
    };
    Box::new(DisjunctionMaxQuery::with_tie_breaker(
        vec![
            scored(fields.body, &word.stemmed, 1.0),
            scored(fields.title, &word.stemmed, TITLE_BOOST),
            scored(fields.headings, &word.stemmed, HEADINGS_BOOST),
            scored(fields.name, &word.plain, NAME_BOOST),
            scored(fields.front_matter, &word.stemmed, 1.0),
        ],
        0.3,
    ))
}

/// Checks an operator-mode query for what the query parser reports without a place: quotes
/// and parentheses that do not close, operators with nothing to join, unknown fields. The
/// error names the problem and its position (characters from 1).
pub fn check_operators(text: &str, known_fields: &[&str]) -> Result<()> {
    let chars: Vec<char> = text.chars().collect();
    let at = |index: usize| index + 1;
    let mut open_quote = None;
    let mut parens = Vec::new();
    let mut escaped = false;
    for (index, c) in chars.iter().enumerate() {
        if std::mem::take(&mut escaped) {
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => open_quote = if open_quote.is_some() { None } else { Some(index) },
            '(' if open_quote.is_none() => parens.push(index),
            ')' if open_quote.is_none() && parens.pop().is_none() => {
                return Err(Error::invalid(
                    "query",
                    format!("at character {}: ')' closes no '('", at(index)),
                ));
            }
            _ => {}
        }
    }
    if let Some(index) = open_quote {
        return Err(Error::invalid(
            "query",
            format!(
                "at character {}: the quote opened here is never closed",
                at(index)
            ),
        ));
    }
    if let Some(index) = parens.pop() {
        return Err(Error::invalid(
            "query",
            format!("at character {}: the '(' opened here is never closed", at(index)),
        ));
    }
    // Words outside quotes: fields before ':' must exist; AND/OR need a word on both sides.
    let mut offset = 0;
    let mut inside = false;
    let mut pieces: Vec<(usize, String)> = Vec::new();
    let mut current = String::new();
    for (index, c) in chars.iter().enumerate() {
        if *c == '"' {
            inside = !inside;
        }
        if c.is_whitespace() && !inside {
            if !current.is_empty() {
                pieces.push((offset, std::mem::take(&mut current)));
            }
            offset = index + 1;
        } else {
            current.push(*c);
        }
    }
    if !current.is_empty() {
        pieces.push((offset, current));
    }
    for (number, (start, piece)) in pieces.iter().enumerate() {
        let bare = piece.trim_start_matches(['+', '-', '(']);
        if let Some((field, _)) = bare.split_once(':')
            && !bare.starts_with('"')
            && !field.contains('\\')
            && !field.is_empty()
            && !known_fields.contains(&field)
        {
            return Err(Error::invalid(
                "query",
                format!(
                    "at character {}: there is no field {field:?} (fields: {}); in natural mode, the default, a colon is just text",
                    at(*start),
                    known_fields.join(", ")
                ),
            ));
        }
        if matches!(piece.as_str(), "AND" | "OR") && (number == 0 || number + 1 == pieces.len()) {
            return Err(Error::invalid(
                "query",
                format!("at character {}: {piece} needs a word on each side", at(*start)),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        let mut sorted = STOP_WORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, STOP_WORDS);
    }

    #[test]
    fn versions_match_with_and_without_v() {
        let stemmed: Vec<String> = words("Released v6.3.0 today")
            .into_iter()
            .map(|w| w.stemmed)
            .collect();
        assert_eq!(stemmed, ["releas", "6", "3", "0", "today"]);
    }

    #[test]
    fn quoted_phrases_are_taken_out_when_the_quotes_balance() {
        let (phrases, rest) = quoted_parts(r#"the "quick flow" vs "full method" and a " stray"#);
        assert_eq!(phrases, ["quick flow", "full method"]);
        assert!(rest.contains("stray"));
        let (none, same) = quoted_parts(r#"what's "odd"#);
        assert!(none.is_empty());
        assert_eq!(same, r#"what's "odd"#);
    }

    #[test]
    fn operator_errors_name_the_problem_and_the_place() {
        let fields = ["title", "body"];
        let error = check_operators("Working Backwards: The PRFAQ", &fields)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("character 9") && error.contains("\"Backwards\""),
            "{error}"
        );
        let error = check_operators(r#"title:"open quote"#, &fields)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("character 7") && error.contains("never closed"),
            "{error}"
        );
        let error = check_operators("(a OR b", &fields).unwrap_err().to_string();
        assert!(error.contains("character 1"), "{error}");
        let error = check_operators("a OR", &fields).unwrap_err().to_string();
        assert!(error.contains("character 3") && error.contains("OR"), "{error}");
        check_operators(r#"title:prd AND "a: b" -draft"#, &fields).unwrap();
    }
}
