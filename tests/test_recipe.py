"""The recipe chains synthesis -> SFT -> Hint-GRPO -> test as nested MLflow runs and prints a summary table."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_recipe_runs_every_stage_nested(tiny_model, tmp_path, monkeypatch):
    import mlflow

    from msathinker.recipe import run_recipe

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    small = ["--data.init_args.max_clips", "4", "--data.init_args.batch_size", "2", "--trainer.max_steps", "2",
             "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches",
             "1", "--model.init_args.policy.model_path", tiny_model, "--model.init_args.generation.max_new_tokens",
             "4", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    grpo_small = [*small, "--model.init_args.grpo.num_generations", "2",
                  "--model.init_args.grpo.max_completion_length", "8",
                  "--model.init_args.hint.init_args.num_unhinted", "1"]  # fmt: skip
    results = run_recipe(
        experiment="recipe-test",
        output_dir=str(tmp_path / "out"),
        synthesize=str(REPO / "experiments/quickstart/synthesize.yaml"),
        sft=str(REPO / "experiments/quickstart/sft.yaml"),
        grpo=str(REPO / "experiments/quickstart/hint_grpo.yaml"),
        sft_args=small,
        grpo_args=grpo_small,
        cross_domain=["demo_sims"],
    )
    # the quickstart teacher reads the words, so the sarcastic clips are rejected (see test_synthesis)
    assert (
        0 < results["synthesis"]["kept"] < 240
        and results["synthesis"]["kept"] + results["synthesis"]["rejected"] == 240
    )
    for stage in ("sft", "hint_grpo"):
        assert "test/demo_mosi/MAE" in results[stage] and "test/demo_sims/Mult_acc_2" in results[stage]
    assert (tmp_path / "out/sft/adapter/adapter_config.json").is_file()
    summary = (tmp_path / "out/summary.txt").read_text()
    assert summary.splitlines()[0].split()[:2] == ["stage", "demo_mosi/Corr"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["recipe-test"])
    parent = runs[runs["tags.mlflow.runName"] == "recipe"].run_id.item()
    children = runs[runs["tags.mlflow.parentRunId"] == parent]["tags.mlflow.runName"]
    assert set(children) == {"synthesis", "sft", "hint_grpo"}
