"""Meadow adapter for prefect: filled by its own issue."""
