"""Math answers: extraction (`\\boxed{}`, `####`, `<answer>`), equivalence.

Two-stage equivalence. A fast exact path parses both answers as rationals
(`1,234`, `$5.`, `-3/4`, `\\frac{1}{2}`, `0.5`, `50%`) and compares them with
`fractions.Fraction` equality; it decides every GSM8K-style case in
microseconds. Anything it cannot parse (radicals, expressions, sets, ...) goes
to math-verify (the maintained verifier, sympy-based; imported lazily, runs
offline) when it is installed, else to a normalised string comparison.

math-verify is called with its own signal-based timeouts *off*
(`parsing_timeout=None`), because they only work in a main thread and would
clobber the per-sample alarm of `scoring.score_batch`. Call these rewards
through `score_batch`, which bounds their run time.

Input limits are checked before any parsing: a completion longer than
`MAX_COMPLETION_CHARS` raises `InputTooLarge` (the scorer counts it as an
error), and an answer that math-verify would have to expand
(`answer_too_hard`: longer than `MAX_ANSWER_CHARS`, brackets nested deeper
than `MAX_NESTING`, an exponent tower such as `9^{9^{9}}`, a huge exponent
or factorial) is never handed to it: it is not equal to anything but its
own text. Extraction is linear in the completion's length.
"""

import fractions
import functools
import logging
import re

Fraction = fractions.Fraction

# A completion of 100k characters is ~25k tokens: past any rollout length
# here, and still scanned in milliseconds.
MAX_COMPLETION_CHARS = 100_000
MAX_ANSWER_CHARS = 1_000
MAX_NESTING = 16
MAX_EXPONENT_DIGITS = 4  # 2^{1000} is verified; 2^{10000} is not.
MAX_FACTORIAL_DIGITS = 3


class InputTooLarge(ValueError):
  """A completion over the verifiers' size limit (counted as an error)."""


def check_completion(text, what: str = "completion") -> str:
  """`text` if it is a str within `MAX_COMPLETION_CHARS`, else raises.

  Raises:
    TypeError: not a str (e.g. undecoded bytes).
    InputTooLarge: longer than `MAX_COMPLETION_CHARS`.
  """
  if not isinstance(text, str):
    raise TypeError(f"{what} must be str, got {type(text).__name__}")
  if len(text) > MAX_COMPLETION_CHARS:
    raise InputTooLarge(f"{what} of {len(text)} characters exceeds the "
                        f"verifiers' limit of {MAX_COMPLETION_CHARS}")
  return text


_BIG_EXPONENT_RE = re.compile(
    r"\^\s*\{?\s*[-+]?\d{%d,}" % (MAX_EXPONENT_DIGITS + 1))
_BIG_FACTORIAL_RE = re.compile(
    r"\d{%d,}\s*\}?\s*!" % (MAX_FACTORIAL_DIGITS + 1))
_OPEN, _CLOSE = "{([", "})]"


def _exponent_end(text: str, i: int) -> int:
  """End index of the exponent that starts after the `^` at `i`."""
  j = i + 1
  while j < len(text) and text[j].isspace():
    j += 1
  if j < len(text) and text[j] == "{":
    depth = 0
    for k in range(j, len(text)):
      depth += text[k] == "{"
      depth -= text[k] == "}"
      if depth == 0:
        return k + 1
    return len(text)
  while j < len(text) and (text[j].isalnum() or text[j] in ".\\"):
    j += 1
  return j


def _group_has_power(base: str) -> bool:
  """Whether the bracket group `base` ends with contains a `^`."""
  depth = 0
  for k in range(len(base) - 1, -1, -1):
    depth += base[k] in _CLOSE
    depth -= base[k] in _OPEN
    if depth == 0:
      return "^" in base[k:]
  return "^" in base


def answer_too_hard(answer: str) -> str | None:
  """Why `answer` must not reach a symbolic verifier, or None if it may.

  Checks, in one linear pass each: length, bracket nesting depth, exponent
  towers (an exponent containing `^`, or `a^b^c`), exponents with more
  than `MAX_EXPONENT_DIGITS` digits, factorials of more than
  `MAX_FACTORIAL_DIGITS` digits.
  """
  if len(answer) > MAX_ANSWER_CHARS:
    return f"{len(answer)} characters (limit {MAX_ANSWER_CHARS})"
  depth = deepest = 0
  for ch in answer:
    if ch in _OPEN:
      depth += 1
      deepest = max(deepest, depth)
    elif ch in _CLOSE:
      depth -= 1
  if deepest > MAX_NESTING:
    return f"brackets nested {deepest} deep (limit {MAX_NESTING})"
  group_powers = 0  # `(…^…)^k`: two of them nest to 9^(9·9·9) and more.
  for i, ch in enumerate(answer):
    if ch == "^":
      end = _exponent_end(answer, i)
      rest = answer[end:end + 8].lstrip()
      if "^" in answer[i + 1:end] or rest.startswith("^"):
        return "an exponent tower"
      base = answer[:i].rstrip()
      if base and base[-1] in _CLOSE and "^" in base[-MAX_ANSWER_CHARS:]:
        group_powers += _group_has_power(base)
  if group_powers > 1:
    return "an exponent tower (powers of powers)"
  if _BIG_EXPONENT_RE.search(answer):
    return f"an exponent of more than {MAX_EXPONENT_DIGITS} digits"
  if _BIG_FACTORIAL_RE.search(answer):
    return f"a factorial of more than {MAX_FACTORIAL_DIGITS} digits"
  return None

