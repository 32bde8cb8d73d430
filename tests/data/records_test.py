"""Tests for jaxrl_ent.data.records: loading; errors name file and line."""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent.data import records


def _write(path, lines):
  with open(path, "wb") as f:
    for line in lines:
      f.write(line if isinstance(line, bytes) else line.encode())
      f.write(b"\n")
  return path


class LoadTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def path(self, name):
    return os.path.join(self.dir, name)

  def test_jsonl_with_configured_fields(self):
    p = _write(self.path("a.jsonl"), [
        json.dumps({"q": "1+1?", "meta": {"gold": 2}, "uid": 7}),
        "",
        json.dumps({"q": "2+2?", "meta": {"gold": "4"}, "uid": "x"}),
    ])
    recs = records.load_records(p, prompt_field="q", answer_field="meta.gold",
                                id_field="uid")
    self.assertEqual([r.id for r in recs], ["7", "x"])
    self.assertEqual([r.prompt for r in recs], ["1+1?", "2+2?"])
    self.assertEqual([r.answer for r in recs], ["2", "4"])
    self.assertEqual(recs[0].reference["answer"], "2")
    self.assertEqual(recs[0].reference["uid"], 7)
    self.assertEqual(recs[1].source, f"{p}:3")

  def test_no_id_field_uses_location_and_glob_order(self):
    _write(self.path("b.jsonl"), [json.dumps({"prompt": "b"})])
    _write(self.path("a.jsonl"), [json.dumps({"prompt": "a"})])
    recs = records.load_records(self.path("*.jsonl"), answer_field=None,
                                id_field=None)
    self.assertEqual([r.prompt for r in recs], ["a", "b"])
    self.assertEqual(recs[0].id, f"{self.path('a.jsonl')}:1")
    self.assertIsNone(recs[0].answer)

  def test_parquet(self):
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    p = self.path("d.parquet")
    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["1", "2"],
                             "id": ["i1", "i2"]}), p)
    recs = records.load_records(p, prompt_field="question")
    self.assertEqual([(r.id, r.prompt, r.answer) for r in recs],
                     [("i1", "a", "1"), ("i2", "b", "2")])
    self.assertEqual(recs[1].source, f"{p}:row 2")

  def test_examples_in_memory(self):
    recs = records.records_from_examples(
        [{"id": "t/0", "prompt": "p", "answer": "a", "numbers": [1, 2]}])
    self.assertEqual(recs[0].reference["numbers"], [1, 2])


class BadDataTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def path(self, name):
    return os.path.join(self.dir, name)

  def test_missing_file(self):
    p = self.path("nope.jsonl")
    with self.assertRaisesRegex(FileNotFoundError, f"not found: {p}"):
      records.load_records(p)
    with self.assertRaisesRegex(FileNotFoundError, "no prompt files match"):
      records.load_records(self.path("*.jsonl"))

  def test_empty_dataset(self):
    p = _write(self.path("e.jsonl"), ["", "  "])
    with self.assertRaisesRegex(records.DataError, f"no prompt records in {p}"):
      records.load_records(p)

  def test_missing_field(self):
    p = _write(self.path("m.jsonl"), [
        json.dumps({"prompt": "a", "answer": "1", "id": "1"}),
        json.dumps({"prompt": "b", "id": "2"}),
    ])
    with self.assertRaisesRegex(
        records.DataError,
        f"{p}:2: record has no answer field 'answer'.*set answer_field"):
      records.load_records(p)
    with self.assertRaisesRegex(
        records.DataError, f"{p}:1: record has no prompt field 'question'"):
      records.load_records(p, prompt_field="question")

  def test_field_not_text(self):
    p = _write(self.path("t.jsonl"), [json.dumps({"prompt": ["a"], "id": 1})])
    with self.assertRaisesRegex(records.DataError,
                                f"{p}:1: prompt field 'prompt' is list"):
      records.load_records(p, answer_field=None)

  def test_non_utf8(self):
    p = _write(self.path("u.jsonl"), [
        json.dumps({"prompt": "ok", "id": 1}),
        b'{"prompt": "caf\xe9", "id": 2}',
    ])
    with self.assertRaisesRegex(records.DataError,
                                f"{p}:2: not valid UTF-8 \\(byte 0xe9"):
      records.load_records(p, answer_field=None)

  def test_invalid_json(self):
    p = _write(self.path("j.jsonl"), [
        json.dumps({"prompt": "ok", "id": 1}),
        json.dumps({"prompt": "ok", "id": 2}),
        '{"prompt": "missing quote, "id": 3}',
    ])
    with self.assertRaisesRegex(records.DataError, f"{p}:3: invalid JSON"):
      records.load_records(p, answer_field=None)

  def test_not_an_object(self):
    p = _write(self.path("o.jsonl"), ["[1, 2]"])
    with self.assertRaisesRegex(records.DataError,
                                f"{p}:1: expected a JSON object, got list"):
      records.load_records(p)

  def test_duplicate_ids_across_files(self):
    a = _write(self.path("a.jsonl"), [json.dumps({"prompt": "x", "id": 5})])
    b = _write(self.path("b.jsonl"), [json.dumps({"prompt": "y", "id": 6}),
                                      json.dumps({"prompt": "z", "id": 5})])
    with self.assertRaisesRegex(
        records.DataError, f"{b}:2: duplicate id '5' \\(first at {a}:1\\)"):
      records.load_records([a, b], answer_field=None)

  def test_unknown_extension_and_bad_parquet(self):
    p = _write(self.path("x.csv"), ["a,b"])
    with self.assertRaisesRegex(records.DataError, f"{p}: unknown file type"):
      records.load_records(p)
    q = _write(self.path("x.parquet"), ["not parquet"])
    with self.assertRaisesRegex(records.DataError,
                                f"{q}: cannot read Parquet"):
      records.load_records(q)


if __name__ == "__main__":
  absltest.main()
