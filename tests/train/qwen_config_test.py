"""The Qwen2.5 GSM8K config runs on a tiny random checkpoint of the same
architecture and a few JSONL lines (what users point at a real checkpoint)."""

import json
import math
import pathlib

from absl.testing import absltest

from configs import grpo_qwen2_5_0_5b
from jaxrl_ent.models import tiny_hf
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import rl_loop

LINES = [
    {"question": "Tom has 3 apples and buys 4 more. How many?",
     "answer": "3 + 4 = 7 apples.\n#### 7"},
    {"question": "A box holds 12 eggs. How many in 2 boxes?",
     "answer": "12 * 2 = 24\n#### 24"},
    {"question": "Sam had 10 pens and gave away 6. How many left?",
     "answer": "#### 4"},
    {"question": "What is 1,000 + 234?", "answer": "#### 1,234"},
]


class QwenConfigTest(absltest.TestCase):

  def test_runs_on_tiny_qwen2_and_jsonl(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    tok = tiny_hf.tiny_tokenizer(
        [l["question"] + " " + l["answer"] for l in LINES], vocab_size=300)
    tiny_hf.write_checkpoint(root / "qwen", "qwen2", vocab_size=len(tok),
                             max_position_embeddings=256)
    tok.save_pretrained(str(root / "qwen"))
    for name in ("train", "test"):
      with open(root / f"{name}.jsonl", "w") as f:
        for line in LINES:
          f.write(json.dumps(line) + "\n")
    config = grpo_qwen2_5_0_5b.get_config("runlocal")
    config.model_path = str(root / "qwen")
    config.data.train_paths = str(root / "train.jsonl")
    config.data.eval_paths = str(root / "test.jsonl")
    workdir = root / "run"
    rl_loop.train_and_evaluate(config, workdir)
    # Prompt + completion beyond the context is refused before compiling.
    config.rollout.max_new_tokens = 200
    with self.assertRaisesRegex(ValueError, "exceeds the model's context"):
      rl_loop.train_and_evaluate(config, root / "run2")
    rows = metrics_lib.read_jsonl(workdir)
    self.assertEqual([r["step"] for r in rows], [0, 1, 2])
    self.assertEqual(rows[0]["val/num_prompts"], 4.0)
    for name in ("actor/pg_loss", "actor/entropy", "critic/score/mean"):
      self.assertTrue(math.isfinite(rows[-1][name]))


if __name__ == "__main__":
  absltest.main()
