"""Entropy control: token statistics, covariance scores, dynamics, controllers."""
