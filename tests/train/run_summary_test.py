"""The end-of-run summary: the numbers it prints are the run's."""

from absl.testing import absltest

from jaxrl_ent.train import run_summary


class RunSummaryTest(absltest.TestCase):

  def test_before_after_and_paths(self):
    summary = {"steps": 40,
               "initial_eval": {"val/greedy_acc": 0.078, "val/pass_at_4": 0.145,
                                "val/greedy_reward": 0.3,
                                "val/num_prompts": 256.0},
               "final_eval": {"val/greedy_acc": 0.523, "val/pass_at_4": 0.61,
                              "val/greedy_reward": 0.7,
                              "val/num_prompts": 256.0}}
    # Entropy: first step, then the mean of the last tenth (4 of 40 rows).
    rows = [{"step": 0, "val/greedy_acc": 0.078}] + [
        {"step": i, "rollout/entropy": 1.0 if i < 37 else 0.4 + 0.1 * (i - 37)}
        for i in range(1, 41)]
    text = run_summary.text(summary, rows, "/tmp/run", wall_s=372.4,
                            tensorboard=True)
    lines = text.splitlines()
    self.assertEqual(lines[0], "run finished: 40 RL steps, 6 min 12 s wall "
                     "(this launch, warm start included)")
    self.assertIn("held-out (256 prompts)", lines[1])
    self.assertRegex(text, r"greedy accuracy\s+0\.078 → 0\.523")
    self.assertRegex(text, r"pass@4\s+0\.145 → 0\.610")
    # Rows 37..40 hold 0.4, 0.5, 0.6, 0.7: mean 0.55; 1.0 → 0.55 = −45 %.
    self.assertRegex(text, r"rollout entropy \(nats/token\)\s+1\.000 → "
                     r"0\.550 \(-45%\)")
    self.assertIn("tensorboard --logdir /tmp/run/tb", text)
    self.assertIn("--workdirs=/tmp/run --out=/tmp/run/analysis", text)


if __name__ == "__main__":
  absltest.main()
