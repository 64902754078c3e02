"""Bad input: one line on stderr, exit code 2, and the study already on disk left as it was."""
from __future__ import annotations

import subprocess

import pytest
import torch

from models import create_model
from search import pick, report, run, train
from tests.conftest import PYTHON, REPO, TINY_LENET, base_args, cli, folder_hash, merged, smoke_budget, write_config


@pytest.fixture(scope="module")
def study(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("bad")
    config = write_config(root / "tiny.yaml", TINY_LENET)
    out = root / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "3"]) == 0
    foreign = root / "foreign.pt"
    torch.save(create_model("lenet5", in_channels=1).state_dict(), foreign)
    broken = root / "broken.yaml"
    broken.write_text("search: {granularity: unit\nbudgets: [")
    files = {
        "foreign": foreign, "broken": broken,
        "unknown": write_config(root / "unknown.yaml", merged(TINY_LENET, search={"granularty": "unit"})),
        "zero": write_config(root / "zero.yaml", merged(TINY_LENET, budgets=smoke_budget(finetune_steps=0))),
        "type": write_config(root / "type.yaml", {**TINY_LENET, "val_fraction": "a tenth"}),
        "ratios": write_config(root / "ratios.yaml", merged(TINY_LENET, search={"reference_ratios": 0.5})),
        "lr": write_config(root / "lr.yaml", merged(TINY_LENET, finetune={"lr": "abc"})),
        "stage": write_config(root / "stage.yaml", merged(TINY_LENET, search={"granularity": "stage"})),
    }
    return root, config, out, files


