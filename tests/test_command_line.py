"""KEY=VALUE options of the CLIs (sst-table --where, sst-export --model-arg)."""

import pytest

from sst.command_line import parse_assignments


def test_values_are_read_as_yaml():
    pairs = ["dataset=digits", "sparsity.gamma_sal=0", "width=0.5", "hidden=[32, 16]", "x="]
    assert parse_assignments(pairs, "--where", "dataset=digits") == {
        "dataset": "digits",
        "sparsity.gamma_sal": 0,
        "width": 0.5,
        "hidden": [32, 16],
        "x": None,
    }


def test_a_value_may_hold_an_equals_sign():
    assert parse_assignments(["name=a=b"], "--where", "dataset=digits") == {"name": "a=b"}


@pytest.mark.parametrize("pair", ["dataset", "=digits"])
def test_a_malformed_pair_names_the_option(pair):
    with pytest.raises(ValueError, match=r"--model-arg .* must be KEY=VALUE, e\.g\. stem=cifar"):
        parse_assignments([pair], "--model-arg", "stem=cifar")
