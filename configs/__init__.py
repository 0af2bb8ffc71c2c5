"""Typed configuration for every cityscale service: the schema dataclasses and the YAML files they load.

Imports nothing of ours (see shared STYLE.md): every other package may import from here.
"""
