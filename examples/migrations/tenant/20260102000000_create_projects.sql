-- A second table, so a new tenant shows more than one applied migration.
CREATE TABLE projects (
  id bigserial PRIMARY KEY,
  name text NOT NULL UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now()
);
