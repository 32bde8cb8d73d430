"""Bad flags on every launcher: one line on stderr, exit 2, no traceback."""

import os
import pathlib
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

from configs import grpo_tiny
from jaxrl_ent import launch_flags

_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Launcher -> (config spec or None, the bad flag, text the line must hold).
# Every file in launch/*.py must be listed (checked below).
LAUNCHERS = {
    "train.py": ("configs/grpo_tiny.py:runlocal", "--config.train.stepz=3",
                 "did you mean --config.train.steps?"),
    "sft.py": ("configs/grpo_tiny.py:runlocal",
               "--config.no_such_field_xyz=1", "no_such_field_xyz"),
    "evaluate.py": ("configs/grpo_tiny.py:runlocal", "--config.evl.every=1",
                    "did you mean --config.eval.every?"),
    "export.py": ("configs/grpo_tiny.py:runlocal",
                  "--config.no_such_field_xyz=1", "no_such_field_xyz"),
    "compare.py": ("configs/compare_tiny.py", "--config.study.methodz=grpo",
                   "did you mean --config.study.methods?"),
    "theory.py": ("configs/theory_bandit.py", "--config.no_such_field_xyz=1",
                  "no_such_field_xyz"),
    "aot_check.py": ("configs/tpu_grpo.py", "--config.no_such_field_xyz=1",
                     "no_such_field_xyz"),
    "analyze.py": (None, "--no_such_flag=1", "no_such_flag"),
    "demo.py": (None, "--max_new_tokens=many", "max_new_tokens"),
    "gcs_emulator.py": (None, "--port=eighty", "port"),
}


class EveryLauncherTest(absltest.TestCase):

  def test_every_launcher_answers_a_bad_flag_in_one_line(self):
    shipped = {p.name for p in (_ROOT / "launch").glob("*.py")}
    self.assertEqual(shipped, set(LAUNCHERS), "list every launcher here")
    workdir = self.create_tempdir().full_path
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = {}
    for name, (spec, bad, _) in LAUNCHERS.items():
      args = [sys.executable, str(_ROOT / "launch" / name), bad]
      if spec:
        args += [f"--config={spec}", f"--workdir={workdir}"]
      # All at once: most of each run is importing absl/jax.
      procs[name] = subprocess.Popen(args, cwd=_ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
    for name, proc in procs.items():
      out, err = proc.communicate(timeout=120)
      with self.subTest(launcher=name):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        self.assertEqual(proc.returncode, launch_flags.EXIT_USAGE, err)
        self.assertLen(lines, 1, err)
        self.assertStartsWith(lines[0], f"{name}: error: ")
        self.assertIn(LAUNCHERS[name][2], lines[0])
        self.assertNotIn("Traceback", out + err)
    self.assertEqual(list(pathlib.Path(workdir).iterdir()), [])


class ExplainTest(parameterized.TestCase):
  """The messages, in-process (the launchers share this code)."""

  @parameterized.named_parameters(
      ("typo_leaf", "train.stepz", "did you mean --config.train.steps?"),
      ("typo_block", "trian.steps", "did you mean --config.train.steps?"),
      ("no_match", "no_such_field_xyz", "fields of the config: advantage,"),
      ("no_match_in_block", "optim.zzzzzz", "fields of block 'optim': b1,"),
      ("below_a_leaf", "entropy.coef.x", "entropy.coef is a float value"),
      ("removed", "loss.temperature", "set --config.rollout.temperature"),
  )
  def test_unknown_key(self, path, fragment):
    msg = launch_flags.unknown_key_message(grpo_tiny.get_config(), "config",
                                           path)
    self.assertIn(fragment, msg)
    self.assertNotIn("\n", msg)

  def test_known_keys_pass(self):
    config = grpo_tiny.get_config()
    for path in ("train.steps", "entropy", "data.task_kwargs.min_len"):
      self.assertIsNone(launch_flags.unknown_key_message(config, "config",
                                                         path))

  def test_unparseable_value_names_the_type(self):
    argv = ["train.py", f"--config={_ROOT}/configs/grpo_tiny.py",
            "--config.train.steps=abc"]
    err = ValueError("flag --config.train.steps=abc: invalid literal for "
                     "int() with base 10: 'abc'")
    msg = launch_flags.explain(argv, err, names=["config"])
    self.assertStartsWith(msg, "--config.train.steps=abc: cannot parse the "
                          "value as int")

  def test_failing_get_config_arg(self):
    argv = ["train.py", f"--config={_ROOT}/configs/grpo_tiny.py:entropy=bogus"]
    msg = launch_flags.explain(argv, ValueError("anything"), names=["config"])
    self.assertIn("entropy preset 'bogus'", msg)


if __name__ == "__main__":
  absltest.main()
