-- Each tenant's notes; runs with search_path set to the tenant's schema, as the tenant's role.
CREATE TABLE notes (
  id bigserial PRIMARY KEY,
  body text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
