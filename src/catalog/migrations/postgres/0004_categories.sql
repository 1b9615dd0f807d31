-- Categories of an artifact (JSON array), beside its tags; both editable without a version.
ALTER TABLE artifacts ADD COLUMN categories TEXT NOT NULL DEFAULT '[]';
