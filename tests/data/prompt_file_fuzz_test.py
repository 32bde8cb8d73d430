"""Prompt files, fuzzed: each loads as documented or fails with one DataError.

Property-based (hypothesis, derandomized, bounded examples). A generated file
of valid rows (random text, numbers as answers, extra fields, blank lines,
CRLF endings, a BOM, gzip) must load into exactly those records. A file with
one generated defect on a known line (a cut JSON line, a byte that is never
UTF-8, a number/list/null/dict/bool where text is needed, a missing field, a
repeated key, a lone surrogate, a NaN answer, a duplicate id, nesting or an
integer past the parser's limits) must raise `records.DataError` whose
message names the file and that line (and the field, where one is at fault).
Random bytes, cut gzip streams, empty files and cut or mistyped Parquet files
must raise a DataError naming the file. Nothing may escape as a bare
UnicodeDecodeError/JSONDecodeError/KeyError/TypeError/RecursionError.
"""

import gzip
import io
import json
import os
import re
import tempfile

from absl.testing import absltest
import hypothesis
from hypothesis import strategies as st

from jaxrl_ent.data import records

EXAMPLES = 60
_SETTINGS = dict(derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(hypothesis.HealthCheck))

# Text without lone surrogates (those are a defect, drawn separately).
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_ANSWER = st.one_of(_TEXT, st.integers(-10**30, 10**30),
                    st.floats(allow_nan=False, allow_infinity=False))
_EXTRA = st.dictionaries(
    st.sampled_from(["meta", "source", "level", "tags", "score"]),
    st.one_of(st.none(), st.booleans(), st.integers(), _TEXT,
              st.lists(st.integers(), max_size=3),
              st.dictionaries(st.sampled_from(["a", "b"]), st.integers(),
                              max_size=2)),
    max_size=3)
# Values that are not text, where the loader needs text.
_NOT_TEXT = st.one_of(st.none(), st.booleans(),
                      st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.sampled_from(["x", "y"]),
                                      st.integers(), max_size=2))
_NEVER_UTF8 = st.sampled_from([b"\xff", b"\xfe", b"\xc0", b"\xc1", b"\xf5",
                               b"\xf8"])


@st.composite
def _rows(draw, min_size=1):
  """Valid rows: unique ids (text or int), text prompts, answers."""
  n = draw(st.integers(min_size, 6))
  ids = draw(st.lists(st.one_of(st.integers(0, 10**6),
                                st.text("abcxyz019", min_size=1, max_size=6)),
                      min_size=n, max_size=n,
                      unique_by=lambda i: str(i)))
  rows = []
  for rid in ids:
    row = draw(_EXTRA)
    row.update(id=rid, prompt=draw(_TEXT), answer=draw(_ANSWER))
    rows.append(row)
  return rows


@st.composite
def _layout(draw, rows):
  """Rows -> (file bytes, 1-based line number of each row)."""
  ascii_only = draw(st.booleans())
  eol = draw(st.sampled_from([b"\n", b"\r\n"]))
  lines, where = [], []
  for row in rows:
    lines += [draw(st.sampled_from([b"", b"  ", b"\t"]))
              for _ in range(draw(st.integers(0, 2)))]
    lines.append(json.dumps(row, ensure_ascii=ascii_only).encode())
    where.append(len(lines))
  data = eol.join(lines) + (eol if draw(st.booleans()) else b"")
  if draw(st.booleans()):
    data = b"\xef\xbb\xbf" + data  # A UTF-8 BOM.
  return data, where


# A placeholder no generated text can serialise to (a NUL is escaped).
_MARK = "\x00MARK"
_MARK_JSON = json.dumps(_MARK).encode()


def _cut_error(body):
  """What a line cut short is: cut inside a UTF-8 sequence, or not."""
  try:
    body.decode("utf-8")
  except UnicodeDecodeError:
    return "not valid UTF-8"
  return "invalid JSON"


def _text(value):
  return value if isinstance(value, str) else str(value)


