"""Tests for jaxrl_ent.data.tokenization."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from jaxrl_ent.data import records
from jaxrl_ent.data import tokenization
from jaxrl_ent.models import tiny_hf

_TOK = None


def setUpModule():
  global _TOK
  _TOK = tiny_hf.tiny_tokenizer()


def _record(prompt, **fields):
  ref = dict(fields, prompt=prompt)
  return records.PromptRecord(id="r", prompt=prompt, answer=None,
                              reference=ref, source="f.jsonl:3")


class PadTest(parameterized.TestCase):

  def test_left_pad_by_hand(self):
    out = tokenization.left_pad([np.array([5, 6, 7]), np.array([8])],
                                buckets=(2, 4, 8), pad_id=0)
    np.testing.assert_array_equal(out["tokens"], [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(out["mask"], [[0, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(out["positions"],
                                  [[0, 0, 1, 2], [0, 0, 0, 0]])
    for v in out.values():
      self.assertEqual(v.dtype, np.int32)

  def test_buckets(self):
    self.assertEqual(tokenization.default_buckets(100), (16, 32, 64, 100))
    self.assertEqual(tokenization.default_buckets(64), (16, 32, 64))
    self.assertEqual(tokenization.bucket_length(17, (64, 16, 32)), 32)
    with self.assertRaisesRegex(ValueError, "largest bucket"):
      tokenization.bucket_length(65, (16, 64))


class RenderTest(parameterized.TestCase):

  def test_template_fields(self):
    rec = _record("2+2?", subject="math")
    text = tokenization.render_prompt(rec, template="[{subject}] Q: {prompt}")
    self.assertEqual(text, "[math] Q: 2+2?")

  def test_template_missing_field_names_source(self):
    with self.assertRaisesRegex(records.DataError,
                                "f.jsonl:3: prompt template .* needs field"):
      tokenization.render_prompt(_record("x"), template="{question}")

  def test_chat_template_with_system_prompt(self):
    text = tokenization.render_prompt(
        _record("hi"), template="Q: {prompt}", tokenizer=_TOK,
        chat_template=True, system_prompt="Be brief.")
    self.assertEqual(
        text, "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nQ: hi<|im_end|>\n<|im_start|>assistant\n")

  def test_system_prompt_needs_chat(self):
    with self.assertRaisesRegex(ValueError, "system_prompt"):
      tokenization.render_prompt(_record("hi"), system_prompt="s")


class TokenizeTest(parameterized.TestCase):

  def test_tokens_match_tokenizer(self):
    recs = [_record("the policy"), _record("entropy falls")]
    kept, skipped = tokenization.tokenize_records(recs, _TOK, max_length=64)
    self.assertEqual(skipped, 0)
    for rec, tp in zip(recs, kept):
      self.assertEqual(tp.tokens.tolist(), _TOK(rec.prompt)["input_ids"])
      self.assertEqual(tp.tokens.dtype, np.int32)

  def test_chat_template_adds_no_extra_special_tokens(self):
    kept, _ = tokenization.tokenize_records([_record("hi")], _TOK,
                                            max_length=64, chat_template=True)
    im_start = _TOK.convert_tokens_to_ids("<|im_start|>")
    self.assertEqual(kept[0].tokens[0], im_start)
    self.assertEqual(kept[0].text, _TOK.decode(kept[0].tokens))

  def test_overlong_skipped_with_count_and_warning(self):
    recs = [_record("a b"), _record("x " * 40), _record("c")]
    with self.assertLogs(level="WARNING") as logs:
      kept, skipped = tokenization.tokenize_records(recs, _TOK, max_length=8)
    self.assertEqual(skipped, 1)
    self.assertEqual([t.record.prompt for t in kept], ["a b", "c"])
    self.assertIn("skipped 1 of 3 prompts longer than 8", logs.output[0])
    self.assertIn("f.jsonl:3", logs.output[0])

  def test_overlong_error(self):
    with self.assertRaisesRegex(records.DataError,
                                "f.jsonl:3: prompt has 80 tokens"):
      tokenization.tokenize_records([_record("x " * 40)], _TOK, max_length=8,
                                    on_overlong="error")

  def test_all_overlong_or_empty_is_an_error(self):
    with self.assertRaisesRegex(records.DataError, "all 1 prompts"):
      tokenization.tokenize_records([_record("x " * 40)], _TOK, max_length=8)
    with self.assertRaisesRegex(records.DataError, "empty"):
      tokenization.tokenize_records([_record("")], _TOK, max_length=8)

  def test_pad_id(self):
    self.assertEqual(tokenization.pad_id_of(_TOK), _TOK.pad_token_id)


if __name__ == "__main__":
  absltest.main()
