"""A fuzz harness (Hypothesis) over the commands' flags, config files, checkpoint files and dataset
folders. For every generated bad input: exit code 2, one line on stderr, no traceback, no hang, and
an existing study folder byte for byte unchanged (a new one never created).

Bad config values are derived from the config schema itself (each field's type and range), so a
new setting is fuzzed by being declared. Examples are derandomized: CI runs the same cases."""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import math
import signal
import struct
import sys
import typing
import zlib

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pruning import TrainConfig
from search import pick, report, run, train
from search.config._config import Budget, Constraints, ReportConfig, SearchSpace
from tests.conftest import REPO, TINY_LENET, cli, folder_hash, write_config

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HANG_S = 60


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S):
    def timeout(*_):
        raise TimeoutError(f"no answer within {seconds} s: a hang")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


CASES: dict[str, int] = {}  # generated cases per kind, printed at the end of the module (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def count_cases():
    yield
    print(f"\nfuzz cases run: {dict(CASES)}, total {sum(CASES.values())}")


def assert_refused(module, argv, capsys, study, new=None):
    """Exit 2, one line, no traceback; the study unchanged; a new folder never made."""
    kind = sys._getframe(1).f_code.co_name  # not inspect.stack(): it reads every frame's source (90 ms)
    CASES[kind] = CASES.get(kind, 0) + 1
    before = folder_hash(study)
    with no_hang():
        code, _, err = cli(module, argv, capsys)
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and err.strip(), (argv, err)
    assert "Traceback" not in err
    assert folder_hash(study) == before
    if new is not None:
        assert not (new / "journal.log").exists() and not (new / "baseline.pt").exists()