# --------------------------------------------------------------------------
# Extraction.

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:)\s*([^\n]+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")

# Extraction formats, tried in this order.
STRICT_FORMATS = ("boxed", "gsm8k", "answer_tag")
LENIENT_FORMATS = STRICT_FORMATS + ("answer_is", "last_number")


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (balanced braces), or None."""
  starts = [m.end() for m in _BOXED_RE.finditer(text)]
  if not starts:
    return None
  depth, start = 1, starts[-1]
  for i in range(start, len(text)):
    if text[i] == "{":
      depth += 1
    elif text[i] == "}":
      depth -= 1
      if depth == 0:
        return text[start:i].strip()
  return None  # Unbalanced: no answer rather than a guess.


def _last_match(regex: re.Pattern, text: str) -> str | None:
  found = regex.findall(text)
  return found[-1].strip() if found else None


def _last_answer_tag(text: str) -> str | None:
  # Searched only up to the last closing tag: a lazy `<answer>(.*?)</answer>`
  # is quadratic over openings that no closing tag follows (20k of them took
  # 17 s); before the last `</answer>` every opening finds one.
  end = text.rfind("</answer>")
  if end < 0:
    return None
  return _last_match(_ANSWER_TAG_RE, text[:end + len("</answer>")])


def extract_answer(text: str, formats=STRICT_FORMATS) -> str | None:
  """The answer string in `text` under the first format that matches.

  Args:
    text: a completion or a reference solution.
    formats: names from `LENIENT_FORMATS`, tried in order: `boxed`
      (last `\\boxed{...}`), `gsm8k` (last `#### x`), `answer_tag` (last
      `<answer>x</answer>`), `answer_is` ("the answer is x"), `last_number`.

  Returns:
    The stripped answer, or None when no format matches (or it is empty).

  Raises:
    InputTooLarge: `text` is longer than `MAX_COMPLETION_CHARS`.
  """
  check_completion(text, "text")
  for fmt in formats:
    if fmt == "boxed":
      ans = last_boxed(text)
    elif fmt == "gsm8k":
      ans = _last_match(_GSM8K_RE, text)
    elif fmt == "answer_tag":
      ans = _last_answer_tag(text)
    elif fmt == "answer_is":
      ans = _last_match(_ANSWER_IS_RE, text)
    elif fmt == "last_number":
      ans = _last_match(_NUMBER_RE, text)
      ans = ans.rstrip(",") if ans else ans
    else:
      raise ValueError(f"unknown answer format {fmt!r}; "
                       f"known: {LENIENT_FORMATS}")
    if ans:
      return ans
  return None


def reference_answer(reference) -> str:
  """The gold answer string from a reference (str or dict with `answer`).

  A string containing `####` or `\\boxed{}` (a full GSM8K / MATH solution)
  is reduced to its final answer; otherwise it is the answer itself.
  """
  if isinstance(reference, dict):
    if "answer" not in reference:
      raise KeyError(f"reference dict has no 'answer' key: {sorted(reference)}")
    reference = reference["answer"]
  text = str(reference)
  ans = extract_answer(text, ("boxed", "gsm8k"))
  return ans if ans is not None else text.strip()


# --------------------------------------------------------------------------
# Normalisation and the exact rational path.

_UNITS_RE = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$")
_FRAC_RE = re.compile(
    r"^([-+]?)\\[dt]?frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))$")
_SPACES = ("\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\left", "\\right")


def normalize(answer: str) -> str:
  """Canonical answer text: no `$`, spacing macros, units, trailing `.`."""
  s = answer.strip()
  for tok in _SPACES:
    s = s.replace(tok, "")
  s = s.replace("\\$", "").replace("$", "")
  s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace(
      "\\]", "")
  s = re.sub(r"\^\s*\{?\\circ\}?", "", s)  # Degrees.
  s = s.replace("\\%", "%")
  # Trailing units in \text{...} ("5 \text{ cm}") but keep text-only answers.
  stripped = _UNITS_RE.sub("", s).strip()
  if stripped:
    s = stripped
  s = s.strip().rstrip(".").strip()
  if s.startswith("{") and s.endswith("}") and s.count("{") == 1:
    s = s[1:-1].strip()
  return re.sub(r"\s+", " ", s)


def _parse_plain_number(s: str) -> Fraction | None:
  s = s.replace(" ", "")
  if _THOUSANDS_RE.match(s):
    s = s.replace(",", "")
  if s.startswith("+"):
    s = s[1:]
  if not s or len(s) > 64 or not re.fullmatch(r"-?[\d.]+(?:e-?\d{1,3})?", s):
    return None
  try:
    return Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None


def parse_number(answer: str) -> Fraction | None:
  """Exact rational value of a numeric answer, or None if not plainly numeric.

  Accepts integers, decimals, thousands separators (`1,234`), `$`, a
  trailing `.` or `%`, `a/b`, and `\\frac{a}{b}` (also `\\dfrac`, `\\tfrac`,
  `\\frac12`) with numeric a, b.
  """
  s = normalize(answer)
  if s.endswith("%"):
    s = s[:-1].strip()
  m = _FRAC_RE.match(s)
  if m:
    sign, num, den = m.group(1), m.group(2) or m.group(3), m.group(4) or (
        m.group(5))
    p, q = _parse_plain_number(num), _parse_plain_number(den)
    if p is None or q is None or q == 0:
      return None
    return -p / q if sign == "-" else p / q
  if s.count("/") == 1:
    num, den = s.split("/")
    p, q = _parse_plain_number(num), _parse_plain_number(den)
    if p is None or q is None or q == 0:
      return None
    return p / q
  return _parse_plain_number(s)


# --------------------------------------------------------------------------
# math-verify fallback.


@functools.lru_cache(maxsize=1)
def _math_verify():
  """The math_verify module, or None when it is not installed."""
  try:
    import math_verify  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  # It warns once that its timeouts are off; we bound time in score_batch.
  for name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(name).setLevel(logging.ERROR)
  return math_verify


def math_verify_available() -> bool:
  return _math_verify() is not None


@functools.lru_cache(maxsize=4096)
def _mv_parse(answer: str):
  mv = _math_verify()
  return mv.parse(f"${answer}$", parsing_timeout=None)


def _mv_equal(pred: str, gold: str) -> bool:
  mv = _math_verify()
  gold_parsed, pred_parsed = _mv_parse(gold), _mv_parse(pred)
  if not gold_parsed or not pred_parsed:
    return False
  return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def answers_equal(pred: str, gold: str, *, use_math_verify: bool = True
                  ) -> bool:
  """Whether two final answers are mathematically equal.

  Args:
    pred: extracted predicted answer (no surrounding prose).
    gold: gold answer.
    use_math_verify: fall back to math-verify for non-numeric answers.

  Returns:
    True when both parse as the same rational number, or their normalised
    text is equal, or math-verify says they are equivalent.
  """
  p, g = parse_number(pred), parse_number(gold)
  if p is not None and g is not None:
    return p == g
  np_, ng = normalize(pred), normalize(gold)
  if np_ and np_ == ng:
    return True
  if answer_too_hard(np_) or answer_too_hard(ng):
    return False  # Unverifiable in bounded time: not shown to be equal.
  if use_math_verify and _math_verify() is not None:
    return _mv_equal(np_, ng)
  return False


# --------------------------------------------------------------------------
# Reward functions: fn(completion, reference) -> float.


def math_reward(completion: str, reference) -> float:
  """1.0 if the answer in `\\boxed{}`, `#### x` or `<answer>` is the gold."""
  pred = extract_answer(completion, STRICT_FORMATS)
  if pred is None:
    return 0.0
  return float(answers_equal(pred, reference_answer(reference)))


def math_lenient_reward(completion: str, reference) -> float:
  """Like `math_reward`, also accepting "the answer is x" and a last number."""
  pred = extract_answer(completion, LENIENT_FORMATS)
  if pred is None:
    return 0.0
  return float(answers_equal(pred, reference_answer(reference)))


def gsm8k_reward(completion: str, reference) -> float:
  """1.0 if the completion ends its solution with `#### x`, x equal to gold."""
  pred = extract_answer(completion, ("gsm8k",))
  if pred is None:
    return 0.0
  return float(answers_equal(pred, reference_answer(reference),
                             use_math_verify=False))


def boxed_reward(completion: str, reference) -> float:
  """1.0 if the last `\\boxed{x}` in the completion is equal to the gold."""
  pred = extract_answer(completion, ("boxed",))
  if pred is None:
    return 0.0
  return float(answers_equal(pred, reference_answer(reference)))
