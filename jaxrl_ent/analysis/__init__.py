"""Analysis of finished (or running) run workdirs: entropy law, plots, tables.

Modules, each with one job:

  entropy_law  `fit_entropy_law(entropy, reward) -> EntropyLawFit`: least
               squares for `R = −a·exp(H) + b` (Cui et al. 2025).
  runs         `load_run(workdir) -> Run` and the series derived from it
               (entropy, (H, R) pairs, ΔH pairs, tokens touched).
  report       `summarize_run(run) -> RunSummary`, `markdown_table(...)`.
  plots        `write_plots(runs, out_dir)` and one `plot_*` per PNG kind.
  stats        unbiased `pass_at_k`, `iqm`, stratified `bootstrap_ci`,
               `probability_of_improvement_ci`, `paired_test`, `verdict`.

Importing reads nothing, selects no matplotlib backend and imports no jax;
`launch/analyze.py` is the command-line front end.
"""
