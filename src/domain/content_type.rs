//! A media type for stored content, from its first bytes and, failing that, its name.

/// Looks at magic numbers first (they cannot lie about the format), then the extension,
/// then whether the head of the content is text.
pub fn guess(name: &str, head: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "application/gzip"),
        (b"PK\x03\x04", "application/zip"),
        (b"%PDF-", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"\x28\xb5\x2f\xfd", "application/zstd"),
        (b"GIF8", "image/gif"),
    ];
    if let Some((_, media_type)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return media_type;
    }
    if head.len() > 262 && &head[257..262] == b"ustar" {
        return "application/x-tar";
    }
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    let by_extension = match extension.as_str() {
        "md" | "markdown" => Some("text/markdown"),
        "yaml" | "yml" => Some("application/yaml"),
        "json" => Some("application/json"),
        "csv" => Some("text/csv"),
        "txt" => Some("text/plain"),
        "toml" => Some("application/toml"),
        "xml" => Some("application/xml"),
        "html" | "htm" => Some("text/html"),
        "tar" => Some("application/x-tar"),
        _ => None,
    };
    if let Some(media_type) = by_extension {
        return media_type;
    }
    let text_prefix = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut at the end of the head is still text.
        Err(error) => error.error_len().is_none() && error.valid_up_to() + 4 > head.len(),
    };
    if text_prefix && !head.is_empty() && !head.contains(&0) {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::guess;

    #[test]
    fn magic_beats_extension() {
        assert_eq!(guess("notes.md", b"\x1f\x8b\x08rest"), "application/gzip");
        assert_eq!(guess("notes.md", b"# Title\n"), "text/markdown");
        assert_eq!(guess("README", b"plain words"), "text/plain");
        assert_eq!(guess("blob", &[0, 1, 2, 255]), "application/octet-stream");
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(guess("bundle", &tar), "application/x-tar");
    }
}
