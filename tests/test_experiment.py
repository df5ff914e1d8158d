"""keepmix experiment: the grid is arms × paired seeds, results and summaries follow their definitions,
intervals equal a hand computation (Student's t), finished runs are skipped on a rerun."""

from __future__ import annotations

import csv
import math
import statistics

import pytest
from scipy import stats

from keepmix.experiment import (Comparison, Interval, Table, load_tables, paired, plan, run_experiment, summarize,
                                t_quantile, verdict)


def test_t_quantiles_are_students():
    for df in range(1, 31):
        assert abs(t_quantile(df) - stats.t.ppf(0.975, df)) < 1e-3
    assert t_quantile(200) == 1.96


def test_interval_by_hand():
    values = [1.0, 3.0, 2.0, 6.0]
    iv = Interval.of(values)
    mean, sd = 3.0, statistics.stdev(values)
    half = stats.t.ppf(0.975, 3) * sd / math.sqrt(4)
    assert (iv.mean, iv.n) == (mean, 4) and abs(iv.sd - sd) < 1e-12
    assert abs(iv.low - (mean - half)) < 1e-3 and abs(iv.high - (mean + half)) < 1e-3
    one = Interval.of([5.0])
    assert one.n == 1 and math.isnan(one.low)
    with pytest.raises(ValueError):
        Interval.of([])


def test_verdicts():
    holds = Interval.of([1.0, 1.2, 0.9, 1.1])
    assert verdict(holds, 0.5) == "holds"
    assert verdict(holds, -0.5) == "contradicted"
    assert verdict(Interval.of([1.0, -1.0, 0.5]), 0.5) == "inconclusive"
    assert verdict(Interval.of([1.0]), 0.5) == "inconclusive (one seed)"
    assert verdict(holds, None) == "a better"                          # no paper number: no claim, a direction
    assert verdict(Interval.of([-1.0, -1.2, -0.9]), None) == "b better"
    assert verdict(Interval.of([-1.0, -1.2, -0.9]), None, lower_is_better=True) == "a better"
    # the reported case: two seeds with the same difference gave a zero-width interval and "holds"
    assert verdict(Interval.of([0.17, 0.17]), 0.5) == "inconclusive (no spread over seeds)"


def _tiny_table():
    return Table(name="tiny", recipe="default", arms=["cutout", "keep_cutout"],
                 comparisons=[Comparison("keep_cutout", "cutout", 1.0)], paper={"cutout": 80.0},
                 reduced={"data": {"kwargs": {"n_per_class": 6, "clutter": 1.0, "object_size": 8}, "eval_size": 40},
                          "optim": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0}},
                 reduced_note="tiny")


def test_plan_pairs_arms_by_seed():
    grid = plan(_tiny_table(), [3, 4])
    assert [(arm, seed) for arm, seed, _ in grid] == [("cutout", 3), ("keep_cutout", 3), ("cutout", 4),
                                                      ("keep_cutout", 4)]
    for arm, seed, config in grid:
        assert config.seed == seed and config.optim.epochs == 1 and config.data.kwargs["n_per_class"] == 6
    with pytest.raises(ValueError, match="scale"):
        plan(_tiny_table(), [0], scale="huge")


