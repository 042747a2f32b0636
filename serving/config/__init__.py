"""config.yml: the schema (every key and default declared once), reading, validation, the docs tables."""
