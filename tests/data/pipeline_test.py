"""Tests for jaxrl_ent.data.pipeline: order, epochs, shards, checkpointing."""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from jaxrl_ent.data import pipeline
from jaxrl_ent.data import records
from jaxrl_ent.data import tokenization


def _examples(n):
  """n tokenised prompts; example i has i % 5 + 1 tokens, all equal to i."""
  out = []
  for i in range(n):
    rec = records.PromptRecord(id=f"e{i}", prompt=f"p{i}", answer=str(i),
                               reference={"answer": str(i)}, source=f"m:{i}")
    out.append(tokenization.TokenizedPrompt(
        rec, f"p{i}", np.full(i % 5 + 1, i + 1, np.int32)))
  return out


def _dataset(n=10, **kw):
  kw = dict(dict(batch_size=4, buckets=(4, 8), pad_id=0, seed=0), **kw)
  return pipeline.make_prompt_dataset(_examples(n), **kw)


def _indices(it, k):
  return [next(it)["index"].tolist() for _ in range(k)]


class PipelineTest(parameterized.TestCase):

  def test_batch_contents(self):
    batch = next(pipeline.to_iterator(_dataset(shuffle=False)))
    self.assertEqual(batch["index"].tolist(), [0, 1, 2, 3])
    self.assertEqual(batch["tokens"].shape, (4, 4))  # Longest has 4 tokens.
    np.testing.assert_array_equal(batch["tokens"][1], [0, 0, 2, 2])
    np.testing.assert_array_equal(batch["mask"][1], [0, 0, 1, 1])
    np.testing.assert_array_equal(batch["positions"][1], [0, 0, 0, 1])
    self.assertEqual(batch["ids"], ["e0", "e1", "e2", "e3"])
    self.assertEqual(batch["references"][2], {"answer": "2"})
    self.assertTrue(batch["valid"].all())
    # Example 4 has 5 tokens: the next batch uses the 8 bucket.
    self.assertEqual(next(iter(_dataset(shuffle=False)[1:]))["tokens"].shape,
                     (4, 8))

  def test_restore_mid_epoch_gives_identical_batches(self):
    it = pipeline.to_iterator(_dataset(num_epochs=3))
    _indices(it, 3)  # Mid first epoch (10 examples, batches of 4).
    state = json.loads(json.dumps(it.get_state()))  # As a checkpoint would.
    expected = [next(it) for _ in range(4)]  # Crosses into epoch 2.
    fresh = pipeline.to_iterator(_dataset(num_epochs=3))
    fresh.set_state(state)
    for want in expected:
      got = next(fresh)
      for key in ("index", "tokens", "mask", "positions"):
        np.testing.assert_array_equal(got[key], want[key])
      self.assertEqual(got["ids"], want["ids"])

  def test_epochs_are_reshuffled_permutations(self):
    it = pipeline.to_iterator(_dataset(n=12, num_epochs=2))
    batches = _indices(it, 6)
    with self.assertRaises(StopIteration):
      next(it)
    first, second = sum(batches[:3], []), sum(batches[3:], [])
    self.assertEqual(sorted(first), list(range(12)))
    self.assertEqual(sorted(second), list(range(12)))
    self.assertNotEqual(first, second)

  def test_seed(self):
    a = _indices(pipeline.to_iterator(_dataset(seed=1)), 3)
    self.assertEqual(a, _indices(pipeline.to_iterator(_dataset(seed=1)), 3))
    self.assertNotEqual(a, _indices(pipeline.to_iterator(_dataset(seed=2)), 3))

  def test_processes_read_disjoint_slices_of_the_same_global_batches(self):
    whole = _indices(pipeline.to_iterator(_dataset(batch_size=4)), 6)
    parts = [pipeline.to_iterator(_dataset(batch_size=4, process_index=p,
                                           process_count=2))
             for p in range(2)]
    for k in range(6):
      p0, p1 = (next(it)["index"].tolist() for it in parts)
      self.assertLen(p0, 2)
      # Contiguous blocks, in order (a batch that crosses into the next
      # epoch may hold one example twice, so not "disjoint sets").
      self.assertEqual(p0 + p1, whole[k])

  def test_process_blocks_stack_into_the_single_process_batch(self):
    # Multi-host runs build the global batch from the processes' blocks in
    # order (jax.make_array_from_process_local_data): it must be exactly the
    # batch one process reads, padded to the same bucket.
    whole = pipeline.to_iterator(_dataset(batch_size=4, shuffle=False))
    parts = [pipeline.to_iterator(_dataset(batch_size=4, shuffle=False,
                                           process_index=p, process_count=2))
             for p in range(2)]
    for _ in range(5):
      want = next(whole)
      got = [next(it) for it in parts]
      for key in ("index", "tokens", "mask", "positions", "valid"):
        np.testing.assert_array_equal(
            np.concatenate([g[key] for g in got]), want[key])
      self.assertEqual(got[0]["ids"] + got[1]["ids"], want["ids"])
    # Rows 0-1 of the first batch hold 1 and 2 tokens, yet process 0's block
    # is padded to the bucket of the whole batch (4 tokens).
    first = next(pipeline.to_iterator(_dataset(
        batch_size=4, shuffle=False, process_index=0, process_count=2)))
    self.assertEqual(first["index"].tolist(), [0, 1])
    self.assertEqual(first["tokens"].shape, (2, 4))

  def test_finite_epochs_give_every_process_the_same_batch_count(self):
    counts = [len(list(pipeline.to_iterator(_dataset(
        n=10, batch_size=4, num_epochs=1, process_index=p, process_count=2))))
              for p in range(2)]
    self.assertEqual(counts, [2, 2])  # 10 // 4 global batches.

  def test_eval_mode_pads_last_batch(self):
    batches = list(pipeline.to_iterator(_dataset(
        n=10, shuffle=False, num_epochs=1, drop_remainder=False)))
    self.assertLen(batches, 3)
    last = batches[-1]
    self.assertEqual(last["index"].tolist(), [8, 9, -1, -1])
    self.assertEqual(last["valid"].tolist(), [True, True, False, False])
    self.assertEqual(last["tokens"].shape[0], 4)

  def test_bad_sizes(self):
    with self.assertRaisesRegex(ValueError, "multiple of process_count"):
      _dataset(batch_size=3, process_count=2)
    with self.assertRaisesRegex(ValueError, "process_index"):
      _dataset(process_index=2, process_count=2)
    with self.assertRaisesRegex(ValueError, "no full batch"):
      _dataset(n=3, num_epochs=1)

  def test_repeat_groups(self):
    batch = {"tokens": np.array([[1, 2], [3, 4]]), "ids": ["a", "b"],
             "references": [{"answer": "1"}, {"answer": "2"}]}
    out = pipeline.repeat_groups(batch, 3)
    np.testing.assert_array_equal(
        out["tokens"], [[1, 2], [1, 2], [1, 2], [3, 4], [3, 4], [3, 4]])
    self.assertEqual(out["ids"], ["a", "a", "a", "b", "b", "b"])
    self.assertEqual(out["group"].tolist(), [0, 0, 0, 1, 1, 1])
    self.assertEqual(out["references"][4], {"answer": "2"})


class MakeIteratorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top
    cls.tok = tiny_hf.tiny_tokenizer()

  def test_from_jsonl_with_template_and_restore(self):
    path = os.path.join(self.create_tempdir().full_path, "p.jsonl")
    with open(path, "w") as f:
      for i in range(9):
        question = "the verifier checks the answer" if i != 4 else "a b " * 40
        f.write(json.dumps({"question": question, "sol": i, "uid": i}) + "\n")
    cfg = dict(paths=path, prompt_field="question", answer_field="sol",
               id_field="uid", template="Q: {prompt}\nA:",
               max_prompt_length=64, buckets=(40, 64), batch_size=2, seed=3)
    it = pipeline.make_prompt_iterator(cfg, self.tok, process_index=0,
                                       process_count=1)
    self.assertEqual(it.num_skipped, 1)  # The long question.
    batch = next(it)
    self.assertEqual(batch["tokens"].shape, (2, 40))
    self.assertTrue(batch["texts"][0].startswith("Q: the verifier"))
    self.assertEqual(batch["references"][0]["answer"],
                     str(batch["references"][0]["sol"]))
    state = it.get_state()
    want = [next(it)["ids"] for _ in range(5)]
    again = pipeline.make_prompt_iterator(cfg, self.tok, process_index=0,
                                          process_count=1)
    again.set_state(state)
    self.assertEqual([next(again)["ids"] for _ in range(5)], want)
    self.assertNotIn("4", sum(want, []))

  def test_synthetic_task_source(self):
    cfg = pipeline.PromptDataConfig(
        task="digits", task_size=8, task_split="test",
        task_kwargs={"min_len": 3, "max_len": 3}, max_prompt_length=32,
        batch_size=4, shuffle=False, num_epochs=1)
    batches = list(pipeline.make_prompt_iterator(cfg, self.tok,
                                                 process_index=0,
                                                 process_count=1))
    self.assertLen(batches, 2)
    ref = batches[0]["references"][0]
    self.assertEqual(ref["task"], "digits")
    self.assertEqual(batches[0]["texts"][0], ref["prompt"])

  def test_needs_exactly_one_source(self):
    with self.assertRaisesRegex(ValueError, "exactly one"):
      pipeline.make_prompt_iterator(dict(paths="x.jsonl", task="digits"),
                                    self.tok, process_index=0,
                                    process_count=1)


if __name__ == "__main__":
  absltest.main()
