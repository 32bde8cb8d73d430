"""Paths that may be local or in a bucket (`gs://...`): the one path type.

Every file the project reads or writes (workdirs, checkpoints, metrics,
TensorBoard events, summaries, the warm-start cache, exports, analysis
inputs and outputs, prompt files, HF checkpoint folders) goes through
`etils.epath.Path`: local paths use `os`, `gs://` URLs use gcsfs (fsspec),
the same type orbax uses. Orbax writes checkpoint arrays to `gs://` with
tensorstore's own GCS driver.

What differs on a bucket, and what this module does about it:

  * `pathlib.Path("gs://b/x")` collapses the `//` into `gs:/b/x`: always
    build paths with `path()` (or `epath.Path`), never `pathlib`.
  * Atomic writes: on a local disk `write_text` / `write_bytes` write a
    temporary sibling and `os.replace` it; on GCS one object upload is
    already atomic (readers see the old object or the new one, never a
    part), so it is written directly. Directory "renames" on GCS are copies
    of every object; `move_tree` does them copy-first.
  * Objects cannot be appended to: `MetricWriter` (train/metrics.py) keeps
    `metrics.jsonl` in memory and uploads it whole.
  * Libraries that want local files (safetensors, transformers' config and
    tokenizer loaders) get a local copy: `local_copy`, `upload_dir`.

Pointing the clients at a local emulator instead of GCS:
`jaxrl_ent/storage_emulator.py` (the environment variables are listed there
and in the README).
"""

import contextlib
import glob as glob_lib
import os
import pathlib
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence

from etils import epath

Path = epath.Path
PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path` (a `gs://` URL keeps its scheme)."""
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  """True for URLs (`gs://`, `s3://`, ...), False for local paths."""
  return "://" in os.fspath(p)


def join(p: PathLike, *parts: str) -> str:
  """`p / parts` as a string (for messages and flags)."""
  return os.fspath(path(p).joinpath(*parts))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isfile(p: PathLike) -> bool:
  q = path(p)
  return q.exists() and not q.is_dir()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def has_magic(p: PathLike) -> bool:
  return glob_lib.has_magic(os.fspath(p))


def glob(pattern: PathLike) -> list[str]:
  """Sorted matches of a glob pattern, local or remote, as strings.

  The pattern's directory part before its first wildcard must be literal;
  `*`, `?` and `[...]` then match within path components (`**` too).
  """
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern))
  scheme, rest = pattern.split("://", 1)
  parts = rest.split("/")
  fixed = next(i for i, part in enumerate(parts) if glob_lib.has_magic(part))
  if fixed == 0:
    raise ValueError(f"{pattern}: a wildcard in the bucket name is not "
                     "supported.")
  base = path(f"{scheme}://" + "/".join(parts[:fixed]))
  if not base.exists():
    return []
  return sorted(os.fspath(m) for m in base.glob("/".join(parts[fixed:])))


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def write_text(p: PathLike, text: str):
  """Writes `text` atomically (see the module docstring)."""
  write_bytes(p, text.encode("utf-8"))


def write_bytes(p: PathLike, data: bytes):
  """Writes `data` atomically: readers never see a partial file."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    target.write_bytes(data)  # One object upload: atomic on GCS.
    return
  tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, target)
  finally:
    if tmp.exists():
      tmp.unlink()


def _files(root: epath.Path) -> Iterator[epath.Path]:
  """Every file under `root`, recursively."""
  scheme = os.fspath(root).split("://", 1)[0] + "://" if is_remote(root) else ""
  for dirpath, _, filenames in root.walk():
    dirpath = os.fspath(dirpath)
    if scheme and "://" not in dirpath:  # fsspec drops the scheme.
      dirpath = scheme + dirpath
    for name in filenames:
      yield path(dirpath) / name


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[pathlib.Path]:
  """A local path with the contents of folder (or file) `p`, while open.

  Local paths are yielded as they are; a remote folder is downloaded to a
  temporary directory, removed on exit.
  """
  if not is_remote(p):
    yield pathlib.Path(p)
    return
  src = path(p)
  with tempfile.TemporaryDirectory(prefix="jaxrl_ent_") as tmp:
    if not src.is_dir():
      dst = pathlib.Path(tmp) / src.name
      src.copy(epath.Path(dst))
      yield dst
      return
    dst = pathlib.Path(tmp) / (src.name or "root")
    dst.mkdir()
    prefix = os.fspath(src).rstrip("/") + "/"
    for f in _files(src):
      rel = os.fspath(f)[len(prefix):]
      out = dst / rel
      out.parent.mkdir(parents=True, exist_ok=True)
      f.copy(epath.Path(out))
    yield dst


def upload_dir(local: PathLike, dst: PathLike, *,
               last: Sequence[str] = ()):
  """Copies the files of local folder `local` into `dst` (local or remote).

  Files named in `last` are copied after all others: a reader that treats
  one of them as "the folder is complete" (e.g. `config.json` of an HF
  folder) never sees it before the rest.
  """
  src = pathlib.Path(local)
  out = path(dst)
  out.mkdir(parents=True, exist_ok=True)
  rel = lambda f: f.relative_to(src).as_posix()
  files = sorted((f for f in src.rglob("*") if f.is_file()), key=rel)
  ordered = ([f for f in files if rel(f) not in last] +
             [f for name in last for f in files if rel(f) == name])
  for f in ordered:
    target = out / rel(f)
    target.parent.mkdir(parents=True, exist_ok=True)
    epath.Path(f).copy(target, overwrite=True)


def remove_files(paths: Iterable[PathLike]):
  for p in paths:
    q = path(p)
    if q.exists():
      q.unlink()


def move_tree(src: PathLike, dst: PathLike, *, first_removed: str = ""):
  """Moves folder `src` to `dst` (not existing yet).

  Local: one `rename` (atomic). Remote: every object is copied to `dst`,
  then `src/first_removed` (e.g. a commit marker) is deleted before the
  rest, so a reader that looks for that marker stops seeing `src` at once,
  and an interruption leaves `dst` complete.
  """
  s, d = path(src), path(dst)
  if not is_remote(s):
    s.rename(d)
    return
  prefix = os.fspath(s).rstrip("/") + "/"
  for f in _files(s):
    target = d / os.fspath(f)[len(prefix):]
    target.parent.mkdir(parents=True, exist_ok=True)
    f.copy(target)
  if first_removed and (s / first_removed).exists():
    (s / first_removed).unlink()
  s.rmtree()
