"""commands.config: --set KEY=VALUE parsing shared by the tool commands, and the ``extends`` of config files."""

from pathlib import Path

import pytest

from brainfm_lightning.commands.config import (
    ConfigurationError,
    command_line_model_keys,
    extended_configs,
    parse_set_overrides,
    with_extended_configs,
)


def test_splits_at_the_first_equals_sign():
    assert parse_set_overrides(["data.root=/a=b", "x="]) == [("data.root", "/a=b"), ("x", "")]


@pytest.mark.parametrize("item", ["novalue", "=1"])
def test_rejects_items_without_a_key_naming_them(item):
    with pytest.raises(ValueError, match=repr(item)):
        parse_set_overrides([item])


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_puts_each_fragment_before_its_file_recursively_and_leaves_the_rest(tmp_path):
    base = write(tmp_path / "trainer/base.yaml", "trainer: {max_epochs: 1}\n")
    cpu = write(tmp_path / "trainer/cpu.yaml", "trainer: {accelerator: cpu}\n")
    middle = write(tmp_path / "trainer/middle.yaml", "extends: [base.yaml, cpu.yaml]\ntrainer: {max_epochs: 2}\n")
    top = write(tmp_path / "finetune/top.yaml", "extends: ../trainer/middle.yaml\ntrainer: {max_epochs: 3}\n")
    other = write(tmp_path / "other.yaml", "extends: null\n")
    assert extended_configs(str(top))[-1] == str(top)
    assert [Path(p).resolve() for p in extended_configs(str(top))] == [base, cpu, middle, top]
    argv = ["fit", "--config", str(top), "--trainer.max_epochs", "4", "-c", str(other), f"--config={base}"]
    expanded = with_extended_configs(argv)
    configs = [Path(expanded[i + 1]).resolve() for i, item in enumerate(expanded) if item == "--config"]
    assert configs == [base, cpu, middle, top, other, base]
    assert expanded[0] == "fit" and expanded[expanded.index(str(top)) + 1:][:2] == ["--trainer.max_epochs", "4"]


def test_values_that_are_not_config_files_pass_through_for_jsonargparse(tmp_path):
    argv = ["fit", "--config", "{trainer: {max_epochs: 2}}", "--config", str(tmp_path / "nowhere.yaml"), "--config"]
    assert with_extended_configs(argv) == argv


@pytest.mark.parametrize(
    ("files", "message"),
    [({"top.yaml": "extends: missing.yaml\n"}, "top.yaml extends missing.yaml, but {root}/missing.yaml does not exist"),
     ({"top.yaml": "extends: a.yaml\n", "a.yaml": "extends: top.yaml\n"},
      "a.yaml extends top.yaml, which leads back to it: {root}/top.yaml -> {root}/a.yaml -> {root}/top.yaml"),
     ({"top.yaml": "extends: {trainer: 1}\n"}, "top.yaml: extends must be a path or a list of paths")],
)
def test_bad_extends_fail_naming_the_files(tmp_path, files, message):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigurationError) as error:
        with_extended_configs(["fit", "--config", str(tmp_path / "top.yaml")])
    assert message.format(root=tmp_path) in str(error.value)


def test_extends_on_the_command_line_is_refused_pointing_to_config():
    with pytest.raises(ConfigurationError, match="extends is a key of config files.*--config FRAGMENT"):
        with_extended_configs(["fit", "--extends", "fragment.yaml"])


def test_command_line_model_keys_drop_the_models_init_args_and_any_value():
    argv = ["test", "--config", "seg.yaml", "--model.sw_overlap", "0.6", "--model.init_args.head.init_args.stem=mean",
            "--data.root", "x", "--trainer.callbacks+=X", "--ckpt_path", "c.ckpt"]
    assert command_line_model_keys(argv) == ["sw_overlap", "head.init_args.stem"]
    assert command_line_model_keys([]) == []