BAD_RUNS = {
    "unknown dataset": (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    "unknown objective": (["--objective", "speed"], "invalid choice: 'speed'"),
    "unknown sampler": (["--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    "unknown granularity": (["--granularity", "layer"], "invalid choice: 'layer'"),
    "unknown budget": (["--budget", "huge"], "has no budget 'huge'"),
    "no trials": (["--trials", "0"], "must be >= 1"),
    "nan trials": (["--trials", "nan"], "expected a whole number"),
    "negative size budget": (["--max-size-mb", "-1"], "must be > 0"),
    "infinite size budget": (["--max-size-mb", "inf"], "expected a finite number"),
    "accuracy in percent": (["--min-accuracy", "90"], "looks like a percentage"),
    "unreachable storage": (["--storage", "sqlite:////nonexistent/dir/study.db"], "cannot open storage"),
    "refused postgres": (["--storage", "postgresql://nobody@127.0.0.1:9/none"], "connection"),
    "foreign --from": (["--from", "{foreign}"], "not a checkpoint of this project"),
    "missing --from": (["--from", "{root}/nothing.pt"], "no checkpoint at"),
    "broken config": (["--config", "{broken}"], "is not valid YAML"),
    "unknown config key": (["--config", "{unknown}"], "unknown key config.search.granularty"),
    "missing config": (["--config", "{root}/none.yaml"], "cannot read config"),
    "zero fine-tune steps": (["--config", "{zero}"], "finetune_steps must be >= 1"),
    "wrong value type": (["--config", "{type}"], "val_fraction must be a number"),
    "text learning rate": (["--config", "{lr}"], "finetune.lr must be a number"),
    "scalar reference ratios": (["--config", "{ratios}"], "reference_ratios must be a list"),
    "stage granularity without stages": (["--config", "{stage}"], "lenet5 has no stage grouping"),
    "changed objective on resume": (["--objective", "macs"], "search.objective: the study has 'size'"),
    "objectives without accuracy": (["--objectives", "size,latency"], "expected accuracy then one or more"),
    "objectives and objective": (["--objectives", "accuracy,size", "--objective", "macs"],
                                 "give --objectives or --objective, not both"),
    "a third objective on resume": (["--objectives", "accuracy,size,latency"],
                                    "search.extra_objectives: the study has [], this run ['latency']"),
    "changed granularity on resume": (["--granularity", "global"], "search.granularity: the study has 'unit'"),
    "bad ray resources": (["--backend", "ray", "--cpus-per-trial", "0"], "must be > 0"),
    "workers with ray": (["--backend", "ray", "--workers", "2"], "--workers is for the optuna backend"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_run_is_one_line_and_leaves_the_study(study, case, capsys):
    root, config, out, files = study
    extra, message = BAD_RUNS[case]
    extra = [a.format(root=root, **files) for a in extra]
    args = base_args(config, out) + ["--quiet"] + extra
    if "--config" in extra:  # the bad config replaces the study's
        i = args.index("--config")
        del args[i:i + 2]
    before = folder_hash(out)
    code, stdout, err = cli(run, args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert folder_hash(out) == before


@pytest.mark.slow
def test_unknown_model_from_the_shell_has_no_traceback(study):
    result = subprocess.run([PYTHON, "-m", "search.run", "--model", "alexnet"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown model 'alexnet' (did you mean torchvision:alexnet" \
        in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_foreign_from_in_the_shell(study):
    root, config, out, files = study
    before = folder_hash(out)
    result = subprocess.run([PYTHON, "-m", "search.run"] + base_args(config, root / "other") +
                            ["--from", str(files["foreign"])], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "not a checkpoint" in result.stderr
    assert folder_hash(out) == before


def test_foreign_from_for_a_new_study(study, tmp_path, capsys):
    root, config, _, files = study
    code, _, err = cli(run, base_args(config, tmp_path / "new") + ["--quiet", "--from", str(files["foreign"])], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a checkpoint of this project" in err


def test_train_with_unknown_dataset(capsys):
    code, _, err = cli(train, ["--model", "lenet5", "--dataset", "svhn"], capsys)
    assert code == 2 and "invalid choice: 'svhn'" in err and err.count("\n") == 1


def test_report_and_pick_without_a_study(tmp_path, capsys):
    for module, extra in ((report, []), (pick, ["--max-drop", "1", "--save", str(tmp_path / "p.pt")])):
        code, _, err = cli(module, ["--model", "lenet5", "--out", str(tmp_path / "none")] + extra, capsys)
        assert code == 2 and "no study in" in err and err.count("\n") == 1
    assert not (tmp_path / "none").exists()


def test_resume_from_another_base_is_refused(study, capsys):
    root, config, out, _ = study
    before = folder_hash(out)
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--from", str(out / "baseline.pt")], capsys)
    assert code == 2 and "prunes from 'baseline'" in err
    assert folder_hash(out) == before


def test_train_refuses_to_replace_a_studys_baseline(study, capsys):
    root, config, out, _ = study
    before = folder_hash(out)
    code, _, err = cli(train, base_args(config, out) + ["--epochs", "1"], capsys)
    assert code == 2 and "holds a study pruned from its baseline" in err
    assert folder_hash(out) == before


@pytest.mark.parametrize("target", ["baseline.pt", "journal.log", "report.md", "artifacts", "config.resolved.yaml"])
def test_pick_refuses_to_overwrite_the_study(study, capsys, target):
    root, config, out, _ = study
    before = folder_hash(out)
    code, _, err = cli(pick, base_args(config, out) + ["--max-drop", "100", "--save", str(out / target)], capsys)
    assert code == 2 and "would overwrite the study's own files" in err
    assert folder_hash(out) == before


def test_endless_failures_stop_with_one_line(tmp_path, capsys, monkeypatch, fashion_mnist):
    import search.trial._objective as objective
    from pruning import TrainingDiverged

    def always_diverges(model, data, cfg, **kw):
        raise TrainingDiverged("loss became nan at step 1 of finetune")

    monkeypatch.setattr(objective, "train", always_diverges)
    config = write_config(tmp_path / "tiny.yaml", merged(TINY_LENET, search={"references": []}))
    code, _, err = cli(run, base_args(config, tmp_path / "out") + ["--quiet", "--trials", "20"], capsys)
    assert code == 2 and err.count("\n") == 1 and "5 trials in a row failed (last: TrainingDiverged" in err


@pytest.mark.parametrize("name, extra, match", [
    ("baseline.pt", [], "would overwrite the study's own files"),            # another study's pinned baseline
    ("report.pt", ["--export", "onnx"], "would overwrite the study's own files"),  # its report.json
    ("notes.pt", [], "exists; pass --force"),                                 # any existing file
    ("notes.pt", ["--export", "onnx"], "exists; pass --force"),
])
def test_pick_never_overwrites_another_study_or_an_existing_file(study, tmp_path, capsys, name, extra, match):
    import optuna
    root, config, out, _ = study
    other = tmp_path / "B"  # another study folder: a journal, its baseline, its report
    other.mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(other / "journal.log")))
    optuna.create_study(storage=storage, study_name="b")
    for own in ("baseline.pt", "report.json", "notes.pt", "notes.json"):
        (other / own).write_bytes(b"B's own")
    before = folder_hash(other)
    code, _, err = cli(pick, base_args(config, out) + ["--max-drop", "100", "--save", str(other / name), *extra],
                       capsys)
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert folder_hash(other) == before


def test_pick_force_replaces_an_existing_file_but_never_the_pinned_start(study, tmp_path, capsys):
    from search.config import UsageError
    from search.storage import check_targets
    root, config, out, files = study
    existing = tmp_path / "p.pt"
    existing.write_bytes(b"old")
    code, _, err = cli(pick, base_args(config, out) + ["--max-drop", "100", "--save", str(existing), "--force"], capsys)
    assert code == 0, err
    assert existing.read_bytes() != b"old"
    with pytest.raises(UsageError, match="start checkpoint a study is pinned to"):
        check_targets((files["foreign"],), "--save", force=True, pinned=(str(files["foreign"]),))


def test_export_refuses_an_existing_sidecar_before_loading(tmp_path, capsys):
    from search import export
    (tmp_path / "package.json").write_text('{"name": "unrelated"}')
    code, _, err = cli(export, ["--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "package.onnx")], capsys)
    assert code == 2 and err.count("\n") == 1 and "package.json exists; pass --force" in err, err
    assert (tmp_path / "package.json").read_text() == '{"name": "unrelated"}'


@pytest.mark.parametrize("extra, match", [
    ("seed: " + "9" * 5000, "an integer of 5,000 digits"),             # PyYAML's int: a traceback before
    ("seed: 1" + "0" * 400, "an integer of 401 digits"),               # OverflowError in math.isfinite before
    ("seed: 1\nseed: 2", "key 'seed' is given twice at line"),         # the last value was silently taken
    ("dataset: " + "x" * 900_000, "characters cut"),                    # a 900 KB value echoed in full
])
def test_hostile_config_values_are_one_short_line(extra, match, tmp_path, capsys):
    import yaml
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY_LENET.items() if k != "dataset" or "dataset:" not in extra})
                      + extra + "\n")
    code, _, err = cli(run, base_args(config, tmp_path / "out") + ["--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and match in err and len(err) < 1000, err[:2000]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, match", [
    ("--data-dir", "FILE", "is a file, not a folder"),   # was silently ignored (exit 0)
    ("--out", "", "argument --out: is empty"),           # started a full study in the default folder
    ("--from", "", "argument --from: is empty"),
])
def test_empty_or_wrong_kind_paths_are_refused(flag, value, match, tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default study folder would appear here
    if value == "FILE":
        value = str(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("not a folder")
    argv = ["--model", "lenet5", "--config", str(tiny_config), "--budget", "smoke", "--quiet"]
    if flag != "--out":
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = cli(run, argv + [flag, value], capsys)
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "studies").exists()


def test_a_read_only_study_can_be_picked_from(study, tmp_path, capsys):
    """A study shared on a read-only mount: the journal check took a write lock and failed."""
    root, config, out, _ = study
    mounted = tmp_path / "ro"
    mounted.mkdir()
    if subprocess.run(["mount", "--bind", str(out), str(mounted)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts are not permitted here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)], capture_output=True).returncode != 0:
            pytest.skip("a read-only remount is not permitted here")
        code, stdout, err = cli(pick, base_args(config, mounted) + ["--max-drop", "100", "--save",
                                                                    str(tmp_path / "p.pt")], capsys)
        assert code == 0, err
        assert (tmp_path / "p.pt").exists() and "trial" in stdout
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True)


@pytest.mark.parametrize("payload", ["module", "state_dict"])
def test_a_foreign_from_file_is_one_plain_line_and_makes_no_folder(payload, tmp_path, tiny_config, capsys):
    model = create_model("lenet5", in_channels=1)
    foreign = tmp_path / "foreign.pt"
    torch.save(model if payload == "module" else model.state_dict(), foreign)  # a pickled nn.Module, or bare weights
    code, _, err = cli(run, base_args(tiny_config, tmp_path / "out") + ["--quiet", "--from", str(foreign)], capsys)
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err  # the torch message carried ANSI escapes
    assert err[:-1].isprintable() and not (tmp_path / "out").exists()


def _odd_weights(kind: str, path):
    """A --weights file of one kind the audit of issue 41 found hanging, crashing or accepted."""
    import os
    import zipfile

    state = create_model("lenet5", in_channels=1).state_dict()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        os.symlink("/dev/zero", path)
    elif kind in ("meta", "sparse", "nan"):
        like = state["fc1.weight"]
        state["fc1.weight"] = {"meta": lambda: torch.empty(like.shape, device="meta"), "sparse": like.to_sparse,
                               "nan": lambda: torch.full_like(like, float("nan"))}[kind]()
        torch.save(state, path)
    elif kind == "registry module":
        torch.save(create_model("lenet5", in_channels=1), path)
    elif kind == "flipped":  # bytes changed after torch.save wrote the CRC: a damaged copy
        torch.save(state, path)
        raw, tensor = path.read_bytes(), state["conv1.weight"].numpy().tobytes()
        at = raw.index(tensor)
        path.write_bytes(raw[:at] + bytes(b ^ 0x5A for b in tensor[:200]) + raw[at + 200:])
    elif kind == "bomb":  # one record deflated from 64 MB of zeros to a few KB
        torch.save(state, path.with_suffix(".good"))
        with zipfile.ZipFile(path.with_suffix(".good")) as src, \
                zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, bytes(64 << 20) if info.filename.endswith("data/0") else src.read(info))
    return path


WEIGHTS_CASES = {
    "fifo": "is a named pipe (FIFO), not a weights file",
    "/dev/zero": "is a character device, not a weights file",
    "meta": "fc1.weight is a meta tensor",
    "sparse": "fc1.weight is a sparse_coo tensor",
    "nan": "fc1.weight holds NaN or infinite values",
    "registry module": "save its weights instead: torch.save(model.state_dict()",
    "flipped": "is damaged (Bad CRC-32",
    "bomb": "has compressed records",
}


@pytest.mark.parametrize("kind", list(WEIGHTS_CASES))
def test_odd_weights_are_one_line_with_no_hang_and_no_folder(kind, tmp_path, tiny_config, capsys):
    """Issue 41 items 2-5 and 8 through the command: a FIFO or /dev/zero used to hang, meta and sparse
    tensors raised tracebacks, a bomb was inflated, flipped bytes were accepted, NaN weights (even
    with --accept-baseline, which then left a journal behind) were called chance level."""
    from tests.search.test_fuzz import no_hang

    weights = _odd_weights(kind, tmp_path / "w.pt")
    with no_hang(120):
        code, _, err = cli(run, base_args(tiny_config, tmp_path / "out") +
                           ["--quiet", "--weights", str(weights), "--accept-baseline"], capsys)
    assert code == 2 and err.count("\n") == 1 and WEIGHTS_CASES[kind] in err, err
    assert "chance level" not in err and not (tmp_path / "out").exists()


NET = '''
import os
import sys
from collections import namedtuple

from torch import nn

Outputs = namedtuple("Outputs", ["logits", "aux_logits"])  # what torchvision's GoogLeNet returns in training


class Net(nn.Module):
    def __init__(self, num_classes, odd):
        super().__init__()
        self.odd = odd
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(4, num_classes)

    def forward(self, x):
        logits = self.fc(self.pool(self.conv(x)).flatten(1))
        if self.training and self.odd == "exit":
            sys.exit(0)
        return Outputs(logits, logits) if self.training and self.odd == "tuple" else logits


def build(num_classes, odd="none"):
    if odd == "builder exit":
        sys.exit(0)
    if odd == "builder os._exit":
        os._exit(0)
    return Net(num_classes, odd)
'''
USER_CODE_CASES = {
    "exit at import": ("import sys\nsys.exit(0)\n" + NET, "none", "called sys.exit(0) while importing"),
    "exit in the builder": (NET, "builder exit", "called sys.exit(0) while building the model"),
    "os._exit in the builder": (NET, "builder os._exit", "called os._exit(0) while building the model"),
    "exit in forward": (NET, "exit", "your code called sys.exit(0) at"),
    "logits and auxiliary logits": (NET, "tuple", "returns Outputs in training mode, not one tensor of logits"),
}


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("case", list(USER_CODE_CASES))
def test_users_code_never_decides_the_exit_status(case, tmp_path, tiny_config):
    """Issue 41 items 3 and 6: sys.exit(0) / os._exit(0) in the user's code ended the command with 0
    and no output; a forward returning (logits, aux) was a TypeError in the loss. Each is now one
    line, exit 2, nothing written. (A subprocess: os._exit would end pytest itself.)"""
    code, odd, match = USER_CODE_CASES[case]
    (tmp_path / "nets.py").write_text(code)
    proc = subprocess.run([PYTHON, "-m", "search.run", *base_args(tiny_config, tmp_path / "out",
                                                                 model=f"{tmp_path / 'nets.py'}:build"),
                           "--model-kwargs", f'{{"odd": "{odd}"}}', "--image-size", "32", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and match in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_torchvisions_googlenet_with_auxiliary_heads_is_told_to_drop_them():
    import torchvision

    from search.config import UsageError
    from search.trial._context import check_training_output

    model = torchvision.models.googlenet(num_classes=4, aux_logits=True, init_weights=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UsageError, match="returns GoogLeNetOutputs in training mode.*aux_logits=False"):
        check_training_output(model, 3, 64, "nets.py:build")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm statistics kept


@pytest.mark.parametrize("depth, match", [(5000, "--model-kwargs: is nested too deeply"),
                                          (40, "model kwargs are nested deeper than 8 levels")])
def test_deeply_nested_model_kwargs_are_one_line(depth, match, tmp_path, tiny_config, capsys):
    deep = '{"a": ' + "[" * depth + "]" * depth + "}"
    code, _, err = cli(run, base_args(tiny_config, tmp_path / "out", model="torchvision:resnet18") +
                       ["--model-kwargs", deep, "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "out").exists()


def test_a_one_channel_model_on_rgb_data_is_not_given_imagenets_statistics(tmp_path):
    """A 1-channel model of the user's code took ImageNet's 3-value mean/std as its default and was
    refused with a mean/std message; the dataset's own statistics apply, and a --mean of the wrong
    length is told the channel count."""
    from search.config import ConfigError, load_config
    from search.trial._context import image_spec

    (tmp_path / "nets.py").write_text(NET)
    model = f"{tmp_path / 'nets.py'}:build"
    spec = image_spec(load_config(model, overrides={}))
    assert spec.channels == 1 and spec.mean is None and spec.std is None
    with pytest.raises(ConfigError, match="takes 1-channel images but --mean/--std give 3 value"):
        image_spec(load_config(model, overrides={"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}))


@pytest.mark.parametrize("how", ["directly", "through a linked folder", "in a subfolder"])
def test_pick_never_writes_a_new_file_into_another_studys_folder(study, tmp_path, capsys, how):
    """Issue 41 item 7: only the study's own files were refused; a new file went in, exit 0."""
    import os

    root, config, out, _ = study
    other = tmp_path / "B"
    other.mkdir()
    (other / "journal.log").write_bytes(b"")  # another study's folder (its journal is all it takes)
    (other / "sub").mkdir()
    os.symlink(other, tmp_path / "link")
    target = {"directly": other / "picked.pt", "through a linked folder": tmp_path / "link" / "picked.pt",
              "in a subfolder": other / "sub" / "picked.pt"}[how]
    before = folder_hash(other)
    code, _, err = cli(pick, base_args(config, out) + ["--max-drop", "100", "--save", str(target)], capsys)
    assert code == 2 and err.count("\n") == 1 and "the folder of another study" in err, err
    assert folder_hash(other) == before and sorted(p.name for p in other.rglob("*")) == ["journal.log", "sub"]


def test_pick_may_save_inside_its_own_study_folder(study, tmp_path, capsys):
    root, config, out, _ = study
    save = out / "picks" / "p.pt"
    code, _, err = cli(pick, base_args(config, out) + ["--max-drop", "100", "--save", str(save)], capsys)
    assert code == 0 and save.exists(), err
    save.unlink()
    save.parent.rmdir()


@pytest.mark.parametrize("command", [run, train])
def test_out_on_a_folder_of_other_files_is_refused(command, tmp_path, tiny_config, capsys):
    """Issue 41 item 8: the study's journal, baseline and reports were mixed into the user's files."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    code, _, err = cli(command, base_args(tiny_config, mine) + ["--quiet"] * (command is run), capsys)
    assert code == 2 and err.count("\n") == 1 and "holds other files (thesis.tex) and no study" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("command", [pick, report])
def test_the_flags_run_took_are_accepted_by_the_commands_that_read_the_study(study, tmp_path, capsys, command):
    """Issue #40 item 8: the flags given to search.run, given again to a command that reads the study,
    are accepted when they agree with it (--image-size 32 is the registry's own size), and refused in one
    line naming what the study has when they do not; nothing is written then."""
    root, config, out, _ = study
    extra = ["--max-drop", "100", "--save", str(tmp_path / "p.pt")] if command is pick else []
    same = ["--image-size", "32", "--seed", "0", "--augment", "auto"]
    code, _, err = cli(command, base_args(config, out) + same + extra, capsys)
    assert code == 0, err
    before = folder_hash(out)
    for flags, match in ((["--image-size", "64"], "--image-size 64: the study in"),
                         (["--seed", "3"], "was made with --seed 0"),
                         (["--mean", "0.5", "--std", "0.5"], "--mean 0.5: the study in")):
        save = ["--max-drop", "100", "--save", str(tmp_path / "q.pt")] if command is pick else []
        code, _, err = cli(command, base_args(config, out) + flags + save, capsys)
        assert code == 2 and err.count("\n") == 1 and match in err, err
        assert "takes its settings from it" in err
    assert folder_hash(out) == before and not (tmp_path / "q.pt").exists()
