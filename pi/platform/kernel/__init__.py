"""Standard-library-only building blocks: errors, money, ids, text, pages, the caller."""
