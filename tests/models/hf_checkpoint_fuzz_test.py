"""HF checkpoint folders, fuzzed: each loads or raises a clear CheckpointError.

Property-based (hypothesis, derandomized, bounded examples). A tiny Qwen 2
checkpoint is written in-process (numpy + safetensors, tensor names and HF
shapes spelled out here, independently of `hf_io`), as one file or as shards
with an index, then broken by generated mutations: the file cut at a random
byte, a garbled header length, a tensor's dtype or shape or byte range
changed in the header, a tensor removed, an unknown tensor added, config.json
contradicting the tensors (hidden_size, vocab_size, num_hidden_layers,
num_key_value_heads, ... set to other sizes, zero, negatives, huge values or
the wrong type), config.json not JSON, and index entries removed, redirected
or invented. Every case must raise `models.CheckpointError` naming the file
and the tensor or field, with little memory allocated (a huge size in
config.json must not allocate it), and never return a model.
"""

import json
import pathlib
import struct
import tempfile
import tracemalloc

from absl.testing import absltest
import hypothesis
from hypothesis import strategies as st
import numpy as np
from flax import nnx
from safetensors.numpy import save as st_save

from jaxrl_ent import models

EXAMPLES = 12
_SETTINGS = dict(derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(hypothesis.HealthCheck))

V, D, F, L, N, K = 97, 32, 64, 2, 4, 2  # vocab, hidden, mlp, layers, heads, kv
H = D // N  # head_dim
CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
          "vocab_size": V, "hidden_size": D, "intermediate_size": F,
          "num_hidden_layers": L, "num_attention_heads": N,
          "num_key_value_heads": K, "hidden_act": "silu",
          "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
          "max_position_embeddings": 128, "tie_word_embeddings": False}
# Every size field of config.json, and the tensors' view of its value.
SIZE_FIELDS = {"vocab_size": V, "hidden_size": D, "intermediate_size": F,
               "num_hidden_layers": L, "num_attention_heads": N,
               "num_key_value_heads": K, "head_dim": H}
INDEX = "model.safetensors.index.json"


def _hf_shapes():
  """Qwen 2 tensor names and shapes as transformers saves them."""
  shapes = {"model.embed_tokens.weight": (V, D), "lm_head.weight": (V, D),
            "model.norm.weight": (D,)}
  for i in range(L):
    pre = f"model.layers.{i}."
    shapes.update({
        pre + "input_layernorm.weight": (D,),
        pre + "post_attention_layernorm.weight": (D,),
        pre + "self_attn.q_proj.weight": (N * H, D),
        pre + "self_attn.q_proj.bias": (N * H,),
        pre + "self_attn.k_proj.weight": (K * H, D),
        pre + "self_attn.k_proj.bias": (K * H,),
        pre + "self_attn.v_proj.weight": (K * H, D),
        pre + "self_attn.v_proj.bias": (K * H,),
        pre + "self_attn.o_proj.weight": (D, N * H),
        pre + "mlp.gate_proj.weight": (F, D),
        pre + "mlp.up_proj.weight": (F, D),
        pre + "mlp.down_proj.weight": (D, F),
    })
  return shapes


SHAPES = _hf_shapes()
_RNG = np.random.default_rng(0)
TENSORS = {k: _RNG.standard_normal(s).astype(np.float32)
           for k, s in SHAPES.items()}
# Names the model has no place for (an o_proj bias is Llama-only, a third
# layer is past num_hidden_layers=2, ...), plus random ones.
_UNKNOWN = st.one_of(
    st.sampled_from(["model.layers.0.self_attn.o_proj.bias",
                     "model.layers.1.mlp.gate_proj.bias",
                     f"model.layers.{L}.input_layernorm.weight",
                     "model.layers.0.self_attn.q_norm.weight",
                     "model.embed_tokens.bias", "score.weight"]),
    st.text("abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1,
            max_size=40)).filter(lambda n: n not in SHAPES and
                                 not n.endswith("rotary_emb.inv_freq"))
_SAFETENSORS_DTYPES = ["F16", "BF16", "F32", "F64", "I8", "U8", "I16", "U16",
                       "I32", "U32", "I64", "U64", "BOOL", "F8_E4M3",
                       "F8_E5M2", "f32", "float32", "", "F33"]


def _split(blob):
  (n,) = struct.unpack("<Q", blob[:8])
  return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header, data):
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw + data


