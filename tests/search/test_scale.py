"""Scaling out with real components: several worker processes on one journal, Ray Tune, PostgreSQL."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from search.storage import TrialRecord
from tests.conftest import (FINISHED, PYTHON, REPO, TINY_LENET, base_args, check_finished, merged, one_thread_each,
                            slow_config, study_of, write_config)

pytestmark = pytest.mark.slow



def _run(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _untouched_home(home: Path) -> dict:
    """An environment whose HOME is an empty folder, so a test sees every file a command leaves there."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "RAY_AUTH", "MPLCONFIGDIR",
                                                                    "ORT_DISABLE_TELEMETRY"))}
    return {**env, "HOME": str(home)}


def test_workers_flag_shares_one_journal(tmp_path, fashion_mnist):
    out = tmp_path / "out"
    config = slow_config(tmp_path)  # trials long enough that the second process joins in
    result = _run(["search.run"] + base_args(config, out) + ["--quiet", "--trials", "5", "--workers", "2",
                                                            "--no-early-stop"])
    assert result.returncode == 0, result.stderr[-2000:]
    study = study_of(out)
    check_finished(study, 5)
    assert not study.get_trials(states=(TrialState.FAIL,))
    workers = {TrialRecord.read(t).worker for t in study.get_trials(states=FINISHED)}
    assert len(workers) == 2, f"both processes should have run trials: {workers}"
    assert (out / "report.md").exists()


def test_independent_commands_cooperate(tmp_path, tiny_config, fashion_mnist):
    out = tmp_path / "out"
    cmd = [PYTHON, "-m", "search.run"] + base_args(tiny_config, out) + ["--quiet", "--trials", "6"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=one_thread_each()) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    study = study_of(out)
    check_finished(study, 6)
    refs = [TrialRecord.read(t).reference_ratio for t in study.trials if TrialRecord.read(t).reference]
    assert sorted(refs) == [0.2, 0.5, 0.8]  # each reference enqueued once
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(params) == len(set(params))  # no plan evaluated twice


