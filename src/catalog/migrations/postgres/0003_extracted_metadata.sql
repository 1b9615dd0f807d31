-- Metadata extracted from the content on upload (JSON): text or not, line count, title,
-- headings, front matter, top-level keys.
ALTER TABLE versions ADD COLUMN extracted TEXT NOT NULL DEFAULT '{}';
