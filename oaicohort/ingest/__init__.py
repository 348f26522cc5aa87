"""OAI release -> cohort database: one transactional, provenance-recording ingest run."""
