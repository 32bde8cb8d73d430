"""Ahead-of-time compilation for TPU topologies without a TPU.

`chips` holds the chip table (HBM, peak bf16 FLOP/s, HBM bandwidth, with
sources) and turns a topology name such as `"v5e:2x4"` into abstract TPU
devices; `programs` builds the abstract state and batches of a config and
compiles the rollout, log-prob and train programs for them; `cost` counts
FLOPs loop-exactly and makes the roofline estimate; `hlo` counts collectives
in the compiled programs.
"""
