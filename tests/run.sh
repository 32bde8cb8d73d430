#!/usr/bin/env bash
# Runs the whole test suite: single-device tests in parallel workers, then the
# multi-device tests (8 fake CPU devices) in their own pytest process, since
# XLA_FLAGS must be set before jax starts, then the TPU ahead-of-time tests
# (tests/aot: libtpu compiles for abstract TPU topologies) in a third process,
# then the multi-host test (tests/multihost: two JAX processes joined over
# 127.0.0.1, started as subprocesses) in a fourth.
# Prints one combined closing line.
set -u
cd "$(dirname "$0")/.."
# With libtpu installed (the `tpu` extra) jax would probe for a TPU at start-up
# and print warnings; the suite runs on the CPU.
export JAX_PLATFORMS=cpu
out=$(mktemp -d)
python -m pytest -p no:benchmark -n 2 --dist loadfile tests \
  --ignore=tests/multidevice --ignore=tests/aot --ignore=tests/multihost \
  --junitxml="$out/single.xml" "$@"
rc1=$?
python -m pytest -p no:benchmark tests/multidevice --junitxml="$out/multi.xml" "$@"
rc2=$?
python -m pytest -p no:benchmark tests/aot --junitxml="$out/aot.xml" "$@"
rc3=$?
python -m pytest -p no:benchmark tests/multihost --junitxml="$out/hosts.xml" "$@"
rc4=$?
python - "$out/single.xml" "$out/multi.xml" "$out/aot.xml" "$out/hosts.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
n = f = e = s = 0
for path in sys.argv[1:]:
  try:
    root = ET.parse(path).getroot()
  except (OSError, ET.ParseError):
    continue
  for suite in root.iter("testsuite"):
    n += int(suite.get("tests", 0)); f += int(suite.get("failures", 0))
    e += int(suite.get("errors", 0)); s += int(suite.get("skipped", 0))
print(f"all tests: {n - f - e - s} passed, {f + e} failed, {s} skipped")
PY
rm -rf "$out"
# pytest exit 5 = no tests collected in that part; not a failure of the suite.
for rc in $rc1 $rc2 $rc3 $rc4; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
exit 0