@pytest.mark.slow
def test_run_experiment_end_to_end_and_resume(tmp_path):
    table = _tiny_table()
    rows = run_experiment(table, [0, 1], tmp_path, progress=False)
    assert len(rows) == 4
    with open(tmp_path / "tiny" / "results.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [(r["arm"], r["seed"]) for r in written] == [("cutout", "0"), ("keep_cutout", "0"), ("cutout", "1"),
                                                        ("keep_cutout", "1")]
    assert all(0.0 <= float(r["val_top1"]) <= 100.0 for r in written)
    # the summary's paired interval is the hand computation on the CSV
    diffs = [float(written[1]["val_top1"]) - float(written[0]["val_top1"]),
             float(written[3]["val_top1"]) - float(written[2]["val_top1"])]
    assert paired(rows, "keep_cutout", "cutout") == pytest.approx(diffs)
    summary = (tmp_path / "tiny" / "summary.md").read_text()
    mean = statistics.fmean(diffs)
    assert f"| keep_cutout − cutout | 2 | {mean:+.2f} |" in summary and "Reduced protocol: tiny" in summary

    def refuse(config, folder):  # a rerun must not train anything
        raise AssertionError(f"{folder} was trained again")

    again = run_experiment(table, [0, 1], tmp_path, progress=False, train=refuse)
    assert again == rows
    # a new seed trains only its own runs
    trained = []
    run_experiment(table, [0, 1, 2], tmp_path, progress=False,
                   train=lambda config, folder: trained.append(folder.name) or {"val_top1": 50.0})
    assert trained == ["seed2", "seed2"]


def fake_train(config, folder):
    """A stand-in for a training run (module level: the --jobs workers unpickle it): a top-1 that is a
    function of the arm's op and the seed only, and the process it ran in."""
    import os
    op = config.ops[0]["name"] if config.ops else "none"
    if op == "keep_cutout" and config.seed == 1 and os.environ.get("KEEPMIX_TEST_FAIL_CELL"):
        raise RuntimeError("cell keep_cutout/seed1 failed")
    return {"val_top1": 50.0 + 10 * config.seed + (5.0 if op == "keep_cutout" else 0.0), "epochs": os.getpid()}


def test_jobs_train_in_worker_processes_and_write_the_same_grid(tmp_path):
    import os
    serial = run_experiment(_tiny_table(), [0, 1, 2], tmp_path / "serial", progress=False, train=fake_train)
    parallel = run_experiment(_tiny_table(), [0, 1, 2], tmp_path / "parallel", progress=False, train=fake_train,
                              jobs=2)
    assert [(r["arm"], r["seed"], r["val_top1"]) for r in parallel] == \
        [(r["arm"], r["seed"], r["val_top1"]) for r in serial]                  # same rows, in the grid's order
    assert [r["val_top1"] for r in parallel] == [50.0, 55.0, 60.0, 65.0, 70.0, 75.0]
    assert {r["epochs"] for r in serial} == {os.getpid()}
    assert os.getpid() not in {r["epochs"] for r in parallel}                   # trained in the workers
    summary = (tmp_path / "parallel" / "tiny" / "summary.md").read_text()
    assert summary == (tmp_path / "serial" / "tiny" / "summary.md").read_text()
    # a rerun with jobs finds every result.json and trains nothing
    again = run_experiment(_tiny_table(), [0, 1, 2], tmp_path / "parallel", progress=False, train=fake_train, jobs=2)
    assert again == parallel


def test_a_failed_job_stops_the_grid_and_keeps_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("KEEPMIX_TEST_FAIL_CELL", "1")
    with pytest.raises(RuntimeError, match="keep_cutout/seed1 failed"):
        run_experiment(_tiny_table(), [0, 1], tmp_path, progress=False, train=fake_train, jobs=2)
    # the other three runs were dispatched before or alongside the failing one: all finished and recorded
    for arm, seed in (("cutout", 0), ("keep_cutout", 0), ("cutout", 1)):
        assert (tmp_path / "tiny" / arm / f"seed{seed}" / "result.json").is_file(), (arm, seed)
    assert not (tmp_path / "tiny" / "keep_cutout" / "seed1" / "result.json").exists()
    monkeypatch.delenv("KEEPMIX_TEST_FAIL_CELL")
    rows = run_experiment(_tiny_table(), [0, 1], tmp_path, progress=False, train=fake_train, jobs=2)
    assert [r["val_top1"] for r in rows] == [50.0, 55.0, 60.0, 65.0]


