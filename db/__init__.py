"""The database layer: connection pool, migrations, the embedded server, the seed generator."""
