"""One router module per resource; each owns its prefix and tag."""
