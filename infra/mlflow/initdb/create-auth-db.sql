-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as
-- POSTGRES_USER, after it created the tracking database POSTGRES_DB (mlflow).
-- The basic-auth app keeps its users and permissions in a database of its own.
CREATE DATABASE mlflow_auth;
