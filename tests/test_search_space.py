import optuna
import pytest

from shared.errors import ConfigError
from shared.search_space import HYPERPARAMETERS, load_search_space, suggest

REFERENCE_BASELINE = {
    "embedding_dim": 128, "d_model": 128, "num_layers": 3, "bidirectional": True,
    "dropout": 0.2, "learning_rate": 1e-3, "weight_decay": 1e-4,
}


def test_reference_space_matches_the_reference_code():
    space = load_search_space("reference")
    params = space["params"]
    assert params["embedding_dim"]["choices"] == [8, 16, 32, 64, 128]
    assert params["d_model"]["choices"] == [2**k for k in range(3, 11)]
    assert (params["num_layers"]["low"], params["num_layers"]["high"]) == (1, 5)
    assert params["learning_rate"] == {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}
    assert params["weight_decay"] == {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}
    assert params["dropout"]["high"] < 1
    assert space["baseline"] == REFERENCE_BASELINE


def test_suggest_covers_every_hyperparameter():
    space = load_search_space("reference")
    trial = optuna.create_study().ask()
    params = suggest(trial, space)
    assert sorted(trial.params) == sorted(HYPERPARAMETERS)
    assert params.embedding_dim in space["params"]["embedding_dim"]["choices"]


def load_search_space_text():
    from importlib import resources

    return resources.files("shared.search_spaces").joinpath("reference.toml").read_text()


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("high = 0.5", "high = 1.0"), r"dropout must be in \[0, 1\)"),
        (("embedding_dim = 128\nd_model", "embedding_dim = 100\nd_model"), "lies outside"),
        (("[params.weight_decay]", "[params.weight_decays]"), "missing hyperparameters"),
        (("low = 1e-5", "low = 0"), "log scale needs low > 0"),
        (('[params.num_layers]\ntype = "int"', '[params.num_layers]\ntype = "integer"'), "type 'integer' is unknown"),
        (("choices = [true, false]", 'choices = ["yes"]'), "bidirectional must be true or false"),
    ],
)
def test_invalid_space_files(tmp_path, replace, message):
    text = load_search_space_text()
    assert replace[0] in text
    path = tmp_path / "space.toml"
    path.write_text(text.replace(replace[0], replace[1], 1))
    with pytest.raises(ConfigError, match=message):
        load_search_space(str(path))


def test_invalid_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[params\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_search_space(str(path))
    with pytest.raises(ConfigError, match="neither a built-in name"):
        load_search_space(str(tmp_path / "absent.toml"))


def test_space_without_baseline(tmp_path):
    path = tmp_path / "space.toml"
    text = load_search_space_text()
    path.write_text(text[: text.index("# The reference code's hand-tuned")])
    assert load_search_space(str(path))["baseline"] is None
