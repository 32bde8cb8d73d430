"""Tests for jaxrl_ent.rewards."""
