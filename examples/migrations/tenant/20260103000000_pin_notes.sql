-- A column and a partial index on an existing table: the shape of most later migrations.
ALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false;
CREATE INDEX notes_pinned_idx ON notes (created_at) WHERE pinned;
