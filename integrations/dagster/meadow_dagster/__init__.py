"""Meadow adapter for dagster: filled by its own issue."""
