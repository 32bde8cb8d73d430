"""launch/tpu_pod.sh prints (--dry-run) or runs the right gcloud commands.

Nothing here talks to Google Cloud: --dry-run only prints, and the one
non-dry run uses a fake `gcloud` on PATH that records its arguments.
"""

import os
import shlex
import stat
import subprocess

from absl.testing import absltest

import launcher_testlib

_SCRIPT = os.path.join(launcher_testlib.ROOT, "launch", "tpu_pod.sh")
_BASE = ("--name=my-v5e", "--zone=us-west4-a",
         "--config=configs/grpo_tiny.py:entropy=clip_cov",
         "--workdir=gs://bucket/runs/cc")
# Launcher flags with a space and a quote: they must reach the workers as
# single arguments.
_EXTRA = ("--config.train.steps=10", "--config.data.template={prompt} it's:")


def _run(*args, env=None):
  return subprocess.run(["bash", _SCRIPT, *args], capture_output=True,
                        text=True, check=False, env=env, timeout=60)


def _commands(stdout):
  """The printed commands, each as its argv list."""
  return [shlex.split(line[2:]) for line in stdout.splitlines()
          if line.startswith("+ ")]


def _remote(argv):
  """The `--command=` of a `tpu-vm ssh`, as the worker's shell splits it."""
  command = next(a for a in argv if a.startswith("--command="))
  return shlex.split(command[len("--command="):])


class TpuPodTest(absltest.TestCase):

  def test_dry_run_creates_ships_installs_and_starts_on_all_workers(self):
    proc = _run("--dry-run", "--create", "--spot",
                "--accelerator=v5litepod-16", "--project=proj", *_BASE,
                "--", *_EXTRA)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    create, tar, scp, unpack, install, job = _commands(proc.stdout)
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    common = ["--zone=us-west4-a", "--project=proj"]
    self.assertEqual(create, gcloud + [
        "create", "my-v5e", *common, "--accelerator-type=v5litepod-16",
        "--version=v2-alpha-tpuv5-lite", "--spot"])
    self.assertEqual(tar[:3], ["tar", "-czf", tar[2]])
    self.assertIn(launcher_testlib.ROOT, tar)
    self.assertIn("--exclude=.git", tar)
    self.assertEqual(scp, gcloud + ["scp", tar[2], "my-v5e:jaxrl_ent.tar.gz",
                                    *common, "--worker=all"])
    for ssh in (unpack, install, job):
      self.assertEqual(ssh[:9], gcloud + ["ssh", "my-v5e", *common,
                                          "--worker=all"])
    self.assertIn("tar -xzf ~/jaxrl_ent.tar.gz -C ~/jaxrl_ent",
                  " ".join(_remote(unpack)))
    self.assertEqual(_remote(install)[-4:], ["install", "-q", "-e",
                                              ".[tpu]"])
    self.assertEqual(_remote(job), [
        "cd", "~/jaxrl_ent", "&&", "python3", "launch/train.py",
        "--config=configs/grpo_tiny.py:entropy=clip_cov",
        "--workdir=gs://bucket/runs/cc",
        "--config.distributed.initialize=always", *_EXTRA])

  def test_every_job_joins_the_cluster_unless_told_otherwise(self):
    for job in ("train", "sft", "evaluate", "export"):
      proc = _run("--dry-run", "--skip-install", f"--job={job}",
                  "--repo=https://example.com/r.git", *_BASE)
      self.assertEqual(proc.returncode, 0, proc.stderr)
      remote = _remote(_commands(proc.stdout)[-1])
      self.assertIn(f"launch/{job}.py", remote)
      self.assertIn("--config.distributed.initialize=always", remote)
    proc = _run("--dry-run", "--skip-install", "--repo=https://e.com/r.git",
                *_BASE, "--", "--config.distributed.initialize=force_single")
    remote = _remote(_commands(proc.stdout)[-1])
    self.assertNotIn("--config.distributed.initialize=always", remote)
    self.assertIn("--config.distributed.initialize=force_single", remote)

  def test_existing_slice_git_clone_detached_job(self):
    proc = _run("--dry-run", "--repo=https://example.com/jaxrl_ent.git",
                "--ref=v1", "--skip-install", "--detach", "--job=evaluate",
                *_BASE)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    commands = _commands(proc.stdout)
    self.assertLen(commands, 3)  # clone, job, and the log hint.
    clone, job, hint = commands
    self.assertNotIn("create", clone)
    self.assertEqual(_remote(clone)[4:], [
        "git", "clone", "--depth=1", "--branch", "v1",
        "https://example.com/jaxrl_ent.git", "~/jaxrl_ent"])
    remote = _remote(job)
    self.assertEqual(remote[:6], ["cd", "~/jaxrl_ent", "&&", "nohup",
                                  "python3", "launch/evaluate.py"])
    self.assertEqual(remote[-6:], [">", "~/jaxrl_ent_evaluate.log", "2>&1",
                                   "<", "/dev/null", "&"])
    self.assertIn("--worker=0", hint)

  def test_without_dry_run_it_calls_gcloud_with_those_arguments(self):
    fake_bin = self.create_tempdir().full_path
    calls = os.path.join(fake_bin, "calls.txt")
    gcloud = os.path.join(fake_bin, "gcloud")
    with open(gcloud, "w") as f:
      # One line per call: the arguments, shell-quoted.
      f.write(f'#!/usr/bin/env bash\nprintf "%q " gcloud "$@" >> {calls}\n'
              f'echo >> {calls}\n')
    os.chmod(gcloud, os.stat(gcloud).st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=fake_bin + os.pathsep + os.environ["PATH"])
    args = ("--repo=https://example.com/r.git", *_BASE, "--", *_EXTRA)
    proc = _run(*args, env=env)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    with open(calls) as f:
      made = [shlex.split(line) for line in f.read().splitlines()]
    printed = _commands(_run("--dry-run", *args).stdout)
    self.assertEqual(made, printed)
    self.assertLen(made, 3)  # clone, install, job

  def test_usage_errors(self):
    proc = _run("--dry-run", "--zone=z")
    self.assertEqual(proc.returncode, 2)
    self.assertIn("missing --name --config --workdir", proc.stderr)
    proc = _run("--dry-run", "--create", *_BASE)
    self.assertEqual(proc.returncode, 2)
    self.assertIn("missing --accelerator", proc.stderr)
    proc = _run("--dry-run", "--job=bogus", *_BASE)
    self.assertIn("--job=bogus", proc.stderr)
    proc = _run("--dry-run", *_BASE[:2], "--config=configs/nope.py",
                "--workdir=w")
    self.assertIn("no file configs/nope.py", proc.stderr)
    proc = _run("--dry-run", "--steps=3", *_BASE)
    self.assertIn("unknown argument '--steps=3'", proc.stderr)
    self.assertIn("usage:", _run("--help").stdout)


if __name__ == "__main__":
  absltest.main()
