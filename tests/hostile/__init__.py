"""Hostile and careless inputs (issue 26): each test here failed before its fix."""
