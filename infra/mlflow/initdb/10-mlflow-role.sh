#!/bin/sh
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as the
# superuser POSTGRES_USER. MLflow gets a role of its own that is no superuser and may create no
# roles or databases; it owns its two databases, the tracking store (mlflow) and the basic-auth
# users (mlflow_auth), and nothing else. Other roles may not connect to them.
#
# The password comes from MLFLOW_DB_PASSWORD as a psql variable, which psql quotes as a literal
# (:'password'): no character in it can change the SQL.
#
# A data volume made before this script existed has mlflow as its superuser (the old
# POSTGRES_USER): pg_dump both databases, start on a new volume, restore them as mlflow.
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in infra/mlflow/.env}"
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set=password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD :'password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
REVOKE ALL ON DATABASE mlflow, mlflow_auth FROM PUBLIC;
SQL
