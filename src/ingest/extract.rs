//! Metadata extracted from content on upload: whether it is text, its line count, and for
//! Markdown its front matter (typed), title and headings; for YAML and JSON their top-level
//! keys. Only valid UTF-8 counts as text, and only the first [`MAX_INDEXED_TEXT_BYTES`] are
//! examined (and indexed).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Text beyond this many bytes of a version is neither examined nor indexed.
pub const MAX_INDEXED_TEXT_BYTES: usize = 1024 * 1024;
const MAX_HEADINGS: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extracted {
    pub is_text: bool,
    /// Lines of the whole content (text only).
    pub line_count: u64,
    pub title: Option<String>,
    pub headings: Vec<String>,
    /// Markdown front matter, with YAML types kept (numbers, booleans, lists, dates as text).
    pub front_matter: Map<String, Value>,
    /// Top-level keys of a YAML or JSON document.
    pub top_level_keys: Vec<String>,
    /// Whether the content was longer than what was examined: its first
    /// [`MAX_INDEXED_TEXT_BYTES`] (content that is not text is read only up to the evidence,
    /// which decides the same as the whole prefix would; see [`Head`]).
    pub truncated: bool,
}

/// The examined prefix of a content as text, when it is valid UTF-8 (a character cut at the
/// end of the prefix is dropped).
pub fn text_prefix(prefix: &[u8]) -> Option<&str> {
    match std::str::from_utf8(prefix) {
        Ok(text) => Some(text),
        Err(error) if error.error_len().is_none() => {
            Some(std::str::from_utf8(&prefix[..error.valid_up_to()]).expect("valid prefix"))
        }
        Err(_) => None,
    }
}

/// Bytes at the start of a content that type detection reads whatever follows (magic
/// numbers, a tar header).
pub const SNIFF_BYTES: usize = 512;

/// The prefix of a content that type detection and extraction examine, gathered while the
/// content streams in: up to [`MAX_INDEXED_TEXT_BYTES`] of text. Once the content shows it
/// is not text (a NUL byte, a byte sequence that is not UTF-8), the prefix stops at the
/// first [`SNIFF_BYTES`] or just past that evidence, whichever is longer: nothing after it
/// changes what is found, and a binary upload no longer holds a MiB it never uses.
#[derive(Debug, Default)]
pub struct Head {
    bytes: Vec<u8>,
    /// `bytes[..valid]` is whole UTF-8 characters; what follows is the start of one.
    valid: usize,
    /// Whether the bytes so far show the content is not text.
    not_text: bool,
}

impl Head {
    pub fn push(&mut self, data: &[u8]) {
        let limit = if self.not_text {
            SNIFF_BYTES
        } else {
            MAX_INDEXED_TEXT_BYTES
        };
        let start = self.bytes.len();
        let take = limit.saturating_sub(start).min(data.len());
        if take == 0 {
            return;
        }
        self.bytes.extend_from_slice(&data[..take]);
        if self.not_text {
            return;
        }
        let nul_end = self.bytes[start..]
            .iter()
            .position(|byte| *byte == 0)
            .map(|at| start + at + 1);
        let invalid_end = match std::str::from_utf8(&self.bytes[self.valid..]) {
            Ok(_) => {
                self.valid = self.bytes.len();
                None
            }
            Err(error) => match error.error_len() {
                None => {
                    self.valid += error.valid_up_to();
                    None
                }
                // The byte after a broken sequence is kept too: it may be what broke it
                // (a character cut short is only evidence with what interrupted it).
                Some(len) => Some((self.valid + error.valid_up_to() + len + 1).min(self.bytes.len())),
            },
        };
        if let Some(end) = nul_end.into_iter().chain(invalid_end).min() {
            self.not_text = true;
            self.bytes.truncate(end.max(SNIFF_BYTES));
            self.bytes.shrink_to_fit();
        }
    }

    /// Whether the content has shown it is not text: what follows cannot change that.
    pub fn shows_not_text(&self) -> bool {
        self.not_text
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// What an upload learns about its whole content while streaming it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentShape {
    pub size: u64,
    pub newlines: u64,
    pub last_byte: Option<u8>,
}

impl ContentShape {
    /// Takes in the next bytes of the content; their newlines are counted while `text` (once
    /// the [`Head`] shows the content is not text, its lines are never used).
    pub fn observe(&mut self, data: &[u8], text: bool) {
        self.size += data.len() as u64;
        if text {
            self.newlines += memchr::memchr_iter(b'\n', data).count() as u64;
        }
        if let Some(last) = data.last() {
            self.last_byte = Some(*last);
        }
    }