@pytest.mark.parametrize("jobs, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_jobs_must_be_a_positive_int(tmp_path, jobs, error):
    with pytest.raises(error, match="jobs"):
        run_experiment(_tiny_table(), [0], tmp_path, progress=False, train=fake_train, jobs=jobs)


def test_summary_without_runs_of_an_arm():
    table = _tiny_table()
    rows = [{"arm": "cutout", "seed": 0, "val_top1": 70.0}]
    text = summarize(table, rows, "reduced", [0])
    assert "not run" in text and "| cutout | 1 | 70.00 |" in text


def test_shipped_experiments_plan():
    tables = load_tables()
    assert {"keepaugment_t2", "guidedmixup_t6", "guidedmixup_t8"} <= set(tables)
    for table in tables.values():
        grid = plan(table, [0, 1])
        arms = {arm for arm, _, _ in grid}
        for c in table.comparisons:
            assert {c.a, c.b} <= arms, (table.name, c)
        # null controls where a Keep op is credited
        if any(arm.startswith("keep_") and "random" not in arm for arm in arms):
            assert any("random" in arm for arm in arms), table.name
        # the figure sweeps: every arm but the baselines carries its x value
        if table.name.startswith("keepaugment_f"):
            from keepmix.viz import sweep_baselines, sweep_groups
            rows = [{"arm": arm, "val_top1": 1.0} for arm in arms]
            assert len(sweep_baselines(rows)) <= 1 and sum(len(v) for v in sweep_groups(rows).values()) >= 4


def test_figures_render_with_axes_and_legend(tmp_path):
    from matplotlib import image
    from keepmix.viz import plot_overhead, plot_sweep, read_results
    rows = []
    for seed in range(3):
        for length in (8, 16, 24):
            rows.append({"arm": f"cutout_{length}", "seed": seed, "val_top1": 80 + seed + length / 10,
                         "train_top1": 70 + seed})
            rows.append({"arm": f"keep_cutout_{length}", "seed": seed, "val_top1": 82 + seed, "train_top1": 71.0})
    from keepmix.experiment import write_results
    write_results(tmp_path / "results.csv", rows)
    back = read_results(tmp_path / "results.csv")
    assert back[0]["arm"] == "cutout_8" and back[0]["val_top1"] == 80.8
    from keepmix.viz import sweep_groups
    groups = sweep_groups(back + [{"arm": "keep_cutout_random_8", "val_top1": 1.0}, {"arm": "mixup", "val_top1": 2.0}])
    assert sorted(groups) == ["cutout", "keep_cutout", "keep_cutout_random"]
    assert sorted(groups["cutout"]) == [8.0, 16.0, 24.0] and len(groups["cutout"][8.0]["test"]) == 3
    out = plot_sweep(back, tmp_path / "sweep.png", parameter="cut length", unit="px")
    assert image.imread(out).shape[0] > 100
    out = plot_overhead(back, {"cutout_16": 0.5, "keep_cutout_16": 12.0}, tmp_path / "overhead.png")
    assert image.imread(out).shape[0] > 100
    with pytest.raises(ValueError, match="overhead"):
        plot_overhead(back, {"other": 1.0}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="number"):
        plot_sweep([{"arm": "mixup", "val_top1": 1.0}], tmp_path / "bad.png")
    # a τ sweep: arms ending in no number are the dash-line baselines (KeepAugment Figure 3)
    from keepmix.viz import sweep_baselines
    tau = [{"arm": f"keep_cutout_tau_{t}", "seed": s, "val_top1": 80.0 + s + 10 * t} for t in (0.2, 0.6) for s in (0, 1)]
    tau += [{"arm": "cutout", "seed": s, "val_top1": 79.0 + s} for s in (0, 1)]
    assert sweep_baselines(tau) == {"cutout": [79.0, 80.0]}
    assert sorted(sweep_groups(tau)["keep_cutout_tau"]) == [0.2, 0.6]
    out = plot_sweep(tau, tmp_path / "tau.png", parameter="τ")
    assert image.imread(out).shape[0] > 100


def test_cli_experiment_and_plots(tmp_path, capsys):
    """`keepmix experiment` runs a table of the experiments file and `keepmix plot --sweep` draws it."""
    import yaml
    from keepmix import cli
    from keepmix.experiment import write_results
    assert cli.main(["list", "experiments"]) == 0
    assert "keepaugment_t2" in capsys.readouterr().out
    rows = [{"arm": f"cutout_{L}", "seed": s, "val_top1": 50.0 + s + L} for s in range(2) for L in (8, 16)]
    write_results(tmp_path / "results.csv", rows)
    assert cli.main(["plot", "--sweep", str(tmp_path / "results.csv"), "--parameter", "cut length"]) == 0
    assert (tmp_path / "sweep.png").is_file()
    (tmp_path / "overheads.csv").write_text("arm,overhead_percent\ncutout_8,1.0\ncutout_16,2.0\n")
    assert cli.main(["plot", "--overhead", str(tmp_path / "results.csv"), "--overheads",
                     str(tmp_path / "overheads.csv"), "--out", str(tmp_path / "o.png")]) == 0
    assert (tmp_path / "o.png").is_file()
    assert cli.main(["experiment", "no_such_table", "--seeds", "1"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


@pytest.mark.parametrize("seeds, error, word", [([], ValueError, "at least one"), ([0, 0], ValueError, "distinct"),
                                                ([0, 1.5], TypeError, "seeds"), ([True], TypeError, "seeds")])
def test_seeds_must_be_distinct_ints_and_not_none(tmp_path, seeds, error, word):
    """`--seeds 0` used to write an empty results.csv and summary.md over a finished experiment's; a seed listed
    twice trained two runs into one folder (at once, with jobs)."""
    from keepmix.experiment import write_results
    folder = tmp_path / "tiny"
    write_results(folder / "results.csv", [{"arm": "cutout", "seed": 0, "val_top1": 50.0}])
    before = (folder / "results.csv").read_text()
    with pytest.raises(error, match=word):
        run_experiment(_tiny_table(), seeds, tmp_path, progress=False, train=fake_train, jobs=2)
    assert (folder / "results.csv").read_text() == before and not (folder / "summary.md").exists()


def test_cli_refuses_zero_seeds_and_jobs(capsys):
    from keepmix import cli
    for flag in ("--seeds", "--jobs"):
        with pytest.raises(SystemExit) as stop:
            cli.main(["experiment", "keepaugment_t2", flag, "0"])
        assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_plot_sweep_reads_exponent_values_and_refuses_broken_results_in_one_line(tmp_path, capsys):
    """A results.csv without val_top1 used to end in a KeyError traceback, an empty or foreign cell in a bare
    'could not convert string to float'; arms like lr_1e-3 were taken for baselines; a missing file or folder
    printed 'error: …' with exit code 1."""
    from keepmix import cli
    from keepmix.viz import read_results, sweep_baselines, sweep_groups
    rows = [{"arm": "lr_1e-3", "val_top1": 50.0}, {"arm": "lr_2.5E-2", "val_top1": 60.0},
            {"arm": "tau_.5", "val_top1": 55.0}, {"arm": "base", "val_top1": 40.0}]
    assert sorted(sweep_groups(rows)["lr"]) == [1e-3, 2.5e-2] and sorted(sweep_groups(rows)["tau"]) == [0.5]
    assert sweep_baselines(rows) == {"base": [40.0]}
    cases = {"no_accuracy.csv": ("arm,seed,acc\ncutout_8,0,50\n", "cutout_8.*val_top1"),
             "empty_cell.csv": ("arm,seed,val_top1\ncutout_8,0,\ncutout_16,0,60\n", "cutout_8.*seed 0\\b"),
             "foreign_cell.csv": ("arm,seed,val_top1\ncutout_8,x,50\n", "line 2.*'seed'.*'x'"),
             "no_arm.csv": ("name,val_top1\ncutout_8,50\n", "no 'arm' column")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            sweep_groups(read_results(tmp_path / name))
        capsys.readouterr()
        assert cli.main(["plot", "--sweep", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("keepmix plot: error:") and "Traceback" not in err and err.count("\n") == 1
    for argv in (["plot", "--sweep", str(tmp_path)], ["plot", str(tmp_path / "missing")], ["plot"]):
        assert cli.main(argv) == 2 and capsys.readouterr().err.startswith("keepmix plot: error:")


def test_a_rerun_measures_again_the_rows_of_another_corruption_spec(tmp_path, monkeypatch):
    """Editing a table's corruptions: SPEC used to leave the finished runs' corruption errors those of the old
    SPEC (the rerun skipped every run that had one)."""
    import keepmix.robustness as robustness
    evaluated = []

    def fake_evaluate(folder, spec, **kwargs):
        evaluated.append((folder.parent.name, spec))
        return {"clean_error": 10.0, "corruption_error": 20.0 if spec == "noise" else 30.0}
    monkeypatch.setattr(robustness, "evaluate_run", fake_evaluate)
    table = _tiny_table()
    table.corruptions, table.metrics = "noise", ["corruption_error"]
    rows = run_experiment(table, [0], tmp_path, progress=False, train=fake_train)
    assert [r["corruption_error"] for r in rows] == [20.0, 20.0] and len(evaluated) == 2
    assert run_experiment(table, [0], tmp_path, progress=False, train=fake_train) == rows and len(evaluated) == 2
    table.corruptions = "noise,replace"

    def refuse(config, folder):
        raise AssertionError("trained again")
    rows = run_experiment(table, [0], tmp_path, progress=False, train=refuse)
    assert [r["corruption_error"] for r in rows] == [30.0, 30.0]
    assert evaluated[2:] == [("cutout", "noise,replace"), ("keep_cutout", "noise,replace")]
    assert "corruption_error" in (tmp_path / "tiny" / "results.csv").read_text().splitlines()[0]


def test_a_grid_with_other_settings_does_not_reuse_finished_runs(tmp_path):
    """The reported case: rerunning with --set optim.epochs=2 into the folder of an epochs=1 grid reused the
    epochs=1 results silently. A finished run whose config.yaml differs is now refused, naming the field."""
    import json
    import yaml
    from keepmix.recipes import config_to_dict
    table = _tiny_table()
    grid = plan(table, [0])
    for arm, seed, config in grid:                     # a finished epochs=1 grid, as Trainer leaves it
        folder = tmp_path / "tiny" / arm / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
        (folder / "result.json").write_text(json.dumps({"arm": arm, "seed": seed, "val_top1": 50.0}))
    rows = run_experiment(table, [0], tmp_path, progress=False, train=fake_train)   # same settings: reused
    assert [r["val_top1"] for r in rows] == [50.0, 50.0]
    with pytest.raises(ValueError, match="optim.epochs"):
        run_experiment(table, [0], tmp_path, progress=False, train=fake_train, overrides=["optim.epochs=2"])
    # where the data lives is not a setting
    again = run_experiment(table, [0], tmp_path, progress=False, train=fake_train, overrides=["data.root=/elsewhere"])
    assert again == rows


def test_the_summary_lists_overrides_that_change_the_protocol(tmp_path):
    run_experiment(_tiny_table(), [0], tmp_path, progress=False, train=fake_train,
                   overrides=["optim.epochs=2", "data.root=/data"])
    summary = (tmp_path / "tiny" / "summary.md").read_text()
    assert "**Overrides**" in summary and "`optim.epochs=2`" in summary and "data.root" not in summary


def test_cli_options_are_not_abbreviated(capsys):
    from keepmix.cli import main
    with pytest.raises(SystemExit):
        main(["experiment", "keepaugment_t2", "--data", "somewhere"])   # was read as --data-root
    assert "unrecognized arguments: --data" in capsys.readouterr().err
