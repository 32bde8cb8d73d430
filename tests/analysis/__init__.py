"""Tests for jaxrl_ent.analysis and launch/analyze.py."""