@pytest.fixture(scope="module")
def study(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("fuzz")
    config = write_config(root / "tiny.yaml", TINY_LENET)
    out = root / "out"
    assert run.main(["--model", "lenet5", "--config", str(config), "--budget", "smoke", "--out", str(out),
                     "--data-dir", str(REPO / "data"), "--quiet", "--trials", "3"]) == 0
    return root, config, out


def _args(config, out):
    return ["--model", "lenet5", "--config", str(config), "--budget", "smoke", "--out", str(out),
            "--data-dir", str(REPO / "data")]


# --- flags -----------------------------------------------------------------------------------------

NON_NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e400", "abc", "", " ", "0x10", "1,5", "½", "--", "None"])
BAD_FLAGS = {
    "--trials": st.one_of(NON_NUMBERS, st.sampled_from(["0", "-3", "1.5", "100001"])),
    "--workers": st.one_of(NON_NUMBERS, st.sampled_from(["0", "-1", "257"])),
    "--heartbeat-s": st.one_of(NON_NUMBERS, st.sampled_from(["0", "-5"])),
    "--max-concurrent": st.one_of(NON_NUMBERS, st.sampled_from(["0", "-1"])),
    "--seed": st.one_of(NON_NUMBERS, st.sampled_from(["-1", "2147483648", "1.5"])),
    "--max-size-mb": st.one_of(NON_NUMBERS, st.sampled_from(["0", "-1", "1e7"])),
    "--min-accuracy": st.one_of(NON_NUMBERS, st.sampled_from(["-0.1", "1.5", "90", "101"])),
    "--gpus-per-trial": st.one_of(NON_NUMBERS, st.sampled_from(["-1", "65"])),
    "--cpus-per-trial": st.one_of(NON_NUMBERS, st.sampled_from(["0", "-2"])),
    "--dataset": st.text(min_size=1, max_size=12).filter(lambda s: s not in ("fashion-mnist",)),
    "--objective": st.text(min_size=1, max_size=12),
    "--sampler": st.text(min_size=1, max_size=12),
    "--granularity": st.text(min_size=1, max_size=12),
    "--importance": st.text(min_size=1, max_size=12),
    "--device": st.text(min_size=1, max_size=12),
    "--backend": st.text(min_size=1, max_size=12),
    "--augment": st.text(min_size=1, max_size=12),
    "--budget": st.text(min_size=1, max_size=12).filter(lambda s: s != "smoke"),
    "--storage": st.sampled_from(["foo://bar", "sqlite:////nonexistent/dir/s.db", "postgresql://x@127.0.0.1:1/db",
                                  "mysql://", "://", "sqlite:///", "redis://localhost:1"]),
    "--from": st.sampled_from(["/nonexistent.pt", "/", "/dev/null", "/etc/passwd", "{study}", "{study}/journal.log"]),
    "--config": st.sampled_from(["/nonexistent.yaml", "/", "/dev/null", "/etc/passwd", "{study}/baseline.pt"]),
    "--out": st.sampled_from(["/dev/null", "/proc/version/x", "/etc/passwd", "{study}/baseline.pt/sub"]),
}
RUN_ONLY = {"--trials", "--workers", "--heartbeat-s", "--max-concurrent", "--max-size-mb", "--min-accuracy",
            "--gpus-per-trial", "--cpus-per-trial", "--objective", "--sampler", "--granularity", "--importance",
            "--backend", "--from"}
FLAG_CASES = st.sampled_from(sorted(BAD_FLAGS)).flatmap(lambda f: st.tuples(st.just(f), BAD_FLAGS[f]))


@settings(FUZZ, max_examples=300)
@given(case=FLAG_CASES, command=st.sampled_from(["run", "train", "report", "pick"]))
def test_bad_flags(study, capsys, case, command):
    root, config, out = study
    flag, value = case
    if flag in RUN_ONLY and command != "run" or flag in ("--seed", "--augment") and command in ("report", "pick"):
        command = "run"
    value = value.replace("{study}", str(out))
    module = {"run": run, "train": train, "report": report, "pick": pick}[command]
    argv = _args(config, out)
    if flag in ("--config", "--out"):  # replace the study's own
        i = argv.index(flag)
        del argv[i:i + 2]
    argv += ["--quiet"] * (command == "run") + [f"{flag}={value}"]
    if command == "pick":
        argv += ["--max-drop", "1", "--save", str(root / "p.pt")]
    if command == "train":
        argv += ["--epochs", "0.01"]
    assert_refused(module, argv, capsys, out)


# --- config files --------------------------------------------------------------------------------

SECTIONS = {"baseline": TrainConfig, "finetune": TrainConfig, "recovery": TrainConfig, "search": SearchSpace,
            "constraints": Constraints, "report": ReportConfig}


def _bad_values(cls, name: str) -> list:
    """Values a field must refuse: the wrong type, out of its range, not finite."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    hint = typing.get_type_hints(cls)[name]
    optional = typing.get_origin(hint) in (typing.Union, type(int | None)) and type(None) in typing.get_args(hint)
    base = typing.get_args(hint)[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) else hint
    meta, bad = f.metadata, [{"nested": 1}, "text"]
    if base in (int, float):
        bad += [True, [1, 2], math.nan, math.inf, -math.inf, 1e300 if "high" in meta or "below" in meta else "x"]
        if base is int:
            bad.append(1.5)
        for key, delta in (("low", -1), ("above", 0), ("high", 1), ("below", 0)):
            if key in meta:
                bad.append(meta[key] + delta if key in ("low", "high") else meta[key])
    elif base is bool:
        bad += [1, "yes", None]
    elif base is str:
        bad += [3, ["a"]] + (["not-a-choice"] if "choices" in meta else [])
    elif typing.get_origin(base) is tuple:
        bad += [0.5, ["x"], [math.nan], [-1.0] if "low" in meta or "choices" in meta else "x"]
    return [v for v in bad if v is not None or (base is bool and not optional)]  # None means unset where allowed


CONFIG_CASES = [(section, f.name, v) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
                for v in _bad_values(cls, f.name)]
CONFIG_CASES += [("budgets", f.name, v) for f in dataclasses.fields(Budget) for v in _bad_values(Budget, f.name)]
CONFIG_CASES += [("", k, v) for k, v in (("val_fraction", 0), ("val_fraction", 1.5), ("val_fraction", "x"),
                                          ("seed", -1), ("seed", 1.5), ("dataset", "imagenet"), ("augment", "rotate"),
                                          ("model", "alexnet"), ("budgets", {}),
                                          ("budgets", [1]), ("unknown_key", 1), ("search", [1]), ("baseline", 3))]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: f"{c[0]}.{c[1]}={c[2]!r}"[:60])
def test_bad_config_values(study, capsys, tmp_path_factory, case):
    root, _, out = study
    section, key, value = case
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_LENET.items()}
    if section == "budgets":
        config["budgets"] = {"smoke": {**config["budgets"]["smoke"], key: value}}
    elif section:
        config[section] = {**config.get(section, {}), key: value}
    else:
        config[key] = value
    new = tmp_path_factory.mktemp("cfg")
    path = new / "bad.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    for target in (out, new / "out"):
        argv = ["--model", "lenet5", "--config", str(path), "--budget", "smoke", "--out", str(target),
                "--data-dir", str(REPO / "data"), "--quiet", "--trials", "3"]
        assert_refused(run, argv, capsys, out, new=new / "out")


@settings(FUZZ, max_examples=100)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["a: &x [1]\nb: *x\n", "[" * 2000, "{" * 5000, "model: lenet5\nbudgets: 3\n",
                                       "a: &a [&b [&c [1,1],*c],*b]\nb: [*a,*a,*a,*a,*a,*a,*a,*a]\n",
                                       "!!python/object/apply:os.system ['touch /tmp/pwned']"])))
def test_garbage_config_files(study, capsys, tmp_path_factory, text):
    root, _, out = study
    new = tmp_path_factory.mktemp("garbage")
    path = new / "bad.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    argv = ["--model", "lenet5", "--config", str(path), "--budget", "smoke", "--out", str(new / "out"),
            "--data-dir", str(REPO / "data"), "--quiet"]
    assert_refused(run, argv, capsys, out, new=new / "out")


# --- checkpoint files ------------------------------------------------------------------------------

@st.composite
def damaged(draw, good: bytes):
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "random", "empty", "zip-of-junk"]))
    data = bytearray(good)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=4096))
    if kind == "empty":
        return b""
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", draw(st.binary(max_size=256)))
    return buffer.getvalue()


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_damaged_checkpoints(study, capsys, tmp_path_factory, data):
    root, config, out = study
    bad_bytes = data.draw(damaged((out / "baseline.pt").read_bytes()))
    new = tmp_path_factory.mktemp("ckpt")
    (new / "bad.pt").write_bytes(bad_bytes)
    assume(not _intact(new / "bad.pt"))  # e.g. bytes appended after the archive: the checkpoint is whole
    argv = _args(config, new / "out") + ["--quiet", "--from", str(new / "bad.pt")]
    assert_refused(run, argv, capsys, out, new=new / "out")


def _intact(path) -> bool:
    """Whether a mutated file still holds the very checkpoint (its checksum verifies)."""
    from pruning import CheckpointError, read_meta
    try:
        read_meta(path)
    except CheckpointError:
        return False
    return True


@st.composite
def forged(draw):
    """An edit a forger makes to a valid checkpoint, resealed with a fresh checksum: metadata that
    cannot describe the model (class and channel counts, preprocessing, baseline figures) or a
    tensor that lies about its size (a stride-0 view of up to 2^40 elements, left unsealed: hashing
    it is the allocation to avoid)."""
    kind = draw(st.sampled_from(["classes", "channels", "preprocessing", "baseline", "stride", "shape"]))
    if kind == "classes":
        return kind, draw(st.one_of(st.integers(-10, 0), st.integers(11, 10 ** 5), st.integers(10 ** 5, 10 ** 12)))
    if kind == "channels":
        return kind, draw(st.one_of(st.integers(-10, 0), st.integers(2, 10 ** 9)))
    if kind == "preprocessing":
        return kind, draw(st.sampled_from([
            ("std", [draw(st.floats(max_value=0.0, allow_nan=False))]), ("std", []), ("mean", [0.1, 0.2, 0.3]),
            ("channels", draw(st.integers(4, 10 ** 6))), ("input_size", draw(st.integers(-10 ** 9, 0))),
            ("input_size", draw(st.integers(4097, 10 ** 12))), ("pad", draw(st.integers(-100, -1))),
            ("resize", draw(st.text(max_size=20).filter(lambda t: t not in ("none", "bilinear", "bicubic")))),
            ("class_names", draw(st.lists(st.text(min_size=1, max_size=5), min_size=0, max_size=9).filter(len))),
            ("resize_size", draw(st.integers(-10, 31)))]))
    if kind == "baseline":
        return kind, draw(st.sampled_from([("val_accuracy", draw(st.floats(1.01, 1e300))),
                                           ("params", draw(st.integers(-10 ** 9, -1))),
                                           ("size_mb", -draw(st.floats(0.01, 1e9)))]))
    return kind, draw(st.integers(2, 2 ** 40) if kind == "stride" else st.integers(2, 64))


PRE_OK = dict(channels=1, input_size=32, pad=2, resize="none", mean=[0.3], std=[0.35],
              class_names=[str(i) for i in range(10)])


@pytest.mark.slow
@settings(FUZZ, max_examples=80)
@given(edit=forged())
def test_forged_checkpoints(study, capsys, tmp_path_factory, edit):
    """Resealed checkpoints that lie: refused in one line before anything large is allocated."""
    import torch

    from pruning import checksum
    root, config, out = study
    raw = torch.load(out / "baseline.pt", weights_only=True)
    kind, value = edit
    meta, state = raw["metadata"], raw["state_dict"]
    if kind == "classes":
        meta["num_classes"] = value
    elif kind == "channels":
        meta["in_channels"] = value
    elif kind == "preprocessing":
        meta["preprocessing"] = {**PRE_OK, value[0]: value[1]}
    elif kind == "baseline":
        meta["baseline"] = {"params": 1, "macs": 1, "size_mb": 0.2, "val_accuracy": 0.9, value[0]: value[1]}
    else:
        name = sorted(k for k in state if k.endswith("weight"))[0]
        t = state[name]
        if kind == "stride":
            state[name] = torch.zeros(1).expand(value)
        else:
            state[name] = torch.zeros(t.shape[0] * value, *t.shape[1:])
    if kind != "stride":
        raw["checksum"] = checksum(state, raw["history"], raw["plan"], meta)
    new = tmp_path_factory.mktemp("forged")
    torch.save(raw, new / "forged.pt")
    argv = _args(config, new / "out") + ["--quiet", "--from", str(new / "forged.pt")]
    assert_refused(run, argv, capsys, out, new=new / "out")


# --- dataset folders -------------------------------------------------------------------------------

def _idx(array_bytes: bytes, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + array_bytes


@st.composite
def broken_mnist(draw):
    """Four IDX files of which at least one is damaged (header, length, gzip, labels)."""
    n = draw(st.integers(2, 12))
    files = {
        "train-images-idx3-ubyte": _idx(bytes(n * 784), (n, 28, 28)),
        "train-labels-idx1-ubyte": _idx(bytes(n), (n,)),
        "t10k-images-idx3-ubyte": _idx(bytes(2 * 784), (2, 28, 28)),
        "t10k-labels-idx1-ubyte": _idx(bytes(2), (2,)),
    }
    victim = draw(st.sampled_from(sorted(files)))
    how = draw(st.sampled_from(["truncate", "header", "garbage", "labels", "count", "gzip-cut"]))
    raw = files[victim]
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "header":
        raw = draw(st.binary(min_size=4, max_size=4)).replace(b"\x00\x00\x08", b"\x00\x01\x08") + raw[4:]
    elif how == "garbage":
        raw = draw(st.binary(max_size=300))
    elif how == "labels" and "labels" in victim:
        raw = raw[:-1] + bytes([draw(st.integers(10, 255))])
    elif how == "count":
        raw = raw[:4] + struct.pack(">I", draw(st.integers(10_000, 2**31))) + raw[8:]
    files[victim] = raw
    out = {k: gzip.compress(v) for k, v in files.items()}
    if how == "gzip-cut" or (how == "labels" and "labels" not in victim):
        out[victim] = out[victim][: max(1, len(out[victim]) // 2)]
    return out


@FUZZ
@given(files=broken_mnist())
def test_broken_idx_datasets(study, capsys, tmp_path_factory, files):
    root, config, out = study
    folder = tmp_path_factory.mktemp("mnist")
    for name, content in files.items():
        (folder / f"{name}.gz").write_bytes(content)
    argv = ["--model", "lenet5", "--config", str(config), "--budget", "smoke", "--dataset", "mnist",
            "--data-dir", str(folder), "--out", str(folder / "out"), "--quiet", "--no-download"]
    assert_refused(run, argv, capsys, out, new=folder / "out")


@st.composite
def broken_image_tree(draw):
    """An image folder where at least one file is not a readable, sane image."""
    from io import BytesIO

    from PIL import Image

    def png(w: int, h: int) -> bytes:
        buffer = BytesIO()
        Image.new("RGB", (w, h), (draw(st.integers(0, 255)), 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    good = png(8, 8)
    bomb = bytearray(png(1, 1))
    bomb[16:24] = struct.pack(">II", 200_000, 200_000)  # a header claiming 40 gigapixels
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))  # resealed: PIL reads it as a real header
    bad = draw(st.sampled_from([b"", b"not an image", good[: len(good) // 2], bytes(bomb),
                                draw(st.binary(min_size=1, max_size=200))]))
    tree = {f"train/{c}/{i}.png": good for c in ("a", "b") for i in range(2)}
    tree.update({f"test/{c}/0.png": good for c in ("a", "b")})
    tree[draw(st.sampled_from(sorted(tree)))] = bad
    return tree


@FUZZ
@given(tree=broken_image_tree())
def test_broken_image_folders(study, capsys, tmp_path_factory, tree):
    root, config, out = study
    folder = tmp_path_factory.mktemp("images")
    for name, content in tree.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    argv = ["--model", "lenet5", "--config", str(config), "--budget", "smoke", "--dataset", "imagefolder",
            "--data-dir", str(folder), "--out", str(folder / "out"), "--quiet"]
    assert_refused(run, argv, capsys, out, new=folder / "out")


# --- the families of issue 41's audit: special files, nested JSON, weights, the user's exits --------

def _special(kind: str, path) -> None:
    import os
    import socket

    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        os.symlink("/dev/zero", path)
    else:  # a Unix socket left by a server
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "socket"])
@pytest.mark.parametrize("where", ["--weights", "--config", "--from", "image, cached", "image, streamed"])
def test_special_files(study, capsys, tmp_path_factory, where, kind):
    """A FIFO, a link to /dev/zero or a socket wherever a file is read: refused by its type before it
    is opened (reading one waited or read forever)."""
    root, config, out = study
    new = tmp_path_factory.mktemp("special")
    argv = _args(config, new / "out") + ["--quiet"]
    if where.startswith("image"):
        from PIL import Image

        for c in ("a", "b"):
            (new / "images" / "train" / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(new / "images" / "train" / c / f"{i}.png")
        _special(kind, new / "images" / "train" / "b" / "odd.png")
        argv += ["--dataset", "imagefolder", "--data-dir", str(new / "images")]
        argv += ["--cache-mb", "0"] if where.endswith("streamed") else []
    else:
        _special(kind, new / "odd")
        if where == "--config":  # in place of the study's config
            del argv[argv.index("--config"):argv.index("--config") + 2]
        argv += [where, str(new / "odd")]
    assert_refused(run, argv, capsys, out, new=new / "out")


@FUZZ
@given(depth=st.integers(9, 30_000), opener=st.sampled_from(["[", '{"a": ', "[1, "]))
def test_nested_model_kwargs(study, capsys, tmp_path_factory, depth, opener):
    """--model-kwargs nested far deeper than any builder takes (json's parser recursed to death)."""
    root, config, out = study
    closer = {"[": "]", '{"a": ': "}", "[1, ": "]"}[opener]
    text = '{"k": ' + opener * depth + "0" + closer * depth + "}"
    new = tmp_path_factory.mktemp("nested")
    argv = _args(config, new / "out") + ["--quiet", "--model-kwargs", text]
    argv[argv.index("--model") + 1] = "torchvision:resnet18"
    assert_refused(run, argv, capsys, out, new=new / "out")


@st.composite
def odd_weights(draw):
    """A lenet5 state dict with one tensor of another layout or with non-finite values, or its
    archive with flipped bytes in a record or deflated records."""
    kind = draw(st.sampled_from(["meta", "sparse_coo", "sparse_csr", "nan", "inf", "stride", "flip", "deflate"]))
    return kind, draw(st.integers(0, 2 ** 31))


@pytest.mark.slow
@settings(FUZZ, max_examples=60)
@given(edit=odd_weights())
def test_weights_files(study, capsys, tmp_path_factory, edit):
    """--weights that are not what torch.save wrote from a trained model: one line each."""
    import random
    import zipfile

    import torch

    root, config, out = study
    kind, seed = edit
    rng = random.Random(seed)
    state = torch.load(out / "baseline.pt", weights_only=True)["state_dict"]
    name = rng.choice(sorted(k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2))
    t = state[name]
    if kind in ("nan", "inf"):
        t = t.clone().flatten()
        t[rng.randrange(t.numel())] = float("nan") if kind == "nan" else rng.choice([1, -1]) * float("inf")
        state[name] = t.view(state[name].shape)
    elif kind != "flip" and kind != "deflate":
        state[name] = {"meta": lambda: torch.empty(t.shape, device="meta"), "sparse_coo": t.to_sparse,
                       "sparse_csr": lambda: t.flatten(1).to_sparse_csr(),
                       "stride": lambda: torch.zeros(1).expand(2 ** rng.randrange(20, 40))}[kind]()
    new = tmp_path_factory.mktemp("weights")
    path = new / "w.pt"
    torch.save(state, path)
    if kind == "flip":
        with zipfile.ZipFile(path) as archive:
            record = rng.choice([i for i in archive.infolist() if "/data/" in i.filename and i.file_size])
        raw = bytearray(path.read_bytes())
        start = record.header_offset + 30 + int.from_bytes(raw[record.header_offset + 26:record.header_offset + 28],
                                                           "little") \
            + int.from_bytes(raw[record.header_offset + 28:record.header_offset + 30], "little")
        for _ in range(rng.randrange(1, 200)):
            raw[start + rng.randrange(record.file_size)] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(raw))
    elif kind == "deflate":
        good = path.read_bytes()
        (new / "good.pt").write_bytes(good)
        with zipfile.ZipFile(new / "good.pt") as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
    argv = _args(config, new / "out") + ["--quiet", "--weights", str(path)]
    assert_refused(run, argv, capsys, out, new=new / "out")


EXIT_NET = '''
import sys
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(4, num_classes)

    def forward(self, x):
        {forward}
        return self.fc(self.pool(self.conv(x)).flatten(1))


def build(num_classes):
    {builder}
    return Net(num_classes)
'''


@pytest.mark.slow
@FUZZ
@given(where=st.sampled_from(["import", "builder", "forward"]),
       how=st.sampled_from(["sys.exit({code})", "raise SystemExit({code})", "exit({code})", "quit({code})"]),
       code=st.sampled_from(["0", "", "1", "2", "None", "'done'"]))
def test_user_code_exits(study, capsys, tmp_path_factory, where, how, code):
    """The user's code ending the process its own way (os._exit aside: see docs/reliability.md):
    never exit 0, always one line of the user's code."""
    root, config, out = study
    call = how.format(code=code)
    text = EXIT_NET.format(forward=call if where == "forward" else "pass",
                           builder=call if where == "builder" else "pass")
    new = tmp_path_factory.mktemp("exits")
    (new / "nets.py").write_text((call + "\n" if where == "import" else "") + text)
    argv = _args(config, new / "out") + ["--quiet", "--image-size", "32"]
    argv[argv.index("--model") + 1] = f"{new / 'nets.py'}:build"
    assert_refused(run, argv, capsys, out, new=new / "out")
