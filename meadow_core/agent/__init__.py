"""The agent (one per machine) and its workers (warm Python processes)."""
