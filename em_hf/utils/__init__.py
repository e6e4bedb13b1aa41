"""Leaf helpers with no em_hf imports: answer extraction, argument validation, the package logger,
lazy exports. Everything else in em_hf may import from here."""