_DEFECTS = ("cut", "not_utf8", "prompt_type", "answer_type", "id_type",
            "no_prompt", "no_answer", "no_id", "not_object", "duplicate_key",
            "surrogate", "non_finite", "duplicate_id", "deep", "huge_int")


def _break(data, rows, k, body, defect):
  """Row k's line `body` with `defect` -> (new body, message parts)."""
  row = dict(rows[k])
  if defect == "cut":
    body = body[:data.draw(st.integers(1, len(body) - 1))]
    return body, [_cut_error(body)]
  if defect == "not_utf8":
    at = data.draw(st.integers(0, len(body)))
    return body[:at] + data.draw(_NEVER_UTF8) + body[at:], ["not valid UTF-8"]
  if defect.endswith("_type"):
    field = defect[:-len("_type")]
    # Numbers are text for answers and ids (documented); not for prompts.
    row[field] = data.draw(_NOT_TEXT if field != "prompt" else st.one_of(
        _NOT_TEXT, st.integers(), st.floats()))
    return json.dumps(row).encode(), [f"{field} field '{field}'",
                                      "expected text"]
  if defect.startswith("no_"):
    field = defect[len("no_"):]
    del row[field]
    return json.dumps(row).encode(), [f"no {field} field '{field}'"]
  if defect == "not_object":
    return json.dumps(data.draw(st.one_of(
        st.lists(st.integers(), max_size=2), st.integers(), _TEXT,
        st.none()))).encode(), ["expected a JSON object"]
  if defect == "duplicate_key":
    field = data.draw(st.sampled_from(["prompt", "answer", "id"]))
    return body[:-1] + b", " + json.dumps(field).encode() + b": " + (
        json.dumps(data.draw(_TEXT)).encode()) + b"}", [
            f"duplicate key '{field}'"]
  if defect == "surrogate":
    field = data.draw(st.sampled_from(["prompt", "answer"]))
    row[field] = data.draw(_TEXT) + data.draw(
        st.characters(categories=("Cs",))) + data.draw(_TEXT)
    # ensure_ascii spells it as a \udXXX escape.
    return json.dumps(row).encode(), [f"{field} field '{field}'",
                                      "surrogate"]
  if defect == "non_finite":
    field = data.draw(st.sampled_from(["answer", "id"]))
    row[field] = data.draw(st.sampled_from(
        [float("nan"), float("inf"), -float("inf")]))
    # json.dumps writes NaN / Infinity, which Python's json reads back.
    return json.dumps(row).encode(), [f"{field} field '{field}'", "finite"]
  if defect == "duplicate_id":
    row["id"] = rows[data.draw(st.integers(0, k - 1))]["id"]
    return json.dumps(row).encode(), ["duplicate id"]
  if defect == "deep":
    depth = data.draw(st.integers(20_000, 200_000))
    row["meta"] = _MARK
    return json.dumps(row).encode().replace(
        _MARK_JSON, b"[" * depth + b"]" * depth), ["invalid JSON"]
  assert defect == "huge_int", defect
  row["score"] = _MARK
  return json.dumps(row).encode().replace(
      _MARK_JSON, b"7" * data.draw(st.integers(5_000, 50_000))), [
          "invalid JSON"]


class PromptFileFuzzTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cases = {}

  @classmethod
  def tearDownClass(cls):
    print(f"prompt file fuzz: {sum(cls.cases.values())} generated files "
          f"{dict(sorted(cls.cases.items()))}")
    super().tearDownClass()

  def count(self, kind):
    self.cases[kind] = self.cases.get(kind, 0) + 1

  def write(self, tmp, name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      f.write(data)
    return path

  def assertDataError(self, path, *parts):
    """Loading `path` raises DataError naming the file and every part."""
    with self.assertRaises(records.DataError) as cm:
      records.load_records(path)
    msg = str(cm.exception)
    self.assertTrue(msg.startswith(path) or f"in {path}" in msg, msg)
    for part in parts:
      self.assertIn(part, msg)
    self.assertLess(len(msg), 2000)  # One clear line, not a dump of the row.
    return msg

  @hypothesis.settings(max_examples=EXAMPLES, **_SETTINGS)
  @hypothesis.given(data=st.data())
  def test_valid_files_load_exactly(self, data):
    rows = data.draw(_rows())
    raw, where = data.draw(_layout(rows))
    gz = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
      path = self.write(tmp, "p.jsonl.gz" if gz else "p.jsonl",
                        gzip.compress(raw) if gz else raw)
      recs = records.load_records(path)
    self.count("valid")
    self.assertLen(recs, len(rows))
    for rec, row, line in zip(recs, rows, where):
      self.assertEqual(rec.prompt, row["prompt"])
      self.assertEqual(rec.id, str(row["id"]))
      self.assertEqual(rec.source, f"{path}:{line}")
      # A number keeps its JSON spelling, read back exactly.
      self.assertEqual(json.loads(rec.answer) if not isinstance(
          row["answer"], str) else rec.answer, row["answer"])
      self.assertEqual(rec.reference, {**row, "answer": _text(row["answer"])})

  @hypothesis.settings(max_examples=EXAMPLES // 3, **_SETTINGS)
  @hypothesis.given(data=st.data())
  def test_one_bad_line_names_file_line_and_field(self, data):
    """Every defect, each on a drawn line of a drawn file."""
    rows = data.draw(_rows(min_size=2))
    raw, where = data.draw(_layout(rows))
    for defect in _DEFECTS:
      lines = raw.split(b"\n")
      k = data.draw(st.integers(defect == "duplicate_id", len(rows) - 1),
                    label=f"{defect} row")
      lineno = where[k]
      line = lines[lineno - 1].rstrip(b"\r")
      bom = lineno == 1 and line.startswith(b"\xef\xbb\xbf")
      body, parts = _break(data, rows, k, line[3:] if bom else line, defect)
      lines[lineno - 1] = (b"\xef\xbb\xbf" if bom else b"") + body + (
          b"\r" if line != lines[lineno - 1] else b"")
      with tempfile.TemporaryDirectory() as tmp:
        path = self.write(tmp, "p.jsonl", b"\n".join(lines))
        self.assertDataError(path, f"{path}:{lineno}: ", *parts)
      self.count(defect)

  @hypothesis.settings(max_examples=EXAMPLES, **_SETTINGS)
  @hypothesis.given(blob=st.one_of(
      st.binary(max_size=300),
      st.lists(st.sampled_from([b"{", b"}", b"[", b'"', b":", b",", b"\n",
                                b"prompt", b"\xef\xbb\xbf", b"\xff", b" ",
                                b"1", b"null", b"\\u", b"\x00"]),
               max_size=60).map(b"".join)),
                    gz=st.booleans())
  def test_random_bytes_name_the_file(self, blob, gz):
    with tempfile.TemporaryDirectory() as tmp:
      path = self.write(tmp, "r.jsonl.gz" if gz else "r.jsonl", blob)
      # Neither generator can spell a record with prompt, answer and id, so
      # every blob (empty, garbage, a bad gzip stream) is an error.
      self.assertDataError(path)
    self.count("random_bytes")

  @hypothesis.settings(max_examples=EXAMPLES // 2, **_SETTINGS)
  @hypothesis.given(rows=_rows(), data=st.data())
  def test_cut_gzip_is_an_error_not_fewer_records(self, rows, data):
    raw = b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"
    packed = gzip.compress(raw)
    cut = data.draw(st.integers(0, len(packed) - 1))
    with tempfile.TemporaryDirectory() as tmp:
      path = self.write(tmp, "c.jsonl.gz", packed[:cut])
      if cut == 0:  # An empty .gz holds no records.
        self.assertDataError(path, "no prompt records")
      else:
        self.assertDataError(path, "gzip")
    self.count("cut_gzip")

  @hypothesis.settings(max_examples=10, **_SETTINGS)
  @hypothesis.given(blank=st.lists(st.sampled_from(
      [b"", b" ", b"\t", b"\r", b"\xc2\xa0"]), max_size=5),
                    bom=st.booleans(), gz=st.booleans())
  def test_empty_files(self, blank, bom, gz):
    raw = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(blank)
    with tempfile.TemporaryDirectory() as tmp:
      path = self.write(tmp, "e.jsonl.gz" if gz else "e.jsonl",
                        gzip.compress(raw) if gz else raw)
      self.assertDataError(path, "no prompt records")
    self.count("empty")

  @hypothesis.settings(max_examples=4, **_SETTINGS)
  @hypothesis.given(size=st.integers(1_000_000, 3_000_000),
                    char=st.sampled_from(["x", "é", "数", "😀", "\n"]),
                    cut=st.booleans())
  def test_huge_lines(self, size, char, cut):
    """A few-MB prompt loads intact; the same line cut short is line 2."""
    line = json.dumps({"id": 1, "prompt": char * size, "answer": "a"},
                      ensure_ascii=False).encode()
    ok = json.dumps({"id": 0, "prompt": "p", "answer": "a"}).encode()
    with tempfile.TemporaryDirectory() as tmp:
      half = line[:len(line) // 2]
      path = self.write(tmp, "h.jsonl", ok + b"\n" + (half if cut else line))
      if cut:
        self.assertDataError(path, f"{path}:2: {_cut_error(half)}")
      else:
        recs = records.load_records(path)
        self.assertEqual(recs[1].prompt, char * size)
    self.count("huge_line")

  @hypothesis.settings(max_examples=EXAMPLES // 4, **_SETTINGS)
  @hypothesis.given(rows=_rows(), data=st.data())
  def test_parquet(self, rows, data):
    """Valid tables load; a mistyped column names row and field; a cut or
    random file names the file. Every defect, on each drawn table."""
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    for defect in ("none", "prompt_type", "answer_type", "no_prompt",
                   "null_prompt", "nan_answer", "cut", "random"):
      table = {"id": [str(r["id"]) for r in rows],
               "prompt": [r["prompt"] for r in rows],
               "answer": [_text(r["answer"]) for r in rows]}
      k = data.draw(st.integers(0, len(rows) - 1), label=f"{defect} row")
      parts = []
      if defect in ("prompt_type", "answer_type"):
        field = defect[:-len("_type")]
        # An int answer is text by design; an int prompt is refused.
        value = data.draw(st.sampled_from(
            [["a"], {"x": 1}, True] + ([7] if field == "prompt" else [])))
        table[field] = [value] * len(rows)
        parts = [f"{field} field '{field}'", "expected text"]
        k = 0
      elif defect == "no_prompt":
        del table["prompt"]
        parts = ["no prompt field 'prompt'"]
        k = 0
      elif defect == "null_prompt":
        table["prompt"][k] = None
        parts = ["prompt field 'prompt' is null"]
      elif defect == "nan_answer":
        table["answer"] = [1.5] * len(rows)
        table["answer"][k] = float("nan")
        parts = ["answer field 'answer' is nan", "finite"]
      buf = io.BytesIO()
      pq.write_table(pa.table(table), buf)
      blob = buf.getvalue()
      if defect == "cut":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
      elif defect == "random":
        blob = data.draw(st.binary(max_size=200))
      with tempfile.TemporaryDirectory() as tmp:
        path = self.write(tmp, "t.parquet", blob)
        if defect == "none":
          recs = records.load_records(path)
          self.assertEqual([(r.id, r.prompt, r.answer) for r in recs],
                           list(zip(table["id"], table["prompt"],
                                    table["answer"])))
        elif defect in ("cut", "random"):
          msg = self.assertDataError(path)
          self.assertTrue(re.search("cannot read Parquet|no prompt records",
                                    msg), msg)
        else:
          self.assertDataError(path, f"{path}:row {k + 1}: ", *parts)
      self.count(f"parquet_{defect}")

if __name__ == "__main__":
  absltest.main()
