"""Where intent is kept: the interface the authority needs (``base``) and SQLite (``sqlite``)."""
