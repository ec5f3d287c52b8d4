"""Meadow adapter for airflow: filled by its own issue."""