def _params(model):
  return {"/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


class Checkpoint:
  """A checkpoint folder as bytes per file, written on demand."""

  def __init__(self, sharded, tensors=None, config=None):
    tensors = dict(TENSORS if tensors is None else tensors)
    self.files = {"config.json": json.dumps(config or CONFIG).encode()}
    if sharded:
      names = sorted(tensors)
      parts = {"model-00001-of-00003.safetensors": names[0::3],
               "model-00002-of-00003.safetensors": names[1::3],
               "model-00003-of-00003.safetensors": names[2::3]}
      weight_map = {}
      for fname, part in parts.items():
        self.files[fname] = st_save({n: tensors[n] for n in part},
                                    metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
      self.files[INDEX] = json.dumps({"metadata": {}, "weight_map":
                                      weight_map}).encode()
    else:
      self.files["model.safetensors"] = st_save(tensors,
                                                metadata={"format": "pt"})

  def shard_of(self, name):
    """The file holding tensor `name`."""
    for fname, blob in self.files.items():
      if fname.endswith(".safetensors") and name in _split(blob)[0]:
        return fname
    raise KeyError(name)

  def write(self, folder):
    folder = pathlib.Path(folder)
    folder.mkdir()
    for fname, blob in self.files.items():
      (folder / fname).write_bytes(blob)
    return folder


class CheckpointFuzzTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cases = {}
    # Imports (transformers, safetensors) happen here, not under tracemalloc.
    with tempfile.TemporaryDirectory() as tmp:
      models.from_pretrained(Checkpoint(True).write(pathlib.Path(tmp) / "c"))

  @classmethod
  def tearDownClass(cls):
    print(f"checkpoint fuzz: {sum(cls.cases.values())} broken folders "
          f"{dict(sorted(cls.cases.items()))}")
    super().tearDownClass()

  def assertCheckpointError(self, ckpt, kind, *names):
    """Loading `ckpt` raises CheckpointError whose message names the folder
    (or a file in it) and every one of `names` (an alternatives tuple: any
    one); returns the message."""
    with tempfile.TemporaryDirectory() as tmp:
      folder = ckpt.write(pathlib.Path(tmp) / "ckpt")
      tracemalloc.start()
      try:
        with self.assertRaises(models.CheckpointError) as cm:
          models.from_pretrained(folder)
        _, peak = tracemalloc.get_traced_memory()
      finally:
        tracemalloc.stop()
    msg = str(cm.exception)
    self.assertIn(str(folder), msg)
    for name in names:
      alternatives = name if isinstance(name, tuple) else (name,)
      self.assertTrue(any(a in msg for a in alternatives),
                      f"{kind}: none of {alternatives} in {msg!r}")
    self.assertLess(len(msg), 1500, msg)
    # The tensors total ~100 kB; a loader that sized anything from a bad
    # header or config.json would show here.
    self.assertLess(peak, 64 * 2**20, f"{kind}: peak {peak} bytes: {msg}")
    self.cases[kind] = self.cases.get(kind, 0) + 1
    return msg

  def test_pristine_checkpoints_load_exactly(self):
    for sharded in (False, True):
      with tempfile.TemporaryDirectory() as tmp:
        folder = Checkpoint(sharded).write(pathlib.Path(tmp) / "ckpt")
        got = _params(models.from_pretrained(folder))
      np.testing.assert_array_equal(got["embed"],
                                    TENSORS["model.embed_tokens.weight"])
      np.testing.assert_array_equal(got["lm_head"],
                                    TENSORS["lm_head.weight"].T)
      np.testing.assert_array_equal(got["final_norm"],
                                    TENSORS["model.norm.weight"])
      for i in range(L):
        np.testing.assert_array_equal(
            got["layers/mlp_norm"][i],
            TENSORS[f"model.layers.{i}.post_attention_layernorm.weight"])
        np.testing.assert_array_equal(
            got["layers/down_w"][i],
            TENSORS[f"model.layers.{i}.mlp.down_proj.weight"].T)

  def test_ignored_extras_load(self):
    """Rotary inv_freq buffers (old Llama checkpoints) and a saved lm_head
    under tie_word_embeddings are skipped, as transformers skips them."""
    tensors = dict(TENSORS)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(
        H // 2, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
      folder = Checkpoint(False, tensors, dict(
          CONFIG, tie_word_embeddings=True)).write(pathlib.Path(tmp) / "c")
      got = _params(models.from_pretrained(folder))
    self.assertNotIn("lm_head", got)
    np.testing.assert_array_equal(got["embed"],
                                  TENSORS["model.embed_tokens.weight"])

  @hypothesis.settings(max_examples=EXAMPLES, **_SETTINGS)
  @hypothesis.given(data=st.data(), sharded=st.booleans())
  def test_broken_safetensors(self, data, sharded):
    """Every mutation of a .safetensors file, on drawn tensors and bytes."""
    for kind in ("cut", "header_length", "dtype", "shape", "offsets",
                 "missing", "unknown", "unknown_int", "header_not_object",
                 "entry_not_object", "duplicate_entry"):
      ckpt = Checkpoint(sharded)
      name = data.draw(st.sampled_from(sorted(SHAPES)), label=f"{kind} name")
      fname = ckpt.shard_of(name)
      blob = ckpt.files[fname]
      header, body = _split(blob)
      names = [fname]
      if kind == "cut":
        ckpt.files[fname] = blob[:data.draw(st.integers(0, len(blob) - 1))]
        names.append("truncated")
      elif kind == "header_length":
        n = struct.unpack("<Q", blob[:8])[0]
        bad = data.draw(st.one_of(st.integers(0, len(blob)),
                                  st.integers(0, 2**64 - 1)).filter(
                                      lambda x: x != n))
        ckpt.files[fname] = struct.pack("<Q", bad) + blob[8:]
        names.append(("truncated", "corrupt safetensors header",
                      "after the last tensor"))
      elif kind == "dtype":
        header[name]["dtype"] = data.draw(st.one_of(
            st.sampled_from(_SAFETENSORS_DTYPES), st.integers(),
            st.none()).filter(lambda d: d != "F32"))
        ckpt.files[fname] = _join(header, body)
        names += [name, "dtype"]
      elif kind == "shape":
        header[name]["shape"] = data.draw(st.lists(
            st.integers(0, 4 * V), max_size=3).filter(
                lambda s: tuple(s) != SHAPES[name]))
        ckpt.files[fname] = _join(header, body)
        names.append(name)
      elif kind == "offsets":
        begin, end = header[name]["data_offsets"]
        delta = data.draw(st.integers(-64, 64).filter(bool))
        header[name]["data_offsets"] = data.draw(st.sampled_from(
            [[begin + delta, end], [begin, end + delta],
             [begin + delta, end + delta], [end, begin]]))
        ckpt.files[fname] = _join(header, body)
        names.append(("data_offsets", "truncated", "after the last tensor"))
      elif kind == "missing":
        tensors = dict(TENSORS)
        del tensors[name]
        ckpt = Checkpoint(sharded, tensors)
        names = [name, "missing"]  # Names the folder: no file has it.
      elif kind in ("unknown", "unknown_int"):
        extra = data.draw(_UNKNOWN, label="unknown name")
        dtype = np.float32 if kind == "unknown" else np.int32
        tensors = dict(TENSORS)
        tensors[extra] = np.zeros(data.draw(st.lists(
            st.integers(1, 40), min_size=1, max_size=2)), dtype)
        ckpt = Checkpoint(sharded, tensors)
        names = [ckpt.shard_of(extra), repr(extra)]
      elif kind == "header_not_object":
        ckpt.files[fname] = _join(data.draw(st.one_of(
            st.lists(st.integers(), max_size=2), st.integers(), st.none(),
            st.text(max_size=8))), body)
        names.append("corrupt safetensors header")
      elif kind == "entry_not_object":
        header[name] = data.draw(st.one_of(
            st.lists(st.integers(), max_size=2), st.integers(), st.none(),
            st.fixed_dictionaries({"dtype": st.just("F32")})))
        ckpt.files[fname] = _join(header, body)
        names.append(name)
      else:
        assert kind == "duplicate_entry"
        raw = json.dumps(header).encode()
        entry = json.dumps({name: header[name]}).encode()[1:-1]
        raw = raw[:-1] + b", " + entry + b"}"
        raw += b" " * (-len(raw) % 8)
        ckpt.files[fname] = struct.pack("<Q", len(raw)) + raw + body
        names += [name, "twice"]
      self.assertCheckpointError(ckpt, kind, *names)

  @hypothesis.settings(max_examples=EXAMPLES, **_SETTINGS)
  @hypothesis.given(data=st.data())
  def test_config_contradicting_tensors(self, data):
    """Each size field of config.json set to a drawn other value."""
    for field, true_value in SIZE_FIELDS.items():
      value = data.draw(st.one_of(
          st.integers(1, 4 * V), st.integers(-3, 0),
          st.integers(10**6, 10**12),
          st.sampled_from(["32", "two", 32.5, None, True, [32], {"a": 1}])
      ).filter(lambda v, t=true_value: v != t or isinstance(v, bool)),
                        label=f"{field} value")
      ckpt = Checkpoint(data.draw(st.booleans(), label="sharded"),
                        config=dict(CONFIG, **{field: value}))
      if field == "head_dim" and value in (0, None):
        # transformers reads a 0 / null head_dim as "hidden_size / heads";
        # so does the loader, and these tensors fit that.
        with tempfile.TemporaryDirectory() as tmp:
          model = models.from_pretrained(ckpt.write(pathlib.Path(tmp) / "c"))
        self.assertEqual(model.cfg.head_dim, H)
        self.cases["config_head_dim_derived"] = self.cases.get(
            "config_head_dim_derived", 0) + 1
        continue
      # Either config.json is refused (named), or a tensor does not fit it.
      self.assertCheckpointError(ckpt, f"config_{field}",
                                 ("config.json", "tensor '"))

  @hypothesis.settings(max_examples=EXAMPLES * 2, **_SETTINGS)
  @hypothesis.given(data=st.data())
  def test_config_not_json(self, data):
    good = json.dumps(CONFIG).encode()
    raw = data.draw(st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(good) - 1).map(lambda i: good[:i]),
        st.sampled_from([b"[]", b"null", b"42", b'"qwen2"', b"{",
                         b"\xef\xbb\xbf{\xff}", b"[" * 100_000])),
                   label="config.json")
    ckpt = Checkpoint(False)
    ckpt.files["config.json"] = raw
    self.assertCheckpointError(ckpt, "config_not_json", "config.json")

  @hypothesis.settings(max_examples=EXAMPLES, **_SETTINGS)
  @hypothesis.given(data=st.data())
  def test_broken_index(self, data):
    """Every mutation of model.safetensors.index.json."""
    for kind in ("drop_entry", "redirect_entry", "invent_entry",
                 "missing_file", "not_json", "bad_weight_map", "escape_path"):
      ckpt = Checkpoint(True)
      index = json.loads(ckpt.files[INDEX])
      wmap = index["weight_map"]
      name = data.draw(st.sampled_from(sorted(wmap)), label=f"{kind} name")
      names = []
      if kind == "drop_entry":
        names += [wmap.pop(name), name, INDEX]
      elif kind == "redirect_entry":
        others = sorted(set(wmap.values()) - {wmap[name]})
        names += [wmap[name], name]
        wmap[name] = data.draw(st.sampled_from(others))
      elif kind == "invent_entry":
        extra = data.draw(_UNKNOWN, label="invented name")
        wmap[extra] = data.draw(st.sampled_from(sorted(set(wmap.values()))))
        names += [INDEX, repr(extra)]
      elif kind == "missing_file":
        wmap[name] = "model-00009-of-00009.safetensors"
        names += ["model-00009-of-00009.safetensors"]
      elif kind == "not_json":
        raw = ckpt.files[INDEX]
        ckpt.files[INDEX] = data.draw(st.one_of(
            st.binary(max_size=100),
            st.integers(0, len(raw) - 1).map(lambda i: raw[:i])))
        names += [INDEX]
      elif kind == "bad_weight_map":
        index["weight_map"] = data.draw(st.one_of(
            st.none(), st.lists(st.text(max_size=5), max_size=3),
            st.just({name: 3}), st.just({name: None})))
        names += [INDEX]
      else:
        assert kind == "escape_path"
        wmap[name] = data.draw(st.sampled_from(
            ["../model.safetensors", "/etc/hostname", "sub/x.safetensors",
             "config.json"]))
        names += [INDEX]
      if kind != "not_json":
        ckpt.files[INDEX] = json.dumps(index).encode()
      self.assertCheckpointError(ckpt, f"index_{kind}", *names)


if __name__ == "__main__":
  absltest.main()
