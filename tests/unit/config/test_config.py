import pytest
import yaml

from fpa_ray.config import ConfigError, RunConfig, apply_override, load_config, resolve_config_path


def test_default_config_loads_and_round_trips(tmp_path):
    config = load_config()
    assert config.objective.name == "rpo" and config.fpa.enabled
    saved = tmp_path / "resolved.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config


def test_overrides_are_typed_yaml_scalars():
    config = load_config("tiny-cpu", ["fpa.lam=2", "fpa.enabled=false", "objective.name=rpo", "objective.params.alpha=0.5", "fpa.chunk_size=null"])
    assert config.fpa.lam == 2.0 and config.fpa.enabled is False and config.fpa.chunk_size is None
    assert config.objective.params == {"beta": 0.1, "alpha": 0.5}  # defaults filled in


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fpa.lamda=2", r"fpa.lamda: unknown key \(did you mean 'lam'\?\)"),
        ("nmae=x", r"nmae: unknown key \(did you mean 'name'\?\)"),
        ("fpa.lam=-1", r"fpa.lam: Input should be greater than or equal to 0"),
        ("fpa.mode=approx", r"fpa.mode: Input should be 'exact' or 'sequence'"),
        ("fpa.apply_to=negative", r"fpa.apply_to"),
        ("objective.params.gamma=1", r"params.gamma: not a parameter of objective 'rpo'"),
        ("objective.params.beta=abc", r"params.beta: Input should be a valid number"),
        ("objective.name=dop", r"unknown objective 'dop'"),
        ("seed=1.5", r"seed: Input should be a valid integer"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-cpu", [override])


def test_switching_objective_drops_only_the_files_parameters_it_does_not_take():
    kto = load_config("tiny-cpu", ["objective.name=kto"]).objective.params  # the file's rpo alpha is dropped
    assert kto == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    assert load_config("tiny-cpu", ["objective.name=kto", "objective.params.beta=0.3"]).objective.params["beta"] == 0.3
    with pytest.raises(ConfigError, match=r"params.alpha: not a parameter of objective 'kto'"):
        load_config("tiny-cpu", ["objective.name=kto", "objective.params.alpha=2"])  # asked for on the command line: an error


def test_fpa_on_an_objective_without_coefficients_is_rejected():
    with pytest.raises(ConfigError, match=r"fpa.enabled: objective 'grpo'"):
        load_config("tiny-cpu", ["objective.name=grpo", "objective.params={}"])
    assert load_config("tiny-cpu", ["objective.name=grpo", "objective.params={}", "fpa.enabled=false"]).objective.params["clip_eps"] == 0.2


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"not of the form key=value"):
        apply_override({}, "fpa.lam")
    with pytest.raises(ConfigError, match=r"fpa.lam is a value, not a section"):
        apply_override({"fpa": {"lam": 1}}, "fpa.lam.x=2")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        apply_override({}, "name=[unclosed")
    data: dict = {}
    apply_override(data, "a.b.c=[1, 2]")
    assert data == {"a": {"b": {"c": [1, 2]}}}


def test_config_files(tmp_path):
    with pytest.raises(ConfigError, match=r"no config named 'nope'; configs/ holds: .*tiny-cpu"):
        resolve_config_path("nope")
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fpa: [1, 2\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping"):
        load_config(listed)
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"fpa": {"enabeld": True}}))
    with pytest.raises(ConfigError, match=rf"{typo}.*\n  fpa.enabeld: unknown key \(did you mean 'enabled'\?\)"):
        load_config(typo)


def test_every_shipped_config_validates():
    from fpa_ray.config import CONFIG_DIR

    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert paths
    for path in paths:
        assert isinstance(load_config(path), RunConfig)


def test_data_and_policy_sections():
    config = load_config("tiny-cpu", ["data.train.limit=50", "data.eval=[{name: gsm8k, path: x.jsonl}]", "policy.sft.steps=10"])
    assert config.data.train.limit == 50 and config.data.eval[0].name == "gsm8k" and config.policy.sft.steps == 10
    with pytest.raises(ConfigError, match=r"eval.0.name: unknown prompt source 'gsm9k'"):
        load_config("tiny-cpu", ["data.eval=[{name: gsm9k}]"])
    with pytest.raises(ConfigError, match=r"template: unknown prompt template 'chatml'"):
        load_config("tiny-cpu", ["data.template=chatml"])
    with pytest.raises(ConfigError, match=r"data.synthetic: min_steps \(5\) exceeds max_steps \(3\)"):
        load_config("tiny-cpu", ["data.synthetic.min_steps=5"])
    with pytest.raises(ConfigError, match=r"policy.tiny.head_dim: Input should be greater than or equal to 32"):
        load_config("tiny-cpu", ["policy.tiny.head_dim=16"])


def test_verifier_section():
    config = load_config("tiny-cpu", ["verifier.cross_grader=normalized", "verifier.timeout_s=2.5"])
    assert config.verifier.cross_grader == "normalized" and config.verifier.timeout_s == 2.5
    with pytest.raises(ConfigError, match=r"verifier.grader: Input should be 'math_verify' or 'normalized'"):
        load_config("tiny-cpu", ["verifier.grader=sympy"])
    with pytest.raises(ConfigError, match=r"verifier.max_failure_share: Input should be less than or equal to 1"):
        load_config("tiny-cpu", ["verifier.max_failure_share=1.5"])


def test_a_token_budget_needs_padding_free_rows():
    with pytest.raises(ConfigError, match="micro_batch_tokens bounds a padding-free row"):
        load_config("tiny-cpu-grpo", ["learner.micro_batch_tokens=2048"])
    for recipe in ("tiny-cpu", "tiny-cpu-grpo"):  # the offline objectives and GRPO alike
        assert load_config(recipe, ["learner.padding_free=true", "learner.micro_batch_tokens=2048"]).learner.micro_batch_tokens == 2048


def test_kto_needs_two_rows_per_step_for_its_mismatched_pairs():
    with pytest.raises(ConfigError, match="KTO's z0 pairs each prompt with another row's response"):
        load_config("tiny-cpu", ["objective.name=kto", "learner.global_batch_size=1", "learner.micro_batch_size=1", "learner.num_workers=1"])


def test_the_whole_model_diagnostic_needs_a_worker_holding_the_whole_model():
    with pytest.raises(ConfigError, match="diagnostics_scope=all copies the whole model onto every worker: with strategy=deepspeed"):
        load_config("tiny-cpu", ["learner.strategy=deepspeed", "learner.diagnostics_scope=all"])
    assert load_config("tiny-cpu", ["learner.diagnostics_scope=all", "learner.diagnostics_rows=64"]).learner.diagnostics_rows == 64