def test_default_path_never_imports_ray(tmp_path, tiny_config, fashion_mnist):
    script = ("import sys; from search import run, pick, report; "
              f"run.main({base_args(tiny_config, tmp_path / 'out') + ['--quiet', '--trials', '2']!r}); "
              "assert 'ray' not in sys.modules, 'ray was imported'")
    result = subprocess.run([PYTHON, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.alone  # Ray's node start has a fixed 30-s deadline a busy machine can miss
def test_ray_backend_runs_the_study(tmp_path, fashion_mnist):
    # Successive halving that stops most sampled candidates at rung 0, so the Ray path has to carry
    # PRUNED trials (and keep them off the front).
    eager = merged(TINY_LENET, search={"eta": 100, "rung_min_trials": 1})
    config = write_config(tmp_path / "eager.yaml", eager)
    out, home = tmp_path / "out", tmp_path / "home"
    env = _untouched_home(home)  # a local Ray, the report's plots and onnxruntime write nothing there
    result = _run(["search.run"] + base_args(config, out) +
                  ["--quiet", "--trials", "6", "--backend", "ray", "--cpus-per-trial", "1", "--max-concurrent", "2"],
                  env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    study = study_of(out)
    check_finished(study, 6)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and all(TrialRecord.read(t).stop_reason for t in pruned)
    assert not {t.number for t in pruned} & {t.number for t in study.best_trials}
    front = study.best_trials
    assert front and all((out / "artifacts" / TrialRecord.read(t).checkpoint).exists() for t in front)
    assert sorted(TrialRecord.read(t).reference_ratio for t in study.get_trials(states=FINISHED)
                  if TrialRecord.read(t).reference) == [0.2, 0.5, 0.8]
    assert (out / "ray").is_dir() and (out / "report.md").exists()
    picked = _run(["search.pick"] + base_args(config, out) + ["--max-drop", "100", "--save", str(tmp_path / "p.pt"),
                                                               "--export", "onnx"], env=env)
    assert picked.returncode == 0, picked.stderr[-2000:]
    assert '"test_accuracy"' in picked.stdout and (tmp_path / "p.onnx").is_file()
    assert sorted(str(f.relative_to(home)) for f in home.rglob("*")) == []


# --- PostgreSQL ------------------------------------------------------------------------------------

def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PgServer:
    """A throwaway PostgreSQL server on loopback (Debian's postgresql package) that a test can kill
    (``pg_ctl stop -m immediate``: the postmaster and its backends exit at once) and start again."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL is not installed; `make test` installs Debian's postgresql package")
            pytest.skip("PostgreSQL server binaries are not installed")
        self.root = tempfile.mkdtemp(prefix="pgtest-")
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.data = os.path.join(self.root, "data")
        subprocess.run(_as_postgres([initdb, "-D", self.data, "-U", "study", "--auth=trust"]), check=True,
                       capture_output=True, timeout=120)
        self.opts = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1"
        self.url = f"postgresql://study@127.0.0.1:{port}/postgres"
        self.start()

    def start(self) -> None:
        subprocess.run(_as_postgres([self.pg_ctl, "-D", self.data, "-o", self.opts, "-l",
                                     os.path.join(self.root, "log"), "-w", "start"]),
                       check=True, capture_output=True, timeout=120)

    def kill(self) -> None:
        subprocess.run(_as_postgres([self.pg_ctl, "-D", self.data, "-m", "immediate", "stop"]), capture_output=True,
                       timeout=60)


@pytest.fixture
def postgres_server():
    server = PgServer()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    return postgres_server.url


def test_postgres_workers_retry_a_killed_workers_trial(tmp_path, postgres_url, fashion_mnist):
    config = slow_config(tmp_path)
    out = tmp_path / "out"
    trained = _run(["search.train"] + base_args(config, out) + ["--epochs", "1"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    cmd = [PYTHON, "-m", "search.run"] + base_args(config, out) + [
        "--quiet", "--trials", "6", "--storage", postgres_url, "--heartbeat-s", "1", "--no-early-stop"]
    victim = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=one_thread_each())
    survivor = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=one_thread_each())
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        deadline, killed = time.time() + 300, None
        while time.time() < deadline and killed is None:
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
            except KeyError:
                continue
            # a trial whose plan is written: all its ratios sampled (a kill between two suggest calls leaves a
            # trial with part of its parameters, and its retry samples the rest)
            mine = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                    if (t.user_attrs.get("worker") or "").endswith(f":{victim.pid}") and "plan" in t.user_attrs]
            if mine and study.get_trials(states=FINISHED):
                victim.send_signal(signal.SIGKILL)
                killed = mine[0].number
        assert killed is not None, "the victim never ran a trial"
        _, err = survivor.communicate(timeout=600)
        assert survivor.returncode == 0, err[-2000:]
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
    study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
    check_finished(study, 6)
    # the trial the kill landed in: the one seen running, or, when that one finished between the look and
    # the kill, the victim's next (no clock decides which)
    dead = [t for t in study.trials if t.state == TrialState.FAIL
            and (t.user_attrs.get("worker") or "").endswith(f":{victim.pid}")]
    assert len(dead) == 1, [(t.number, t.state) for t in study.trials]
    assert dead[0].number == killed or study.trials[killed].state == TrialState.COMPLETE
    retries = [t for t in study.trials if RetryFailedTrialCallback.retried_trial_number(t) == dead[0].number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    if "plan" in dead[0].user_attrs:  # all its ratios sampled: the retry runs the same plan
        assert retries[0].params == dead[0].params


def test_a_killed_postgres_server_stops_the_run_in_one_line_and_the_study_resumes(tmp_path, postgres_server,
                                                                                   fashion_mnist):
    """The server dies mid-study (a trial finished, another running): the run stops with one line,
    exit 2; once the server is back the same command resumes, and no trial is lost or counted twice
    (the one running at the kill is failed by its stale heartbeat and retried)."""
    config = slow_config(tmp_path)
    out = tmp_path / "out"
    trained = _run(["search.train"] + base_args(config, out) + ["--epochs", "1"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    cmd = ["search.run"] + base_args(config, out) + ["--quiet", "--trials", "5", "--storage", postgres_server.url,
                                                     "--heartbeat-s", "1", "--no-early-stop"]
    run = subprocess.Popen([PYTHON, "-m", *cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    storage = optuna.storages.RDBStorage(postgres_server.url)
    try:
        while run.poll() is None:  # wait on the study's progress, not on a clock
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
            except KeyError:
                continue
            if study.get_trials(states=FINISHED) and study.get_trials(states=(TrialState.RUNNING,)):
                break
        assert run.poll() is None, "the run ended before the server could be killed mid-trial"
        done_before = len(study.get_trials(states=FINISHED))
        storage.engine.dispose()
        postgres_server.kill()
        _, err = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 2, err[-2000:]
    assert err.count("\n") == 1 and "Traceback" not in err and "database" in err, err[-2000:]
    postgres_server.start()
    resumed = _run(cmd, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=optuna.storages.RDBStorage(postgres_server.url))
    check_finished(study, 5)
    assert len(study.get_trials(states=FINISHED)) >= done_before
    failed = study.get_trials(states=(TrialState.FAIL,))
    for t in failed:  # each trial cut by the kill was retried once, with its own plan
        retries = [r for r in study.trials if RetryFailedTrialCallback.retried_trial_number(r) == t.number]
        assert len(retries) == 1 and retries[0].params == t.params


# --- a Ray cluster of two nodes ---------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _processes() -> dict[int, tuple[int, str]]:
    """Every process of this machine: pid -> (parent pid, command line)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry)] = (ppid, cmd)
    return out


def _descendants(root: int, procs: dict[int, tuple[int, str]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


class RayNodes:
    """A Ray cluster on this machine, started as one is by hand: ``ray start --head`` with no CPU for
    trials (Ray's own services only) and two ``ray start --address`` nodes of one CPU each, so a
    trial runs on a node that can be killed while the cluster lives on. The agents get fixed ports:
    otherwise a raylet whose dashboard agent takes over 15 s to write its port file (a busy machine)
    exits (ray-project/ray#65983)."""

    def __init__(self) -> None:
        self.ray = str(Path(PYTHON).parent / "ray")
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live below it
        # a HOME of its own: an ~/.ray/auth_token left by an earlier local Ray makes the head demand a
        # token its other nodes do not send
        self.env = {**os.environ, "HOME": self.temp, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
        ports = _free_ports(16)
        self.address = f"127.0.0.1:{ports[0]}"
        self.groups: list[int] = []
        try:  # a node that fails to start leaves none of the others running (the fixture never yields)
            self._start(["--head", f"--port={ports[0]}", "--num-cpus=0", "--include-dashboard=false",
                         f"--temp-dir={self.temp}"], ports[1:6])
            self.workers = [self._start([f"--address={self.address}", "--num-cpus=1"], ports[i:i + 5])
                            for i in (6, 11)]
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], ports: list[int]) -> int:
        """Start one node; its raylet's pid."""
        before = self._raylets()
        proc = subprocess.run(
            [self.ray, "start", *args, "--node-ip-address=127.0.0.1", "--disable-usage-stats",
             f"--metrics-export-port={ports[0]}", f"--dashboard-agent-listen-port={ports[1]}",
             f"--dashboard-agent-grpc-port={ports[2]}", f"--runtime-env-agent-port={ports[3]}",
             f"--node-manager-port={ports[4]}"],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300, start_new_session=True)
        started = self._raylets() - before
        assert proc.returncode == 0 and len(started) == 1, proc.stderr[-3000:]
        raylet = started.pop()
        self.groups.append(os.getpgid(raylet))
        return raylet

    def _raylets(self) -> set[int]:
        return {pid for pid, (_, cmd) in _processes().items() if "raylet/raylet" in cmd and self.temp in cmd}

    def stop(self) -> None:
        """Kill this cluster's processes only (``ray stop`` would stop every Ray of the machine)."""
        procs = _processes()
        mine = {pid for pid, (_, cmd) in procs.items() if self.temp in cmd}
        for pid in list(mine):
            mine |= _descendants(pid, procs)
        for group in self.groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        for pid in mine:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def ray_nodes():
    nodes = RayNodes()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.mark.alone  # Ray's node start has a fixed 30-s deadline a busy machine can miss
def test_a_ray_cluster_loses_a_node_mid_trial_and_the_study_finishes(tmp_path, postgres_url, ray_nodes,
                                                                       fashion_mnist):
    """Two Ray worker nodes, PostgreSQL storage: the raylet of the node running a trial is SIGKILLed
    once another trial has finished; that trial is failed and its plan retried, none lost or counted
    twice, and the study finishes on the other node, so trials ran on both."""
    config = slow_config(tmp_path)
    out = tmp_path / "out"
    trained = _run(["search.train"] + base_args(config, out) + ["--epochs", "1"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    run = subprocess.Popen(
        [PYTHON, "-m", "search.run"] + base_args(config, out) +
        ["--quiet", "--trials", "6", "--no-early-stop", "--storage", postgres_url, "--heartbeat-s", "1",
         "--backend", "ray", "--ray-address", ray_nodes.address, "--cpus-per-trial", "1"],
        cwd=REPO, env=ray_nodes.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storage = optuna.storages.RDBStorage(postgres_url)
    node_of: dict[int, int] = {}  # Ray worker pid -> its node's raylet, while the nodes live
    killed = victim = None
    try:
        while run.poll() is None:  # wait on the study's progress, not on a clock
            time.sleep(0.5)
            procs = _processes()
            for raylet in ray_nodes.workers:
                node_of.update(dict.fromkeys(_descendants(raylet, procs), raylet))
            if killed is not None:
                continue  # the survivor's workers are still mapped to it
            try:
                study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
            except KeyError:
                continue
            where = {t.number: node_of.get(int(TrialRecord.read(t).worker.rpartition(":")[2]))
                     for t in study.get_trials(states=(TrialState.RUNNING,))
                     if TrialRecord.read(t).worker and "plan" in t.user_attrs}  # sampled: a plan to run again
            running = [(n, node) for n, node in where.items() if node is not None]
            if running and study.get_trials(states=FINISHED):
                killed, victim = running[0]
                # the node is lost: its raylet and every process of it (a worker outliving its
                # raylet for a moment could still tell its trial COMPLETE through the storage)
                for pid in [victim] + [p for p, node in node_of.items() if node == victim]:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        _, err = run.communicate(timeout=900)
        assert killed is not None, f"no trial ran on a worker node after a first had finished: {err[-2000:]}"
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
    check_finished(study, 6)
    assert study.trials[killed].state == TrialState.FAIL
    retries = [t for t in study.trials if RetryFailedTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1 and retries[0].state in FINISHED and retries[0].params == study.trials[killed].params
    survivor = next(r for r in ray_nodes.workers if r != victim)
    nodes = {node_of.get(int(TrialRecord.read(t).worker.rpartition(":")[2])) for t in study.get_trials(states=FINISHED)}
    assert survivor in nodes, nodes  # the trials after the kill, at least
    assert (out / "report.md").exists()