    /// Lines as an editor counts them: a last line without a newline still counts.
    pub fn lines(&self) -> u64 {
        self.newlines + u64::from(self.last_byte.is_some_and(|byte| byte != b'\n'))
    }
}

/// Extracts what the content's kind allows. `prefix` is the first bytes of the content (at
/// most [`MAX_INDEXED_TEXT_BYTES`]); `shape` describes the whole content.
pub fn extract(content_type: &str, prefix: &[u8], shape: ContentShape) -> Extracted {
    let total_size = shape.size;
    let Some(text) = text_prefix(prefix).filter(|t| !t.contains('\0')) else {
        // Content that is not text is examined only up to the evidence (see [`Head`]):
        // what counts as examined is what text would have been.
        return Extracted {
            truncated: total_size > MAX_INDEXED_TEXT_BYTES as u64,
            ..Extracted::default()
        };
    };
    let mut extracted = Extracted {
        is_text: true,
        line_count: shape.lines(),
        truncated: total_size > prefix.len() as u64,
        ..Extracted::default()
    };
    match content_type {
        "text/markdown" => extract_markdown(text, &mut extracted),
        "application/yaml" => {
            if let Ok(Value::Object(map)) = serde_norway::from_str::<Value>(text) {
                extracted.top_level_keys = map.keys().cloned().collect();
            }
        }
        "application/json" => {
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
                extracted.top_level_keys = map.keys().cloned().collect();
            }
        }
        _ => {}
    }
    extracted
}

/// Splits Markdown into its YAML front matter (between `---` lines at the very start) and
/// the rest.
pub fn split_front_matter(text: &str) -> (Option<&str>, &str) {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return (None, text);
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" || line.trim_end() == "..." {
            return (Some(&rest[..offset]), &rest[offset + line.len()..]);
        }
        offset += line.len();
    }
    (None, text)
}

