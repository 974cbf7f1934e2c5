#!/bin/sh
# Run once by the postgres image's entrypoint on a new data dir, as the admin superuser
# (POSTGRES_USER): a0's services get a role of their own that owns a0's database and
# tables and nothing more. Its password comes from A0_POSTGRES_PASSWORD.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v role="${A0_POSTGRES_USER:-a0}" -v db="${A0_POSTGRES_DATABASE:-a0}" \
  -v password="$A0_POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
\connect :"db"
ALTER SCHEMA public OWNER TO :"role";
SQL
