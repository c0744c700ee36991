"""The transaction service: what merchants are owed and what has been collected."""