fn extract_markdown(text: &str, extracted: &mut Extracted) {
    let (front_matter, body) = split_front_matter(text);
    if let Some(yaml) = front_matter
        && let Ok(Value::Object(map)) = serde_norway::from_str::<Value>(yaml)
    {
        extracted.front_matter = map;
    }
    let mut in_fence = false;
    for line in body.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !trimmed.starts_with('#') {
            continue;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        let heading = trimmed[level..].trim().trim_end_matches('#').trim();
        if level > 6 || heading.is_empty() || !trimmed[level..].starts_with(' ') {
            continue;
        }
        if level == 1 && extracted.title.is_none() {
            extracted.title = Some(heading.to_owned());
        }
        if extracted.headings.len() < MAX_HEADINGS {
            extracted.headings.push(heading.to_owned());
        }
    }
    if let Some(Value::String(title)) = extracted.front_matter.get("title") {
        extracted.title = Some(title.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(data: &[u8]) -> ContentShape {
        let mut shape = ContentShape::default();
        shape.observe(data, true);
        shape
    }

    #[test]
    fn markdown_front_matter_title_and_headings() {
        let text = "---\ntitle: Payments PRD\npriority: 2\napproved: true\ntags: [payments, q3]\n---\n# Overview\n\nWords.\n\n```\n# not a heading\n```\n## Goals ##\n#nospace\n";
        let extracted = extract("text/markdown", text.as_bytes(), shape(text.as_bytes()));
        assert!(extracted.is_text);
        assert_eq!(extracted.title.as_deref(), Some("Payments PRD"));
        assert_eq!(extracted.headings, vec!["Overview", "Goals"]);
        assert_eq!(extracted.front_matter["priority"], serde_json::json!(2));
        assert_eq!(extracted.front_matter["approved"], serde_json::json!(true));
        assert_eq!(
            extracted.front_matter["tags"],
            serde_json::json!(["payments", "q3"])
        );
        assert_eq!(extracted.line_count, 15);
        assert!(!extracted.truncated);
    }

    #[test]
    fn the_first_h1_is_the_title_without_front_matter() {
        let text = "intro\n# Real Title\n# Second\n";
        let extracted = extract("text/markdown", text.as_bytes(), shape(text.as_bytes()));
        assert_eq!(extracted.title.as_deref(), Some("Real Title"));
    }

    #[test]
    fn yaml_and_json_keys_and_binary_content() {
        let yaml = "name: bmad\nversion: 6\nmodules:\n  - core\n";
        assert_eq!(
            extract("application/yaml", yaml.as_bytes(), shape(yaml.as_bytes())).top_level_keys,
            vec!["modules", "name", "version"]
        );
        let json = r#"{"b": 1, "a": {"c": 2}}"#;
        let extracted = extract("application/json", json.as_bytes(), shape(json.as_bytes()));
        assert_eq!(extracted.top_level_keys, vec!["a", "b"]);
        assert_eq!(extracted.line_count, 1, "a last line without a newline counts");
        let binary = extract(
            "application/octet-stream",
            &[0xff, 0xfe, 0x00, 0x01],
            shape(&[0xff, 0xfe, 0x00, 0x01]),
        );
        assert!(!binary.is_text);
        assert_eq!(binary.line_count, 0);
    }

    #[test]
    fn a_character_cut_at_the_cap_is_still_text() {
        let text = "é".repeat(10);
        let cut = &text.as_bytes()[..7];
        assert_eq!(text_prefix(cut), Some("ééé"));
        let mut whole = shape(text.as_bytes());
        whole.size = 20;
        let extracted = extract("text/plain", cut, whole);
        assert!(extracted.is_text && extracted.truncated);
    }

    /// Contents of every kind, pushed in pieces of every size: the head finds what the
    /// whole first MiB would have found, and holds no more than it needs.
    #[test]
    fn the_head_finds_what_the_whole_prefix_finds() {
        use crate::domain::content_type::guess;
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let text = "# Title\n\nSome words, é and 日本語 too.\n".repeat(40_000);
        let mut tar = vec![0u8; 2048];
        tar[257..262].copy_from_slice(b"ustar");
        tar[..8].copy_from_slice(b"file.txt");
        let mut contents: Vec<(&str, Vec<u8>)> = vec![
            ("notes.md", text.as_bytes().to_vec()),
            ("notes.md", text.as_bytes()[..1000].to_vec()),
            ("data.bin", (0..3_000_000).map(|_| rng.random::<u8>()).collect()),
            ("bundle", tar),
            ("image.png", [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 100_000]].concat()),
        ];
        // Text up to a NUL or a broken UTF-8 sequence at positions near and far from the
        // start, and a character cut by the 1 MiB limit.
        // With how much of each such content the head keeps: the first 512 bytes, or up to
        // the byte that shows it is not text (a lone 0xff, and the byte after it when it
        // arrived with it; a cut-short character with the byte that interrupted it).
        let mut keeps = std::collections::HashMap::new();
        for at in [
            3usize,
            300,
            511,
            512,
            513,
            700,
            200_000,
            MAX_INDEXED_TEXT_BYTES - 1,
        ] {
            for (bad, least, most) in [
                (&[0u8][..], at + 1, at + 1),
                (&[0xff], at + 1, at + 2),
                (&[0xe6, 0x97, b'x'], at + 3, at + 3),
            ] {
                let mut content = text.as_bytes()[..at].to_vec();
                content.extend_from_slice(bad);
                content.extend_from_slice(&text.as_bytes()[..5000]);
                let bound = |end: usize| end.clamp(SNIFF_BYTES, MAX_INDEXED_TEXT_BYTES);
                keeps.insert(content.clone(), bound(least)..=bound(most));
                contents.push(("notes.txt", content.clone()));
                contents.push(("README", content));
            }
        }
        let mut cut = "a".repeat(MAX_INDEXED_TEXT_BYTES - 1).into_bytes();
        cut.extend_from_slice("日本".as_bytes());
        contents.push(("README", cut));

        for (name, content) in &contents {
            let whole = &content[..content.len().min(MAX_INDEXED_TEXT_BYTES)];
            let expected_type = guess(name, whole);
            let expected = extract(expected_type, whole, shape(content));
            for max_piece in [1usize, 7, 4096, 1 << 20, usize::MAX] {
                let mut head = Head::default();
                let mut rest = &content[..];
                while !rest.is_empty() {
                    let len = rng.random_range(1..=max_piece.min(rest.len()));
                    head.push(&rest[..len]);
                    rest = &rest[len..];
                }
                let head = head.into_bytes();
                let kept = head.len();
                let found_type = guess(name, &head);
                assert_eq!(found_type, expected_type, "{name}, {} bytes", content.len());
                assert_eq!(extract(found_type, &head, shape(content)), expected, "{name}");
                if expected.is_text {
                    assert_eq!(kept, whole.len(), "text keeps the whole prefix");
                }
                if let Some(expected) = keeps.get(content) {
                    assert!(expected.contains(&kept), "{name}: kept {kept}, not {expected:?}");
                }
                if *name == "data.bin" || *name == "image.png" {
                    assert_eq!(
                        kept, SNIFF_BYTES,
                        "{name}: binary keeps only what detection reads"
                    );
                }
            }
        }
    }
}
