-- Reference data every tenant reads: runs once, in schema public, as the management role.
CREATE TABLE plans (
  id text PRIMARY KEY,
  name text NOT NULL,
  max_projects integer NOT NULL
);
INSERT INTO plans (id, name, max_projects) VALUES ('free', 'Free', 3), ('team', 'Team', 50);
-- Tenant roles read it as public.plans: their search_path is their own schema only, and public keeps USAGE for PUBLIC.
GRANT SELECT ON plans TO PUBLIC;
