"""jaxrl_ent/storage.py and the path users on a gs:// bucket (emulator).

Metrics, prompt files (globs, .gz, Parquet), HF checkpoint folders and the
checkpointer's garbled-step quarantine, read and written through the same
clients as on GCS; see conftest.py for the emulator.
"""

import gzip
import io
import json
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import storage
from jaxrl_ent.data import records
from jaxrl_ent.models import tiny_hf
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import metrics as metrics_lib


@pytest.fixture
def root(gcs):
  del gcs
  return epath.Path(f"gs://bucket/t-{uuid.uuid4().hex[:8]}")


def test_paths_keep_the_scheme_and_writes_read_back(root):
  p = storage.path(f"{root}/a/b.txt")
  assert str(p).startswith("gs://bucket/")
  storage.write_text(p, "hello")
  assert storage.read_text(p) == "hello"
  assert storage.isfile(p) and storage.isdir(root / "a")
  storage.write_text(root / "a" / "c.txt", "x")
  assert storage.glob(f"{root}/a/*.txt") == [f"{root}/a/b.txt",
                                             f"{root}/a/c.txt"]
  assert storage.glob(f"{root}/nothere/*.txt") == []
  with storage.local_copy(root / "a") as local:
    assert sorted(f.name for f in local.iterdir()) == ["b.txt", "c.txt"]
  storage.move_tree(root / "a", root / "q" / "a", first_removed="c.txt")
  assert not (root / "a").exists()
  assert storage.read_text(root / "q" / "a" / "b.txt") == "hello"


def test_local_writes_are_atomic_and_leave_no_temporaries(tmp_path):
  storage.write_text(tmp_path / "s.json", "1")
  storage.write_text(tmp_path / "s.json", "2")
  assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
  assert (tmp_path / "s.json").read_text() == "2"


def test_metric_writer_on_a_bucket(root):
  w = metrics_lib.MetricWriter(root, tensorboard=True, flush_every_s=1e9)
  for step in range(4):
    w.write(step, {"a": float(step), "b": float("nan")})
  w.flush()  # What the host loop does after a checkpoint save.
  assert [r["step"] for r in metrics_lib.read_jsonl(root)] == [0, 1, 2, 3]
  w.close()
  assert list((root / "tb").iterdir())  # TensorBoard events in the bucket.
  # A relaunch reads the file back and truncates it to its checkpoint.
  w = metrics_lib.MetricWriter(root, tensorboard=False)
  w.truncate_after(1)
  w.write(2, {"a": 20.0})
  w.close()
  rows = metrics_lib.read_jsonl(root / "metrics.jsonl")
  assert [(r["step"], r["a"]) for r in rows] == [(0, 0.0), (1, 1.0),
                                                 (2, 20.0)]
  assert rows[0]["b"] == "nan"


def test_prompt_files_with_globs_gz_and_parquet(root):
  rows = [{"id": f"p{i}", "prompt": f"q{i}", "answer": str(i)}
          for i in range(6)]
  lines = lambda rs: "".join(json.dumps(r) + "\n" for r in rs)
  storage.write_text(root / "data" / "train-0.jsonl", lines(rows[:2]))
  storage.write_bytes(root / "data" / "train-1.jsonl.gz",
                      gzip.compress(lines(rows[2:4]).encode()))
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  pq.write_table(pa.Table.from_pylist(rows[4:]), buf)
  storage.write_bytes(root / "data" / "train-2.parquet", buf.getvalue())
  got = records.load_records(f"{root}/data/train-*")
  assert [r.id for r in got] == [f"p{i}" for i in range(6)]
  assert got[2].source == f"{root}/data/train-1.jsonl.gz:1"
  with pytest.raises(FileNotFoundError, match="match"):
    records.load_records(f"{root}/data/none-*.jsonl")
  with pytest.raises(FileNotFoundError, match="not found"):
    records.load_records(f"{root}/data/missing.jsonl")


def _param_fingerprints(model):
  return checkpoint.state_fingerprint(nnx.state(model, nnx.Param))


def test_hf_checkpoint_folder_from_and_to_a_bucket(root, tmp_path):
  local = tmp_path / "hf"
  tiny_hf.write_checkpoint(local, "qwen2", vocab_size=64,
                           max_position_embeddings=32)
  want = _param_fingerprints(models.from_pretrained(local))
  storage.upload_dir(local, root / "hf")
  loaded = models.from_pretrained(f"{root}/hf")
  assert _param_fingerprints(loaded) == want
  models.save_pretrained(loaded, root / "out")
  names = sorted(p.name for p in (root / "out").iterdir())
  assert names == ["config.json", "model.safetensors"]
  assert _param_fingerprints(models.from_pretrained(root / "out")) == want
  with pytest.raises(models.CheckpointError, match=f"{root}/nope"):
    models.from_pretrained(f"{root}/nope")


def _largest_data_file(step_dir):
  """The biggest array data file (OCDBT keeps them in `ocdbt.process_*/d/`)."""
  data = [f for f in storage._files(step_dir)  # pylint: disable=protected-access
          if f.parent.name == "d"]
  return max(data, key=lambda p: p.stat().length)


def test_garbled_checkpoint_in_a_bucket_is_quarantined(root):
  state = {"w": jnp.arange(4096.0).reshape(64, 64), "b": jnp.ones(3)}
  ckpt = checkpoint.Checkpointer(root / "ckpt", max_to_keep=3)
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x * s, state),
              data_state={"i": step}, force=True)
    ckpt.wait()
  path = _largest_data_file(ckpt.step_dir(2))
  data = bytearray(path.read_bytes())
  mid = len(data) // 2
  data[mid:mid + 32] = bytes(b ^ 0x5A for b in data[mid:mid + 32])
  path.write_bytes(bytes(data))
  got, data_state, _, step = ckpt.restore(checkpoint.abstract_state(state))
  assert step == 1 and data_state == {"i": 1}
  np.testing.assert_array_equal(got["w"], state["w"])
  assert ckpt.all_steps() == [1]
  moved = list((root / "ckpt" / "quarantine").iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["2"]
  assert not ckpt.step_dir(2).exists()
  # The run writes step 2 again.
  ckpt.save(2, state, force=True)
  ckpt.close()
  assert checkpoint.resolve_restore(root / "ckpt") == (root / "ckpt", 2)
