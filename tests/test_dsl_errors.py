"""Every kind of broken space gives one clear error naming the file, the key and the expectation."""

import re

import pytest
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.dsl import load_architecture, load_space
from nas_neck.errors import SpaceError

GOOD = """\
name: t
inputs: [P3, P4, P5]
nodes:
  T4: {level: 4, inputs: [P5, P4]}
  N3: {level: 3, inputs: [T4, P3], output: true}
  N4: {level: 4, inputs: [N3, T4], output: true}
  N5: {level: 5, inputs: [N4, P5], output: true}
"""

CASES = {
    "unknown_key": (
        GOOD.replace("{level: 4, inputs: [P5, P4]}", "{level: 4, inputs: [P5, P4], fusion: sum}"),
        "nodes.T4.fusion",
        r"unknown key 'fusion'; expected one of: .*fuse",
    ),
    "unknown_input": (
        GOOD.replace("[T4, P3]", "[T4, P2]"),
        "nodes.N3.inputs.1",
        r"unknown input 'P2'; expected a cell input \(P3, P4, P5\) or a node",
    ),
    "cycle": (
        GOOD.replace("inputs: [P5, P4]", "inputs: [P5, N4]"),
        "nodes.",
        r"cycle: (T4|N3|N4) -> .* -> (T4|N3|N4)",
    ),
    "level_out_of_range": (
        GOOD.replace("{level: 4, inputs: [P5, P4]}", "{level: 9, inputs: [P5, P4]}"),
        "nodes.T4.level",
        r"expected a pyramid level in \[2, 7\], got 9",
    ),
    "missing_output_level": (
        "outputs: [3, 4, 5, 6]\n" + GOOD,
        "outputs",
        r"level 6 is required but no node with 'output: true' has level 6",
    ),
    "empty_choice": (
        GOOD.replace("inputs: [P3, P4, P5]\n", "inputs: [P3, P4, P5]\nwidth: {choice: []}\n"),
        "width",
        r"expected a non-empty list of options",
    ),
    "non_positive_width": (
        GOOD.replace("{level: 4, inputs: [P5, P4]}", "{level: 4, inputs: [P5, P4], width: 0}"),
        "nodes.T4.width",
        r"expected a positive integer width >= 1, got 0",
    ),
    "bad_choice_option": (
        GOOD.replace(
            "inputs: [P3, P4, P5]\n",
            "inputs: [P3, P4, P5]\ndefaults: {fuse: {choice: [sum, add]}}\n",
        ),
        "defaults.fuse",
        r"expected one of sum, concat, .*got 'add'",
    ),
    "yaml_syntax": (
        GOOD.replace("{level: 4, inputs: [P5, P4]}", "{level: 4, inputs: [P5, P4]"),
        "line ",
        r"invalid YAML",
    ),
    "missing_key": (
        GOOD.replace("{level: 4, inputs: [P5, P4]}", "{inputs: [P5, P4]}"),
        "nodes.T4.level",
        r"missing required key",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_space_names_file_key_and_expectation(tmp_path, case):
    text, key, expected = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert key in msg, msg
    assert re.search(expected, msg), msg
    assert msg.count("\n") == 0  # one line


@pytest.mark.parametrize("case", ["unknown_input", "yaml_syntax", "cycle"])
def test_cli_prints_the_error_without_traceback(tmp_path, case):
    path = tmp_path / "bad.yaml"
    path.write_text(CASES[case][0])
    result = CliRunner().invoke(app, ["show", str(path)])
    assert result.exit_code == 1
    assert "error:" in result.output and str(path.name) in result.output
    assert "Traceback" not in result.output


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SpaceError, match="nope.yaml: cannot read the file"):
        load_space(tmp_path / "nope.yaml")


def test_architecture_file_must_be_fixed(tmp_path):
    path = tmp_path / "family.yaml"
    path.write_text(
        GOOD.replace("inputs: [P3, P4, P5]\n", "inputs: [P3, P4, P5]\nwidth: {choice: [32, 64]}\n")
    )
    with pytest.raises(SpaceError, match="expected a fixed architecture.*width"):
        load_architecture(path)


def test_repeat_needs_outputs_at_every_cell_level(tmp_path):
    path = tmp_path / "rep.yaml"
    path.write_text(
        GOOD.replace(
            "N5: {level: 5, inputs: [N4, P5], output: true}", "N5: {level: 5, inputs: [N4, P5]}"
        ).replace("inputs: [P3, P4, P5]\n", "inputs: [P3, P4, P5]\nrepeat: 2\n")
    )
    with pytest.raises(SpaceError, match="repeat: .*missing P5"):
        load_space(path)
