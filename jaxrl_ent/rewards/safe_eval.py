"""A safe evaluator for arithmetic expressions (never `eval` on model text).

Grammar (recursive descent over a token list, exact `Fraction` arithmetic):

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")" | ("-" | "+") factor   # unary if allowed

Only `+ - * /` and parentheses (`×`, `÷`, `−` are read as aliases).
Inputs are bounded in length, nesting depth and literal size, so evaluation
is linear in the input and cannot blow up (there is no power operator).
"""

import fractions
import re

Fraction = fractions.Fraction

MAX_CHARS = 256
MAX_DEPTH = 32
MAX_LITERAL_DIGITS = 12

_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|(\S))")
_ALIASES = {"×": "*", "÷": "/", "−": "-"}


class EvalError(ValueError):
  """The text is not a valid, bounded arithmetic expression."""


def _tokenize(text: str) -> list[str]:
  if len(text) > MAX_CHARS:
    raise EvalError(f"expression longer than {MAX_CHARS} characters")
  tokens, pos = [], 0
  text = text.rstrip()
  while pos < len(text):
    m = _TOKEN_RE.match(text, pos)
    if m is None:
      break
    num, op = m.groups()
    if num is not None:
      if len(num.replace(".", "")) > MAX_LITERAL_DIGITS:
        raise EvalError(f"number literal too long: {num[:20]}...")
      tokens.append(num)
    else:
      op = _ALIASES.get(op, op)
      if op not in "+-*/()":
        raise EvalError(f"unexpected character {op!r}")
      tokens.append(op)
    pos = m.end()
  if not tokens:
    raise EvalError("empty expression")
  return tokens


class _Parser:
  """One parse: tokens in, (value, literals used) out."""

  def __init__(self, tokens, allow_unary, allow_decimals):
    self.tokens, self.pos = tokens, 0
    self.allow_unary, self.allow_decimals = allow_unary, allow_decimals
    self.literals = []

  def peek(self):
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self):
    tok = self.peek()
    self.pos += 1
    return tok

  def expr(self, depth):
    if depth > MAX_DEPTH:
      raise EvalError(f"nesting deeper than {MAX_DEPTH}")
    value = self.term(depth)
    while self.peek() in ("+", "-"):
      op, rhs = self.take(), self.term(depth)
      value = value + rhs if op == "+" else value - rhs
    return value

  def term(self, depth):
    value = self.factor(depth)
    while self.peek() in ("*", "/"):
      op, rhs = self.take(), self.factor(depth)
      if op == "*":
        value *= rhs
      elif rhs == 0:
        raise EvalError("division by zero")
      else:
        value /= rhs
    return value

  def factor(self, depth):
    tok = self.take()
    if tok is None:
      raise EvalError("unexpected end of expression")
    if tok == "(":
      value = self.expr(depth + 1)
      if self.take() != ")":
        raise EvalError("missing ')'")
      return value
    if tok in ("-", "+"):
      if not self.allow_unary:
        raise EvalError(f"unary {tok!r} not allowed")
      if depth > MAX_DEPTH:
        raise EvalError(f"nesting deeper than {MAX_DEPTH}")
      value = self.factor(depth + 1)
      return -value if tok == "-" else value
    if tok[0].isdigit():
      if "." in tok and not self.allow_decimals:
        raise EvalError(f"decimal literal {tok} not allowed")
      value = Fraction(tok)
      self.literals.append(value)
      return value
    raise EvalError(f"unexpected token {tok!r}")


def evaluate(text: str, *, allow_unary: bool = True,
             allow_decimals: bool = False) -> tuple[Fraction, list[Fraction]]:
  """Evaluates an arithmetic expression exactly.

  Args:
    text: the expression, e.g. `"(3 + 5) * 2 - 7 / 7"`.
    allow_unary: accept unary `-x` / `+x`.
    allow_decimals: accept literals such as `2.5`.

  Returns:
    `(value, literals)`: the exact value and the number literals in the
    order they appear.

  Raises:
    EvalError: syntax errors, division by zero, or inputs over the bounds.
  """
  parser = _Parser(_tokenize(text), allow_unary, allow_decimals)
  value = parser.expr(0)
  if parser.peek() is not None:
    raise EvalError(f"unexpected token {parser.peek()!r} after expression")
  return value, parser.literals


def uses_at_most(literals, available) -> bool:
  """Whether `literals` is a sub-multiset of `available` (each used <= once)."""
  pool = {}
  for x in available:
    pool[Fraction(x)] = pool.get(Fraction(x), 0) + 1
  for x in literals:
    if pool.get(x, 0) == 0:
      return False
    pool[x] -= 1
  return True
