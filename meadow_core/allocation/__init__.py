"""Cloud-agnostic allocation: which machines a job needs (no cloud SDK imports here)."""
