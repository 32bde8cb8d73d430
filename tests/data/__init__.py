"""Tests for jaxrl_ent.data."""
