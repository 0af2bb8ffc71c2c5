"""Eval workers: probe each published checkpoint asynchronously and write reports."""
