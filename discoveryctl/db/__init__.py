"""The shared database: models, engine setup, migrations and the queries the core needs."""
