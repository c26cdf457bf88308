"""lamina's engine: the library below every front end."""
